//! The cloud end to end in one process: accounts, tokens, devices, reservations, quota
//! edges, commits rooted in the store, purges and account deletion released to its GC.

mod common;
use common::open_library;

use bytes::Bytes;
use keepsake_library::tokens::TokenError;
use keepsake_library::*;
use keepsake_store::*;
use std::sync::Arc;

const T0: i64 = 1_700_000_000_000;
const HOUR: i64 = 3600 * 1000;

struct Fixture {
    cloud: Cloud,
    store: Arc<Store>,
    clock: Arc<ManualClock>,
    backend: Arc<MemoryBackend>,
}

fn config() -> LibraryConfig {
    LibraryConfig {
        // The cheapest Argon2id cost: these tests are about flows, not hashing strength.
        kdf: KdfCost {
            memory_kib: 64,
            iterations: 1,
        },
        plans: vec![
            Plan {
                name: "tiny".into(),
                limit_bytes: 100_000,
            },
            Plan {
                name: "big".into(),
                limit_bytes: 10_000_000,
            },
        ],
        min_client_version: ClientVersion(1, 2, 0),
        ..LibraryConfig::default()
    }
}

fn fixture() -> Fixture {
    let clock = Arc::new(ManualClock::new(T0));
    let backend = Arc::new(MemoryBackend::new());
    let store = Arc::new(
        Store::open(StoreParts {
            backend: backend.clone(),
            index: common::store_index(),
            clock: clock.clone(),
            entropy: Arc::new(SeededEntropy::new(7)),
            config: StoreConfig::default(),
        })
        .unwrap(),
    );
    let library = open_library(
        None,
        clock.clone(),
        Arc::new(SeededEntropy::new(8)),
        config(),
    )
    .unwrap();
    let cloud = Cloud::new(library, store.clone()).unwrap();
    Fixture {
        cloud,
        store,
        clock,
        backend,
    }
}

/// A file of `len` bytes seeded by `seed`, cut into 4 KiB chunks.
fn file(seed: u8, len: usize) -> (Vec<(ChunkId, Bytes)>, Manifest) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let chunks: Vec<(ChunkId, Bytes)> = data
        .chunks(4096)
        .map(|c| (ChunkId::of(c), Bytes::copy_from_slice(c)))
        .collect();
    let manifest = Manifest::from_chunks(&chunks, ChunkId::of(&data));
    (chunks, manifest)
}

impl Fixture {
    /// Uploads a file under a fresh reservation; returns the manifest id and the reservation.
    fn upload(
        &self,
        account: &str,
        seed: u8,
        len: usize,
    ) -> Result<(ManifestId, Reservation), LibraryError> {
        let reservation = self.cloud.begin_upload(account, len as u64 + 1024, None)?;
        let (chunks, manifest) = file(seed, len);
        self.store
            .put_chunks(account, &reservation.reservation_id, &chunks)?;
        let id = self
            .store
            .put_manifest(account, &reservation.reservation_id, &manifest)?;
        Ok((id, reservation))
    }

    fn commit(
        &self,
        account: &str,
        request_id: &str,
        manifest: ManifestId,
        reservation: Option<&Reservation>,
    ) -> Result<Committed, LibraryError> {
        self.commit_to(account, request_id, manifest, reservation, None)
    }

    /// A commit naming `asset` (a new version, or a repair), or a new asset.
    fn commit_to(
        &self,
        account: &str,
        request_id: &str,
        manifest: ManifestId,
        reservation: Option<&Reservation>,
        asset: Option<&str>,
    ) -> Result<Committed, LibraryError> {
        self.cloud.commit_asset(
            account,
            &CommitAsset {
                request_id: request_id.into(),
                asset_id: asset.map(str::to_string),
                base_version: None,
                manifest,
                kind: AssetKind::Photo,
                capture_time: Some(T0),
                width: Some(4032),
                height: Some(3024),
                original_name: "IMG_0001.HEIC".into(),
                path: String::new(),
                device: "phone".into(),
                reservation_id: reservation.map(|r| r.reservation_id.clone()),
                manifest_upload: None,
                details: Default::default(),
            },
        )
    }

    /// Ends every lease and lets the store's GC take whatever nothing holds.
    fn settle(&self) {
        self.clock.advance(2 * 24 * HOUR);
        self.cloud.maintain().unwrap();
        self.store.collect_garbage().unwrap();
        self.clock.advance(2 * 24 * HOUR);
        self.store.collect_garbage().unwrap();
    }

    fn used(&self, account: &str) -> u64 {
        self.store.usage(account).unwrap().bytes
    }
}

#[test]
fn sign_in_checks_the_password_and_the_token_verifies_everywhere() {
    let f = fixture();
    let info = f
        .cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    assert_eq!(info.plan.name, "tiny");
    assert_eq!(info.used_bytes, 0);
    assert_eq!(
        f.cloud
            .create_account("alice", "another one", None, false)
            .unwrap_err()
            .reason(),
        "ACCOUNT_EXISTS"
    );
    for (name, password) in [("alice", "wrong horse"), ("nobody", "correct horse")] {
        let err = f.cloud.sign_in(name, password).unwrap_err();
        assert_eq!(err.reason(), "UNAUTHENTICATED");
        // Unknown name and wrong password say the same thing.
        assert_eq!(err.to_string(), "the account name or password is wrong");
    }
    let issued = f.cloud.sign_in("alice", "correct horse").unwrap();
    let claims = f.cloud.verifier().verify(&issued.token, T0).unwrap();
    assert_eq!(claims.account, "alice");
    assert_eq!(claims.device, None);
    assert!(!claims.admin);
    f.cloud
        .library()
        .change_password("alice", "correct horse", "battery staple")
        .unwrap();
    assert!(f.cloud.sign_in("alice", "correct horse").is_err());
    f.cloud.sign_in("alice", "battery staple").unwrap();
}

