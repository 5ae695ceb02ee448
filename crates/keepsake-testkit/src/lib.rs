//! What tests use and production code must not: a TCP proxy that misbehaves on purpose
//! (`fault_proxy`), a real S3-compatible server (`s3`, and the `keepsake-s3` binary), and the simplest whole-batch store calls (`put_all`, `get_all`), which
//! the device never uses — it uploads through its one path behind the `Cloud` port.
//! `cargo xtask arch` checks that no production crate depends on this one.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use keepsake_testkit::fault_proxy::{FaultProxy, Schedule};
//! let proxy = FaultProxy::start(server, Schedule::clean()).await?;
//! println!("point the client at {}", proxy.url());
//! # Ok(()) }
//! ```

pub mod fault_proxy;
pub mod media;
pub mod s3;

use bytes::Bytes;
use keepsake_store::ChunkId;
use keepsake_transport::client::{StoreClient, pb};
use keepsake_transport::convert::{chunk_id, id_bytes};
use tonic::Status;

/// Streams `chunks` in messages of about `message_bytes` and returns every id the
/// server acknowledged as durable, in acknowledgement order.
pub async fn put_all(
    client: &mut StoreClient,
    session_id: &str,
    chunks: Vec<(ChunkId, Bytes)>,
    message_bytes: usize,
) -> Result<Vec<ChunkId>, Status> {
    let session_id = session_id.to_string();
    let mut messages = Vec::new();
    let mut current: Vec<pb::Chunk> = Vec::new();
    let mut size = 0;
    for (id, data) in chunks {
        size += data.len();
        current.push(pb::Chunk {
            id: id_bytes(&id),
            data,
        });
        if size >= message_bytes {
            messages.push(std::mem::take(&mut current));
            size = 0;
        }
    }
    if !current.is_empty() {
        messages.push(current);
    }
    let outbound = tokio_stream::iter(messages.into_iter().enumerate().map(move |(i, chunks)| {
        pb::PutChunksRequest {
            session_id: if i == 0 {
                session_id.clone()
            } else {
                String::new()
            },
            chunks,
            flush: false,
        }
    }));
    let mut acks = client.put_chunks(outbound).await?.into_inner();
    let mut acknowledged = Vec::new();
    while let Some(ack) = acks.message().await? {
        for id in ack.acknowledged_ids {
            acknowledged.push(chunk_id("acknowledged_ids", &id).map_err(Status::from)?);
        }
    }
    Ok(acknowledged)
}

/// Fetches `ids` and checks each chunk against its id before returning it.
pub async fn get_all(
    client: &mut StoreClient,
    ids: &[ChunkId],
) -> Result<Vec<(ChunkId, Bytes)>, Status> {
    let request = pb::GetChunksRequest {
        ids: ids.iter().map(id_bytes).collect(),
        // The server's own check is what the tests using this look at.
        reader_verifies: false,
    };
    let mut stream = client.get_chunks(request).await?.into_inner();
    let mut out = Vec::with_capacity(ids.len());
    while let Some(msg) = stream.message().await? {
        for chunk in msg.chunks {
            let id = chunk_id("chunks.id", &chunk.id).map_err(Status::from)?;
            if ChunkId::of(&chunk.data) != id {
                return Err(Status::data_loss(format!("chunk {id} arrived corrupted")));
            }
            out.push((id, chunk.data));
        }
    }
    Ok(out)
}
