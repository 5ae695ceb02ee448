//! Behaviour of the store through its public API: round trips, ownership,
//! sessions, manifests, corruption, garbage collection.

use bytes::Bytes;
use keepsake_store::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const T0: i64 = 1_700_000_000_000;

struct Fixture {
    store: Store,
    backend: Arc<MemoryBackend>,
    clock: Arc<ManualClock>,
}

fn fixture_with(config: StoreConfig) -> Fixture {
    fixture_indexed_at(config, None)
}

/// All the property cases on SQLite, a quarter on PostgreSQL (each makes a schema).
fn cases(sqlite: u32) -> u32 {
    if std::env::var_os("KEEPSAKE_TEST_POSTGRES").is_some() {
        (sqlite / 4).max(8)
    } else {
        sqlite
    }
}

/// The index the tests run on: in memory, or a fresh schema of the PostgreSQL database that
/// `KEEPSAKE_TEST_POSTGRES` names (`cargo xtask ci` runs these tests on both).
fn test_index(file: Option<std::path::PathBuf>) -> IndexAt {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    match (std::env::var("KEEPSAKE_TEST_POSTGRES"), file) {
        (Ok(url), _) => IndexAt::Postgres {
            url,
            schema: format!(
                "store_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        },
        (Err(_), Some(path)) => IndexAt::File(path),
        (Err(_), None) => IndexAt::Memory,
    }
}

/// A store whose index is a file, so lookups go through its reader connections.
fn fixture_indexed_at(config: StoreConfig, index_path: Option<std::path::PathBuf>) -> Fixture {
    let backend = Arc::new(MemoryBackend::new());
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open(StoreParts {
        backend: backend.clone(),
        index: test_index(index_path),
        clock: clock.clone(),
        entropy: Arc::new(SeededEntropy::new(42)),
        config,
    })
    .unwrap();
    Fixture {
        store,
        backend,
        clock,
    }
}

fn fixture() -> Fixture {
    fixture_with(StoreConfig::default())
}

fn chunk(data: &[u8]) -> (ChunkId, Bytes) {
    (ChunkId::of(data), Bytes::copy_from_slice(data))
}

fn arb_chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..2048), 1..20)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    #[test]
    fn put_get_round_trip_and_put_is_idempotent(datas in arb_chunks()) {
        let f = fixture();
        let s = f.store.begin_session("alice", 0, 60_000, None).unwrap();
        let chunks: Vec<_> = datas.iter().map(|d| chunk(d)).collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();
        prop_assert_eq!(f.store.find_missing("alice", &s.id, &ids).unwrap(), ids.clone());
        let first = f.store.put_chunks("alice", &s.id, &chunks).unwrap();
        let usage = f.store.usage("alice").unwrap();
        let second = f.store.put_chunks("alice", &s.id, &chunks).unwrap();
        prop_assert_eq!(second.new_bytes, 0, "a repeated put stores nothing new");
        prop_assert_eq!(first.already_held, 0);
        prop_assert_eq!(second.already_held as usize, first.acknowledged.len(), "a re-send is counted");
        prop_assert_eq!(f.store.usage("alice").unwrap(), usage, "and bills nothing new");
        prop_assert_eq!(first.acknowledged.len(), ids.iter().collect::<BTreeSet<_>>().len());
        prop_assert!(f.store.find_missing("alice", &s.id, &ids).unwrap().is_empty());
        for (id, data) in &chunks {
            prop_assert_eq!(&f.store.get_chunk("alice", id).unwrap()[..], &data[..]);
        }
        // Read as a group, in any order, repeats included: the same bytes, in the order asked.
        let asked: Vec<ChunkId> = ids.iter().rev().chain(ids.iter()).copied().collect();
        let group = f.store.get_chunks("alice", &asked).unwrap();
        prop_assert_eq!(group.iter().map(|(id, _)| *id).collect::<Vec<_>>(), asked);
        for (id, data) in &group {
            prop_assert_eq!(ChunkId::of(data), *id);
        }
        let unique: BTreeMap<ChunkId, usize> = chunks.iter().map(|(id, d)| (*id, d.len())).collect();
        prop_assert_eq!(usage.bytes, unique.values().sum::<usize>() as u64);
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_pack_is_detected_on_read_and_by_scrub(
        datas in arb_chunks(), bit_seed in any::<u64>()
    ) {
        let f = fixture();
        let s = f.store.begin_session("alice", 0, 60_000, None).unwrap();
        let chunks: Vec<_> = datas.iter().map(|d| chunk(d)).collect();
        f.store.put_chunks("alice", &s.id, &chunks).unwrap();
        let packs = f.backend.list("packs/").unwrap();
        prop_assert_eq!(packs.len(), 1, "one batch, one pack");
        let pack = &packs[0];
        let bit = bit_seed % (pack.size * 8);
        f.backend.flip_bit(&pack.name, bit);
        let failing: Vec<ChunkId> = chunks.iter()
            .filter(|(id, _)| f.store.get_chunk("alice", id).is_err())
            .map(|(id, _)| *id)
            .collect::<BTreeSet<_>>().into_iter().collect();
        prop_assert_eq!(failing.len(), 1, "exactly the chunk holding the bit fails to read");
        prop_assert!(matches!(f.store.get_chunk("alice", &failing[0]), Err(StoreError::Corrupt(_))));
        let all: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        let group = f.store.get_chunks("alice", &all);
        prop_assert!(matches!(group, Err(StoreError::Corrupt(id)) if id == failing[0]), "a group read refuses it too");
        let report = f.store.scrub().unwrap();
        prop_assert_eq!(&report.corrupt_chunks, &failing);
        prop_assert_eq!(report.corrupt_packs, vec![pack.name.clone()]);
        // The scrub dropped it: never served, and asked for again by FindMissing.
        let dropped = matches!(f.store.get_chunk("alice", &failing[0]), Err(StoreError::NotFound { .. }));
        prop_assert!(dropped, "a corrupt chunk is not served after the scrub");
        prop_assert_eq!(f.store.find_missing("alice", &s.id, &all).unwrap(), failing.clone());
        for (id, data) in chunks.iter().filter(|(id, _)| !failing.contains(id)) {
            prop_assert_eq!(&f.store.get_chunk("alice", id).unwrap()[..], &data[..]);
        }
        // Sent again, it is whole again.
        let resent: Vec<_> = chunks.iter().filter(|(id, _)| failing.contains(id)).cloned().collect();
        f.store.put_chunks("alice", &s.id, &resent).unwrap();
        prop_assert_eq!(&f.store.get_chunk("alice", &failing[0]).unwrap()[..], &resent[0].1[..]);
    }
}