#[test]
fn rotating_the_signing_key_logs_nobody_out_until_their_token_expires() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let verifier = f.cloud.verifier();
    let old = f.cloud.sign_in("alice", "correct horse").unwrap();
    let new_kid = f.cloud.rotate_signing_key().unwrap();
    let new = f.cloud.sign_in("alice", "correct horse").unwrap();
    assert!(new.token.starts_with(&format!("ks1.{new_kid}.")));
    assert!(!old.token.contains(&new_kid));
    verifier.verify(&old.token, T0 + 1).unwrap();
    verifier.verify(&new.token, T0 + 1).unwrap();
    // Once every token the old key signed has expired, the key itself is dropped.
    f.clock.advance(16 * 60 * 1000);
    f.cloud.maintain().unwrap();
    assert_eq!(f.cloud.public_keys().unwrap().keys.len(), 1);
    assert!(matches!(
        verifier.verify(&old.token, f.clock.now_ms()),
        Err(TokenError::UnknownKey(_))
    ));
    assert!(matches!(
        verifier.verify(&new.token, f.clock.now_ms()),
        Err(TokenError::Expired { .. })
    ));
}

#[test]
fn devices_enrol_refresh_and_revocation_stops_them() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let too_old = f
        .cloud
        .enroll_device("alice", "correct horse", "Old phone", "ios", "1.1.9")
        .unwrap_err();
    assert_eq!(too_old.reason(), "CLIENT_TOO_OLD");
    assert!(too_old.to_string().contains("1.2.0"), "{too_old}");
    let enrolled = f
        .cloud
        .enroll_device("alice", "correct horse", "Alice's phone", "ios", "1.2.0")
        .unwrap();
    let claims = f
        .cloud
        .verifier()
        .verify(&enrolled.access.token, T0)
        .unwrap();
    assert_eq!(claims.device.as_deref(), Some(enrolled.device_id.as_str()));
    let refreshed = f
        .cloud
        .refresh_token(&enrolled.device_id, &enrolled.device_token, "1.3.0")
        .unwrap();
    f.cloud.verifier().verify(&refreshed.token, T0).unwrap();
    assert_eq!(
        f.cloud
            .refresh_token(&enrolled.device_id, "not the token", "1.3.0")
            .unwrap_err()
            .reason(),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        f.cloud
            .refresh_token(&enrolled.device_id, &enrolled.device_token, "0.9")
            .unwrap_err()
            .reason(),
        "CLIENT_TOO_OLD"
    );
    let report = DeviceReport {
        state: "blocked".into(),
        reason: Some("WAITING_FOR_WIFI".into()),
        pending_items: 12,
        network: "cellular".into(),
        ..DeviceReport::default()
    };
    f.cloud
        .library()
        .report_device("alice", &enrolled.device_id, &report)
        .unwrap();
    f.clock.advance(60_000);
    f.cloud
        .library()
        .report_device("alice", &enrolled.device_id, &report)
        .unwrap();
    let devices = f.cloud.library().list_devices("alice").unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].client_version, "1.3.0");
    assert_eq!(devices[0].report.as_ref(), Some(&report));
    // Same reason twice: "since" is the first report, contact is the latest.
    assert_eq!(devices[0].reason_since, Some(T0));
    assert_eq!(devices[0].last_seen, Some(T0 + 60_000));
    assert_eq!(devices[0].silent_since, None);
    // A day without a word: flagged silent since its last contact; a call clears it.
    f.clock.advance(keepsake_library::SILENT_AFTER_MS + 1);
    let devices = f.cloud.library().list_devices("alice").unwrap();
    assert_eq!(devices[0].silent_since, Some(T0 + 60_000));
    f.cloud
        .library()
        .report_device("alice", &enrolled.device_id, &report)
        .unwrap();
    let devices = f.cloud.library().list_devices("alice").unwrap();
    assert_eq!(devices[0].silent_since, None);
    f.cloud
        .library()
        .revoke_device("alice", &enrolled.device_id)
        .unwrap();
    // Only the token's holder hears why: revoked, enrol again; a wrong token is unknown.
    assert_eq!(
        f.cloud
            .refresh_token(&enrolled.device_id, &enrolled.device_token, "1.3.0")
            .unwrap_err()
            .reason(),
        "DEVICE_REVOKED"
    );
    assert_eq!(
        f.cloud
            .refresh_token(&enrolled.device_id, "not the token", "1.3.0")
            .unwrap_err()
            .reason(),
        "UNAUTHENTICATED"
    );
    // A revoked device is never silent: nobody waits for it.
    f.clock.advance(keepsake_library::SILENT_AFTER_MS + 1);
    let devices = f.cloud.library().list_devices("alice").unwrap();
    assert_eq!(devices[0].silent_since, None);
    assert_eq!(
        f.cloud
            .library()
            .check_device("alice", &enrolled.device_id)
            .unwrap_err()
            .reason(),
        "DEVICE_REVOKED"
    );
    f.cloud
        .library()
        .remove_device("alice", &enrolled.device_id)
        .unwrap();
    assert!(f.cloud.library().list_devices("alice").unwrap().is_empty());
    // Another account cannot see or revoke the device.
    f.cloud
        .create_account("bob", "correct horse", None, false)
        .unwrap();
    assert!(f.cloud.library().list_devices("bob").unwrap().is_empty());
    assert_eq!(
        f.cloud
            .library()
            .revoke_device("bob", &enrolled.device_id)
            .unwrap_err()
            .reason(),
        "NOT_FOUND"
    );
}

