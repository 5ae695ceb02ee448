//! A device killed between what the cloud made durable and what its journal recorded
//! loses nothing and duplicates nothing when it starts again; files uploading side by side
//! on lanes send nothing twice.
//!
//! Run with `cargo test -p keepsake-device --features failpoints --test crash_points`
//! (`cargo xtask ci` does). A fail point panics where the process would have died; the
//! device is then reopened from its folder and journal, as a restarted agent would.

use bytes::Bytes;
use futures::FutureExt;
use keepsake_device::{
    Cloud, CloudError, CommitReply, ContentLookup, Device, DeviceConfig, Edit, FeedPage, Hlc,
    NewAsset, RemoteAsset, RemoteState,
};
use keepsake_library::{
    AssetKind, AssetState, Change, ChunkStore, CommitAsset, KdfCost, Library, LibraryConfig,
    LibraryEdit, ManifestUpload,
};
use keepsake_store::{ChunkId, Manifest, ManifestId, ManualClock, OsEntropy, Store, StoreConfig};
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const T0: i64 = 1_700_000_000_000;

/// The cloud in this process, called directly: the device's port without a network.
struct InProcess {
    cloud: Arc<keepsake_library::Cloud>,
    store: Arc<Store>,
    device: String,
    /// Manifests that arrived as splices of an earlier version.
    manifest_edits: Arc<AtomicUsize>,
    /// Calls asking what the cloud knows of contents (one hash or many).
    content_questions: Arc<AtomicUsize>,
    /// Calls sending edits (one edit or many).
    edit_calls: Arc<AtomicUsize>,
    /// Chunk streams open now, and the most ever open at once.
    streams: Arc<(AtomicUsize, AtomicUsize)>,
    /// The most chunk bytes one call ever sent, and one call ever fetched.
    largest_calls: Arc<(AtomicUsize, AtomicUsize)>,
    /// The next FindMissing answers "nothing missing", as if GC then collected them.
    hide_missing: Arc<AtomicBool>,
    /// The devices' clock, and whether each content question takes a minute and more.
    clock: Arc<ManualClock>,
    slow_questions: Arc<AtomicBool>,
}

fn refused(e: impl std::fmt::Display) -> CloudError {
    CloudError {
        transient: false,
        reason: "REFUSED".into(),
        message: e.to_string(),
    }
}

/// The library's refusal with its own reason (ASSET_NOT_LIVE, NOT_FOUND…), as the gRPC
/// boundary would answer it.
fn answered(e: keepsake_library::LibraryError) -> CloudError {
    CloudError {
        transient: false,
        reason: e.reason().into(),
        message: e.to_string(),
    }
}

fn remote(a: keepsake_library::Asset) -> RemoteAsset {
    RemoteAsset {
        state: match a.state {
            AssetState::Live => RemoteState::Live,
            AssetState::Trashed(_) => RemoteState::Trashed,
            AssetState::Purged(_) => RemoteState::Purged,
        },
        clock: Hlc {
            wall_ms: a.clock.wall_ms,
            counter: a.clock.counter,
            device: a.clock.device,
        },
        preview: None,
        asset_id: a.asset_id,
        version: a.version,
        manifest: a.manifest,
        file_hash: a.file_hash,
        size: a.size,
        original_name: a.original_name,
        path: a.path,
        favorite: a.favorite,
        hidden: a.hidden,
        damaged: a.damaged,
    }
}

impl Cloud for InProcess {
    fn lane(&self) -> Option<Self> {
        Some(InProcess {
            cloud: self.cloud.clone(),
            store: self.store.clone(),
            device: self.device.clone(),
            manifest_edits: self.manifest_edits.clone(),
            content_questions: self.content_questions.clone(),
            edit_calls: self.edit_calls.clone(),
            streams: self.streams.clone(),
            largest_calls: self.largest_calls.clone(),
            hide_missing: self.hide_missing.clone(),
            clock: self.clock.clone(),
            slow_questions: self.slow_questions.clone(),
        })
    }