#[test]
fn find_missing_reports_unowned_chunks_and_another_accounts_chunks() {
    let f = fixture();
    let a = f.store.begin_session("alice", 0, 60_000, None).unwrap();
    let b = f.store.begin_session("bob", 0, 60_000, None).unwrap();
    let (id, data) = chunk(b"alice's photo");
    f.store
        .put_chunks("alice", &a.id, &[(id, data.clone())])
        .unwrap();
    // Bob must not learn that alice holds it.
    assert_eq!(f.store.find_missing("bob", &b.id, &[id]).unwrap(), vec![id]);
    let alice_err = f.store.get_chunk("bob", &id).unwrap_err().to_string();
    let absent_err = f
        .store
        .get_chunk("bob", &ChunkId::of(b"nobody has this"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        alice_err.replace(&id.to_hex(), "ID"),
        absent_err.replace(&ChunkId::of(b"nobody has this").to_hex(), "ID"),
        "an unowned chunk reads exactly like an absent one"
    );
    // Bob uploading the same bytes is answered as for bytes nobody has (the count, and a
    // durable write like theirs: no oracle), and he owns them now.
    let fresh = chunk(b"nobody has these");
    let out = f.store.put_chunks("bob", &b.id, &[(id, data)]).unwrap();
    let other = f.store.put_chunks("bob", &b.id, &[fresh]).unwrap();
    assert_eq!((out.new_bytes, other.new_bytes), (13, 16));
    assert_eq!(
        out.already_held, 0,
        "new to bob even though the store had it"
    );
    assert_eq!(f.store.usage("bob").unwrap().bytes, 13 + 16);
    assert_eq!(f.store.usage("alice").unwrap().bytes, 13);
    assert_eq!(
        f.backend.list("packs/").unwrap().len(),
        3,
        "written again, as fresh bytes are"
    );
    // One location stays indexed (bob's copy is garbage for the next repack); both read it.
    assert_eq!(
        f.store.get_chunk("bob", &id).unwrap(),
        &b"alice's photo"[..]
    );
    assert_eq!(
        f.store.get_chunk("alice", &id).unwrap(),
        &b"alice's photo"[..]
    );
}

#[test]
fn bad_chunks_are_refused_and_change_nothing() {
    let f = fixture_with(StoreConfig {
        max_chunk_bytes: 100,
        ..StoreConfig::default()
    });
    let s = f.store.begin_session("alice", 0, 60_000, None).unwrap();
    let (id, _) = chunk(b"real");
    let wrong = f
        .store
        .put_chunks("alice", &s.id, &[(id, Bytes::from_static(b"fake"))]);
    assert!(matches!(wrong, Err(StoreError::HashMismatch { .. })));
    let big = vec![7u8; 101];
    assert!(matches!(
        f.store.put_chunks("alice", &s.id, &[chunk(&big)]),
        Err(StoreError::ChunkTooLarge { .. })
    ));
    assert!(matches!(
        f.store
            .put_chunks("alice", &s.id, &[(ChunkId::of(b""), Bytes::new())]),
        Err(StoreError::EmptyChunk)
    ));
    assert!(f.backend.list("").unwrap().is_empty());
    assert_eq!(f.store.usage("alice").unwrap(), Usage::default());
}

#[test]
fn sessions_are_leased_idempotent_and_private() {
    let f = fixture();
    let s1 = f
        .store
        .begin_session("alice", 10, 60_000, Some("r1"))
        .unwrap();
    let s2 = f
        .store
        .begin_session("alice", 10, 60_000, Some("r1"))
        .unwrap();
    assert_eq!(s1, s2, "a retried BeginSession returns the same session");
    assert!(matches!(
        f.store.begin_session("alice", 11, 60_000, Some("r1")),
        Err(StoreError::RequestIdReused(_))
    ));
    assert!(matches!(
        f.store.find_missing("bob", &s1.id, &[]),
        Err(StoreError::SessionNotFound(_))
    ));
    f.clock.advance(30_000);
    let renewed = f.store.renew_session("alice", &s1.id, 60_000).unwrap();
    assert_eq!(renewed.expires_at, T0 + 90_000);
    f.clock.advance(61_000);
    assert!(matches!(
        f.store.put_chunks("alice", &s1.id, &[chunk(b"late")]),
        Err(StoreError::SessionExpired(_))
    ));
    let s3 = f.store.begin_session("alice", 0, 60_000, None).unwrap();
    f.store.end_session("alice", &s3.id).unwrap();
    f.store.end_session("alice", &s3.id).unwrap();
    assert!(matches!(
        f.store.find_missing("alice", &s3.id, &[]),
        Err(StoreError::SessionExpired(_))
    ));
}

#[test]
fn manifests_need_owned_chunks_and_round_trip() {
    let f = fixture();
    let s = f.store.begin_session("alice", 0, 60_000, None).unwrap();
    let parts = [chunk(b"first part"), chunk(b"second part")];
    let file = b"first partsecond part";
    let manifest = Manifest::new(
        parts
            .iter()
            .map(|(id, d)| ManifestEntry {
                chunk: *id,
                len: d.len() as u32,
            })
            .collect(),
        ChunkId::of(file),
    );
    match f.store.put_manifest("alice", &s.id, &manifest) {
        Err(StoreError::MissingChunks(ids)) => assert_eq!(ids.len(), 2),
        other => panic!("expected MissingChunks, got {other:?}"),
    }
    f.store.put_chunks("alice", &s.id, &parts[..1]).unwrap();
    match f.store.put_manifest("alice", &s.id, &manifest) {
        Err(StoreError::MissingChunks(ids)) => assert_eq!(ids, vec![parts[1].0]),
        other => panic!("expected MissingChunks, got {other:?}"),
    }
    f.store.put_chunks("alice", &s.id, &parts[1..]).unwrap();
    let id = f.store.put_manifest("alice", &s.id, &manifest).unwrap();
    assert_eq!(id, manifest.id());
    assert_eq!(f.store.put_manifest("alice", &s.id, &manifest).unwrap(), id);
    assert_eq!(f.store.get_manifest("alice", &id).unwrap(), manifest);
    assert!(matches!(
        f.store.get_manifest("bob", &id),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        f.store.reference("bob", &id, "asset/1"),
        Err(StoreError::NotFound { .. })
    ));
    let mut wrong_len = manifest.clone();
    wrong_len.entries[0].len += 1;
    wrong_len.total_len += 1;
    assert!(matches!(
        f.store.put_manifest("alice", &s.id, &wrong_len),
        Err(StoreError::MalformedManifest(_))
    ));
}

#[test]
fn storage_full_writes_nothing_and_the_store_still_serves() {
    let backend = Arc::new(CappedBackend::new(MemoryBackend::new(), 1000).unwrap());
    let store = Store::open(StoreParts {
        backend: backend.clone(),
        index: test_index(None),
        clock: Arc::new(ManualClock::new(T0)),
        entropy: Arc::new(SeededEntropy::new(1)),
        config: StoreConfig::default(),
    })
    .unwrap();
    let s = store.begin_session("alice", 0, 60_000, None).unwrap();
    let small = chunk(&[1u8; 100]);
    store
        .put_chunks("alice", &s.id, std::slice::from_ref(&small))
        .unwrap();
    let big = chunk(&[2u8; 2000]);
    assert!(matches!(
        store.put_chunks("alice", &s.id, std::slice::from_ref(&big)),
        Err(StoreError::StorageFull)
    ));
    assert_eq!(backend.list("").unwrap().len(), 1, "nothing half-written");
    assert_eq!(
        store.find_missing("alice", &s.id, &[big.0]).unwrap(),
        vec![big.0]
    );
    assert_eq!(
        store.get_chunk("alice", &small.0).unwrap(),
        small.1.to_vec()
    );
}

#[test]
fn a_store_reopened_from_disk_serves_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Store::open_local(
            dir.path(),
            Arc::new(ManualClock::new(T0)),
            Arc::new(OsEntropy),
            StoreConfig::default(),
        )
        .unwrap()
    };
    let c = chunk(b"survives a restart");
    {
        let store = open();
        let s = store.begin_session("alice", 0, 60_000, None).unwrap();
        store
            .put_chunks("alice", &s.id, std::slice::from_ref(&c))
            .unwrap();
    }
    let store = open();
    assert_eq!(store.get_chunk("alice", &c.0).unwrap(), c.1.to_vec());
    assert_eq!(store.usage("alice").unwrap().bytes, c.1.len() as u64);
}