#[test]
fn begin_upload_refuses_over_quota_before_a_byte_is_sent() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let whole = f.cloud.begin_upload("alice", 100_000, Some("r1")).unwrap();
    // A retry is the same reservation.
    assert_eq!(
        f.cloud.begin_upload("alice", 100_000, Some("r1")).unwrap(),
        whole
    );
    match f.cloud.begin_upload("alice", 1, None).unwrap_err() {
        LibraryError::QuotaExceeded {
            used_bytes,
            reserved_bytes,
            needed_bytes,
            limit_bytes,
        } => {
            assert_eq!(
                (used_bytes, reserved_bytes, needed_bytes, limit_bytes),
                (0, 100_000, 1, 100_000)
            );
        }
        other => panic!("expected QUOTA_EXCEEDED, got {other}"),
    }
    assert_eq!(
        f.cloud.account_info("alice").unwrap().reserved_bytes,
        100_000
    );
    // A reservation that is not renewed lapses and frees its quota.
    f.clock.advance(HOUR);
    f.cloud.maintain().unwrap();
    assert_eq!(f.cloud.account_info("alice").unwrap().reserved_bytes, 0);
    f.cloud.begin_upload("alice", 100_000, None).unwrap();
}

#[test]
fn quota_edges_exactly_at_the_limit_one_byte_over_and_dedup_counted_once() {
    // Exactly at the limit: the commit that brings usage to the limit goes through.
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", Some("big"), false)
        .unwrap();
    let (manifest, reservation) = f.upload("alice", 1, 50_000).unwrap();
    let used = f.used("alice");
    let mut plans = config().plans;
    plans[0].limit_bytes = used;
    let at_limit = Fixture {
        cloud: Cloud::new(
            open_library(
                None,
                f.clock.clone(),
                Arc::new(SeededEntropy::new(9)),
                LibraryConfig {
                    plans: plans.clone(),
                    ..config()
                },
            )
            .unwrap(),
            f.store.clone(),
        )
        .unwrap(),
        store: f.store.clone(),
        clock: f.clock.clone(),
        backend: f.backend.clone(),
    };
    at_limit
        .cloud
        .create_account("alice", "correct horse", Some("tiny"), false)
        .unwrap();
    let first = at_limit
        .commit("alice", "c1", manifest, Some(&reservation))
        .unwrap();
    // Dedup within the account: the same content again (a copy of the photo) is an asset
    // of its own, but no new bytes.
    let (again, _) = f.upload("alice", 1, 50_000).unwrap_or_else(|_| {
        // At the limit BeginUpload refuses, so send under the old reservation instead.
        let (chunks, m) = file(1, 50_000);
        f.store
            .put_chunks("alice", &reservation.reservation_id, &chunks)
            .unwrap();
        (
            f.store
                .put_manifest("alice", &reservation.reservation_id, &m)
                .unwrap(),
            reservation.clone(),
        )
    });
    assert_eq!(f.used("alice"), used);
    let second = at_limit.commit("alice", "c2", again, None).unwrap();
    assert!(!second.deduplicated);
    assert_ne!(second.asset_id, first.asset_id);
    assert_eq!(second.path, "IMG_0001 (2).HEIC");
    assert_eq!(f.used("alice"), used);

    // One byte over: the same upload against a limit one byte smaller is refused, and
    // the reference taken for it is released.
    plans[0].limit_bytes = used - 1;
    let over = Cloud::new(
        open_library(
            None,
            f.clock.clone(),
            Arc::new(SeededEntropy::new(10)),
            LibraryConfig { plans, ..config() },
        )
        .unwrap(),
        f.store.clone(),
    )
    .unwrap();
    over.create_account("alice", "correct horse", Some("tiny"), false)
        .unwrap();
    let err = over
        .commit_asset(
            "alice",
            &CommitAsset {
                request_id: "c1".into(),
                asset_id: None,
                base_version: None,
                manifest,
                kind: AssetKind::Photo,
                capture_time: None,
                width: None,
                height: None,
                original_name: "IMG_0001.HEIC".into(),
                path: String::new(),
                device: "phone".into(),
                reservation_id: None,
                manifest_upload: None,
                details: Default::default(),
            },
        )
        .unwrap_err();
    match err {
        LibraryError::QuotaExceeded {
            used_bytes,
            limit_bytes,
            ..
        } => assert_eq!((used_bytes, limit_bytes), (used, used - 1)),
        other => panic!("expected QUOTA_EXCEEDED, got {other}"),
    }
    assert!(
        over.library()
            .list_changes("alice", 0, 10)
            .unwrap()
            .changes
            .is_empty()
    );
    assert_eq!(
        over.begin_upload("alice", 1, None).unwrap_err().reason(),
        "QUOTA_EXCEEDED"
    );
}

#[test]
fn a_retried_commit_returns_the_first_answer_and_a_reused_id_is_refused() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let (m1, r) = f.upload("alice", 1, 10_000).unwrap();
    let (m2, _) = f.upload("alice", 2, 10_000).unwrap();
    let first = f.commit("alice", "c1", m1, Some(&r)).unwrap();
    assert_eq!(f.commit("alice", "c1", m1, Some(&r)).unwrap(), first);
    assert_eq!(
        f.commit("alice", "c1", m2, None).unwrap_err().reason(),
        "REQUEST_ID_REUSED"
    );
    let page = f.cloud.library().list_changes("alice", 0, 10).unwrap();
    assert_eq!(page.changes.len(), 1);
    // The reservation paid for the commit.
    let left = f.cloud.account_info("alice").unwrap().reserved_bytes;
    assert_eq!(left, 2 * (10_000 + 1024) - 10_000);
}

