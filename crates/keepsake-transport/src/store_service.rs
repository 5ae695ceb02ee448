//! The ChunkStore gRPC service over a [`keepsake_store::Store`].

use crate::ApiError;
use crate::auth::{Identity, identity};
use crate::convert::{
    WireManifest, WireManifestEdit, chunk_id, chunk_ids, damaged_to_wire, id_bytes,
    manifest_to_wire, scrub_to_wire,
};
use bytes::Bytes;
use keepsake_proto::v1 as pb;
use keepsake_proto::v1::chunk_store_server::ChunkStore;
use keepsake_store::{ChunkId, PutOutcome, Store, StoreError};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Serves a store to authenticated callers.
#[derive(Clone)]
pub struct StoreService {
    store: Arc<Store>,
    batch_bytes: usize,
}

impl StoreService {
    /// Serves `store`, making each PutChunks batch durable once about `batch_bytes` arrived.
    pub fn new(store: Arc<Store>, batch_bytes: usize) -> Self {
        Self { store, batch_bytes }
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T, F>(store: &Arc<Store>, f: F) -> Result<T, Status>
where
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let store = store.clone();
    keepsake_store::offload(move || f(&store))
        .await
        .map_err(|e| Status::from(ApiError::Unavailable(format!("store worker failed: {e}"))))?
        .map_err(|e| Status::from(ApiError::Store(e)))
}

fn require_admin(who: &Identity) -> Result<(), Status> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied(
            "only an administrator token may run store-wide maintenance".into(),
        )
        .into())
    }
}

fn ttl_ms(seconds: u32) -> i64 {
    // Zero means "the server's default": one hour.
    if seconds == 0 {
        3_600_000
    } else {
        i64::from(seconds) * 1000
    }
}

