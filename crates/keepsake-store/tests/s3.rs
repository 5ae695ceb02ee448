//! The store on a real S3-compatible server (s3s-fs, in this process): the backend's
//! contract, and whole stores whose packs live in the bucket — on SQLite, or on the
//! PostgreSQL database `KEEPSAKE_TEST_POSTGRES` names.

use bytes::Bytes;
use keepsake_store::*;
use keepsake_testkit::s3::{ACCESS_KEY, InProcessS3, SECRET_KEY};
use std::sync::Arc;

fn bucket(dir: &std::path::Path, prefix: &str) -> (InProcessS3, S3Backend) {
    let server = InProcessS3::start(dir, "photos").unwrap();
    let location = S3Location::parse(&server.url("photos", prefix)).unwrap();
    let backend = S3Backend::connect_with(&location, Some((ACCESS_KEY, SECRET_KEY))).unwrap();
    (server, backend)
}

#[test]
fn the_bucket_backend_keeps_the_backend_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, b) = bucket(dir.path(), "k");
    b.put("packs/aa/one", b"hello world").unwrap();
    b.put_parts("packs/bb/two", &[b"ab", b"cd"]).unwrap();
    assert_eq!(b.get("packs/bb/two").unwrap(), b"abcd");
    assert_eq!(b.get_range("packs/aa/one", 6, 5).unwrap(), b"world");
    assert!(
        b.get_range("packs/aa/one", 6, 50).is_err(),
        "a short read is an error"
    );
    // Neighbours in one request, each read answered alone and in the order asked.
    let got = b.get_ranges(&[
        ("packs/bb/two", 2, 2),
        ("packs/aa/one", 6, 5),
        ("packs/aa/one", 0, 5),
        ("packs/aa/one", 9, 10),
        ("packs/cc/none", 0, 1),
    ]);
    assert_eq!(got[0].as_deref().unwrap(), b"cd");
    assert_eq!(got[1].as_deref().unwrap(), b"world");
    assert_eq!(got[2].as_deref().unwrap(), b"hello");
    assert!(got[3].is_err(), "a read past the end fails alone");
    assert!(matches!(got[4], Err(BackendError::NotFound(_))));
    assert!(matches!(
        b.get("packs/cc/none"),
        Err(BackendError::NotFound(_))
    ));
    let mut names: Vec<_> = b
        .list("packs/")
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![("packs/aa/one".into(), 11), ("packs/bb/two".into(), 4)]
    );
    // A create never overwrites another object of that name; the same object again is fine.
    assert!(matches!(
        b.put("packs/aa/one", b"other bytes"),
        Err(BackendError::Exists(_))
    ));
    b.put("packs/aa/one", b"hello world").unwrap();
    assert_eq!(b.get("packs/aa/one").unwrap(), b"hello world");
    b.delete("packs/aa/one").unwrap();
    b.delete("packs/aa/one").unwrap();
    assert_eq!(b.list("packs/").unwrap().len(), 1);
}

#[test]
fn a_missing_bucket_or_wrong_keys_fail_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessS3::start(dir.path(), "photos").unwrap();
    let missing = S3Location::parse(&server.url("nobucket", "")).unwrap();
    let err = S3Backend::connect_with(&missing, Some((ACCESS_KEY, SECRET_KEY))).unwrap_err();
    assert!(matches!(err, BackendError::Denied(_)), "{err}");
    let here = S3Location::parse(&server.url("photos", "")).unwrap();
    let err = S3Backend::connect_with(&here, Some((ACCESS_KEY, "wrong"))).unwrap_err();
    assert!(matches!(err, BackendError::Denied(_)), "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");
    let nobody = S3Location::parse("s3://photos?endpoint=http://127.0.0.1:9").unwrap();
    let err = S3Backend::connect_with(&nobody, Some((ACCESS_KEY, SECRET_KEY))).unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err}");
}

fn index() -> IndexAt {
    match std::env::var("KEEPSAKE_TEST_POSTGRES") {
        Ok(url) => IndexAt::Postgres {
            url,
            schema: format!("s3test_{}", std::process::id()),
        },
        Err(_) => IndexAt::Memory,
    }
}

#[test]
fn a_store_on_the_bucket_round_trips_collects_garbage_and_scrubs() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, backend) = bucket(dir.path(), "");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = Store::open(StoreParts {
        backend: Arc::new(backend),
        index: index(),
        clock: clock.clone(),
        entropy: Arc::new(SeededEntropy::new(3)),
        config: StoreConfig {
            grace_ms: 1,
            ..StoreConfig::default()
        },
    })
    .unwrap();
    let s = store.begin_session("alice", 0, 60_000, None).unwrap();
    let chunks: Vec<(ChunkId, Bytes)> = (0..50u8)
        .map(|i| {
            let data = Bytes::from(vec![i; 1000 + usize::from(i)]);
            (ChunkId::of(&data), data)
        })
        .collect();
    let put = store.put_chunks("alice", &s.id, &chunks).unwrap();
    assert_eq!(put.acknowledged.len(), 50);
    for (id, data) in &chunks {
        assert_eq!(store.get_chunk("alice", id).unwrap(), data.to_vec());
    }
    let backwards: Vec<ChunkId> = chunks.iter().rev().map(|(id, _)| *id).collect();
    let group = store.get_chunks("alice", &backwards).unwrap();
    assert!(group.iter().zip(chunks.iter().rev()).all(|(a, b)| a == b));
    assert_eq!(group.len(), 50);
    let scrub = store.scrub().unwrap();
    assert_eq!(scrub.corrupt_chunks, Vec::<ChunkId>::new());
    assert_eq!(scrub.chunks_verified, 50);
    store.end_session("alice", &s.id).unwrap();
    clock.advance(10_000);
    let gc = store.collect_garbage().unwrap();
    assert_eq!(gc.chunks_collected, 50, "{gc:?}");
    assert!(store.get_chunk("alice", &chunks[0].0).is_err());
}