#[test]
fn committed_content_survives_gc_and_purged_content_is_collected() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let (m, r) = f.upload("alice", 3, 20_000).unwrap();
    let c = f.commit("alice", "c1", m, Some(&r)).unwrap();
    let used = f.used("alice");
    f.settle();
    assert_eq!(
        f.used("alice"),
        used,
        "a live version's content is a GC root"
    );
    f.cloud.library().trash("alice", &c.asset_id).unwrap();
    f.settle();
    assert_eq!(
        f.used("alice"),
        used,
        "Recently Deleted keeps its content for 30 days"
    );
    f.clock.advance(30 * 24 * HOUR);
    f.settle();
    assert_eq!(f.used("alice"), 0, "expired trash is purged and released");
    let found = f
        .cloud
        .library()
        .find_by_content("alice", &[file(3, 20_000).1.file_hash])
        .unwrap();
    assert!(found[0].purged_at.is_some(), "the purge leaves a tombstone");
}

#[test]
fn a_failed_commit_leaves_nothing_rooted() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let (m, _) = f.upload("alice", 4, 20_000).unwrap();
    let err = f
        .cloud
        .commit_asset(
            "alice",
            &CommitAsset {
                request_id: "c1".into(),
                asset_id: Some("no-such-asset".into()),
                base_version: Some(1),
                manifest: m,
                kind: AssetKind::Photo,
                capture_time: None,
                width: None,
                height: None,
                original_name: "x.jpg".into(),
                path: String::new(),
                device: "phone".into(),
                reservation_id: None,
                manifest_upload: None,
                details: Default::default(),
            },
        )
        .unwrap_err();
    assert_eq!(err.reason(), "NOT_FOUND");
    f.settle();
    assert_eq!(f.used("alice"), 0);
    // Another account's manifest is as absent as a made-up one.
    let (m, _) = f.upload("alice", 5, 1_000).unwrap();
    f.cloud
        .create_account("bob", "correct horse", None, false)
        .unwrap();
    assert_eq!(
        f.commit("bob", "c1", m, None).unwrap_err().reason(),
        "NOT_FOUND"
    );
}

#[test]
fn deleting_an_account_releases_everything_it_owned() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    f.cloud
        .create_account("bob", "correct horse", None, false)
        .unwrap();
    for (i, account) in ["alice", "alice", "bob"].iter().enumerate() {
        let (m, r) = f.upload(account, 10 + i as u8, 30_000).unwrap();
        f.commit(account, &format!("c{i}"), m, Some(&r)).unwrap();
    }
    let bob = f.used("bob");
    assert_eq!(
        f.cloud
            .delete_account("alice", "wrong horse")
            .unwrap_err()
            .reason(),
        "UNAUTHENTICATED"
    );
    f.cloud.delete_account("alice", "correct horse").unwrap();
    assert!(f.cloud.sign_in("alice", "correct horse").is_err());
    f.settle();
    assert_eq!(f.used("alice"), 0);
    assert_eq!(f.used("bob"), bob, "other accounts keep everything");
    assert!(
        f.cloud
            .library()
            .list_changes("alice", 0, 10)
            .unwrap()
            .changes
            .is_empty()
    );
}

/// The derivative queue: each commit queues a job; a made file is stored, listed on the
/// asset and announced in the feed; an unreadable file is reported as failed and holds up
/// nothing; a passing failure is retried later; a purge releases the derivatives too.
#[test]
fn derivatives_are_made_after_commit_failures_are_reported_and_purges_release_them() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let mut ids = Vec::new();
    for seed in 1..=3u8 {
        let (m, r) = f.upload("alice", seed, 20_000).unwrap();
        ids.push(
            f.commit("alice", &format!("c{seed}"), m, Some(&r))
                .unwrap()
                .asset_id,
        );
    }
    let before = f.used("alice");
    let (good, broken, flaky) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    assert_eq!(
        f.cloud
            .library()
            .get_asset("alice", &good)
            .unwrap()
            .derivation,
        "queued"
    );
    let cursor = f
        .cloud
        .library()
        .list_changes("alice", 0, 1000)
        .unwrap()
        .cursor;
    let tries = std::sync::atomic::AtomicU32::new(0);
    let maker = |job: &DeriveJob, original: Original<'_>| {
        let Original::Still(original) = original else {
            panic!("a still is handed over in memory");
        };
        assert_eq!(
            original.len(),
            20_000,
            "the worker is handed the verified original"
        );
        if job.asset_id == broken {
            Outcome::Unreadable("not an image".into())
        } else if job.asset_id == flaky
            && tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
        {
            Outcome::Retry("disk busy".into())
        } else {
            Outcome::Made(vec![
                MadeFile {
                    role: "thumbnail".into(),
                    bytes: vec![1; 3000],
                    width: 256,
                    height: 192,
                },
                MadeFile {
                    role: "preview".into(),
                    bytes: vec![2; 90_000],
                    width: 2048,
                    height: 1536,
                },
            ])
        }
    };
    let first = f.cloud.run_derivations(8, &maker).unwrap();
    assert_eq!((first.done, first.failed, first.retried), (1, 1, 1));
    let asset = f.cloud.library().get_asset("alice", &good).unwrap();
    assert_eq!(asset.derivation, "done");
    let roles: Vec<&str> = asset.derived.iter().map(|d| d.role.as_str()).collect();
    assert_eq!(roles, ["preview", "thumbnail"]);
    let preview = asset.derived.iter().find(|d| d.role == "preview").unwrap();
    assert_eq!(
        (preview.width, preview.height, preview.size),
        (2048, 1536, 90_000)
    );
    assert_eq!(
        {
            let mut stored = Vec::new();
            ChunkStore::copy_file(&*f.store, "alice", &preview.manifest, u64::MAX, &mut stored)
                .unwrap();
            stored
        },
        vec![2; 90_000]
    );
    let failed = f.cloud.library().get_asset("alice", &broken).unwrap();
    assert_eq!(failed.derivation, "failed not an image");
    assert!(failed.derived.is_empty());
    let announced = f
        .cloud
        .library()
        .list_changes("alice", cursor, 1000)
        .unwrap();
    let shown: Vec<String> = announced
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Asset(a) => Some(a.asset_id.clone()),
            _ => None,
        })
        .collect();
    assert!(
        shown.contains(&good) && shown.contains(&broken),
        "devices hear of both"
    );
    // The retry waits its turn, then succeeds.
    assert_eq!(
        f.cloud.run_derivations(8, &maker).unwrap(),
        DeriveReport::default()
    );
    f.clock.advance(10_000);
    assert_eq!(f.cloud.run_derivations(8, &maker).unwrap().done, 1);
    assert_eq!(
        f.cloud
            .library()
            .get_asset("alice", &flaky)
            .unwrap()
            .derivation,
        "done"
    );
    assert!(f.used("alice") > before, "derivatives are stored");
    for id in &ids {
        f.cloud.purge("alice", id).unwrap();
    }
    f.settle();
    assert_eq!(
        f.used("alice"),
        0,
        "a purge releases originals and derivatives alike"
    );
}