    async fn lookups(&mut self, file_hashes: &[ChunkId]) -> Result<Vec<ContentLookup>, CloudError> {
        self.content_questions.fetch_add(1, Ordering::Relaxed);
        if self.slow_questions.load(Ordering::Relaxed) {
            self.clock.advance(61_000);
        }
        let found = self
            .cloud
            .library()
            .find_by_content("alice", file_hashes)
            .map_err(refused)?;
        Ok(file_hashes
            .iter()
            .map(|hash| {
                let m = found.iter().find(|m| m.file_hash == *hash);
                ContentLookup {
                    assets: m
                        .map(|m| {
                            m.assets
                                .iter()
                                .map(|a| keepsake_device::ContentHolder {
                                    asset_id: a.asset_id.clone(),
                                    version: a.version,
                                    path: a.path.clone(),
                                    trashed: matches!(a.state, AssetState::Trashed(_)),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    purged_paths: m.map(|m| m.purged_paths.clone()).unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn begin_upload(&mut self, bytes: u64, request_id: &str) -> Result<String, CloudError> {
        Ok(self
            .cloud
            .begin_upload("alice", bytes, Some(request_id))
            .map_err(refused)?
            .reservation_id)
    }

    async fn find_missing(
        &mut self,
        session: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, CloudError> {
        // A network call would let the other lanes run here: so does this one.
        tokio::task::yield_now().await;
        if self.hide_missing.swap(false, Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        self.store
            .find_missing("alice", session, ids)
            .map_err(refused)
    }

    async fn put_chunks(
        &mut self,
        session: &str,
        chunks: Vec<(ChunkId, Bytes)>,
        acknowledged: &mut Vec<ChunkId>,
    ) -> Result<(), CloudError> {
        let bytes = chunks.iter().map(|(_, b)| b.len()).sum();
        self.largest_calls.0.fetch_max(bytes, Ordering::SeqCst);
        let (open, most) = &*self.streams;
        most.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        // A stream stays open while its bytes travel: the other lanes run meanwhile.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let outcome = self.store.put_chunks("alice", session, &chunks);
        open.fetch_sub(1, Ordering::SeqCst);
        acknowledged.extend(outcome.map_err(refused)?.acknowledged);
        Ok(())
    }

    async fn commit(
        &mut self,
        asset: NewAsset,
        manifest: &Manifest,
        base: Option<(&ManifestId, &Manifest)>,
    ) -> Result<CommitReply, CloudError> {
        let manifest_upload = match base {
            Some((base, base_manifest)) => {
                self.manifest_edits.fetch_add(1, Ordering::Relaxed);
                ManifestUpload::Edit {
                    base: *base,
                    splices: manifest.splices_from(base_manifest),
                    file_hash: manifest.file_hash,
                }
            }
            None => ManifestUpload::Whole(manifest.clone()),
        };
        let done = self
            .cloud
            .commit_asset(
                "alice",
                &CommitAsset {
                    details: Default::default(),
                    request_id: asset.request_id,
                    asset_id: asset.asset_id,
                    base_version: asset.base_version,
                    manifest: asset.manifest,
                    kind: if asset.video {
                        AssetKind::Video
                    } else {
                        AssetKind::Photo
                    },
                    capture_time: asset.capture_time,
                    width: asset.width,
                    height: asset.height,
                    original_name: asset.original_name,
                    path: asset.path,
                    device: self.device.clone(),
                    reservation_id: Some(asset.reservation_id),
                    manifest_upload: Some(manifest_upload),
                },
            )
            .map_err(answered)?;
        Ok(CommitReply {
            asset_id: done.asset_id,
            version: done.version,
            deduplicated: done.deduplicated,
            path: done.path,
        })
    }

    async fn changes(&mut self, cursor: u64) -> Result<FeedPage, CloudError> {
        let page = self
            .cloud
            .library()
            .list_changes("alice", cursor, 500)
            .map_err(refused)?;
        Ok(FeedPage {
            assets: page
                .changes
                .into_iter()
                .filter_map(|c| match c {
                    Change::Asset(a) => Some(remote(a)),
                    Change::Album(_) => None,
                })
                .collect(),
            albums: Vec::new(),
            cursor: page.cursor,
            more: page.more,
        })
    }

    async fn manifest(&mut self, id: &ManifestId) -> Result<Manifest, CloudError> {
        ChunkStore::manifest(&*self.store, "alice", id).map_err(refused)
    }

    async fn chunks(&mut self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Bytes)>, CloudError> {
        let chunks: Vec<(ChunkId, Bytes)> = ids
            .iter()
            .map(|id| {
                let data = self.store.get_chunk("alice", id).map_err(refused)?;
                Ok((*id, data))
            })
            .collect::<Result<_, CloudError>>()?;
        let bytes = chunks.iter().map(|(_, b)| b.len()).sum();
        self.largest_calls.1.fetch_max(bytes, Ordering::SeqCst);
        Ok(chunks)
    }

    async fn edits(
        &mut self,
        edits: &[(Edit, Hlc)],
    ) -> Result<Vec<Result<(), CloudError>>, CloudError> {
        self.edit_calls.fetch_add(1, Ordering::Relaxed);
        let edits: Vec<LibraryEdit> = edits
            .iter()
            .map(|(edit, _)| match edit {
                Edit::Trash { asset_id, alone } => Ok(LibraryEdit::Trash {
                    alone: *alone,
                    asset_id: asset_id.clone(),
                }),
                Edit::Restore { asset_id } => Ok(LibraryEdit::Restore {
                    asset_id: asset_id.clone(),
                }),
                other => Err(refused(format!("these tests send no {other:?}"))),
            })
            .collect::<Result<_, _>>()?;
        Ok(self
            .cloud
            .library()
            .apply_edits("alice", &edits)
            .map_err(refused)?
            .into_iter()
            .map(|answer| answer.map(drop).map_err(answered))
            .collect())
    }
}

struct World {
    cloud: Arc<keepsake_library::Cloud>,
    store: Arc<Store>,
    manifest_edits: Arc<AtomicUsize>,
    content_questions: Arc<AtomicUsize>,
    edit_calls: Arc<AtomicUsize>,
    streams: Arc<(AtomicUsize, AtomicUsize)>,
    largest_calls: Arc<(AtomicUsize, AtomicUsize)>,
    hide_missing: Arc<AtomicBool>,
    clock: Arc<ManualClock>,
    slow_questions: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(
        Store::open_local(
            &dir.path().join("store"),
            clock.clone(),
            Arc::new(OsEntropy),
            StoreConfig::default(),
        )
        .unwrap(),
    );
    let library = Library::open(
        None,
        clock,
        Arc::new(OsEntropy),
        LibraryConfig {
            kdf: KdfCost {
                memory_kib: 64,
                iterations: 1,
            },
            ..LibraryConfig::default()
        },
    )
    .unwrap();
    let cloud = Arc::new(keepsake_library::Cloud::new(library, store.clone()).unwrap());
    cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    World {
        cloud,
        store,
        manifest_edits: Arc::default(),
        content_questions: Arc::default(),
        edit_calls: Arc::default(),
        streams: Arc::default(),
        largest_calls: Arc::default(),
        hide_missing: Arc::default(),
        clock: Arc::new(ManualClock::new(T0)),
        slow_questions: Arc::default(),
        _dir: dir,
    }
}

fn device(w: &World, root: &Path, name: &str) -> Device<InProcess> {
    let mut config = DeviceConfig::new(
        root.join(name),
        root.join(format!("{name}-data")),
        name.into(),
    );
    config.stable_ms = 0;
    let cloud = InProcess {
        cloud: w.cloud.clone(),
        store: w.store.clone(),
        device: name.into(),
        manifest_edits: w.manifest_edits.clone(),
        content_questions: w.content_questions.clone(),
        edit_calls: w.edit_calls.clone(),
        streams: w.streams.clone(),
        largest_calls: w.largest_calls.clone(),
        hide_missing: w.hide_missing.clone(),
        clock: w.clock.clone(),
        slow_questions: w.slow_questions.clone(),
    };
    Device::open(config, cloud, w.clock.clone()).unwrap()
}

fn photo(seed: u64) -> Vec<u8> {
    bytes_of(seed, 300_000)
}

fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new_derive_key(&format!("keepsake crash photo {seed}"))
        .finalize_xof()
        .fill(&mut data);
    data
}

/// A device enrolled now ends its first pass with exactly the camera's photos.
async fn a_new_viewer_gets_what_the_camera_holds(w: &World, root: &Path) {
    let mut viewer = device(w, root, "viewer");
    viewer.sync_once().await.unwrap();
    assert_eq!(held(&root.join("viewer")), held(&root.join("camera")));
}

/// Sorted content hashes of a folder's photos (the device's marker left out).
fn held(dir: &Path) -> Vec<String> {
    let mut hashes: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".keepsake"))
        .map(|e| {
            blake3::hash(&std::fs::read(e.path()).unwrap())
                .to_hex()
                .to_string()
        })
        .collect();
    hashes.sort();
    hashes
}

fn live_assets(w: &World) -> usize {
    assets_where(w, |state| *state == AssetState::Live)
}

/// How many of the library's assets are in a state `wanted` accepts.
fn assets_where(w: &World, wanted: impl Fn(&AssetState) -> bool) -> usize {
    w.cloud
        .library()
        .list_changes("alice", 0, 1000)
        .unwrap()
        .changes
        .iter()
        .filter(|c| matches!(c, Change::Asset(a) if wanted(&a.state)))
        .count()
}

/// Runs one pass with `point` set to panic; says whether the pass died there.
async fn pass_dying_at(d: &mut Device<InProcess>, point: &str) -> bool {
    fail::cfg(point, "panic").unwrap();
    let died = AssertUnwindSafe(d.sync_once())
        .catch_unwind()
        .await
        .is_err();
    fail::remove(point);
    died
}

#[tokio::test]
async fn a_device_killed_between_the_cloud_and_its_journal_loses_and_duplicates_nothing() {
    let scenario = fail::FailScenario::setup();
    for point in [
        "device-after-chunks-before-journal",
        "device-after-commit-before-journal",
        "device-after-place-before-journal",
    ] {
        let w = world();
        let root = tempfile::tempdir().unwrap();
        let mut camera = device(&w, root.path(), "camera");
        let mut viewer = device(&w, root.path(), "viewer");
        for i in 0..3 {
            std::fs::write(root.path().join(format!("camera/IMG_{i}.JPG")), photo(i)).unwrap();
        }
        let uploading = point != "device-after-place-before-journal";
        if uploading {
            assert!(
                pass_dying_at(&mut camera, point).await,
                "{point} not reached"
            );
            drop(camera);
            camera = device(&w, root.path(), "camera");
        }
        camera.sync_once().await.unwrap();
        if !uploading {
            assert!(
                pass_dying_at(&mut viewer, point).await,
                "{point} not reached"
            );
            drop(viewer);
            viewer = device(&w, root.path(), "viewer");
        }
        viewer.sync_once().await.unwrap();
        // A second pass on each: nothing left to do, and nothing done twice.
        let again = camera.sync_once().await.unwrap();
        assert_eq!(
            (again.uploaded, again.downloaded),
            (0, 0),
            "{point}: {again:?}"
        );
        let again = viewer.sync_once().await.unwrap();
        assert_eq!(
            (again.uploaded, again.downloaded),
            (0, 0),
            "{point}: {again:?}"
        );
        assert_eq!(live_assets(&w), 3, "{point}: lost or duplicated");
        let camera_holds = held(&root.path().join("camera"));
        assert_eq!(camera_holds.len(), 3, "{point}");
        assert_eq!(camera_holds, held(&root.path().join("viewer")), "{point}");
        assert_eq!(camera.pending_files().unwrap(), 0, "{point}");
        assert_eq!(viewer.pending_files().unwrap(), 0, "{point}");
    }
    scenario.teardown();
}

#[tokio::test]
async fn an_edit_killed_between_the_cloud_and_its_journal_lands_once_as_the_next_version() {
    // Fail points are global: this waits for any other scenario to end.
    let scenario = fail::FailScenario::setup();
    for point in [
        "device-after-chunks-before-journal",
        "device-after-commit-before-journal",
    ] {
        let w = world();
        let root = tempfile::tempdir().unwrap();
        let mut camera = device(&w, root.path(), "camera");
        let mut viewer = device(&w, root.path(), "viewer");
        let path = root.path().join("camera/IMG_0.JPG");
        std::fs::write(&path, photo(7)).unwrap();
        camera.sync_once().await.unwrap();
        camera.sync_once().await.unwrap(); // its own version comes back: the edit's base
        let mut edited = photo(7);
        edited[150_000..150_019].copy_from_slice(b"2025:01:11 08:30:00");
        std::fs::write(&path, &edited).unwrap();
        assert!(
            pass_dying_at(&mut camera, point).await,
            "{point} not reached"
        );
        drop(camera);
        camera = device(&w, root.path(), "camera");
        camera.sync_once().await.unwrap();
        viewer.sync_once().await.unwrap();
        let again = camera.sync_once().await.unwrap();
        assert_eq!(again.uploaded, 0, "{point}: {again:?}");
        assert_eq!(live_assets(&w), 1, "{point}: the edit became another photo");
        assert_eq!(
            held(&root.path().join("viewer")),
            held(&root.path().join("camera"))
        );
        assert_eq!(
            std::fs::read(root.path().join("viewer/IMG_0.JPG")).unwrap(),
            edited,
            "{point}"
        );
        assert!(
            w.manifest_edits.load(Ordering::Relaxed) >= 1,
            "{point}: the edit's manifest went whole"
        );
    }
    scenario.teardown();
}

#[tokio::test]
async fn files_sharing_chunks_in_one_pass_send_each_chunk_once_and_copies_stay_photos_of_their_own()
{
    // Fail points are global: this waits for the crash test's scenario to end.
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut camera = device(&w, root.path(), "camera");
    let (original, second) = (photo(1), photo(2));
    // A re-save that kept the first two thirds, and a plain copy: several files of one pass
    // travel on lanes at once, and two lanes must never carry the same chunk.
    let mut resaved = second[..200_000].to_vec();
    resaved.extend_from_slice(&photo(3)[..100_000]);
    // In the order the pass takes them: each right behind the file it shares with.
    for (name, data) in [
        ("IMG_1.JPG", &original),
        ("IMG_1a.JPG", &original),
        ("IMG_2.JPG", &second),
        ("IMG_2a.JPG", &resaved),
    ] {
        std::fs::write(root.path().join("camera").join(name), data).unwrap();
    }
    let report = camera.sync_once().await.unwrap();
    let unique: HashSet<_> = [&original, &second, &resaved]
        .iter()
        .flat_map(|d| {
            keepsake_delta::manifest_of(d, keepsake_delta::ChunkParams::for_len(d.len() as u64))
                .entries
        })
        .map(|e| e.chunk)
        .collect();
    assert_eq!(report.chunks_sent, unique.len(), "{report:?}");
    assert_eq!(camera.chunks_acknowledged_again(), 0);
    // A copy is a photo of its own (each file is one), its chunks sent once all the same.
    assert_eq!((report.uploaded, report.linked), (4, 0), "{report:?}");
    assert_eq!(
        w.content_questions.load(Ordering::Relaxed),
        1,
        "one question for every new file's content, not one each"
    );
    assert_eq!(live_assets(&w), 4);
    assert_eq!(camera.pending_files().unwrap(), 0);
    scenario.teardown();
}

/// A content lookup's answer is used for at most a minute: a long pass asks again, so a
/// photo deleted for good elsewhere meanwhile is not uploaded again as if new.
#[tokio::test]
async fn a_content_lookup_older_than_a_minute_is_asked_again() {
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut camera = device(&w, root.path(), "camera");
    for n in 0..3u8 {
        std::fs::write(
            root.path().join("camera").join(format!("IMG_{n}.JPG")),
            photo(10 + u64::from(n)),
        )
        .unwrap();
    }
    // Each question takes a minute of the devices' clock: the next file's answer is stale.
    w.slow_questions.store(true, Ordering::Relaxed);
    let report = camera.sync_once().await.unwrap();
    assert_eq!(report.uploaded, 3, "{report:?}");
    assert_eq!(w.content_questions.load(Ordering::Relaxed), 3);
    scenario.teardown();
}

/// Photos deleted from the folder go to Recently Deleted as one batch of edits: seven
/// deletes are one call, not seven round trips.
#[tokio::test]
async fn files_deleted_from_the_folder_go_to_recently_deleted_in_one_call() {
    // Fail points are global: this waits for the crash test's scenario to end.
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut camera = device(&w, root.path(), "camera");
    let folder = root.path().join("camera");
    for seed in 0..10 {
        std::fs::write(folder.join(format!("IMG_{seed}.JPG")), photo(100 + seed)).unwrap();
    }
    camera.sync_once().await.unwrap();
    assert_eq!(live_assets(&w), 10);
    assert_eq!(w.edit_calls.load(Ordering::Relaxed), 0);

    for seed in 0..7 {
        std::fs::remove_file(folder.join(format!("IMG_{seed}.JPG"))).unwrap();
    }
    let report = camera.sync_once().await.unwrap();
    assert_eq!(report.trashed_remotely, 7, "{report:?}");
    assert_eq!(
        w.edit_calls.load(Ordering::Relaxed),
        1,
        "one call for all seven"
    );
    assert_eq!(live_assets(&w), 3);
    assert_eq!(
        assets_where(&w, |state| matches!(state, AssetState::Trashed(_))),
        7
    );

    // Nothing is sent again on the next pass.
    camera.sync_once().await.unwrap();
    assert_eq!(w.edit_calls.load(Ordering::Relaxed), 1);
    scenario.teardown();
}

/// A photo edited here while another device deleted it: when the edit lands between this
/// pass's scan and its reading of the feed, the trash step must leave the file where it is
/// (it is not the version the cloud trashed); the next pass keeps the edit as a photo of
/// its own.
#[tokio::test]
async fn a_file_edited_after_the_scan_is_not_moved_to_recently_deleted_with_the_old_version() {
    // Fail points are global: this waits for the crash test's scenario to end.
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut camera = device(&w, root.path(), "camera");
    let path = root.path().join("camera").join("IMG_1.JPG");
    std::fs::write(&path, photo(200)).unwrap();
    camera.sync_once().await.unwrap();
    let asset_id = w
        .cloud
        .library()
        .find_by_content("alice", &[ChunkId::of(&photo(200))])
        .unwrap()[0]
        .assets[0]
        .asset_id
        .clone();
    // Another device deletes the photo.
    let answers = w
        .cloud
        .library()
        .apply_edits(
            "alice",
            &[LibraryEdit::Trash {
                asset_id,
                alone: false,
            }],
        )
        .unwrap();
    assert!(answers[0].is_ok());

    // The person edits it here after this pass scanned the folder.
    let mut edited = photo(200);
    edited.extend_from_slice(b" cropped");
    let (at, bytes) = (path.clone(), edited.clone());
    fail::cfg_callback("device-before-feed", move || {
        std::fs::write(&at, &bytes).unwrap();
    })
    .unwrap();
    let report = camera.sync_once().await.unwrap();
    fail::remove("device-before-feed");
    assert_eq!(report.trashed_here, 0, "{report:?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        edited,
        "the edit stays in the folder"
    );

    let report = camera.sync_once().await.unwrap();
    assert_eq!(report.kept_apart, 1, "{report:?}");
    // Kept apart, it goes as a new photo on the pass after.
    let report = camera.sync_once().await.unwrap();
    assert_eq!(report.uploaded, 1, "{report:?}");
    assert_eq!(live_assets(&w), 1);
    let kept = w
        .cloud
        .library()
        .find_by_content("alice", &[ChunkId::of(&edited)])
        .unwrap();
    assert_eq!(kept.len(), 1, "the edit is a photo in the library");
    scenario.teardown();
}

/// The same race with a newer version instead of a deletion: another device's edit arrives
/// while this device's own edit, written after the scan, is not sent yet. The cloud's
/// version must land beside the file, not over it; both edits end in the library.
#[tokio::test]
async fn a_file_edited_after_the_scan_is_not_overwritten_by_a_newer_version_from_elsewhere() {
    // Fail points are global: this waits for the crash test's scenario to end.
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut camera = device(&w, root.path(), "camera");
    let mut viewer = device(&w, root.path(), "viewer");
    let here = root.path().join("camera").join("IMG_1.JPG");
    std::fs::write(&here, photo(300)).unwrap();
    camera.sync_once().await.unwrap();
    viewer.sync_once().await.unwrap();
    // The viewer edits the photo and sends it: version 2.
    let mut theirs = photo(300);
    theirs[1000..1019].copy_from_slice(b"2025:01:11 08:30:00");
    std::fs::write(root.path().join("viewer").join("IMG_1.JPG"), &theirs).unwrap();
    viewer.sync_once().await.unwrap();

    // The camera's person edits it too, after this pass scanned the folder.
    let mut ours = photo(300);
    ours.extend_from_slice(b" cropped");
    let (at, bytes) = (here.clone(), ours.clone());
    fail::cfg_callback("device-before-feed", move || {
        std::fs::write(&at, &bytes).unwrap();
    })
    .unwrap();
    camera.sync_once().await.unwrap();
    fail::remove("device-before-feed");
    assert_eq!(
        std::fs::read(&here).unwrap(),
        ours,
        "the local edit was overwritten"
    );
    let held_here = held(&root.path().join("camera"));
    let hex = |data: &[u8]| blake3::hash(data).to_hex().to_string();
    assert!(
        held_here.contains(&hex(&theirs)),
        "the cloud's version lands beside"
    );

    // The next passes send the local edit: both edits are in the library.
    camera.sync_once().await.unwrap();
    camera.sync_once().await.unwrap();
    for edit in [&ours, &theirs] {
        let found = w
            .cloud
            .library()
            .find_by_content("alice", &[ChunkId::of(edit)])
            .unwrap();
        assert_eq!(found.len(), 1, "an edit is missing from the library");
    }
    scenario.teardown();
}

/// A video's chunks go on several streams at once, each acknowledged, and the file lands
/// once; small photos read ahead of their turn land as they are.
#[tokio::test]
async fn a_large_file_travels_on_several_streams_and_files_read_ahead_land_once() {
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut camera = device(&w, root.path(), "camera");
    let video = bytes_of(7, 40 << 20);
    std::fs::write(root.path().join("camera").join("VID_1.MP4"), &video).unwrap();
    let alone = camera.sync_once().await.unwrap();
    assert_eq!(alone.uploaded, 1, "{alone:?}");
    assert!(
        w.streams.1.load(Ordering::SeqCst) >= 2,
        "the video went on one stream"
    );
    for i in 0..6 {
        std::fs::write(
            root.path().join("camera").join(format!("IMG_{i}.JPG")),
            photo(300 + i),
        )
        .unwrap();
    }
    let report = camera.sync_once().await.unwrap();
    assert_eq!(report.uploaded, 6, "{report:?}");
    // Every photo after the first was read while the ones before it travelled.
    assert_eq!(report.read_ahead, 5, "{report:?}");
    assert_eq!(live_assets(&w), 7);
    let sent_again = camera.sync_once().await.unwrap();
    assert_eq!(
        (sent_again.uploaded, sent_again.chunks_sent),
        (0, 0),
        "{sent_again:?}"
    );
    a_new_viewer_gets_what_the_camera_holds(&w, root.path()).await;
    scenario.teardown();
}

/// Bytes of each named file in `dir` that sit in the page cache, as util-linux's `fincore`
/// prints them ("RES NAME").
fn cached_in(dir: &Path, names: &[String]) -> Vec<String> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES,FILE"])
        .args(names)
        .current_dir(dir)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// A download's page cache is released as it is written — a long video's every 32 MiB,
/// and the whole file once in place — so the next pages written reuse that memory instead
/// of taking fresh ones (docs/benchmarks.md: fresh ones cost this machine ~4x the time).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_downloaded_file_leaves_none_of_its_pages_cached() {
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut camera = device(&w, root.path(), "camera");
    let folder = root.path().join("camera");
    std::fs::write(folder.join("VID_1.MP4"), bytes_of(8, 40 << 20)).unwrap();
    std::fs::write(folder.join("IMG_1.JPG"), photo(500)).unwrap();
    assert_eq!(camera.sync_once().await.unwrap().uploaded, 2);
    let mut viewer = device(&w, root.path(), "viewer");
    // Stopped just after the video's first 32 MiB were flushed: none of them is cached.
    assert!(pass_dying_at(&mut viewer, "device-while-writing-a-download").await);
    let tmp = root.path().join("viewer-data").join("tmp");
    let parts: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert!(std::fs::metadata(tmp.join(&parts[0])).unwrap().len() >= 32 << 20);
    assert_eq!(cached_in(&tmp, &parts), [format!("0 {}", parts[0])]);
    drop(viewer);
    let mut viewer = device(&w, root.path(), "viewer");
    viewer.sync_once().await.unwrap();
    let names = ["VID_1.MP4".to_string(), "IMG_1.JPG".to_string()];
    assert_eq!(
        cached_in(&root.path().join("viewer"), &names),
        ["0 VID_1.MP4", "0 IMG_1.JPG"]
    );
    assert_eq!(held(&root.path().join("viewer")), held(&folder));
    scenario.teardown();
}

/// A commit refused with MISSING_CHUNKS — chunks gone between FindMissing and the commit —
/// is followed by a FindMissing over the whole file, whatever the refusal named (the cloud
/// names at most 48; this one names none), and the file lands in the same pass, each chunk
/// sent once: a photo held in memory, and a video streamed, read again for those chunks.
#[tokio::test]
async fn a_commit_refused_for_missing_chunks_sends_every_missing_chunk_whatever_it_named() {
    let scenario = fail::FailScenario::setup();
    for (name, content) in [
        ("IMG_1.JPG", photo(400)),
        ("VID_1.MP4", bytes_of(12, 80 << 20)),
    ] {
        let w = world();
        let root = tempfile::tempdir().unwrap();
        let mut camera = device(&w, root.path(), "camera");
        std::fs::write(root.path().join("camera").join(name), &content).unwrap();
        w.hide_missing.store(true, Ordering::SeqCst);
        let report = camera.sync_once().await.unwrap();
        assert!(
            !w.hide_missing.load(Ordering::SeqCst),
            "FindMissing was asked"
        );
        assert_eq!(
            (report.uploaded, report.blocked.clone()),
            (1, None),
            "{name}: {report:?}"
        );
        let manifest = keepsake_delta::manifest_of(&content, keepsake_delta::ChunkParams::PHOTO);
        let unique: HashSet<ChunkId> = manifest.entries.iter().map(|e| e.chunk).collect();
        assert_eq!(report.chunks_sent, unique.len(), "{name}: {report:?}");
        a_new_viewer_gets_what_the_camera_holds(&w, root.path()).await;
    }
    scenario.teardown();
}

/// The most chunk bytes one call may carry for a file streamed a batch at a time: a batch
/// (32 MiB) and the largest chunk that may end it.
const BATCH_BOUND: usize = (32 << 20) + (256 << 10);

/// A video too large to hold is read, sent and written a batch at a time, new or edited: no
/// call carries more than a batch either way, whatever the video's size, and it arrives
/// whole; an edit sends only the chunks it changed. On several threads, as the agent runs:
/// there a thread of its own reads the file (a single-threaded runtime reads it in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_too_large_to_hold_travels_and_lands_a_batch_at_a_time() {
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut camera = device(&w, root.path(), "camera");
    let folder = root.path().join("camera");
    // Chunks repeated far apart: fetched once, kept until written the second time.
    let mut video = bytes_of(9, 150 << 20);
    let (early, late) = video.split_at_mut(100 << 20);
    late[..4 << 20].copy_from_slice(&early[10 << 20..14 << 20]);
    std::fs::write(folder.join("VID_1.MP4"), &video).unwrap();
    std::fs::write(folder.join("IMG_1.JPG"), photo(600)).unwrap();
    let report = camera.sync_once().await.unwrap();
    assert_eq!(
        (report.uploaded, report.streamed, report.blocked.clone()),
        (2, 1, None),
        "the video streamed, the photo held: {report:?}"
    );
    let sent = w.largest_calls.0.load(Ordering::SeqCst);
    assert!(sent <= BATCH_BOUND, "one call sent {sent} bytes");
    let mut viewer = device(&w, root.path(), "viewer");
    let report = viewer.sync_once().await.unwrap();
    assert_eq!((report.downloaded, report.streamed), (2, 1), "{report:?}");
    let fetched = w.largest_calls.1.load(Ordering::SeqCst);
    assert!(fetched <= BATCH_BOUND, "one call fetched {fetched} bytes");
    assert_eq!(held(&root.path().join("viewer")), held(&folder));
    let again = camera.sync_once().await.unwrap();
    assert_eq!((again.uploaded, again.chunks_sent), (0, 0), "{again:?}");

    // 110 MiB rewritten in place: held whole, it would go as three calls of ~37 MiB.
    let region = 20 << 20..130 << 20;
    video[region.clone()].copy_from_slice(&bytes_of(13, region.len()));
    std::fs::write(folder.join("VID_1.MP4"), &video).unwrap();
    w.largest_calls.0.store(0, Ordering::SeqCst);
    let edit = camera.sync_once().await.unwrap();
    assert_eq!(
        (edit.uploaded, edit.streamed, edit.blocked.clone()),
        (1, 1, None),
        "{edit:?}"
    );
    let sent = w.largest_calls.0.load(Ordering::SeqCst);
    assert!(
        sent <= BATCH_BOUND,
        "one call of the edit sent {sent} bytes"
    );
    // The chunks that straddle the region's two edges change too.
    let bound = region.len() as u64 + 2 * (256 << 10);
    assert!(
        edit.bytes_sent <= bound,
        "the edit sent {} bytes",
        edit.bytes_sent
    );
    let report = viewer.sync_once().await.unwrap();
    assert_eq!(report.downloaded, 1, "{report:?}");
    assert_eq!(live_assets(&w), 2, "an edit, not another video");
    assert_eq!(
        std::fs::read(root.path().join("viewer").join("VID_1.MP4")).unwrap(),
        video
    );
    scenario.teardown();
}

/// A video whose bytes change after the scan, while it streams, commits as neither
/// version; the next pass sends what it became.
#[tokio::test]
async fn a_video_changed_while_it_streams_is_committed_only_as_it_became() {
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut camera = device(&w, root.path(), "camera");
    let path = root.path().join("camera").join("VID_1.MP4");
    std::fs::write(&path, bytes_of(10, 80 << 20)).unwrap();
    let changing = path.clone();
    fail::cfg_callback("device-while-streaming-a-file", move || {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&changing)
            .unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(70 << 20)).unwrap();
        std::io::Write::write_all(&mut file, &bytes_of(11, 1 << 20)).unwrap();
    })
    .unwrap();
    let report = camera.sync_once().await.unwrap();
    fail::remove("device-while-streaming-a-file");
    assert_eq!(
        (report.uploaded, report.blocked.clone()),
        (0, None),
        "{report:?}"
    );
    assert_eq!(live_assets(&w), 0);
    let report = camera.sync_once().await.unwrap();
    assert_eq!(report.uploaded, 1, "{report:?}");
    let mut viewer = device(&w, root.path(), "viewer");
    viewer.sync_once().await.unwrap();
    assert_eq!(
        std::fs::read(root.path().join("viewer").join("VID_1.MP4")).unwrap(),
        std::fs::read(&path).unwrap()
    );
    scenario.teardown();
}

/// A file the scan read but the upload could not (a sector gone bad since, a disk that
/// came and went) failed the pass, before the feed: with its stat unchanged, every later
/// pass tried it first and failed again — nothing else went up and nothing came down. It
/// is now left for the pass and named, and the rest of the pass goes on.
#[tokio::test]
async fn a_file_that_cannot_be_read_for_upload_stops_neither_the_others_nor_the_feed() {
    let scenario = fail::FailScenario::setup();
    let w = world();
    let root = tempfile::tempdir().unwrap();
    let mut other = device(&w, root.path(), "other");
    std::fs::write(root.path().join("other").join("IMG_9.JPG"), photo(9)).unwrap();
    assert_eq!(other.sync_once().await.unwrap().uploaded, 1);
    let mut camera = device(&w, root.path(), "camera");
    for i in 0..3 {
        std::fs::write(
            root.path().join("camera").join(format!("IMG_{i}.JPG")),
            photo(20 + i),
        )
        .unwrap();
    }
    // The first file read for upload fails with EIO; the disk then recovers.
    fail::cfg("device-reading-a-file", "1*return->off").unwrap();
    let report = camera.sync_once().await.unwrap();
    fail::remove("device-reading-a-file");
    assert_eq!(
        (report.uploaded, report.downloaded, report.blocked.clone()),
        (2, 1, None),
        "{report:?}"
    );
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].reason, "FILE_UNREADABLE");
    assert!(
        report.skipped[0].message.contains("os error 5"),
        "{report:?}"
    );
    let again = camera.sync_once().await.unwrap();
    assert_eq!((again.uploaded, again.skipped.len()), (1, 0), "{again:?}");
    assert_eq!(live_assets(&w), 4);
    a_new_viewer_gets_what_the_camera_holds(&w, root.path()).await;
    scenario.teardown();
}