/// About how many bytes of chunks one GetChunks message carries.
const GET_MESSAGE_BYTES: usize = 1 << 20;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ChunkStore for StoreService {
    async fn begin_session(
        &self,
        request: Request<pb::BeginSessionRequest>,
    ) -> Result<Response<pb::BeginSessionResponse>, Status> {
        let who = identity(&request)?;
        let pb::BeginSessionRequest {
            expected_bytes,
            ttl_seconds,
            request_id,
        } = request.into_inner();
        let session = blocking(&self.store, move |s| {
            let rid = (!request_id.is_empty()).then_some(request_id.as_str());
            s.begin_session(&who.account, expected_bytes, ttl_ms(ttl_seconds), rid)
        })
        .await?;
        Ok(Response::new(pb::BeginSessionResponse {
            session_id: session.id,
            expires_at_unix_ms: session.expires_at,
        }))
    }

    async fn renew_session(
        &self,
        request: Request<pb::RenewSessionRequest>,
    ) -> Result<Response<pb::RenewSessionResponse>, Status> {
        let who = identity(&request)?;
        let pb::RenewSessionRequest {
            session_id,
            ttl_seconds,
        } = request.into_inner();
        let session = blocking(&self.store, move |s| {
            s.renew_session(&who.account, &session_id, ttl_ms(ttl_seconds))
        })
        .await?;
        Ok(Response::new(pb::RenewSessionResponse {
            expires_at_unix_ms: session.expires_at,
        }))
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let who = identity(&request)?;
        let pb::EndSessionRequest { session_id } = request.into_inner();
        blocking(&self.store, move |s| {
            s.end_session(&who.account, &session_id)
        })
        .await?;
        Ok(Response::new(pb::EndSessionResponse {}))
    }

    async fn find_missing(
        &self,
        request: Request<pb::FindMissingRequest>,
    ) -> Result<Response<pb::FindMissingResponse>, Status> {
        let who = identity(&request)?;
        let pb::FindMissingRequest { session_id, ids } = request.into_inner();
        let ids = chunk_ids("ids", &ids, self.store.config().max_ids_per_call)?;
        let missing = blocking(&self.store, move |s| {
            s.find_missing(&who.account, &session_id, &ids)
        })
        .await?;
        Ok(Response::new(pb::FindMissingResponse {
            missing_ids: missing.iter().map(id_bytes).collect(),
        }))
    }

    type PutChunksStream = BoxStream<pb::PutChunksResponse>;

    async fn put_chunks(
        &self,
        request: Request<Streaming<pb::PutChunksRequest>>,
    ) -> Result<Response<Self::PutChunksStream>, Status> {
        let who = identity(&request)?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        let batch_bytes = self.batch_bytes;
        let device = who.device.clone().unwrap_or_default();
        tracing::debug!(account = %who.account, device, "chunk stream opened");
        tokio::spawn(async move {
            let account = who.account.clone();
            match pump_puts(store, who, inbound, batch_bytes, &tx).await {
                Ok(()) => tracing::debug!(account, device, "chunk stream ended"),
                Err(status) => {
                    // A client that vanished mid-stream (killed, cut off) ends here too.
                    tracing::debug!(account, device, code = ?status.code(), "chunk stream broken");
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GetChunksStream = BoxStream<pb::GetChunksResponse>;

    async fn get_chunks(
        &self,
        request: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let who = identity(&request)?;
        let pb::GetChunksRequest {
            ids,
            reader_verifies,
        } = request.into_inner();
        let ids = chunk_ids("ids", &ids, self.store.config().max_ids_per_call)?;
        let check = if reader_verifies {
            keepsake_store::ReadCheck::ByReader
        } else {
            keepsake_store::ReadCheck::Verify
        };
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        tokio::spawn(async move {
            // Read a group per blocking hop, one group ahead of the one being sent, so
            // disk reads and hashing overlap with encoding; the bounded channel is the
            // back-pressure.
            let read = |group: Vec<ChunkId>| {
                let store = store.clone();
                let account = who.account.clone();
                keepsake_store::offload(move || store.get_chunks_checked(&account, &group, check))
            };
            let mut groups = ids.chunks(32).map(<[ChunkId]>::to_vec);
            let mut ahead = groups.next().map(&read);
            while let Some(current) = ahead.take() {
                ahead = groups.next().map(&read);
                let chunks = match current.await {
                    Ok(Ok(chunks)) => chunks,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(Status::from(ApiError::Store(e)))).await;
                        return;
                    }
                    Err(e) => {
                        let status = ApiError::Unavailable(format!("store worker failed: {e}"));
                        let _ = tx.send(Err(status.into())).await;
                        return;
                    }
                };
                // Several chunks per message: per-message overhead, not bytes, bounded
                // download speed with one 64 KiB chunk per message.
                let mut message = Vec::new();
                let mut size = 0usize;
                let last = chunks.len();
                for (i, (id, data)) in chunks.into_iter().enumerate() {
                    size += data.len();
                    message.push(pb::Chunk {
                        id: id_bytes(&id),
                        data,
                    });
                    if size >= GET_MESSAGE_BYTES || i + 1 == last {
                        let msg = pb::GetChunksResponse {
                            chunks: std::mem::take(&mut message),
                        };
                        size = 0;
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn put_manifest(
        &self,
        request: Request<pb::PutManifestRequest>,
    ) -> Result<Response<pb::PutManifestResponse>, Status> {
        let who = identity(&request)?;
        let pb::PutManifestRequest {
            session_id,
            manifest,
            edit,
        } = request.into_inner();
        let id = match (manifest, edit) {
            (Some(manifest), None) => {
                let WireManifest(manifest) = manifest.try_into()?;
                blocking(&self.store, move |s| {
                    s.put_manifest(&who.account, &session_id, &manifest)
                })
                .await?
            }
            (None, Some(edit)) => {
                let edit = WireManifestEdit::try_from(edit)?;
                blocking(&self.store, move |s| {
                    s.put_manifest_edit(
                        &who.account,
                        &session_id,
                        &edit.base,
                        &edit.splices,
                        edit.file_hash,
                    )
                })
                .await?
            }
            (None, None) => return Err(ApiError::field("manifest", "is required (or edit)").into()),
            (Some(_), Some(_)) => {
                return Err(ApiError::field(
                    "edit",
                    "give the manifest or an edit of one, not both",
                )
                .into());
            }
        };
        Ok(Response::new(pb::PutManifestResponse {
            manifest_id: id_bytes(&id),
        }))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        let who = identity(&request)?;
        let pb::GetManifestRequest { manifest_id } = request.into_inner();
        let id = chunk_id("manifest_id", &manifest_id)?;
        let manifest = blocking(&self.store, move |s| s.get_manifest(&who.account, &id)).await?;
        Ok(Response::new(pb::GetManifestResponse {
            manifest: Some(manifest_to_wire(&manifest)),
        }))
    }

    async fn reference(
        &self,
        request: Request<pb::ReferenceRequest>,
    ) -> Result<Response<pb::ReferenceResponse>, Status> {
        let who = identity(&request)?;
        let pb::ReferenceRequest {
            manifest_id,
            holder,
        } = request.into_inner();
        let id = chunk_id("manifest_id", &manifest_id)?;
        blocking(&self.store, move |s| {
            s.reference(&who.account, &id, &holder)
        })
        .await?;
        Ok(Response::new(pb::ReferenceResponse {}))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let who = identity(&request)?;
        let pb::ReleaseRequest {
            manifest_id,
            holder,
        } = request.into_inner();
        let id = chunk_id("manifest_id", &manifest_id)?;
        blocking(&self.store, move |s| s.release(&who.account, &id, &holder)).await?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let who = identity(&request)?;
        let pb::GetUsageRequest {} = request.into_inner();
        let usage = blocking(&self.store, move |s| s.usage(&who.account)).await?;
        Ok(Response::new(pb::GetUsageResponse {
            bytes_owned: usage.bytes,
            chunks_owned: usage.chunks,
        }))
    }

    async fn scrub(
        &self,
        request: Request<pb::ScrubRequest>,
    ) -> Result<Response<pb::ScrubResponse>, Status> {
        require_admin(&identity(&request)?)?;
        let report = blocking(&self.store, Store::scrub).await?;
        Ok(Response::new(scrub_to_wire(report)))
    }

    async fn collect_garbage(
        &self,
        request: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        require_admin(&identity(&request)?)?;
        let r = blocking(&self.store, Store::collect_garbage).await?;
        Ok(Response::new(pb::CollectGarbageResponse {
            chunks_collected: r.chunks_collected,
            bytes_collected: r.bytes_collected,
            packs_repacked: r.packs_repacked,
            packs_deleted: r.packs_deleted,
            sessions_expired: r.sessions_expired,
        }))
    }

    async fn recheck(
        &self,
        request: Request<pb::RecheckRequest>,
    ) -> Result<Response<pb::RecheckResponse>, Status> {
        let who = identity(&request)?;
        // The answer names other accounts' manifests: for the library, not for a device.
        require_admin(&who)?;
        let pb::RecheckRequest { ids } = request.into_inner();
        let ids = chunk_ids("ids", &ids, self.store.config().max_ids_per_call)?;
        let found = blocking(&self.store, move |s| s.recheck(&who.account, &ids)).await?;
        Ok(Response::new(pb::RecheckResponse {
            corrupt_ids: found.corrupt.iter().map(id_bytes).collect(),
            damaged: damaged_to_wire(&found.damaged),
        }))
    }
}

/// Receives chunks, writes them in batches (one pack each), and acknowledges each
/// batch once durable. While one batch is being made durable the next is received.
async fn pump_puts(
    store: Arc<Store>,
    who: Identity,
    mut inbound: Streaming<pb::PutChunksRequest>,
    batch_bytes: usize,
    tx: &mpsc::Sender<Result<pb::PutChunksResponse, Status>>,
) -> Result<(), Status> {
    let max_ids = store.config().max_ids_per_call;
    let mut session: Option<String> = None;
    let mut batch: Vec<(ChunkId, Bytes)> = Vec::new();
    let mut batch_size = 0usize;
    let mut pending: Option<JoinHandle<Result<PutOutcome, StoreError>>> = None;
    loop {
        let message = inbound.message().await?;
        let (end, flush) = match message {
            None => (true, true),
            Some(pb::PutChunksRequest {
                session_id,
                chunks,
                flush,
            }) => {
                match &session {
                    None if session_id.is_empty() => {
                        return Err(ApiError::field(
                            "session_id",
                            "is required on the first message",
                        )
                        .into());
                    }
                    None => session = Some(session_id),
                    Some(s) if !session_id.is_empty() && *s != session_id => {
                        return Err(ApiError::field(
                            "session_id",
                            "must not change within one stream",
                        )
                        .into());
                    }
                    Some(_) => {}
                }
                for pb::Chunk { id, data } in chunks {
                    let id = chunk_id("chunks.id", &id)?;
                    batch_size += data.len();
                    batch.push((id, data));
                }
                (false, flush)
            }
        };
        if !batch.is_empty() && (batch_size >= batch_bytes || batch.len() >= max_ids || flush) {
            if let Some(done) = pending.take() {
                acknowledge(done, &who, tx).await?;
            }
            let chunks = std::mem::take(&mut batch);
            batch_size = 0;
            let store = store.clone();
            let account = who.account.clone();
            let sid = session.clone().expect("a chunk implies a session");
            pending = Some(keepsake_store::offload(move || {
                store.put_chunks(&account, &sid, &chunks)
            }));
        }
        if (flush || end)
            && let Some(done) = pending.take()
        {
            acknowledge(done, &who, tx).await?;
        }
        if end {
            return Ok(());
        }
    }
}

async fn acknowledge(
    done: JoinHandle<Result<PutOutcome, StoreError>>,
    who: &Identity,
    tx: &mpsc::Sender<Result<pb::PutChunksResponse, Status>>,
) -> Result<(), Status> {
    let outcome = done
        .await
        .map_err(|e| Status::from(ApiError::Unavailable(format!("store worker failed: {e}"))))?
        .map_err(|e| Status::from(ApiError::Store(e)))?;
    if outcome.already_held > 0 {
        // FindMissing should have kept these off the wire: a client re-sending what it was
        // told is stored (or two devices racing with the same photo) wastes its upload.
        tracing::info!(
            account = %who.account,
            device = who.device.as_deref().unwrap_or(""),
            chunks = outcome.already_held,
            "chunks received that the account already held"
        );
    }
    let ack = pb::PutChunksResponse {
        acknowledged_ids: outcome.acknowledged.iter().map(id_bytes).collect(),
        new_bytes: outcome.new_bytes,
    };
    // A client that hung up still has its chunks stored; FindMissing will say so.
    let _ = tx.send(Ok(ack)).await;
    Ok(())
}
