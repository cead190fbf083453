//! The agent's own gRPC service: replica logs and exec. (Filled in below.)

use gantry_runtime::container::Runtime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the agent's gRPC service on `listener` until `shutdown`.
pub async fn serve(
    _runtime: Runtime,
    _node: String,
    _listener: TcpListener,
    shutdown: CancellationToken,
) {
    shutdown.cancelled().await;
}
