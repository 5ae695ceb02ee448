//! A crash at each point of a batch write never leaves a chunk acknowledged but
//! unreadable, nor a readable chunk with wrong bytes.
//!
//! Run with `cargo test -p keepsake-store --features failpoints --test crash_points`
//! (`cargo xtask ci` does). Each fail point panics, which stands in for the
//! process dying there; the store is then reopened from disk.

use bytes::Bytes;
use keepsake_store::*;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

const POINTS: &[&str] = &[
    "store-before-pack-put",
    "backend-before-fsync",
    "backend-before-rename",
    "backend-before-dir-fsync",
    "store-before-index",
    "store-before-index-commit",
    "store-after-index-commit",
    "store-before-repack-commit",
];

fn open(dir: &Path) -> Store {
    Store::open_local(
        dir,
        Arc::new(ManualClock::new(1_700_000_000_000)),
        Arc::new(OsEntropy),
        StoreConfig {
            grace_ms: 0,
            ..StoreConfig::default()
        },
    )
    .unwrap()
}

fn chunks(tag: u8, n: usize) -> Vec<(ChunkId, Bytes)> {
    (0..n)
        .map(|i| {
            let mut data = vec![tag, i as u8];
            data.extend((0..5000).map(|j| (j % 251) as u8));
            (ChunkId::of(&data), Bytes::from(data))
        })
        .collect()
}

#[test]
fn a_crash_at_every_point_of_a_batch_write_loses_nothing_acknowledged() {
    let scenario = fail::FailScenario::setup();
    for point in POINTS {
        let dir = tempfile::tempdir().unwrap();
        let acked = chunks(1, 8);
        let in_flight = chunks(2, 8);
        {
            let store = open(dir.path());
            let s = store.begin_session("alice", 0, 600_000, None).unwrap();
            store.put_chunks("alice", &s.id, &acked).unwrap();
            // A few small packs so the repack path has work to crash in.
            store.put_chunks("alice", &s.id, &chunks(3, 1)).unwrap();
            fail::cfg(*point, "panic").unwrap();
            let crashed = catch_unwind(AssertUnwindSafe(|| {
                let _ = store.put_chunks("alice", &s.id, &in_flight);
                let _ = store.collect_garbage();
            }));
            fail::remove(*point);
            assert!(crashed.is_err(), "fail point {point} was never reached");
        }
        let store = open(dir.path());
        for (id, data) in &acked {
            assert_eq!(
                store.get_chunk("alice", id).unwrap(),
                data.to_vec(),
                "{point}: an acknowledged chunk must survive"
            );
        }
        for (id, data) in &in_flight {
            match store.get_chunk("alice", id) {
                Ok(bytes) => assert_eq!(bytes, data.to_vec(), "{point}: wrong bytes served"),
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => panic!("{point}: unacknowledged chunk left broken: {e}"),
            }
        }
        // Orphaned packs are cleaned up; nothing acknowledged goes with them.
        let s = store.begin_session("alice", 0, 600_000, None).unwrap();
        store
            .find_missing(
                "alice",
                &s.id,
                &acked.iter().map(|c| c.0).collect::<Vec<_>>(),
            )
            .unwrap();
        store.collect_garbage().unwrap();
        let report = store.scrub().unwrap();
        assert!(
            report.corrupt_chunks.is_empty() && report.corrupt_packs.is_empty(),
            "{point}: {report:?}"
        );
        for (id, data) in &acked {
            assert_eq!(
                store.get_chunk("alice", id).unwrap(),
                data.to_vec(),
                "{point}: after GC"
            );
        }
        let leftovers = std::fs::read_dir(dir.path().join("objects/.tmp"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0, "{point}: temp files are cleaned on open");
    }
    scenario.teardown();
}
