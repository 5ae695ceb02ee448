//! The Delta gRPC service: signatures of stored versions and server-side rebuilds. It
//! reaches the store only through [`DeltaStore`] — the store's own calls, checked as
//! any caller's are — so a store in another process can stand behind it.

use crate::ApiError;
use crate::auth::identity;
use crate::convert::{chunk_id, id_bytes};
use bytes::Bytes;
use keepsake_delta::DeltaError;
use keepsake_delta::rsync::{self, RsyncLimits};
use keepsake_delta::span;
use keepsake_proto::v1 as pb;
use keepsake_proto::v1::delta_server::Delta;
use keepsake_store::{ChunkId, Manifest, ManifestId, PutOutcome, Store, StoreError};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Signature pieces per message.
const SIGNATURE_PIECE: usize = 1 << 20;
/// Bytes of chunks per store batch (one pack) while storing a rebuilt file.
const STORE_BATCH_BYTES: usize = 16 << 20;

/// What the Delta service needs of a store: an account's versions read back, and rebuilt
/// chunks and manifests stored in that account's upload session.
pub trait DeltaStore: Send + Sync + 'static {
    /// An owned manifest.
    fn get_manifest(&self, account: &str, id: &ManifestId) -> Result<Manifest, StoreError>;
    /// An owned chunk, verified.
    fn get_chunk(&self, account: &str, id: &ChunkId) -> Result<Bytes, StoreError>;
    /// The ids the account does not own, under a live session.
    fn find_missing(
        &self,
        account: &str,
        session_id: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, StoreError>;
    /// Stores chunks durably in the session.
    fn put_chunks(
        &self,
        account: &str,
        session_id: &str,
        chunks: &[(ChunkId, Bytes)],
    ) -> Result<PutOutcome, StoreError>;
    /// Stores a manifest whose chunks the account owns.
    fn put_manifest(
        &self,
        account: &str,
        session_id: &str,
        manifest: &Manifest,
    ) -> Result<ManifestId, StoreError>;
    /// The most ids one call may name.
    fn max_ids_per_call(&self) -> usize;
}