#[test]
fn gc_collects_unheld_chunks_after_grace_and_repacks() {
    let f = fixture_with(StoreConfig {
        grace_ms: 1_000,
        ..StoreConfig::default()
    });
    let s = f.store.begin_session("alice", 0, 60_000, None).unwrap();
    let kept = chunk(b"kept by a manifest");
    let dropped = chunk(b"never committed");
    f.store
        .put_chunks("alice", &s.id, std::slice::from_ref(&kept))
        .unwrap();
    f.store
        .put_chunks("alice", &s.id, std::slice::from_ref(&dropped))
        .unwrap();
    let m = Manifest::new(
        vec![ManifestEntry {
            chunk: kept.0,
            len: kept.1.len() as u32,
        }],
        kept.0,
    );
    let mid = f.store.put_manifest("alice", &s.id, &m).unwrap();
    f.store.reference("alice", &mid, "asset/1/v1").unwrap();
    f.store.reference("alice", &mid, "asset/1/v1").unwrap();
    // While the session lives nothing goes.
    assert_eq!(f.store.collect_garbage().unwrap().chunks_collected, 0);
    f.store.end_session("alice", &s.id).unwrap();
    f.clock.advance(1_001);
    let report = f.store.collect_garbage().unwrap();
    assert_eq!(report.chunks_collected, 1);
    assert_eq!(report.sessions_expired, 1);
    assert!(f.store.get_chunk("alice", &dropped.0).is_err());
    assert_eq!(
        f.store.get_chunk("alice", &kept.0).unwrap(),
        kept.1.to_vec()
    );
    // The first GC merged the three small packs; this one dropped a chunk from the merged
    // pack and repacked it, and the merged pack waits out the grace period for readers.
    assert_eq!(f.backend.list("packs/").unwrap().len(), 2);
    f.clock.advance(1_001);
    f.store.collect_garbage().unwrap();
    assert_eq!(
        f.backend.list("packs/").unwrap().len(),
        1,
        "merged into one pack"
    );
    assert_eq!(f.store.get_manifest("alice", &mid).unwrap(), m);
    f.store.release("alice", &mid, "asset/1/v1").unwrap();
    f.store.release("alice", &mid, "asset/1/v1").unwrap();
    let report = f.store.collect_garbage().unwrap();
    assert_eq!(report.chunks_collected, 2, "chunk and manifest");
    assert_eq!(f.store.usage("alice").unwrap(), Usage::default());
}

