//! Clients for Keepsake's services: a tuned channel and bearer-token auth.

use crate::convert::{chunk_id, id_bytes};
use bytes::Bytes;
use keepsake_proto::v1::accounts_client::AccountsClient;
use keepsake_proto::v1::chunk_store_client::ChunkStoreClient;
use keepsake_proto::v1::library_client::LibraryClient;
use keepsake_store::ChunkId;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The generated message types, for callers that build requests by hand.
pub use keepsake_proto::v1 as pb;

pub use crate::auth::CLIENT_VERSION_HEADER;

/// Connects a channel tuned like the server (large HTTP/2 frames, no Nagle delay).
pub async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .connect()
        .await
}

/// Adds `authorization: Bearer <token>` (when there is one) and the client version to every call.
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
    version: MetadataValue<Ascii>,
}

impl BearerAuth {
    /// Auth for `token`; panics only if the token holds characters HTTP headers cannot carry.
    pub fn new(token: &str) -> Self {
        Self {
            header: Some(
                format!("Bearer {token}")
                    .parse()
                    .expect("tokens are printable ASCII"),
            ),
            ..Self::anonymous()
        }
    }

    /// No token (sign-in and enrolment), only the client version.
    pub fn anonymous() -> Self {
        Self::with_version(env!("CARGO_PKG_VERSION"))
    }

    /// No token, and a client version of the caller's choosing.
    pub fn with_version(version: &str) -> Self {
        Self {
            header: None,
            version: version
                .parse()
                .unwrap_or_else(|_| MetadataValue::from_static("0.0.0")),
        }
    }

    /// This auth with `token` attached.
    pub fn token(mut self, token: &str) -> Self {
        self.header = Some(
            format!("Bearer {token}")
                .parse()
                .expect("tokens are printable ASCII"),
        );
        self
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            req.metadata_mut().insert("authorization", header.clone());
        }
        req.metadata_mut()
            .insert(CLIENT_VERSION_HEADER, self.version.clone());
        Ok(req)
    }
}

/// The generated Library client with auth attached.
pub type LibraryApi = LibraryClient<InterceptedService<Channel, BearerAuth>>;

/// A Library client over `channel` acting with `auth`.
pub fn library_client(channel: Channel, auth: BearerAuth) -> LibraryApi {
    LibraryClient::with_interceptor(channel, auth)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// The generated Accounts client with auth attached.
pub type AccountsApi = AccountsClient<InterceptedService<Channel, BearerAuth>>;

/// An Accounts client over `channel` acting with `auth`.
pub fn accounts_client(channel: Channel, auth: BearerAuth) -> AccountsApi {
    AccountsClient::with_interceptor(channel, auth)
}

/// The generated ChunkStore client with auth attached.
pub type StoreClient = ChunkStoreClient<InterceptedService<Channel, BearerAuth>>;

/// A ChunkStore client over `channel` acting with `token`.
pub fn store_client(channel: Channel, token: &str) -> StoreClient {
    ChunkStoreClient::with_interceptor(channel, BearerAuth::new(token))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

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
