//! Faults between a device and its calls that a network of honest routers still makes:
//! a reply lost after the server acted, a call delivered twice, a call delivered late —
//! after newer ones.

use crate::SimRng;
use bytes::Bytes;
use keepsake_device::{
    Cloud, CloudError, CommitReply, ContentLookup, Edit, FeedPage, Hlc, LedgerReport, NewAsset,
};
use keepsake_store::{ChunkId, Manifest, ManifestId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How many faults of each kind were injected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Replies dropped after the server had acted on the call.
    pub lost_replies: u64,
    /// Calls delivered twice in a row.
    pub duplicated: u64,
    /// Calls delivered again later, after newer calls.
    pub late: u64,
}

/// A call kept back to be delivered again later.
enum Late {
    Edits(Vec<(Edit, Hlc)>),
    /// A commit, its manifest, and the base the manifest edits.
    Commit(Box<LateCommit>),
}

/// A commit kept back, with the manifest it carries and the base that manifest edits.
struct LateCommit {
    asset: NewAsset,
    manifest: Manifest,
    base: Option<(ManifestId, Manifest)>,
}

/// A device's cloud with faults injected by a seeded generator.
pub struct Faulty<C> {
    inner: C,
    rng: Arc<Mutex<SimRng>>,
    counts: Arc<Mutex<FaultCounts>>,
    enabled: Arc<AtomicBool>,
    late: Vec<Late>,
}

impl<C: Cloud> Faulty<C> {
    /// Wraps `inner`; while `enabled` is false every call passes through untouched.
    pub fn new(
        inner: C,
        rng: Arc<Mutex<SimRng>>,
        counts: Arc<Mutex<FaultCounts>>,
        enabled: Arc<AtomicBool>,
    ) -> Self {
        Self {
            inner,
            rng,
            counts,
            enabled,
            late: Vec::new(),
        }
    }

    fn roll(&self, percent: u64) -> bool {
        self.enabled.load(Ordering::Relaxed) && self.rng.lock().unwrap().chance(percent)
    }

    fn lost_reply<T>(&self, result: Result<T, CloudError>) -> Result<T, CloudError> {
        if result.is_ok() && self.roll(6) {
            self.counts.lock().unwrap().lost_replies += 1;
            return Err(CloudError {
                transient: true,
                reason: "UNAVAILABLE".into(),
                message: "the connection broke before the reply arrived (simulated)".into(),
            });
        }
        result
    }

    /// Delivers some of the calls kept back: they arrive after newer calls did.
    async fn deliver_late(&mut self) {
        // Once the faults heal, whatever was still in flight arrives.
        let healed = !self.enabled.load(Ordering::Relaxed);
        if self.late.is_empty() || !(healed || self.roll(30)) {
            return;
        }
        for call in std::mem::take(&mut self.late) {
            self.counts.lock().unwrap().late += 1;
            // Whatever a stale copy gets back is not the device's business: it already
            // had its answer for this call.
            match call {
                Late::Edits(edits) => {
                    let _ = self.inner.edits(&edits).await;
                }
                Late::Commit(commit) => {
                    let LateCommit {
                        asset,
                        manifest,
                        base,
                    } = *commit;
                    let base = base.as_ref().map(|(id, m)| (id, m));
                    let _ = self.inner.commit(asset, &manifest, base).await;
                }
            }
        }
    }
}

impl<C: Cloud> Cloud for Faulty<C> {
    fn lane(&self) -> Option<Self> {
        // The same generator and switch: a lane's calls meet the same faults, in an order
        // the simulation's single thread makes the same on every run of a seed.
        Some(Self::new(
            self.inner.lane()?,
            self.rng.clone(),
            self.counts.clone(),
            self.enabled.clone(),
        ))
    }

    async fn lookups(&mut self, file_hashes: &[ChunkId]) -> Result<Vec<ContentLookup>, CloudError> {
        self.deliver_late().await;
        self.inner.lookups(file_hashes).await
    }

