//! What the long-running commands (`gantry server`, `gantry agent`) share: structured logs on
//! stderr, their own tokio runtime, a listener, and a clean stop on SIGTERM or SIGINT.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Logs to stderr, filtered by `GANTRY_LOG` (default `default_filter`); colours only on a
/// terminal.
pub fn init_logging(default_filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The worker threads of a daemon's runtime.
#[derive(Debug, Clone, Copy)]
pub enum Threads {
    /// tokio's default: one per core.
    Default,
    /// This many; 1 is a current-thread runtime (no cross-thread wakeups between tasks).
    Workers(usize),
}

/// Binds `listen`, then runs `body` with the listener and a token cancelled on SIGTERM or
/// SIGINT; returns exit code 0 when `body` ends well.
///
/// The runtime is built here, after the shim/init dispatch in `main`: daemons own theirs.
///
/// # Errors
/// The runtime cannot start, the address cannot be bound, or `body` fails.
pub fn serve<F, Fut>(listen: &str, threads: Threads, body: F) -> anyhow::Result<i32>
where
    F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match threads {
        Threads::Workers(n) if n <= 1 => tokio::runtime::Builder::new_current_thread(),
        Threads::Workers(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        Threads::Default => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("--listen {listen}: cannot bind"))?;
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
        });
        body(listener, shutdown).await?;
        Ok(0)
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