/// Operations of the GC model test.
#[derive(Debug, Clone)]
enum Op {
    Begin,
    Put {
        session: usize,
        chunks: Vec<u8>,
    },
    FindMissing {
        session: usize,
        chunks: Vec<u8>,
    },
    Manifest {
        session: usize,
        chunks: Vec<u8>,
        holder: u8,
    },
    Release {
        holder: u8,
    },
    End {
        session: usize,
    },
    Advance {
        ms: i64,
    },
    Gc,
}

fn arb_op() -> impl Strategy<Value = Op> {
    let ids = || proptest::collection::vec(0u8..24, 1..6);
    prop_oneof![
        1 => Just(Op::Begin),
        4 => (0usize..4, ids()).prop_map(|(session, chunks)| Op::Put { session, chunks }),
        2 => (0usize..4, ids()).prop_map(|(session, chunks)| Op::FindMissing { session, chunks }),
        2 => (0usize..4, ids(), 0u8..4).prop_map(|(session, chunks, holder)| Op::Manifest { session, chunks, holder }),
        1 => (0u8..4).prop_map(|holder| Op::Release { holder }),
        1 => (0usize..4).prop_map(|session| Op::End { session }),
        2 => (0i64..40_000).prop_map(|ms| Op::Advance { ms }),
        3 => Just(Op::Gc),
    ]
}

