//! Raft plumbing: the tonic network between members ([`network`]), the service answering it
//! ([`service`]), and the Raft configuration ([`RaftTuning`]).

pub mod network;
pub mod service;

pub use network::{GrpcNetwork, DEFAULT_MAX_APPEND_BYTES, MAX_MESSAGE_BYTES};
pub use service::RaftGrpc;

use std::time::Duration;

/// Default heartbeat period, in milliseconds.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// Default lower bound of the election timeout, in milliseconds.
pub const DEFAULT_ELECTION_MIN_MS: u64 = 300;
/// Default upper bound of the election timeout, in milliseconds.
pub const DEFAULT_ELECTION_MAX_MS: u64 = 600;

/// Timing and compaction knobs of a member.
///
/// The defaults leave several heartbeats per election timeout, so a loaded 2-core machine does
/// not see spurious elections. A follower that has heard from a leader campaigns only after
/// openraft's leader lease (`election_max`) plus its own timeout without a heartbeat, so a
/// crashed leader is replaced after 0.9–1.2 s by default; a stopping leader hands over at once
/// (see `server::handover`).
#[derive(Debug, Clone)]
pub struct RaftTuning {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_min: Duration,
    /// Upper bound of the randomized election timeout.
    pub election_max: Duration,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind the snapshot (so short lags catch up without one).
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            election_min: Duration::from_millis(DEFAULT_ELECTION_MIN_MS),
            election_max: Duration::from_millis(DEFAULT_ELECTION_MAX_MS),
            snapshot_every: 5000,
            keep_logs: 1000,
        }
    }
}

/// Errors of the Raft configuration.
#[derive(Debug, thiserror::Error)]
pub enum RaftConfigError {
    /// openraft rejected the values.
    #[error("invalid raft configuration: {0}")]
    Invalid(String),
}

impl RaftTuning {
    /// The openraft configuration of these knobs.
    pub fn to_config(&self) -> Result<openraft::Config, RaftConfigError> {
        let config = openraft::Config {
            cluster_name: "gantry".into(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: millis(self.election_min),
            election_timeout_max: millis(self.election_max),
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            ..openraft::Config::default()
        };
        config
            .validate()
            .map_err(|e| RaftConfigError::Invalid(e.to_string()))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tuning_is_valid_and_nonsense_is_refused() {
        let config = RaftTuning::default().to_config().unwrap();
        assert!(config.heartbeat_interval < config.election_timeout_min);
        let bad = RaftTuning {
            election_min: Duration::from_millis(900),
            election_max: Duration::from_millis(300),
            ..RaftTuning::default()
        };
        let err = bad.to_config().unwrap_err();
        assert!(
            err.to_string().starts_with("invalid raft configuration"),
            "{err}"
        );
    }
}
