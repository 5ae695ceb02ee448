//! The chunk store in another process: the library's [`ChunkStore`] port and the Delta
//! service's [`DeltaStore`] over the store's own gRPC API, acting for each account with a
//! [`ServiceKey`] credential rather than anyone's token.
//!
//! The ports are synchronous (the library calls them from blocking threads), so the calls
//! run on a small runtime of their own. Every call has a deadline; a store that cannot be
//! reached is `StoreError::Backend(Unavailable)`, which devices hear as a transient
//! UNAVAILABLE and wait out; the store's own refusals come back as the same `StoreError`
//! the embedded store would have returned.

use crate::auth::{SERVICE_HEADER, ServiceKey};
use crate::client::{CLIENT_VERSION_HEADER, CallError};
use crate::delta_service::DeltaStore;
use crate::wire::{WireManifest, chunk_id, id_bytes, manifest_to_wire, splices_to_wire};
use bytes::Bytes;
use keepsake_core::OwnRuntime;
use keepsake_library::{ChunkStore, copy_file_with, store_file_with};
use keepsake_proto::v1 as pb;
use keepsake_proto::v1::chunk_store_client::ChunkStoreClient;
use keepsake_store::{
    BackendError, ChunkId, Clock, GcReport, Manifest, ManifestId, PutOutcome, Recheck, ScrubReport,
    Session, Splice, StoreError,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Deadlines of a [`RemoteStore`].
#[derive(Debug, Clone)]
pub struct RemoteStoreConfig {
    /// A unary call, or one batch of a stream.
    pub call_timeout: Duration,
    /// A scrub, which reads every stored byte.
    pub scrub_timeout: Duration,
}

impl Default for RemoteStoreConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(30),
            scrub_timeout: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where the store is and how to reach it.
#[derive(Debug, Clone)]
pub enum StoreAddress {
    /// `http://HOST:PORT`: plaintext (this machine, or a network the operator vouches for).
    Plain(String),
    /// `https://HOST:PORT` whose certificate has this fingerprint.
    Pinned(String, String),
}

impl StoreAddress {
    fn url(&self) -> &str {
        match self {
            Self::Plain(url) | Self::Pinned(url, _) => url,
        }
    }
}

/// Bytes of chunks per PutChunks message (the store's message limit is 16 MiB).
const MESSAGE_BYTES: usize = 4 << 20;

/// A store reached over gRPC.
pub struct RemoteStore {
    runtime: OwnRuntime,
    address: StoreAddress,
    channel: Arc<tokio::sync::Mutex<Option<Channel>>>,
    key: ServiceKey,
    clock: Arc<dyn Clock>,
    config: RemoteStoreConfig,
    max_ids: usize,
}

impl RemoteStore {
    /// A store at `address`, called with credentials made from `key` at `clock`'s time.
    /// Connects on first use (and again after a failed connect), so a library may start
    /// before its store.
    pub fn new(
        address: StoreAddress,
        key: ServiceKey,
        clock: Arc<dyn Clock>,
        config: RemoteStoreConfig,
    ) -> std::io::Result<Self> {
        Ok(Self {
            runtime: OwnRuntime::new("keepsake-store-client", 2)?,
            address,
            channel: Arc::default(),
            key,
            clock,
            config,
            max_ids: keepsake_store::StoreConfig::default().max_ids_per_call,
        })
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> StoreError {
        StoreError::Backend(BackendError::Unavailable(format!(
            "the store at {} cannot be reached: {why}",
            self.address.url()
        )))
    }

    /// `message` as a request acting for `account`.
    fn request<T>(&self, account: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let credential = self.key.credential(account, self.clock.now_ms());
        let metadata = request.metadata_mut();
        if let Ok(value) = credential.parse() {
            metadata.insert(SERVICE_HEADER, value);
        }
        metadata.insert(
            CLIENT_VERSION_HEADER,
            tonic::metadata::MetadataValue::from_static(env!("CARGO_PKG_VERSION")),
        );
        request
    }

    /// Runs `call` on this client's runtime within `timeout`; an unreachable store, a cut
    /// connection or a late answer is `Unavailable`.
    fn run<T, F, Fut>(
        &self,
        what: &'static str,
        timeout: Duration,
        call: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(ChunkStoreClient<Channel>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Refusal>> + Send + 'static,
    {
        let (slot, address, connect_within) = (
            self.channel.clone(),
            self.address.clone(),
            self.config.call_timeout,
        );
        let answer = self
            .runtime
            .run(async move {
                let client = client(slot, address, connect_within).await?;
                tokio::time::timeout(timeout, call(client))
                    .await
                    .map_err(|_| {
                        Refusal::Unreachable(format!(
                            "{what} did not answer within {} s",
                            timeout.as_secs()
                        ))
                    })?
            })
            .ok_or_else(|| self.unreachable("the client is shutting down"))?;
        match answer {
            Ok(value) => Ok(value),
            Err(Refusal::Status(status)) => Err(self.error(CallError::from(status))),
            Err(Refusal::Unreachable(why)) => Err(self.unreachable(why)),
        }
    }

    /// The store's refusal as the store itself would have returned it.
    fn error(&self, e: CallError) -> StoreError {
        let meta = |key: &str| e.metadata().get(key).cloned().unwrap_or_default();
        let id_in = |key: &str| {
            hex::decode(meta(key))
                .ok()
                .and_then(|b| ChunkId::from_slice(&b).ok())
                .unwrap_or(ChunkId([0; 32]))
        };
        let number = |key: &str| meta(key).parse::<u64>().unwrap_or_default();
        let message = e.message().to_string();
        match e.reason() {
            "MISSING_CHUNKS" => StoreError::MissingChunks(e.missing_chunks().to_vec()),
            "SESSION_NOT_FOUND" => StoreError::SessionNotFound(meta("session_id")),
            "SESSION_EXPIRED" => StoreError::SessionExpired(meta("session_id")),
            "REQUEST_ID_REUSED" => StoreError::RequestIdReused(message),
            "MALFORMED_MANIFEST" => StoreError::MalformedManifest(message),
            "CHUNK_CORRUPT" => StoreError::Corrupt(id_in("chunk_id")),
            "STORAGE_FULL" => StoreError::StorageFull,
            "HASH_MISMATCH" => StoreError::HashMismatch {
                claimed: id_in("claimed_id"),
                actual: id_in("actual_id"),
            },
            "CHUNK_TOO_LARGE" => StoreError::ChunkTooLarge {
                len: 0,
                limit: number("limit_bytes"),
            },
            "TOO_MANY_IDS" => StoreError::TooManyIds {
                count: 0,
                limit: number("limit") as usize,
            },
            "EMPTY_CHUNK" => StoreError::EmptyChunk,
            "NOT_FOUND" => StoreError::NotFound {
                kind: if meta("kind") == "chunk" {
                    "chunk"
                } else {
                    "manifest"
                },
                id: id_in("id"),
            },
            "UNAUTHENTICATED" | "PERMISSION_DENIED" => {
                StoreError::Backend(BackendError::Denied(format!(
                    "the store at {} refused this library: {message}",
                    self.address.url()
                )))
            }
            _ if e.is_transient() => self.unreachable(e),
            _ => StoreError::InvalidArgument(message),
        }
    }

    /// Stores chunks in `session_id` for `account`, in messages the store accepts; the
    /// outcome of every batch the store made of them.
    fn put_chunks_remote(
        &self,
        account: &str,
        session_id: &str,
        chunks: &[(ChunkId, Bytes)],
    ) -> Result<PutOutcome, StoreError> {
        let mut messages = Vec::new();
        let mut current: Vec<pb::Chunk> = Vec::new();
        let mut size = 0usize;
        for (id, data) in chunks {
            if size + data.len() > MESSAGE_BYTES && !current.is_empty() {
                messages.push(std::mem::take(&mut current));
                size = 0;
            }
            size += data.len();
            current.push(pb::Chunk {
                id: id_bytes(id),
                data: data.clone(),
            });
        }
        messages.push(current);
        let last = messages.len() - 1;
        let requests: Vec<pb::PutChunksRequest> = messages
            .into_iter()
            .enumerate()
            .map(|(i, chunks)| pb::PutChunksRequest {
                session_id: session_id.to_string(),
                chunks,
                flush: i == last,
            })
            .collect();
        let request = self.request(account, tokio_stream::iter(requests));
        let timeout = self.config.call_timeout * (1 + (chunks.len() / 64) as u32).min(20);
        self.run("PutChunks", timeout, |mut client| async move {
            let mut acks = client.put_chunks(request).await?.into_inner();
            let mut outcome = PutOutcome::default();
            while let Some(ack) = acks.message().await? {
                let pb::PutChunksResponse {
                    acknowledged_ids,
                    new_bytes,
                } = ack;
                for id in acknowledged_ids {
                    outcome.acknowledged.push(
                        chunk_id("acknowledged_ids", &id).map_err(|e| Refusal::Status(e.into()))?,
                    );
                }
                outcome.new_bytes += new_bytes;
            }
            Ok(outcome)
        })
    }

    /// Chunks of `account`, verified by the store, in the order of `ids`.
    fn get_chunks_remote(
        &self,
        account: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, Bytes)>, StoreError> {
        let request = self.request(
            account,
            pb::GetChunksRequest {
                ids: ids.iter().map(id_bytes).collect(),
                reader_verifies: false,
            },
        );
        let wanted = ids.len();
        self.run(
            "GetChunks",
            self.config.call_timeout,
            move |mut client| async move {
                let mut stream = client.get_chunks(request).await?.into_inner();
                let mut chunks = Vec::with_capacity(wanted);
                while let Some(message) = stream.message().await? {
                    for pb::Chunk { id, data } in message.chunks {
                        let id =
                            chunk_id("chunks.id", &id).map_err(|e| Refusal::Status(e.into()))?;
                        chunks.push((id, data));
                    }
                }
                Ok(chunks)
            },
        )
    }

    fn manifest_remote(&self, account: &str, id: &ManifestId) -> Result<Manifest, StoreError> {
        let request = self.request(
            account,
            pb::GetManifestRequest {
                manifest_id: id_bytes(id),
            },
        );
        let wire = self.run(
            "GetManifest",
            self.config.call_timeout,
            |mut client| async move { Ok(client.get_manifest(request).await?.into_inner()) },
        )?;
        let pb::GetManifestResponse { manifest } = wire;
        let manifest = manifest.ok_or_else(|| {
            StoreError::InvalidArgument("the store answered without the manifest".into())
        })?;
        let WireManifest(manifest) = WireManifest::try_from(manifest)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        // The store is trusted to keep bytes, not to name them: the id is the hash.
        if manifest.id() != *id {
            return Err(StoreError::Corrupt(*id));
        }
        Ok(manifest)
    }

    fn put_manifest_request(
        &self,
        account: &str,
        message: pb::PutManifestRequest,
    ) -> Result<ManifestId, StoreError> {
        let request = self.request(account, message);
        let answer = self.run(
            "PutManifest",
            self.config.call_timeout,
            |mut client| async move { Ok(client.put_manifest(request).await?.into_inner()) },
        )?;
        let pb::PutManifestResponse { manifest_id } = answer;
        chunk_id("manifest_id", &manifest_id)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))
    }
}

/// The client over the channel held in `slot`, connecting first if there is none.
async fn client(
    slot: Arc<tokio::sync::Mutex<Option<Channel>>>,
    address: StoreAddress,
    within: Duration,
) -> Result<ChunkStoreClient<Channel>, Refusal> {
    let mut held = slot.lock().await;
    if let Some(channel) = held.as_ref() {
        return Ok(wrap(channel.clone()));
    }
    let connect = async {
        match &address {
            StoreAddress::Plain(url) => crate::client::connect_plaintext_anywhere(url)
                .await
                .map_err(|e| e.to_string()),
            StoreAddress::Pinned(url, pin) => crate::tls::connect_pinned(url, pin)
                .await
                .map_err(|e| e.to_string()),
        }
    };
    let channel = tokio::time::timeout(within, connect)
        .await
        .map_err(|_| Refusal::Unreachable("connecting timed out".into()))?
        .map_err(Refusal::Unreachable)?;
    *held = Some(channel.clone());
    Ok(wrap(channel))
}

fn wrap(channel: Channel) -> ChunkStoreClient<Channel> {
    ChunkStoreClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// Why a remote call failed: the store's status, or no store to ask.
enum Refusal {
    Status(tonic::Status),
    Unreachable(String),
}

impl From<tonic::Status> for Refusal {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

fn damaged_from_wire(
    damaged: Vec<pb::DamagedManifest>,
) -> Result<Vec<(String, ManifestId)>, StoreError> {
    damaged
        .into_iter()
        .map(
            |pb::DamagedManifest {
                 account,
                 manifest_id,
             }| {
                chunk_id("damaged.manifest_id", &manifest_id)
                    .map(|id| (account, id))
                    .map_err(|e| StoreError::InvalidArgument(e.to_string()))
            },
        )
        .collect()
}

fn ids_from_wire(field: &'static str, ids: &[Bytes]) -> Result<Vec<ChunkId>, StoreError> {
    ids.iter()
        .map(|id| chunk_id(field, id).map_err(|e| StoreError::InvalidArgument(e.to_string())))
        .collect()
}

impl ChunkStore for RemoteStore {
    fn used_bytes(&self, account: &str) -> Result<u64, StoreError> {
        let request = self.request(account, pb::GetUsageRequest {});
        let usage = self.run("GetUsage", self.config.call_timeout, |mut c| async move {
            Ok(c.get_usage(request).await?.into_inner())
        })?;
        Ok(usage.bytes_owned)
    }

    fn open_session(
        &self,
        account: &str,
        bytes: u64,
        ttl_ms: i64,
        request_id: Option<&str>,
    ) -> Result<Session, StoreError> {
        let request = self.request(
            account,
            pb::BeginSessionRequest {
                expected_bytes: bytes,
                ttl_seconds: ttl_seconds(ttl_ms),
                request_id: request_id.unwrap_or_default().to_string(),
            },
        );
        let answer = self.run(
            "BeginSession",
            self.config.call_timeout,
            |mut c| async move { Ok(c.begin_session(request).await?.into_inner()) },
        )?;
        let pb::BeginSessionResponse {
            session_id,
            expires_at_unix_ms,
        } = answer;
        Ok(Session {
            id: session_id,
            expires_at: expires_at_unix_ms,
        })
    }

    fn renew_session(
        &self,
        account: &str,
        session_id: &str,
        ttl_ms: i64,
    ) -> Result<Session, StoreError> {
        let request = self.request(
            account,
            pb::RenewSessionRequest {
                session_id: session_id.to_string(),
                ttl_seconds: ttl_seconds(ttl_ms),
            },
        );
        let answer = self.run(
            "RenewSession",
            self.config.call_timeout,
            |mut c| async move { Ok(c.renew_session(request).await?.into_inner()) },
        )?;
        Ok(Session {
            id: session_id.to_string(),
            expires_at: answer.expires_at_unix_ms,
        })
    }

    fn end_session(&self, account: &str, session_id: &str) -> Result<(), StoreError> {
        let request = self.request(
            account,
            pb::EndSessionRequest {
                session_id: session_id.to_string(),
            },
        );
        self.run("EndSession", self.config.call_timeout, |mut c| async move {
            c.end_session(request).await?;
            Ok(())
        })
    }

    fn manifest(&self, account: &str, id: &ManifestId) -> Result<Manifest, StoreError> {
        self.manifest_remote(account, id)
    }

    fn put_manifest(
        &self,
        account: &str,
        session_id: &str,
        manifest: &Manifest,
    ) -> Result<ManifestId, StoreError> {
        self.put_manifest_request(
            account,
            pb::PutManifestRequest {
                session_id: session_id.to_string(),
                manifest: Some(manifest_to_wire(manifest)),
                edit: None,
            },
        )
    }

    fn put_manifest_edit(
        &self,
        account: &str,
        session_id: &str,
        base: &ManifestId,
        splices: &[Splice],
        file_hash: ChunkId,
    ) -> Result<ManifestId, StoreError> {
        // The splices travel as they came: the store rebuilds and checks the result.
        let edit = splices_to_wire(base, splices, &file_hash);
        self.put_manifest_request(
            account,
            pb::PutManifestRequest {
                session_id: session_id.to_string(),
                manifest: None,
                edit: Some(edit),
            },
        )
    }

    fn reference(&self, account: &str, id: &ManifestId, holder: &str) -> Result<(), StoreError> {
        let request = self.request(
            account,
            pb::ReferenceRequest {
                manifest_id: id_bytes(id),
                holder: holder.to_string(),
            },
        );
        self.run("Reference", self.config.call_timeout, |mut c| async move {
            c.reference(request).await?;
            Ok(())
        })
    }

    fn release(&self, account: &str, id: &ManifestId, holder: &str) -> Result<(), StoreError> {
        let request = self.request(
            account,
            pb::ReleaseRequest {
                manifest_id: id_bytes(id),
                holder: holder.to_string(),
            },
        );
        self.run("Release", self.config.call_timeout, |mut c| async move {
            c.release(request).await?;
            Ok(())
        })
    }

    fn copy_file(
        &self,
        account: &str,
        id: &ManifestId,
        max_len: u64,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<u64> {
        let manifest = self
            .manifest_remote(account, id)
            .map_err(std::io::Error::other)?;
        copy_file_with(id, &manifest, max_len, out, |ids| {
            let mut unique = ids.to_vec();
            unique.sort_unstable();
            unique.dedup();
            self.get_chunks_remote(account, &unique)
        })
    }

    fn scrub(&self) -> Result<ScrubReport, StoreError> {
        // Any account will do: a scrub is store-wide, and the credential is the library's.
        let request = self.request("keepsake-library", pb::ScrubRequest {});
        let answer = self.run("Scrub", self.config.scrub_timeout, |mut c| async move {
            Ok(c.scrub(request).await?.into_inner())
        })?;
        let pb::ScrubResponse {
            packs_verified,
            chunks_verified,
            bytes_verified,
            corrupt_chunk_ids,
            corrupt_packs,
            finished_at_unix_ms,
            damaged_manifests: _,
            damaged,
        } = answer;
        Ok(ScrubReport {
            packs_verified,
            chunks_verified,
            bytes_verified,
            corrupt_chunks: ids_from_wire("corrupt_chunk_ids", &corrupt_chunk_ids)?,
            corrupt_packs,
            damaged: damaged_from_wire(damaged)?,
            finished_at: finished_at_unix_ms,
        })
    }

    fn collect_garbage(&self) -> Result<GcReport, StoreError> {
        let request = self.request("keepsake-library", pb::CollectGarbageRequest {});
        let answer = self.run(
            "CollectGarbage",
            self.config.scrub_timeout,
            |mut c| async move { Ok(c.collect_garbage(request).await?.into_inner()) },
        )?;
        let pb::CollectGarbageResponse {
            chunks_collected,
            bytes_collected,
            packs_repacked,
            packs_deleted,
            sessions_expired,
        } = answer;
        Ok(GcReport {
            chunks_collected,
            bytes_collected,
            packs_repacked,
            packs_deleted,
            sessions_expired,
        })
    }

    fn recheck(&self, account: &str, ids: &[ChunkId]) -> Result<Recheck, StoreError> {
        let request = self.request(
            account,
            pb::RecheckRequest {
                ids: ids.iter().map(id_bytes).collect(),
            },
        );
        let answer = self.run("Recheck", self.config.call_timeout, |mut c| async move {
            Ok(c.recheck(request).await?.into_inner())
        })?;
        let pb::RecheckResponse {
            corrupt_ids,
            damaged,
        } = answer;
        Ok(Recheck {
            corrupt: ids_from_wire("corrupt_ids", &corrupt_ids)?,
            damaged: damaged_from_wire(damaged)?,
        })
    }

    fn store_file(
        &self,
        account: &str,
        bytes: &[u8],
        holder: &str,
    ) -> Result<ManifestId, StoreError> {
        store_file_with(self, account, bytes, holder, |session, pieces| {
            self.put_chunks_remote(account, session, pieces).map(drop)
        })
    }
}

impl DeltaStore for RemoteStore {
    fn get_manifest(&self, account: &str, id: &ManifestId) -> Result<Manifest, StoreError> {
        self.manifest_remote(account, id)
    }

    fn get_chunk(&self, account: &str, id: &ChunkId) -> Result<Bytes, StoreError> {
        self.get_chunks_remote(account, std::slice::from_ref(id))?
            .into_iter()
            .find(|(got, _)| got == id)
            .map(|(_, data)| data)
            .ok_or(StoreError::NotFound {
                kind: "chunk",
                id: *id,
            })
    }

    fn find_missing(
        &self,
        account: &str,
        session_id: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, StoreError> {
        let request = self.request(
            account,
            pb::FindMissingRequest {
                session_id: session_id.to_string(),
                ids: ids.iter().map(id_bytes).collect(),
            },
        );
        let answer = self.run(
            "FindMissing",
            self.config.call_timeout,
            |mut c| async move { Ok(c.find_missing(request).await?.into_inner()) },
        )?;
        ids_from_wire("missing_ids", &answer.missing_ids)
    }

    fn put_chunks(
        &self,
        account: &str,
        session_id: &str,
        chunks: &[(ChunkId, Bytes)],
    ) -> Result<PutOutcome, StoreError> {
        self.put_chunks_remote(account, session_id, chunks)
    }

    fn put_manifest(
        &self,
        account: &str,
        session_id: &str,
        manifest: &Manifest,
    ) -> Result<ManifestId, StoreError> {
        ChunkStore::put_manifest(self, account, session_id, manifest)
    }

    fn max_ids_per_call(&self) -> usize {
        self.max_ids
    }
}

fn ttl_seconds(ttl_ms: i64) -> u32 {
    // Zero would mean "the store's default"; a lease is never shorter than a second.
    u32::try_from((ttl_ms.max(1000) + 999) / 1000).unwrap_or(u32::MAX)
}