fn data_of(n: u8) -> Vec<u8> {
    // Sizes vary so packs are sometimes "small" and sometimes not.
    vec![n; 100 + usize::from(n) * 37]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(96)))]

    /// GC never removes a chunk that a live session or a referenced manifest holds,
    /// under random interleavings of uploads, GC and repacking.
    #[test]
    fn gc_never_collects_a_held_chunk(
        ops in proptest::collection::vec(arb_op(), 1..60),
        on_disk in any::<bool>(),
    ) {
        // Half the cases index on disk: there lookups read on connections of their own.
        let dir = tempfile::tempdir().unwrap();
        let f = fixture_indexed_at(StoreConfig {
            grace_ms: 5_000,
            min_session_ttl_ms: 10_000,
            small_pack_bytes: 3_000,
            pack_target_bytes: 6_000,
            ..StoreConfig::default()
        }, on_disk.then(|| dir.path().join("index.sqlite")));
        // Model: per session, its pins and the time its hold lapses; per holder, the manifest's chunks.
        let mut sessions: Vec<(String, BTreeSet<u8>)> = Vec::new();
        let mut refs: BTreeMap<u8, (ManifestId, BTreeSet<u8>)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Begin => {
                    let s = f.store.begin_session("alice", 0, 20_000, None).unwrap();
                    sessions.push((s.id, BTreeSet::new()));
                }
                Op::Put { session, chunks } => {
                    let Some((sid, pins)) = sessions.get_mut(session) else { continue };
                    let batch: Vec<_> = chunks.iter().map(|n| chunk(&data_of(*n))).collect();
                    if f.store.put_chunks("alice", sid, &batch).is_ok() {
                        pins.extend(chunks);
                    }
                }
                Op::FindMissing { session, chunks } => {
                    let Some((sid, pins)) = sessions.get_mut(session) else { continue };
                    let ids: Vec<_> = chunks.iter().map(|n| ChunkId::of(&data_of(*n))).collect();
                    if let Ok(missing) = f.store.find_missing("alice", sid, &ids) {
                        for n in chunks {
                            if !missing.contains(&ChunkId::of(&data_of(n))) {
                                pins.insert(n);
                            }
                        }
                    }
                }
                Op::Manifest { session, chunks, holder } => {
                    let Some((sid, pins)) = sessions.get_mut(session) else { continue };
                    let entries = chunks.iter().map(|n| ManifestEntry {
                        chunk: ChunkId::of(&data_of(*n)),
                        len: data_of(*n).len() as u32,
                    }).collect();
                    let m = Manifest::new(entries, ChunkId::of(&[holder]));
                    if let Ok(mid) = f.store.put_manifest("alice", sid, &m) {
                        f.store.reference("alice", &mid, &format!("h{holder}")).unwrap();
                        pins.extend(chunks.iter().copied());
                        if let Some((old, _)) = refs.insert(holder, (mid, chunks.into_iter().collect()))
                            && old != mid {
                                f.store.release("alice", &old, &format!("h{holder}")).unwrap();
                            }
                    }
                }
                Op::Release { holder } => {
                    if let Some((mid, _)) = refs.remove(&holder) {
                        f.store.release("alice", &mid, &format!("h{holder}")).unwrap();
                    }
                }
                Op::End { session } => {
                    if let Some((sid, _)) = sessions.get(session) {
                        let _ = f.store.end_session("alice", sid);
                    }
                }
                Op::Advance { ms } => f.clock.advance(ms),
                Op::Gc => {
                    f.store.collect_garbage().unwrap();
                }
            }
            // Every chunk held by a session that still accepts work, or by a reference, reads back intact.
            let mut held: BTreeSet<u8> = refs.values().flat_map(|(_, c)| c.iter().copied()).collect();
            for (sid, pins) in &sessions {
                if f.store.find_missing("alice", sid, &[]).is_ok() {
                    held.extend(pins.iter().copied());
                }
            }
            for n in held {
                let data = data_of(n);
                prop_assert_eq!(f.store.get_chunk("alice", &ChunkId::of(&data)).unwrap(), data);
            }
            for (mid, _) in refs.values() {
                prop_assert!(f.store.get_manifest("alice", mid).is_ok());
            }
        }
        prop_assert!(f.store.scrub().unwrap().corrupt_chunks.is_empty());
    }
}