/// Regression: the derivative worker read every original whole into memory, so one 200 MB
/// video lifted the server's resident memory by as much (453 MiB peak in `cargo xtask bench
/// peers`). A video is now handed over only as a writer that streams its verified chunks.
#[test]
fn previews_wait_for_a_burst_of_uploads_to_pass_but_never_starve() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    f.cloud.library().set_plan("alice", "big").unwrap();
    assert!(
        f.cloud.uploads_quiet(2_000, 60_000).unwrap(),
        "nothing queued"
    );
    // A photo a second, for longer than the longest wait.
    for seed in 1..=70u8 {
        let (m, r) = f.upload("alice", seed, 5_000).unwrap();
        f.commit("alice", &format!("c{seed}"), m, Some(&r)).unwrap();
        let quiet = f.cloud.uploads_quiet(2_000, 60_000).unwrap();
        assert_eq!(quiet, seed > 60, "after {seed} s of arrivals");
        f.clock.advance(1_000);
    }
    // The worker took the oldest; the burst goes on: it waits again, then catches up.
    let first = f
        .cloud
        .run_derivations(60, &|_, _| Outcome::NoneAvailable("test".into()));
    assert_eq!(first.unwrap().none, 60);
    assert!(!f.cloud.uploads_quiet(2_000, 60_000).unwrap());
    f.clock.advance(1_500);
    assert!(
        f.cloud.uploads_quiet(2_000, 60_000).unwrap(),
        "the burst is over"
    );
}

#[test]
fn a_video_is_streamed_to_the_deriver_never_handed_over_whole() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    // Many chunks (4 KiB each in this fixture), within the test plan's 100 kB.
    let len = 60_000;
    let (m, r) = f.upload("alice", 9, len).unwrap();
    f.cloud
        .commit_asset(
            "alice",
            &CommitAsset {
                details: Default::default(),
                request_id: "v1".into(),
                asset_id: None,
                base_version: None,
                manifest: m,
                kind: AssetKind::Video,
                capture_time: Some(T0),
                width: None,
                height: None,
                original_name: "VID_0001.MOV".into(),
                path: String::new(),
                device: "phone".into(),
                reservation_id: Some(r.reservation_id.clone()),
                manifest_upload: None,
            },
        )
        .unwrap();
    let written = std::sync::Mutex::new(Vec::new());
    let report = f
        .cloud
        .run_derivations(8, &|job, original| {
            assert!(job.video);
            let Original::Video(write) = original else {
                panic!("a video must not be handed over in memory");
            };
            let mut out = Vec::new();
            assert_eq!(write(&mut out).unwrap(), len as u64);
            *written.lock().unwrap() = out;
            Outcome::NoneAvailable("no ffmpeg in this test".into())
        })
        .unwrap();
    assert_eq!(report.none, 1);
    let (_, manifest) = file(9, len);
    assert_eq!(
        ChunkId::of(&written.into_inner().unwrap()),
        manifest.file_hash,
        "the streamed bytes are the original's"
    );
}

/// A preview that fails verification is made again from the original (which is whole, so
/// the asset is not flagged damaged), and the remade preview reads back whole.
#[test]
fn a_corrupt_preview_found_by_scrub_is_made_again_from_the_original() {
    use keepsake_store::Backend;
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let (m, r) = f.upload("alice", 9, 20_000).unwrap();
    let id = f.commit("alice", "c9", m, Some(&r)).unwrap().asset_id;
    let maker = |_: &DeriveJob, original: Original<'_>| {
        assert!(matches!(original, Original::Still(b) if b.len() == 20_000));
        Outcome::Made(vec![MadeFile {
            role: "preview".into(),
            bytes: vec![7; 50_000],
            width: 40,
            height: 30,
        }])
    };
    assert_eq!(f.cloud.run_derivations(8, &maker).unwrap().done, 1);
    let mut flipped = 0;
    for object in f.backend.list("").unwrap() {
        let bytes = f.backend.get(&object.name).unwrap();
        if let Some(at) = bytes.windows(1000).position(|w| w.iter().all(|b| *b == 7)) {
            f.backend.flip_bit(&object.name, (at as u64 + 500) * 8);
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1, "the preview's bytes are in one pack");
    let scrub = f.cloud.scrub().unwrap();
    assert_eq!(scrub.store.corrupt_chunks.len(), 1, "{scrub:?}");
    assert_eq!(scrub.previews_requeued, 1, "{scrub:?}");
    assert!(scrub.damaged.is_empty(), "the original is whole: {scrub:?}");
    assert!(
        f.cloud
            .library()
            .get_asset("alice", &id)
            .unwrap()
            .derivation
            .starts_with("queued"),
    );
    assert_eq!(f.cloud.run_derivations(8, &maker).unwrap().done, 1);
    let asset = f.cloud.library().get_asset("alice", &id).unwrap();
    assert_eq!(asset.derivation, "done");
    let preview = &asset.derived[0];
    let mut stored = Vec::new();
    ChunkStore::copy_file(&*f.store, "alice", &preview.manifest, u64::MAX, &mut stored).unwrap();
    assert_eq!(
        stored,
        vec![7; 50_000],
        "the remade preview reads back whole"
    );
    assert!(f.cloud.scrub().unwrap().store.corrupt_chunks.is_empty());
}