    async fn begin_upload(&mut self, bytes: u64, request_id: &str) -> Result<String, CloudError> {
        let result = self.inner.begin_upload(bytes, request_id).await;
        self.lost_reply(result)
    }

    async fn report_state(&mut self, report: &LedgerReport) -> Result<(), CloudError> {
        let result = self.inner.report_state(report).await;
        self.lost_reply(result)
    }

    async fn end_upload(&mut self, reservation: &str) -> Result<(), CloudError> {
        let result = self.inner.end_upload(reservation).await;
        self.lost_reply(result)
    }

    async fn find_missing(
        &mut self,
        session: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, CloudError> {
        self.inner.find_missing(session, ids).await
    }

    async fn put_chunks(
        &mut self,
        session: &str,
        chunks: Vec<(ChunkId, Bytes)>,
        acknowledged: &mut Vec<ChunkId>,
    ) -> Result<(), CloudError> {
        let before = acknowledged.len();
        let result = self.inner.put_chunks(session, chunks, acknowledged).await;
        let result = self.lost_reply(result);
        if result.is_err() && before < acknowledged.len() && self.roll(50) {
            // The acknowledgements of the last batch were lost with the connection.
            acknowledged.truncate(before);
        }
        result
    }

    async fn commit(
        &mut self,
        asset: NewAsset,
        manifest: &Manifest,
        base: Option<(&ManifestId, &Manifest)>,
    ) -> Result<CommitReply, CloudError> {
        self.deliver_late().await;
        if self.roll(4) {
            self.counts.lock().unwrap().duplicated += 1;
            let _ = self.inner.commit(asset.clone(), manifest, base).await;
        }
        if self.roll(4) {
            self.late.push(Late::Commit(Box::new(LateCommit {
                asset: asset.clone(),
                manifest: manifest.clone(),
                base: base.map(|(id, m)| (*id, m.clone())),
            })));
        }
        let result = self.inner.commit(asset, manifest, base).await;
        self.lost_reply(result)
    }

    async fn changes(&mut self, cursor: u64) -> Result<FeedPage, CloudError> {
        self.inner.changes(cursor).await
    }

    async fn manifest(&mut self, id: &ManifestId) -> Result<Manifest, CloudError> {
        self.inner.manifest(id).await
    }

    async fn chunks(&mut self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Bytes)>, CloudError> {
        self.inner.chunks(ids).await
    }

    async fn edits(
        &mut self,
        edits: &[(Edit, Hlc)],
    ) -> Result<Vec<Result<(), CloudError>>, CloudError> {
        self.deliver_late().await;
        if self.roll(4) {
            self.counts.lock().unwrap().duplicated += 1;
            let _ = self.inner.edits(edits).await;
        }
        if self.roll(5) {
            self.late.push(Late::Edits(edits.to_vec()));
        }
        let result = self.inner.edits(edits).await;
        self.lost_reply(result)
    }

    async fn span_signature(
        &mut self,
        base: &ManifestId,
        stretch: (u64, u64),
        wanted: (&str, &[ChunkId]),
    ) -> Result<Option<Vec<u8>>, CloudError> {
        // It pins what is held: a reply lost after that is a case of its own.
        let result = self.inner.span_signature(base, stretch, wanted).await;
        self.lost_reply(result)
    }

    async fn put_chunks_by_delta(
        &mut self,
        session: &str,
        base: &ManifestId,
        span: (u64, u64),
        chunks: &[(ChunkId, u32)],
        delta: Vec<u8>,
    ) -> Result<Vec<ChunkId>, CloudError> {
        if self.roll(4) {
            // Delivered twice: the rebuilt chunks are stored once.
            self.counts.lock().unwrap().duplicated += 1;
            let _ = self
                .inner
                .put_chunks_by_delta(session, base, span, chunks, delta.clone())
                .await;
        }
        let result = self
            .inner
            .put_chunks_by_delta(session, base, span, chunks, delta)
            .await;
        self.lost_reply(result)
    }
}
