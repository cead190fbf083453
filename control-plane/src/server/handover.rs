//! Leadership handover: a leader that is asked to stop makes a caught-up follower leader
//! before it goes, so the cluster does not wait out an election timeout (Raft thesis §3.10).
//!
//! openraft 0.9 has no leadership transfer, so the steps are ours:
//! 1. the write batcher holds new writes back and waits for the entries in flight, so the
//!    leader's log stops growing;
//! 2. a voter whose replicated log matches the leader's is picked (none within a step: give
//!    up, the others are down too);
//! 3. once this member has led longer than its leader lease (before that, openraft makes it
//!    refuse any candidate's vote request), the voter is sent `TimeoutNow` and campaigns at
//!    once: its log is as long as the leader's, so the leader grants its vote, and with a
//!    three-member cluster the two votes are a quorum;
//! 4. once the new leader is known, the held writes go on: openraft refuses them here, and
//!    the API forwards them to the new leader.
//!
//! In a larger cluster the other followers' leases must also lapse before they vote, so the
//! new leader comes later; anything that fails leaves the followers to elect one after their
//! election timeout, as without a handover.

use super::batcher::WriteBatcher;
use crate::raft::network::channel;
use crate::raft::service::TimeoutNow;
use crate::raft::MAX_MESSAGE_BYTES;
use crate::types::{NodeId, Raft};
use gantry_api::proto::raft_service_client::RaftServiceClient;
use gantry_api::proto::RaftRequest;
use openraft::ServerState;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When this member last became leader, and in which term; kept by the role watcher.
#[derive(Clone, Default)]
pub(crate) struct Tenure(Arc<Mutex<Option<(u64, Instant)>>>);

impl Tenure {
    /// Records that this member leads in `term` (from now, unless it already did).
    pub(crate) fn leading(&self, term: u64) {
        let mut t = self.lock();
        if t.map(|(at, _)| at) != Some(term) {
            *t = Some((term, Instant::now()));
        }
    }

    /// Records that this member does not lead.
    pub(crate) fn following(&self) {
        *self.lock() = None;
    }

    fn since(&self, term: u64) -> Option<Instant> {
        self.lock()
            .and_then(|(at, since)| (at == term).then_some(since))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, Instant)>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// How a handover ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handover {
    /// This member was not the leader: nothing to hand over.
    NotLeader,
    /// No other voter to hand over to.
    Alone,
    /// The named member leads now.
    HandedTo { id: NodeId, name: String, term: u64 },
    /// It did not work out; why.
    Failed(String),
}

/// What a handover needs.
pub(crate) struct Leadership<'a> {
    pub raft: &'a Raft,
    pub id: NodeId,
    pub cluster_id: &'a str,
    pub batcher: &'a WriteBatcher,
    pub tenure: &'a Tenure,
    /// openraft's leader lease (its election timeout maximum).
    pub lease: Duration,
}

impl Leadership<'_> {
    /// Hands leadership to a caught-up voter. Each step (the writes in flight, a voter
    /// catching up, the voter taking over) gets `step`; waiting out our lease comes on top.
    pub(crate) async fn hand_over(&self, step: Duration) -> Handover {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || m.current_leader != Some(self.id) {
            return Handover::NotLeader;
        }
        let membership = m.membership_config.membership().clone();
        let peers: Vec<NodeId> = membership.voter_ids().filter(|v| *v != self.id).collect();
        if peers.is_empty() {
            return Handover::Alone;
        }
        let _held = self.batcher.hold(step).await;

        // A voter with every entry of our log: the others would refuse its candidacy if it
        // lacked one, and it must not lose a committed write. A live follower catches up
        // within a few round trips; none doing so means none can take over (the others are
        // down too, as when a whole cluster stops).
        let caught_up = self
            .raft
            .wait(Some(step))
            .metrics(
                |m| matched_voter(m, &peers).is_some(),
                "a voter to have the leader's whole log",
            )
            .await;
        if let Err(e) = caught_up {
            return Handover::Failed(format!("no voter caught up: {e}"));
        }

        // Until our lease has run out, openraft makes us refuse the candidate's vote request.
        if let Some(since) = self.tenure.since(m.current_term) {
            let until = since + self.lease + Duration::from_millis(20);
            tokio::time::sleep_until(until.into()).await;
        }
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || m.current_leader != Some(self.id) {
            return Handover::NotLeader;
        }
        let Some(target) = matched_voter(&m, &peers) else {
            return Handover::Failed("no voter caught up".into());
        };
        let Some(node) = membership.get_node(&target).cloned() else {
            return Handover::Failed(format!("member {target} has no address"));
        };
        if let Err(e) = self.timeout_now(&node.addr, &m.vote, step).await {
            return Handover::Failed(format!("{} ({}): {e}", node.name, node.addr));
        }
        let led = self
            .raft
            .wait(Some(step))
            .metrics(
                |m| m.current_leader == Some(target),
                "the new leader to be known",
            )
            .await;
        match led {
            Ok(m) => Handover::HandedTo {
                id: target,
                name: node.name,
                term: m.current_term,
            },
            Err(e) => Handover::Failed(format!("{} did not take over: {e}", node.name)),
        }
    }

    async fn timeout_now(
        &self,
        addr: &str,
        vote: &openraft::Vote<NodeId>,
        within: Duration,
    ) -> Result<(), String> {
        let data = serde_json::to_vec(&TimeoutNow { vote: *vote }).map_err(|e| e.to_string())?;
        let mut client = RaftServiceClient::new(channel(addr).map_err(|e| e.to_string())?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let call = client.timeout_now(RaftRequest {
            cluster_id: self.cluster_id.to_string(),
            data,
        });
        match tokio::time::timeout(within, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status.message().to_string()),
            Err(_) => Err(format!("no answer within {within:?}")),
        }
    }
}

/// The first of `peers` whose replicated log ends where the leader's does.
fn matched_voter(
    m: &openraft::RaftMetrics<NodeId, crate::types::MemberNode>,
    peers: &[NodeId],
) -> Option<NodeId> {
    let replication = m.replication.as_ref()?;
    peers.iter().copied().find(|p| {
        replication
            .get(p)
            .map(|matched| matched.map(|l| l.index) == m.last_log_index)
            .unwrap_or(false)
    })
}