/// Previews that could not be made because the original was damaged are made once a device
/// has sent the original again: the repair queues the failed derivation anew.
#[test]
fn a_derivation_that_failed_on_a_damaged_original_runs_again_after_the_repair() {
    use keepsake_store::Backend;
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let (m, r) = f.upload("alice", 11, 20_000).unwrap();
    let id = f.commit("alice", "c11", m, Some(&r)).unwrap().asset_id;
    let original: Vec<u8> = file(11, 20_000)
        .0
        .iter()
        .flat_map(|(_, d)| d.to_vec())
        .collect();
    let mut flipped = 0;
    for object in f.backend.list("").unwrap() {
        let bytes = f.backend.get(&object.name).unwrap();
        if let Some(at) = bytes.windows(1000).position(|w| w == &original[..1000]) {
            f.backend.flip_bit(&object.name, (at as u64 + 10) * 8);
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1);
    let maker = |_: &DeriveJob, _: Original<'_>| {
        Outcome::Made(vec![MadeFile {
            role: "preview".into(),
            bytes: vec![3; 10_000],
            width: 40,
            height: 30,
        }])
    };
    // The original cannot be read: retried until the queue gives up.
    for _ in 0..8 {
        f.cloud.run_derivations(8, &maker).unwrap();
        f.clock.advance(HOUR);
    }
    let derivation = |f: &Fixture| {
        f.cloud
            .library()
            .get_asset("alice", &id)
            .unwrap()
            .derivation
    };
    assert!(derivation(&f).starts_with("failed"), "{}", derivation(&f));
    let scrub = f.cloud.scrub().unwrap();
    assert_eq!(scrub.damaged.len(), 1, "{scrub:?}");
    // A device that still has the photo sends it again.
    let (m2, r2) = f.upload("alice", 11, 20_000).unwrap();
    assert_eq!(m2, m);
    let repair = f
        .commit_to("alice", "c11-repair", m2, Some(&r2), Some(&id))
        .unwrap();
    assert_eq!(repair.asset_id, id);
    assert!(derivation(&f).starts_with("queued"), "{}", derivation(&f));
    assert_eq!(f.cloud.run_derivations(8, &maker).unwrap().done, 1);
    assert_eq!(derivation(&f), "done");
}

/// The library's commits, not only the id function, must begin ids with the commit time:
/// a feed page of 100,000 assets read three times faster once they did.
#[test]
fn committed_assets_get_ids_that_begin_with_the_commit_time() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", Some("big"), false)
        .unwrap();
    let mut ids = Vec::new();
    for seed in 1..=5u8 {
        f.clock.advance(1);
        let (manifest, reservation) = f.upload("alice", seed, 5_000).unwrap();
        let committed = f
            .commit("alice", &format!("r{seed}"), manifest, Some(&reservation))
            .unwrap();
        let now = f.clock.now_ms();
        assert_eq!(&committed.asset_id[..12], format!("{now:012x}"));
        ids.push(committed.asset_id);
    }
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "{ids:?}");
}