/// Uploads of one account side by side, sharing chunks, with a sweep among them: on
/// PostgreSQL they commit on several writer connections at once. None may deadlock, lose
/// a chunk or bill one twice.
#[test]
fn concurrent_batches_sharing_chunks_and_a_sweep_among_them_lose_and_double_nothing() {
    let f = Arc::new(fixture_with(StoreConfig {
        grace_ms: 0,
        ..StoreConfig::default()
    }));
    let shared: Vec<(ChunkId, Bytes)> = (0..40u16)
        .map(|i| chunk(format!("shared chunk {i}").as_bytes()))
        .collect();
    let threads: Vec<_> = (0..4u16)
        .map(|t| {
            let f = f.clone();
            let mut mine = shared.clone();
            // Each writer meets the shared chunks in its own order.
            mine.rotate_left(usize::from(t) * 10);
            mine.extend((0..10u16).map(|i| chunk(format!("own {t} {i}").as_bytes())));
            std::thread::spawn(move || {
                let s = f.store.begin_session("alice", 0, 60_000, None).unwrap();
                for batch in mine.chunks(7) {
                    f.store.put_chunks("alice", &s.id, batch).unwrap();
                }
                let whole: Vec<u8> = mine.iter().flat_map(|(_, d)| d.to_vec()).collect();
                let manifest = Manifest::from_chunks(&mine, ChunkId::of(&whole));
                let m = f.store.put_manifest("alice", &s.id, &manifest).unwrap();
                f.store
                    .reference("alice", &m, &format!("asset-{t}"))
                    .unwrap();
                f.store.end_session("alice", &s.id).unwrap();
                mine
            })
        })
        .chain(std::iter::once({
            let f = f.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    f.store.collect_garbage().unwrap();
                }
                Vec::new()
            })
        }))
        .collect();
    let mut all: BTreeMap<ChunkId, Bytes> = BTreeMap::new();
    for t in threads {
        all.extend(t.join().expect("no writer failed"));
    }
    f.clock.advance(1);
    f.store.collect_garbage().unwrap();
    for (id, data) in &all {
        assert_eq!(&f.store.get_chunk("alice", id).unwrap()[..], &data[..]);
    }
    let usage = f.store.usage("alice").unwrap();
    let data_bytes: u64 = all.values().map(|d| d.len() as u64).sum();
    assert_eq!(
        usage.chunks,
        all.len() as u64 + 4,
        "each chunk billed once, plus 4 manifests"
    );
    assert!(usage.bytes > data_bytes, "the manifests are billed too");
}