impl DeltaStore for Store {
    fn get_manifest(&self, account: &str, id: &ManifestId) -> Result<Manifest, StoreError> {
        Store::get_manifest(self, account, id)
    }
    fn get_chunk(&self, account: &str, id: &ChunkId) -> Result<Bytes, StoreError> {
        Store::get_chunk(self, account, id)
    }
    fn find_missing(
        &self,
        account: &str,
        session_id: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, StoreError> {
        Store::find_missing(self, account, session_id, ids)
    }
    fn put_chunks(
        &self,
        account: &str,
        session_id: &str,
        chunks: &[(ChunkId, Bytes)],
    ) -> Result<PutOutcome, StoreError> {
        Store::put_chunks(self, account, session_id, chunks)
    }
    fn put_manifest(
        &self,
        account: &str,
        session_id: &str,
        manifest: &Manifest,
    ) -> Result<ManifestId, StoreError> {
        Store::put_manifest(self, account, session_id, manifest)
    }
    fn max_ids_per_call(&self) -> usize {
        self.config().max_ids_per_call
    }
}

/// Serves deltas against one store.
#[derive(Clone)]
pub struct DeltaService {
    store: Arc<dyn DeltaStore>,
    limits: RsyncLimits,
}

impl DeltaService {
    /// Serves deltas against `store` within `limits`.
    pub fn new(store: Arc<dyn DeltaStore>, limits: RsyncLimits) -> Self {
        Self { store, limits }
    }
}

fn delta_status(e: DeltaError) -> Status {
    ApiError::Delta(e).into()
}

/// Reads an owned version back whole (bounded by the limits).
fn load_base(
    store: &dyn DeltaStore,
    account: &str,
    manifest_id: &ChunkId,
    limits: &RsyncLimits,
) -> Result<Vec<u8>, Status> {
    let manifest = store
        .get_manifest(account, manifest_id)
        .map_err(|e| Status::from(ApiError::Store(e)))?;
    let mut store_error: Option<StoreError> = None;
    let result = rsync::assemble(
        &manifest,
        |id| {
            store.get_chunk(account, id).map_err(|e| {
                let message = e.to_string();
                store_error = Some(e);
                DeltaError::Sink(message)
            })
        },
        limits,
    );
    match (result, store_error) {
        (Ok(bytes), _) => Ok(bytes),
        (Err(_), Some(e)) => Err(ApiError::Store(e).into()),
        (Err(e), None) => Err(delta_status(e)),
    }
}

/// Reads a stretch of an owned version: whole chunks from `offset`, `length` bytes, at
/// most a span's worth.
fn load_span(
    store: &dyn DeltaStore,
    account: &str,
    manifest_id: &ChunkId,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, Status> {
    if length == 0 || length > span::MAX_SPAN_BYTES {
        return Err(ApiError::field(
            "length",
            format!("must be 1 to {} bytes", span::MAX_SPAN_BYTES),
        )
        .into());
    }
    let manifest = store
        .get_manifest(account, manifest_id)
        .map_err(|e| Status::from(ApiError::Store(e)))?;
    let mut out = Vec::with_capacity(length as usize);
    let mut at = 0u64;
    for e in &manifest.entries {
        let end = at + u64::from(e.len);
        if at >= offset && end <= offset + length {
            let data = store
                .get_chunk(account, &e.chunk)
                .map_err(|e| Status::from(ApiError::Store(e)))?;
            out.extend_from_slice(&data);
        } else if at < offset + length && end > offset {
            break; // a chunk straddles an end of the stretch
        }
        at = end;
    }
    if out.len() as u64 != length {
        return Err(ApiError::field(
            "offset",
            "the stretch must start and end on the version's chunk boundaries",
        )
        .into());
    }
    Ok(out)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    keepsake_store::offload(f)
        .await
        .map_err(|e| Status::from(ApiError::Unavailable(format!("delta worker failed: {e}"))))?
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Delta for DeltaService {
    type SignatureStream = BoxStream<pb::SignatureResponse>;

    async fn signature(
        &self,
        request: Request<pb::SignatureRequest>,
    ) -> Result<Response<Self::SignatureStream>, Status> {
        let who = identity(&request)?;
        let pb::SignatureRequest { manifest_id } = request.into_inner();
        let id = chunk_id("manifest_id", &manifest_id)?;
        let (store, limits) = (self.store.clone(), self.limits.clone());
        let signature = blocking(move || {
            let base = load_base(&*store, &who.account, &id, &limits)?;
            rsync::signature(&base, &limits).map_err(delta_status)
        })
        .await?;
        let pieces: Vec<Result<pb::SignatureResponse, Status>> = signature
            .chunks(SIGNATURE_PIECE)
            .map(|piece| {
                Ok(pb::SignatureResponse {
                    data: Bytes::copy_from_slice(piece),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(pieces))))
    }

    async fn apply_delta(
        &self,
        request: Request<Streaming<pb::ApplyDeltaRequest>>,
    ) -> Result<Response<pb::ApplyDeltaResponse>, Status> {
        let who = identity(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| ApiError::field("stream", "is empty"))?;
        let pb::ApplyDeltaRequest {
            session_id,
            base_manifest_id,
            declared_file_hash,
            delta,
        } = first;
        let base_id = chunk_id("base_manifest_id", &base_manifest_id)?;
        let declared = chunk_id("declared_file_hash", &declared_file_hash)?;
        let mut collected = delta.to_vec();
        while let Some(more) = inbound.message().await? {
            let pb::ApplyDeltaRequest { delta, .. } = more;
            if (collected.len() + delta.len()) as u64 > self.limits.max_delta_bytes {
                return Err(delta_status(DeltaError::TooLarge {
                    what: "delta",
                    len: (collected.len() + delta.len()) as u64,
                    limit: self.limits.max_delta_bytes,
                }));
            }
            collected.extend_from_slice(&delta);
        }
        let (store, limits) = (self.store.clone(), self.limits.clone());
        let (manifest_id, total_length, new_bytes) = blocking(move || {
            let base = load_base(&*store, &who.account, &base_id, &limits)?;
            let mut batch: Vec<(ChunkId, Bytes)> = Vec::new();
            let mut batch_bytes = 0usize;
            let mut new_bytes = 0u64;
            let mut flush = |batch: &mut Vec<(ChunkId, Bytes)>| -> Result<(), DeltaError> {
                let outcome = store
                    .put_chunks(&who.account, &session_id, batch)
                    .map_err(|e| DeltaError::Sink(e.to_string()))?;
                new_bytes += outcome.new_bytes;
                batch.clear();
                Ok(())
            };
            let manifest = rsync::rebuild(&base, &collected, &declared, &limits, |id, data| {
                batch_bytes += data.len();
                batch.push((id, Bytes::copy_from_slice(data)));
                if batch_bytes >= STORE_BATCH_BYTES {
                    batch_bytes = 0;
                    flush(&mut batch)?;
                }
                Ok(())
            })
            .map_err(delta_status)?;
            if !batch.is_empty() {
                flush(&mut batch).map_err(delta_status)?;
            }
            let id = store
                .put_manifest(&who.account, &session_id, &manifest)
                .map_err(|e| Status::from(ApiError::Store(e)))?;
            Ok((id, manifest.total_len, new_bytes))
        })
        .await?;
        Ok(Response::new(pb::ApplyDeltaResponse {
            manifest_id: id_bytes(&manifest_id),
            total_length,
            new_bytes,
        }))
    }

    async fn span_signature(
        &self,
        request: Request<pb::SpanSignatureRequest>,
    ) -> Result<Response<pb::SpanSignatureResponse>, Status> {
        let who = identity(&request)?;
        let pb::SpanSignatureRequest {
            base_manifest_id,
            offset,
            length,
            session_id,
            wanted_ids,
        } = request.into_inner();
        let id = chunk_id("base_manifest_id", &base_manifest_id)?;
        let wanted = wanted_ids
            .iter()
            .map(|w| chunk_id("wanted_ids", w))
            .collect::<Result<Vec<ChunkId>, ApiError>>()?;
        if !wanted.is_empty() && session_id.is_empty() {
            return Err(ApiError::field("session_id", "is required with wanted_ids").into());
        }
        let store = self.store.clone();
        let signature = blocking(move || {
            if !wanted.is_empty() {
                // Bounded by the store's ids per call, like FindMissing itself.
                let missing = store
                    .find_missing(&who.account, &session_id, &wanted)
                    .map_err(|e| Status::from(ApiError::Store(e)))?;
                if missing.is_empty() {
                    return Ok(None);
                }
            }
            let base = load_span(&*store, &who.account, &id, offset, length)?;
            span::span_signature(&base).map(Some).map_err(delta_status)
        })
        .await?;
        Ok(Response::new(pb::SpanSignatureResponse {
            all_held: signature.is_none(),
            signature: signature.unwrap_or_default().into(),
        }))
    }

    async fn put_chunks_by_delta(
        &self,
        request: Request<pb::PutChunksByDeltaRequest>,
    ) -> Result<Response<pb::PutChunksByDeltaResponse>, Status> {
        let who = identity(&request)?;
        let pb::PutChunksByDeltaRequest {
            session_id,
            base_manifest_id,
            offset,
            length,
            chunks,
            delta,
        } = request.into_inner();
        let base_id = chunk_id("base_manifest_id", &base_manifest_id)?;
        if session_id.is_empty() {
            return Err(ApiError::field("session_id", "is required").into());
        }
        let max_ids = self.store.max_ids_per_call();
        if chunks.is_empty() || chunks.len() > max_ids {
            return Err(
                ApiError::field("chunks", format!("must name 1 to {max_ids} chunks")).into(),
            );
        }
        let chunks = chunks
            .into_iter()
            .map(|pb::SpanChunk { id, length }| Ok((chunk_id("chunks.id", &id)?, length)))
            .collect::<Result<Vec<(ChunkId, u32)>, ApiError>>()?;
        let store = self.store.clone();
        let outcome = blocking(move || {
            let base = load_span(&*store, &who.account, &base_id, offset, length)?;
            let rebuilt = span::rebuild_chunks(&base, &delta, &chunks).map_err(delta_status)?;
            let rebuilt: Vec<(ChunkId, Bytes)> = rebuilt
                .into_iter()
                .map(|(id, data)| (id, Bytes::from(data)))
                .collect();
            store
                .put_chunks(&who.account, &session_id, &rebuilt)
                .map_err(|e| Status::from(ApiError::Store(e)))
        })
        .await?;
        Ok(Response::new(pb::PutChunksByDeltaResponse {
            acknowledged_ids: outcome.acknowledged.iter().map(id_bytes).collect(),
            new_bytes: outcome.new_bytes,
        }))
    }
}