/// Guessing was limited only by CPU: 883 guesses in 20 s from one address, and the right
/// password accepted at once after them. Now each failure past a few free ones doubles
/// the wait (said in TOO_MANY_ATTEMPTS), an attempt during the wait is refused before any
/// hashing — the right password too — and the owner's account waits at most a minute.
#[test]
fn guessing_a_password_waits_longer_with_every_failure_and_the_owner_sees_them() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let attacker = SignInFrom::Address("203.0.113.9".parse().unwrap());
    let owner = SignInFrom::Address("198.51.100.7".parse().unwrap());
    let mut waits = Vec::new();
    for guess in 0..12 {
        match f
            .cloud
            .sign_in_from("alice", &format!("guess {guess}"), attacker)
        {
            Err(LibraryError::Unauthenticated(_)) => {}
            Err(LibraryError::TooManyAttempts { retry_after_ms }) => {
                waits.push(retry_after_ms);
                // The right password waits too, and says for how long.
                let e = f
                    .cloud
                    .sign_in_from("alice", "correct horse", attacker)
                    .unwrap_err();
                assert_eq!(e.reason(), "TOO_MANY_ATTEMPTS");
                assert!(e.to_string().contains("try again in"), "{e}");
                f.clock.advance(retry_after_ms as i64);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!waits.is_empty(), "never throttled");
    assert!(
        waits.windows(2).all(|w| w[1] >= w[0]),
        "the wait grows: {waits:?}"
    );
    assert!(waits.iter().all(|&w| w <= 60_000), "{waits:?}");
    // Five free failures, then a second, two, four, eight: the wait doubles.
    assert_eq!(waits[..4], [1_000, 2_000, 4_000, 8_000]);
    // The owner, from elsewhere, is let in once the account's (short) wait is over.
    f.clock.advance(60_000);
    f.cloud
        .sign_in_from("alice", "correct horse", owner)
        .unwrap();
    let failed = f.cloud.account_info("alice").unwrap().failed_sign_ins;
    assert!(failed.count >= 6, "{failed:?}");
    assert_eq!(failed.last_from.as_deref(), Some("203.0.113.9"));
    // The attacker's address still waits, longer, for any account.
    f.cloud
        .create_account("bob", "battery staple", None, false)
        .unwrap();
    for _ in 0..6 {
        let _ = f.cloud.sign_in_from("bob", "nope nope", attacker);
    }
    assert_eq!(
        f.cloud
            .sign_in_from("bob", "battery staple", attacker)
            .unwrap_err()
            .reason(),
        "TOO_MANY_ATTEMPTS"
    );
    // An hour later every failure is forgotten (maintenance drops the rows): bob is in.
    f.clock.advance(HOUR + 1);
    f.cloud.maintain().unwrap();
    f.cloud
        .sign_in_from("bob", "battery staple", attacker)
        .unwrap();
}

/// A right-to-left override was kept in names: a device named `\u{202E}gpj.exe` was
/// listed as `exe.jpg`.
#[test]
fn a_name_with_a_direction_override_is_refused() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let refused = f
        .cloud
        .enroll_device("alice", "correct horse", "\u{202E}gpj.exe", "ios", "9.0.0")
        .unwrap_err();
    assert_eq!(refused.reason(), "INVALID_ARGUMENT", "{refused}");
    f.cloud
        .enroll_device("alice", "correct horse", "Alice's phone", "ios", "9.0.0")
        .unwrap();
}

/// A full disk once left a reservation behind with every retry until 144 of them held
/// 4.98 GB of a 5 GB plan: another device was told to empty Recently Deleted, and the
/// device itself was blocked for the leases' ten minutes. Now a device's own
/// reservations never count against it, a refusal caused by holds says so (and waiting
/// is its fix), and a released reservation stops counting at once.
#[test]
fn reservations_never_block_their_own_device_and_a_released_one_frees_the_plan_at_once() {
    let f = fixture();
    f.cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let limit = f.cloud.account_info("alice").unwrap().plan.limit_bytes;
    let first = f
        .cloud
        .begin_upload_for("alice", Some("phone"), limit - 10, Some("pass-1"))
        .unwrap();
    // The phone's next pass (a crash, a failed pass) goes on.
    f.cloud
        .begin_upload_for("alice", Some("phone"), limit - 10, Some("pass-2"))
        .unwrap();
    // The laptop is refused, told the plan is not used but held, and to wait.
    let refused = f
        .cloud
        .begin_upload_for("alice", Some("laptop"), 1_000, Some("l-1"))
        .unwrap_err();
    assert_eq!(refused.reason(), "QUOTA_EXCEEDED");
    let said = refused.to_string();
    assert!(
        said.contains("for now") && said.contains("held for uploads") && said.contains("Wait"),
        "{said}"
    );
    // Released, the holds stop counting at once (twice is the same as once).
    for reservation in [&first.reservation_id, &first.reservation_id] {
        f.cloud.end_upload("alice", reservation).unwrap();
    }
    let pass_2 = f
        .cloud
        .begin_upload_for("alice", Some("phone"), 0, Some("pass-2"))
        .unwrap();
    f.cloud.end_upload("alice", &pass_2.reservation_id).unwrap();
    assert_eq!(f.cloud.account_info("alice").unwrap().reserved_bytes, 0);
    f.cloud
        .begin_upload_for("alice", Some("laptop"), 1_000, Some("l-1"))
        .unwrap();
}

