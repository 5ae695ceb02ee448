//! A server killed at any step of a commit loses nothing it acknowledged and, when the
//! device retries, makes exactly one asset.
//!
//! Run with `cargo test -p keepsake-library --features failpoints --test crash_points`
//! (`cargo xtask ci` does). A fail point panics where the process would have died; the
//! store and library are then reopened from disk, as a restarted server would.

use bytes::Bytes;
use keepsake_library::*;
use keepsake_store::*;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

const T0: i64 = 1_700_000_000_000;

/// Every durability step of a commit, in the order they run.
const POINTS: &[&str] = &[
    "cloud-before-ref-outbox",
    "cloud-before-store-reference",
    "cloud-after-store-reference",
    "library-before-asset-commit",
    "library-after-asset-commit",
    "cloud-before-release-pending",
];

fn open(dir: &Path, clock: Arc<ManualClock>) -> (Cloud, Arc<Store>) {
    let store = Arc::new(
        Store::open_local(
            &dir.join("store"),
            clock.clone(),
            Arc::new(OsEntropy),
            StoreConfig::default(),
        )
        .unwrap(),
    );
    let library = Library::open(
        Some(dir.join("library.sqlite")),
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
    (Cloud::new(library, store.clone()).unwrap(), store)
}

fn photo(seed: u8) -> (Vec<(ChunkId, Bytes)>, Manifest) {
    let data: Vec<u8> = (0..20_000u32)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let chunks: Vec<(ChunkId, Bytes)> = data
        .chunks(4096)
        .map(|c| (ChunkId::of(c), Bytes::copy_from_slice(c)))
        .collect();
    let manifest = Manifest::from_chunks(&chunks, ChunkId::of(&data));
    (chunks, manifest)
}

fn commit(manifest: ManifestId, reservation: &str) -> CommitAsset {
    CommitAsset {
        request_id: "phone:IMG_0001".into(),
        asset_id: None,
        base_version: None,
        manifest,
        kind: AssetKind::Photo,
        capture_time: Some(T0),
        width: None,
        height: None,
        original_name: "IMG_0001.JPG".into(),
        path: String::new(),
        device: "phone".into(),
        reservation_id: Some(reservation.into()),
        manifest_upload: None,
        details: Default::default(),
    }
}

fn assets(cloud: &Cloud) -> Vec<Asset> {
    cloud
        .library()
        .list_changes("alice", 0, 1000)
        .unwrap()
        .changes
        .into_iter()
        .filter_map(|c| match c {
            Change::Asset(a) => Some(a),
            Change::Album(_) => None,
        })
        .collect()
}

#[test]
fn a_server_killed_at_every_step_of_a_commit_makes_exactly_one_asset_on_retry() {
    let scenario = fail::FailScenario::setup();
    let mut acknowledged_before_crash = 0;
    for point in POINTS {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let (chunks, manifest) = photo(7);
        let manifest_id;
        let reservation;
        {
            let (cloud, store) = open(dir.path(), clock.clone());
            cloud
                .create_account("alice", "correct horse", None, false)
                .unwrap();
            reservation = cloud
                .begin_upload("alice", manifest.total_len + 1024, None)
                .unwrap()
                .reservation_id;
            store.put_chunks("alice", &reservation, &chunks).unwrap();
            manifest_id = store
                .put_manifest("alice", &reservation, &manifest)
                .unwrap();
            fail::cfg(*point, "panic").unwrap();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                cloud.commit_asset("alice", &commit(manifest_id, &reservation))
            }));
            fail::remove(*point);
            assert!(outcome.is_err(), "{point} was never reached");
        }
        // The restarted server: the device did not get its reply, so it asks again.
        let (cloud, store) = open(dir.path(), clock.clone());
        let before = assets(&cloud).len();
        acknowledged_before_crash += before;
        cloud.maintain().unwrap();
        let again = cloud
            .commit_asset("alice", &commit(manifest_id, &reservation))
            .unwrap_or_else(|e| panic!("retry after a crash at {point}: {e}"));
        let after = assets(&cloud);
        assert_eq!(after.len(), 1, "crash at {point}: {after:?}");
        assert_eq!(after[0].asset_id, again.asset_id, "crash at {point}");
        assert_eq!(after[0].file_hash, manifest.file_hash, "crash at {point}");
        // The content is rooted: readable, and it survives garbage collection.
        clock.advance(3 * 24 * 3600 * 1000);
        cloud.maintain().unwrap();
        store.collect_garbage().unwrap();
        for (id, data) in &chunks {
            assert_eq!(
                store.get_chunk("alice", id).unwrap(),
                data.as_ref(),
                "crash at {point}: chunk lost after GC"
            );
        }
        assert!(store.scrub().unwrap().corrupt_chunks.is_empty());
        // Only a crash after the library's transaction leaves the asset there before the
        // retry; the retry then answers from it instead of making a second one.
        let committed_first = matches!(
            *point,
            "library-after-asset-commit" | "cloud-before-release-pending"
        );
        assert_eq!(before, usize::from(committed_first), "crash at {point}");
    }
    assert_eq!(acknowledged_before_crash, 2);
    scenario.teardown();
}
