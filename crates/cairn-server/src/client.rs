//! A client of a `cairn serve` socket (containerd's snapshots API), for tests and tools.

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::tonic::transport::{Channel, Endpoint};
use std::path::{Path, PathBuf};

/// Connect to the snapshots service on the unix socket `address`.
pub async fn connect(
    address: &Path,
) -> Result<SnapshotsClient<Channel>, containerd_snapshots::tonic::transport::Error> {
    let address: PathBuf = address.to_path_buf();
    // The URI is required by the API and not used: the connector dials the socket.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            tokio::net::UnixStream::connect(address.clone())
        }))
        .await?;
    Ok(SnapshotsClient::new(channel))
}
