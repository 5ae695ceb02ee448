//! A typed client for the whole cloud: every call has a deadline, every failure is a
//! [`CallError`] that says whether to retry, uploads keep a bounded number of bytes in
//! flight, and domain types go in and come out.

use crate::client::{
    AccountsApi, BearerAuth, CallError, LibraryApi, StoreClient, accounts_client, library_client,
    pb,
};
use crate::wire::{chunk_id, id_bytes, manifest_edit_to_wire, manifest_to_wire};
use bytes::Bytes;
use keepsake_proto::v1::chunk_store_client::ChunkStoreClient;
use keepsake_proto::v1::delta_client::DeltaClient;
use keepsake_proto::v1::policy_client::PolicyClient;
use keepsake_store::{ChunkId, Manifest, ManifestId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How soon a download whose chunk arrived corrupted (and was reported) is tried again.
const CORRUPT_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Deadlines and bounds for a [`CloudClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline of a unary call.
    pub call_timeout: Duration,
    /// Deadline of a whole upload or download stream.
    pub stream_timeout: Duration,
    /// A stream that makes no progress (no acknowledgement, no chunk) for this long is
    /// abandoned as stalled (TRANSFER_STALLED, transient) and can be restarted at once.
    pub stall_timeout: Duration,
    /// Bytes sent but not yet acknowledged as durable, at most.
    pub max_bytes_in_flight: usize,
    /// About how many bytes one PutChunks message carries.
    pub message_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(30),
            max_bytes_in_flight: 32 << 20,
            message_bytes: 1 << 20,
        }
    }
}

/// One device's (or one person's) connection to the cloud.
#[derive(Clone)]
pub struct CloudClient {
    store: StoreClient,
    library: LibraryApi,
    accounts: AccountsApi,
    delta: DeltaClient<InterceptedService<Channel, BearerAuth>>,
    policy: PolicyClient<InterceptedService<Channel, BearerAuth>>,
    auth: BearerAuth,
    config: ClientConfig,
    throttle: crate::throttle::Throttle,
}

/// The next message of a stream, or TRANSFER_STALLED when none comes within `stall`.
async fn next_or_stall<T>(
    what: &str,
    stall: Duration,
    next: impl Future<Output = Result<Option<T>, tonic::Status>>,
) -> Result<Option<T>, tonic::Status> {
    match tokio::time::timeout(stall, next).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                what,
                stall_ms = stall.as_millis() as u64,
                "transfer stalled; abandoning it"
            );
            Err(crate::to_status(&crate::ApiError::Stalled {
                what: what.to_string(),
                after_ms: stall.as_millis() as u64,
            }))
        }
    }
}

fn deadline_error(what: &str, after: Duration) -> CallError {
    CallError::from(tonic::Status::deadline_exceeded(format!(
        "{what} did not finish within {} ms",
        after.as_millis()
    )))
}

/// Runs `call` with a client-side deadline, so nothing waits past it whatever the network does.
async fn within<T>(
    what: &str,
    after: Duration,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(after, call).await {
        Ok(result) => result.map_err(CallError::from),
        Err(_) => Err(deadline_error(what, after)),
    }
}

impl CloudClient {
    /// A client over `channel` acting with `auth` (a token, or anonymous for sign-in calls).
    pub fn new(channel: Channel, auth: BearerAuth, config: ClientConfig) -> Self {
        Self {
            store: ChunkStoreClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
            library: library_client(channel.clone(), auth.clone()),
            delta: DeltaClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
            policy: PolicyClient::with_interceptor(channel.clone(), auth.clone()),
            accounts: accounts_client(channel, auth.clone()),
            auth,
            config,
            throttle: crate::throttle::Throttle::default(),
        }
    }

    /// The bandwidth limits of this client and every clone of it (its lanes).
    pub fn throttle(&self) -> &crate::throttle::Throttle {
        &self.throttle
    }

    /// The auth every call carries (its token can be replaced through [`BearerAuth::cell`]).
    pub fn auth(&self) -> &BearerAuth {
        &self.auth
    }

    fn unary<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(self.config.call_timeout);
        req
    }

    /// Exchanges an account name and password for an access token.
    pub async fn sign_in(&mut self, account: &str, password: &str) -> Result<String, CallError> {
        let req = self.unary(pb::SignInRequest {
            account: account.into(),
            password: password.into(),
        });
        let reply = within(
            "SignIn",
            self.config.call_timeout,
            self.accounts.sign_in(req),
        )
        .await?;
        Ok(reply.into_inner().access.unwrap_or_default().token)
    }

    /// Reserves quota for `bytes`; returns the reservation (= store session) id.
    pub async fn begin_upload(
        &mut self,
        bytes: u64,
        request_id: &str,
    ) -> Result<String, CallError> {
        let req = self.unary(pb::BeginUploadRequest {
            bytes,
            request_id: request_id.into(),
        });
        let reply = within(
            "BeginUpload",
            self.config.call_timeout,
            self.library.begin_upload(req),
        )
        .await?;
        Ok(reply.into_inner().reservation_id)
    }

    /// Releases a reservation (what it did not use stops counting against the plan).
    pub async fn end_upload(&mut self, reservation_id: &str) -> Result<(), CallError> {
        let req = self.unary(pb::EndUploadRequest {
            reservation_id: reservation_id.into(),
        });
        within(
            "EndUpload",
            self.config.call_timeout,
            self.library.end_upload(req),
        )
        .await?;
        Ok(())
    }

    /// The ids the account does not own yet.
    pub async fn find_missing(
        &mut self,
        session: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, CallError> {
        let req = self.unary(pb::FindMissingRequest {
            session_id: session.into(),
            ids: ids.iter().map(id_bytes).collect(),
        });
        let reply = within(
            "FindMissing",
            self.config.call_timeout,
            self.store.find_missing(req),
        )
        .await?;
        reply
            .into_inner()
            .missing_ids
            .iter()
            .map(|id| chunk_id("missing_ids", id).map_err(|e| tonic::Status::from(e).into()))
            .collect()
    }

    /// Sends chunks with at most `max_bytes_in_flight` unacknowledged; returns the ids the
    /// server acknowledged as durable, in order. On an error, the chunks acknowledged
    /// before it are durable too: `acknowledged` holds them for the caller's journal.
    pub async fn put_chunks(
        &mut self,
        session: &str,
        chunks: Vec<(ChunkId, Bytes)>,
        acknowledged: &mut Vec<ChunkId>,
    ) -> Result<(), CallError> {
        let bound = self
            .config
            .max_bytes_in_flight
            .max(self.config.message_bytes);
        let mut seen = std::collections::HashSet::new();
        let chunks: Vec<(ChunkId, Bytes)> = chunks
            .into_iter()
            .filter(|(id, _)| seen.insert(*id))
            .collect();
        let sizes: HashMap<ChunkId, usize> = chunks.iter().map(|(id, b)| (*id, b.len())).collect();
        // Permits are bytes in flight, returned as acknowledgements arrive.
        let window = Arc::new(Semaphore::new(bound));
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::PutChunksRequest>(2);
        // Under a limit, messages and requests for acknowledgement come every third of the
        // stall watchdog's time: a window's half at 100 kB/s is minutes, and the watchdog
        // would abandon a transfer that is only slow.
        let stall_ms = self.config.stall_timeout.as_millis() as usize;
        let paced = |bytes: usize| match self.throttle.limits().upload {
            Some(rate) => bytes.min(rate as usize * stall_ms / 3_000).max(16 << 10),
            None => bytes,
        };
        let flush_every = paced(bound / 2);
        let producer = {
            let window = window.clone();
            let session = session.to_string();
            let message_bytes = paced(self.config.message_bytes);
            let throttle = self.throttle.clone();
            tokio::spawn(async move {
                let mut batch = Vec::new();
                let (mut size, mut since_flush, mut first) = (0usize, 0usize, true);
                let mut iter = chunks.into_iter().peekable();
                while let Some((id, data)) = iter.next() {
                    let len = data.len();
                    let need = len.min(bound) as u32;
                    let permit = match window.try_acquire_many(need) {
                        Ok(permit) => permit,
                        Err(_) => {
                            // The window is full: whatever was sent without a flush must be
                            // acknowledged before room comes back, so ask for it now (with
                            // anything still unsent) rather than wait for a batch that the
                            // server would never complete.
                            let message = pb::PutChunksRequest {
                                session_id: if first {
                                    session.clone()
                                } else {
                                    String::new()
                                },
                                chunks: std::mem::take(&mut batch),
                                flush: true,
                            };
                            first = false;
                            (size, since_flush) = (0, 0);
                            if tx.send(message).await.is_err() {
                                return;
                            }
                            let Ok(permit) = window.acquire_many(need).await else {
                                return;
                            };
                            permit
                        }
                    };
                    permit.forget();
                    throttle.sending(len).await;
                    size += len;
                    since_flush += len;
                    batch.push(pb::Chunk {
                        id: id_bytes(&id),
                        data,
                    });
                    if size >= message_bytes || iter.peek().is_none() {
                        // Ask for acknowledgements well before the window closes, or the
                        // server would wait for a full batch that can never come.
                        let flush = since_flush >= flush_every;
                        if flush {
                            since_flush = 0;
                        }
                        let message = pb::PutChunksRequest {
                            session_id: if first {
                                session.clone()
                            } else {
                                String::new()
                            },
                            chunks: std::mem::take(&mut batch),
                            flush,
                        };
                        first = false;
                        size = 0;
                        if tx.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            })
        };
        let stall = self.config.stall_timeout;
        let upload = async {
            let mut acks = self
                .store
                .put_chunks(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            while let Some(ack) = next_or_stall("PutChunks", stall, acks.message()).await? {
                for id in ack.acknowledged_ids {
                    let id = chunk_id("acknowledged_ids", &id)?;
                    let len = sizes.get(&id).copied().unwrap_or(0);
                    window.add_permits(len.min(bound));
                    acknowledged.push(id);
                }
            }
            Ok::<(), tonic::Status>(())
        };
        let result = within("PutChunks", self.config.stream_timeout, upload).await;
        producer.abort();
        result
    }

    /// Stores a manifest whose chunks the account owns.
    pub async fn put_manifest(
        &mut self,
        session: &str,
        manifest: &Manifest,
    ) -> Result<ManifestId, CallError> {
        self.store_manifest(pb::PutManifestRequest {
            session_id: session.into(),
            manifest: Some(manifest_to_wire(manifest)),
            edit: None,
        })
        .await
    }

    /// Stores `manifest` sent as splices of `base` (a manifest the account holds, here with
    /// its id): for an edited file, bytes per change instead of per chunk.
    pub async fn put_manifest_edit(
        &mut self,
        session: &str,
        manifest: &Manifest,
        base: (&ManifestId, &Manifest),
    ) -> Result<ManifestId, CallError> {
        self.store_manifest(pb::PutManifestRequest {
            session_id: session.into(),
            manifest: None,
            edit: Some(manifest_edit_to_wire(base.0, base.1, manifest)),
        })
        .await
    }

    async fn store_manifest(
        &mut self,
        request: pb::PutManifestRequest,
    ) -> Result<ManifestId, CallError> {
        let req = self.unary(request);
        let reply = within(
            "PutManifest",
            self.config.call_timeout,
            self.store.put_manifest(req),
        )
        .await?;
        chunk_id("manifest_id", &reply.into_inner().manifest_id)
            .map_err(|e| tonic::Status::from(e).into())
    }

    /// Commits uploaded content; MISSING_CHUNKS comes back with the ids to re-send.
    pub async fn commit_asset(
        &mut self,
        request: pb::CommitAssetRequest,
    ) -> Result<pb::CommitAssetResponse, CallError> {
        let req = self.unary(request);
        let reply = within(
            "CommitAsset",
            self.config.call_timeout,
            self.library.commit_asset(req),
        )
        .await?;
        Ok(reply.into_inner())
    }

    /// Live or trashed assets with these contents, and purge tombstones.
    pub async fn find_assets_by_content(
        &mut self,
        hashes: &[ChunkId],
    ) -> Result<Vec<pb::ContentMatch>, CallError> {
        let req = self.unary(pb::FindAssetsByContentRequest {
            file_hashes: hashes.iter().map(id_bytes).collect(),
        });
        let reply = within(
            "FindAssetsByContent",
            self.config.call_timeout,
            self.library.find_assets_by_content(req),
        )
        .await?;
        Ok(reply.into_inner().matches)
    }

    /// Moves an asset to Recently Deleted everywhere.
    pub async fn trash_asset(&mut self, asset_id: &str) -> Result<(), CallError> {
        let req = self.unary(pb::TrashAssetRequest {
            asset_id: asset_id.into(),
            alone: false,
        });
        within(
            "TrashAsset",
            self.config.call_timeout,
            self.library.trash_asset(req),
        )
        .await?;
        Ok(())
    }

    /// A manifest the account owns, as sent on the wire.
    pub async fn get_manifest(&mut self, id: &ManifestId) -> Result<pb::Manifest, CallError> {
        let req = self.unary(pb::GetManifestRequest {
            manifest_id: id_bytes(id),
        });
        let reply = within(
            "GetManifest",
            self.config.call_timeout,
            self.store.get_manifest(req),
        )
        .await?;
        reply.into_inner().manifest.ok_or_else(|| {
            CallError::from(tonic::Status::internal(
                "GetManifest answered without a manifest",
            ))
        })
    }

    /// One page of the change feed.
    pub async fn list_changes(
        &mut self,
        cursor: u64,
        page_size: u32,
    ) -> Result<pb::ListChangesResponse, CallError> {
        let req = self.unary(pb::ListChangesRequest { cursor, page_size });
        let reply = within(
            "ListChanges",
            self.config.call_timeout,
            self.library.list_changes(req),
        )
        .await?;
        Ok(reply.into_inner())
    }

    /// Fetches chunks, each verified here against its id: the store sends them as read,
    /// unhashed, and a chunk that arrives wrong is reported to the cloud (which checks it
    /// again and, if its copy is bad, flags the photo for a device to send again) before
    /// the call fails with DATA_LOSS.
    pub async fn get_chunks(
        &mut self,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, Bytes)>, CallError> {
        let request = pb::GetChunksRequest {
            ids: ids.iter().map(id_bytes).collect(),
            reader_verifies: true,
        };
        let stall = self.config.stall_timeout;
        let throttle = self.throttle.clone();
        let mut corrupt = None;
        let download = async {
            let mut stream = self.store.get_chunks(request).await?.into_inner();
            let mut out = Vec::with_capacity(ids.len());
            while let Some(msg) = next_or_stall("GetChunks", stall, stream.message()).await? {
                throttle
                    .received(msg.chunks.iter().map(|c| c.data.len()).sum())
                    .await;
                for chunk in msg.chunks {
                    let id = chunk_id("chunks.id", &chunk.id)?;
                    if ChunkId::of(&chunk.data) != id {
                        corrupt = Some(id);
                        return Err(tonic::Status::data_loss(format!(
                            "chunk {id} arrived corrupted"
                        )));
                    }
                    out.push((id, chunk.data));
                }
            }
            Ok(out)
        };
        let fetched = within("GetChunks", self.config.stream_timeout, download).await;
        // The store itself refuses a record whose header went bad: the same damage, found
        // one step earlier, and the same report makes it flag the photo for repair.
        let corrupt = corrupt.or_else(|| {
            let e = fetched.as_ref().err()?;
            (e.code == tonic::Code::DataLoss)
                .then(|| e.metadata().get("chunk_id"))
                .flatten()
                .and_then(|text| ChunkId::from_slice(&hex::decode(text).ok()?).ok())
        });
        match corrupt {
            None => fetched,
            Some(id) => {
                self.report_corrupt(id).await;
                // Nothing for a person to do: the cloud now knows. The next try gets sound
                // bytes (the damage was on the way) or finds the photo flagged, waiting for
                // a device to send it again.
                fetched.map_err(|mut e| {
                    e.retry = crate::client::Retry::Transient {
                        after: Some(CORRUPT_RETRY_AFTER),
                    };
                    e
                })
            }
        }
    }

    /// Tells the cloud a chunk arrived not matching its id. Best effort: unanswered, the
    /// next fetch meets the same bytes and reports them again.
    async fn report_corrupt(&mut self, id: ChunkId) {
        let req = self.unary(pb::ReportCorruptChunksRequest {
            ids: vec![id_bytes(&id)],
        });
        match within(
            "ReportCorruptChunks",
            self.config.call_timeout,
            self.library.report_corrupt_chunks(req),
        )
        .await
        {
            Ok(reply) => {
                let reply = reply.into_inner();
                tracing::warn!(chunk = %id, confirmed = reply.confirmed, assets_damaged = reply.assets_damaged, "reported a chunk that arrived corrupted");
            }
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "could not report a chunk that arrived corrupted");
            }
        }
    }

    /// The rsync signature of a stored version (for building a delta against it).
    pub async fn signature(&mut self, base: &ManifestId) -> Result<Vec<u8>, CallError> {
        let request = pb::SignatureRequest {
            manifest_id: id_bytes(base),
        };
        let fetch = async {
            let mut stream = self.delta.signature(request).await?.into_inner();
            let mut out = Vec::new();
            while let Some(piece) = stream.message().await? {
                out.extend_from_slice(&piece.data);
            }
            Ok(out)
        };
        within("Signature", self.config.stream_timeout, fetch).await
    }

    /// Has the server rebuild a new version from `base` and an rsync delta; the rebuilt
    /// file must hash to `file_hash` or nothing is stored. Returns the new manifest id.
    pub async fn apply_delta(
        &mut self,
        session: &str,
        base: &ManifestId,
        file_hash: &ChunkId,
        delta: Bytes,
    ) -> Result<ManifestId, CallError> {
        // An empty delta (an identical file) still needs its one header message.
        let parts: Vec<&[u8]> = if delta.is_empty() {
            vec![&[]]
        } else {
            delta.chunks(self.config.message_bytes.max(1)).collect()
        };
        let pieces: Vec<pb::ApplyDeltaRequest> = parts
            .into_iter()
            .enumerate()
            .map(|(i, piece)| pb::ApplyDeltaRequest {
                session_id: if i == 0 {
                    session.into()
                } else {
                    String::new()
                },
                base_manifest_id: if i == 0 { id_bytes(base) } else { Bytes::new() },
                declared_file_hash: if i == 0 {
                    id_bytes(file_hash)
                } else {
                    Bytes::new()
                },
                delta: if piece.is_empty() {
                    Bytes::new()
                } else {
                    delta.slice_ref(piece)
                },
            })
            .collect();
        let reply = within(
            "ApplyDelta",
            self.config.stream_timeout,
            self.delta.apply_delta(tokio_stream::iter(pieces)),
        )
        .await?;
        chunk_id("manifest_id", &reply.into_inner().manifest_id)
            .map_err(|e| tonic::Status::from(e).into())
    }

    /// The signature of a stretch (whole chunks) of a version this account owns. With
    /// `wanted` (a session and the chunks a delta would store), `None` when the account
    /// already holds them all — pinned to the session, as FindMissing pins them.
    pub async fn span_signature(
        &mut self,
        base: &ManifestId,
        (offset, length): (u64, u64),
        wanted: Option<(&str, &[ChunkId])>,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let (session_id, wanted_ids) = match wanted {
            Some((session, ids)) => (session.to_string(), ids.iter().map(id_bytes).collect()),
            None => (String::new(), Vec::new()),
        };
        let req = self.unary(pb::SpanSignatureRequest {
            base_manifest_id: id_bytes(base),
            offset,
            length,
            session_id,
            wanted_ids,
        });
        let reply = within(
            "SpanSignature",
            self.config.call_timeout,
            self.delta.span_signature(req),
        )
        .await?;
        let pb::SpanSignatureResponse {
            signature,
            all_held,
        } = reply.into_inner();
        Ok((!all_held).then(|| signature.to_vec()))
    }

    /// Stores the chunks `delta` rebuilds from a stretch of `base`; returns the ids the
    /// server acknowledged as durable.
    pub async fn put_chunks_by_delta(
        &mut self,
        session: &str,
        base: &ManifestId,
        (offset, length): (u64, u64),
        chunks: &[(ChunkId, u32)],
        delta: Vec<u8>,
    ) -> Result<Vec<ChunkId>, CallError> {
        let req = self.unary(pb::PutChunksByDeltaRequest {
            session_id: session.into(),
            base_manifest_id: id_bytes(base),
            offset,
            length,
            chunks: chunks
                .iter()
                .map(|(id, length)| pb::SpanChunk {
                    id: id_bytes(id),
                    length: *length,
                })
                .collect(),
            delta: delta.into(),
        });
        let reply = within(
            "PutChunksByDelta",
            self.config.call_timeout,
            self.delta.put_chunks_by_delta(req),
        )
        .await?;
        reply
            .into_inner()
            .acknowledged_ids
            .iter()
            .map(|id| chunk_id("acknowledged_ids", id).map_err(|e| tonic::Status::from(e).into()))
            .collect()
    }

    /// The policy's decision for a snapshot of the device's conditions.
    pub async fn evaluate(&mut self, snapshot: pb::Snapshot) -> Result<pb::Decision, CallError> {
        let req = self.unary(pb::EvaluateRequest {
            snapshot: Some(snapshot),
        });
        let reply = within(
            "Evaluate",
            self.config.call_timeout,
            self.policy.evaluate(req),
        )
        .await?;
        Ok(reply.into_inner().decision.unwrap_or_default())
    }

    /// One Library call under the client's deadline, its status typed.
    pub async fn library_call<T>(
        &mut self,
        what: &str,
        call: impl AsyncFnOnce(&mut LibraryApi) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, CallError> {
        let after = self.config.call_timeout;
        Ok(within(what, after, call(&mut self.library))
            .await?
            .into_inner())
    }

    /// The raw generated clients, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> (&mut StoreClient, &mut LibraryApi, &mut AccountsApi) {
        (&mut self.store, &mut self.library, &mut self.accounts)
    }
}