#[test]
fn a_pack_kept_in_memory_answers_reads_but_a_recheck_asks_what_is_at_rest() {
    let f = fixture_with(StoreConfig {
        recent_pack_bytes: 1 << 20,
        ..StoreConfig::default()
    });
    let s = f.store.begin_session("alice", 0, 60_000, None).unwrap();
    let chunks: Vec<_> = (0..3u8).map(|i| chunk(&[i; 1000])).collect();
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    f.store.put_chunks("alice", &s.id, &chunks).unwrap();
    let pack = f.backend.list("packs/").unwrap().remove(0);
    // Rot at rest, in the middle chunk's bytes.
    f.backend.flip_bit(&pack.name, pack.size / 2 * 8);

    // The pack as written is still in memory: reads get the verified bytes, with no
    // request to the backend.
    let read = f.store.get_chunks("alice", &ids).unwrap();
    assert_eq!(read, chunks);

    // A reader's report is checked against the backend itself, never the copy in memory.
    let recheck = f.store.recheck("alice", &ids).unwrap();
    assert_eq!(recheck.corrupt, vec![ids[1]]);
    assert!(matches!(
        f.store.get_chunk("alice", &ids[1]),
        Err(StoreError::NotFound { .. })
    ));
    assert!(f.store.get_chunk("alice", &ids[0]).is_ok());
}