/// Search's statements on either engine (this file runs on PostgreSQL in CI's PostgreSQL
/// step): the index in answer order, `instr`, a place box and a radius, a name's case.
#[test]
fn search_finds_by_camera_place_and_name_on_either_engine() {
    let lib = open_library(
        None,
        Arc::new(ManualClock::new(T0)),
        Arc::new(SeededEntropy::new(9)),
        LibraryConfig::default(),
    )
    .unwrap();
    for (n, path, camera, place) in [
        (
            1u8,
            "Paris/Eiffel.JPG",
            "Canon EOS R5",
            Some((488_584_000, 22_945_000)),
        ),
        (
            2,
            "Rome/Colosseo.JPG",
            "Apple iPhone 15",
            Some((418_902_000, 124_922_000)),
        ),
        (3, "scan.png", "", None),
    ] {
        let (make, model) = camera.split_once(' ').unwrap_or(("", ""));
        lib.commit(
            "alice",
            &CommitRequest {
                request_id: format!("s{n}"),
                asset_id: None,
                base_version: None,
                manifest: ChunkId::of(&[n]),
                file_hash: ChunkId::of(&[n, n]),
                size: 1,
                kind: AssetKind::Photo,
                capture_time: Some(T0 + i64::from(n)),
                width: None,
                height: None,
                original_name: path.rsplit('/').next().unwrap().into(),
                path: path.into(),
                device: "phone".into(),
                details: MediaDetails {
                    camera_make: make.into(),
                    camera_model: model.into(),
                    position_e7: place,
                    ..MediaDetails::default()
                },
            },
        )
        .unwrap();
    }
    let found = |q: SearchQuery| -> Vec<String> {
        lib.search("alice", &q, None, 10)
            .unwrap()
            .assets
            .into_iter()
            .map(|a| a.path)
            .collect()
    };
    assert_eq!(
        found(SearchQuery::default()),
        ["scan.png", "Rome/Colosseo.JPG", "Paris/Eiffel.JPG"]
    );
    let canon = SearchQuery {
        camera: Some("eos".into()),
        ..SearchQuery::default()
    };
    assert_eq!(found(canon), ["Paris/Eiffel.JPG"]);
    let rome = SearchQuery {
        near_e7: Some(((418_900_000, 124_900_000), 5_000)),
        ..SearchQuery::default()
    };
    assert_eq!(found(rome), ["Rome/Colosseo.JPG"]);
    let europe = SearchQuery {
        within_e7: Some((350_000_000, 0, 600_000_000, 200_000_000)),
        ..SearchQuery::default()
    };
    assert_eq!(found(europe), ["Rome/Colosseo.JPG", "Paris/Eiffel.JPG"]);
    let named = SearchQuery {
        name: Some("EIFFEL".into()),
        ..SearchQuery::default()
    };
    assert_eq!(found(named), ["Paris/Eiffel.JPG"]);

    // A Live Photo's halves pair; a place set by hand is searched where it was set.
    let mut ids = Vec::new();
    for (n, path, kind) in [
        (4u8, "Live/IMG_1.HEIC", AssetKind::Photo),
        (5, "Live/IMG_1.MOV", AssetKind::Video),
    ] {
        let committed = lib
            .commit(
                "alice",
                &CommitRequest {
                    request_id: format!("s{n}"),
                    asset_id: None,
                    base_version: None,
                    manifest: ChunkId::of(&[n]),
                    file_hash: ChunkId::of(&[n, n]),
                    size: 1,
                    kind,
                    capture_time: Some(T0),
                    width: None,
                    height: None,
                    original_name: path.rsplit('/').next().unwrap().into(),
                    path: path.into(),
                    device: "phone".into(),
                    details: MediaDetails {
                        content_identifier: "UUID-1".into(),
                        ..MediaDetails::default()
                    },
                },
            )
            .unwrap();
        ids.push(committed.asset_id);
    }
    let lives = SearchQuery {
        live_photos: true,
        ..SearchQuery::default()
    };
    assert_eq!(found(lives), ["Live/IMG_1.HEIC"]);
    assert!(!found(SearchQuery::default()).contains(&"Live/IMG_1.MOV".to_string()));
    lib.trash("alice", &ids[0]).unwrap();
    assert!(matches!(
        lib.get_asset("alice", &ids[1]).unwrap().state,
        AssetState::Trashed(_)
    ));
    let scan = lib
        .search("alice", &SearchQuery::default(), None, 10)
        .unwrap()
        .assets
        .into_iter()
        .find(|a| a.path == "scan.png")
        .unwrap();
    let hlc = Hlc {
        wall_ms: T0,
        counter: 1,
        device: "web".into(),
    };
    let place = MetadataField::Place(Some((418_900_000, 124_900_000)));
    assert!(
        lib.set_metadata("alice", &scan.asset_id, &place, &hlc)
            .unwrap()
    );
    let rome = SearchQuery {
        near_e7: Some(((418_900_000, 124_900_000), 5_000)),
        ..SearchQuery::default()
    };
    assert_eq!(found(rome), ["scan.png", "Rome/Colosseo.JPG"]);
}

/// Two servers on one database (here one SQLite file; in a fleet PostgreSQL): a key one
/// rotates is trusted and then used by the other once it refreshes, and background work
/// held under a lease runs on one at a time until the holder's lease runs out.
#[test]
fn two_servers_on_one_database_share_keys_and_take_turns_at_background_work() {
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(StoreParts {
            backend: Arc::new(MemoryBackend::new()),
            index: IndexAt::Memory,
            clock: clock.clone(),
            entropy: Arc::new(SeededEntropy::new(7)),
            config: StoreConfig::default(),
        })
        .unwrap(),
    );
    let node = |seed: u64| {
        let library = open_library(
            Some(dir.path().join("library.sqlite")),
            clock.clone(),
            Arc::new(SeededEntropy::new(seed)),
            config(),
        )
        .unwrap();
        Cloud::new(library, store.clone()).unwrap()
    };
    let (first, second) = (node(1), node(2));
    first
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let token = first.sign_in("alice", "correct horse").unwrap().token;
    second.verifier().verify(&token, T0 + 1).unwrap();

    let kid = first.rotate_signing_key().unwrap();
    let rotated = first.sign_in("alice", "correct horse").unwrap().token;
    assert!(matches!(
        second.verifier().verify(&rotated, T0 + 1),
        Err(TokenError::UnknownKey(_))
    ));
    second.refresh_keys().unwrap();
    second.verifier().verify(&rotated, T0 + 1).unwrap();
    second.verifier().verify(&token, T0 + 1).unwrap();
    let from_second = second.sign_in("alice", "correct horse").unwrap().token;
    assert!(from_second.starts_with(&format!("ks1.{kid}.")));

    assert!(first.hold_lease("maintenance", "node-1", 1_000).unwrap());
    assert!(!second.hold_lease("maintenance", "node-2", 1_000).unwrap());
    assert!(second.hold_lease("derivations", "node-2", 1_000).unwrap());
    clock.advance(999);
    assert!(
        first.hold_lease("maintenance", "node-1", 1_000).unwrap(),
        "renewed"
    );
    clock.advance(999);
    assert!(!second.hold_lease("maintenance", "node-2", 1_000).unwrap());
    clock.advance(2);
    assert!(
        second.hold_lease("maintenance", "node-2", 1_000).unwrap(),
        "ran out"
    );
    assert!(!first.hold_lease("maintenance", "node-1", 1_000).unwrap());
}
