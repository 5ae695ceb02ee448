//! ChunkStore and Policy over real gRPC on an ephemeral loopback port: every RPC, and
//! every bad input answered with a clear status and nothing changed.

use bytes::Bytes;
use keepsake_library::{ClientVersion, Cloud, KdfCost, Library, LibraryConfig, Plan};
use keepsake_proto::v1 as pb;
use keepsake_store::{
    Backend, CappedBackend, ChunkId, LocalFsBackend, ManualClock, OsEntropy, Store, StoreConfig,
    StoreParts,
};
use keepsake_testkit::{get_all, put_all};
use keepsake_transport::ChangeNotifier;
use keepsake_transport::auth::Authenticator;
use keepsake_transport::client::{self, StoreClient};
use keepsake_transport::convert::id_bytes;
use keepsake_transport::reason_of;
use keepsake_transport::server::{ServerConfig, Services, serve};
use std::sync::Arc;
use tonic::Code;
use tonic_types::StatusExt;

struct Server {
    url: String,
    /// Signed access tokens by the names the tests use ("alice-token", …).
    tokens: std::collections::HashMap<&'static str, String>,
    clock: Arc<ManualClock>,
    store: Arc<Store>,
    cloud: Arc<Cloud>,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn start_with(backend: Option<Arc<dyn Backend>>) -> Server {
    start_configured(backend, ServerConfig::default()).await
}

async fn start_configured(backend: Option<Arc<dyn Backend>>, config: ServerConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = match backend {
        Some(b) => b,
        None => Arc::new(LocalFsBackend::open(dir.path().join("objects")).unwrap()),
    };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = Arc::new(
        Store::open(StoreParts {
            backend,
            index: keepsake_store::IndexAt::File(dir.path().join("index.sqlite")),
            clock: clock.clone(),
            entropy: Arc::new(OsEntropy),
            config: StoreConfig::default(),
        })
        .unwrap(),
    );
    let library = Library::open(
        Some(dir.path().join("library.sqlite")),
        clock.clone(),
        Arc::new(OsEntropy),
        LibraryConfig {
            kdf: KdfCost {
                memory_kib: 64,
                iterations: 1,
            },
            plans: vec![Plan {
                name: "small".into(),
                limit_bytes: 64 << 20,
            }],
            min_client_version: ClientVersion(0, 1, 0),
            ..LibraryConfig::default()
        },
    )
    .unwrap();
    let cloud = Arc::new(Cloud::new(library, store.clone()).unwrap());
    let mut tokens = std::collections::HashMap::new();
    for (name, account, admin) in [
        ("alice-token", "alice", false),
        ("bob-token", "bob", false),
        ("admin-token", "admin", true),
    ] {
        cloud
            .create_account(account, "correct horse", None, admin)
            .unwrap();
        tokens.insert(name, cloud.sign_in(account, "correct horse").unwrap().token);
    }
    let auth = Authenticator::new(cloud.verifier(), clock.clone(), ClientVersion(0, 1, 0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        Services {
            store: Some(store.clone()),
            policy: Some(keepsake_policy::PolicyConfig::default()),
            delta: true,
            remote_store: None,
            cloud: Some(cloud.clone()),
            changes: ChangeNotifier::default(),
        },
        auth,
        config,
        async move {
            let _ = rx.await;
        },
    ));
    Server {
        url,
        tokens,
        clock,
        store,
        cloud,
        addr,
        _dir: dir,
        _shutdown: tx,
    }
}

impl Server {
    /// The signed token behind a test's name for it; unknown names pass through as-is.
    fn token(&self, name: &str) -> String {
        self.tokens
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }
}

async fn start() -> Server {
    start_with(None).await
}

async fn as_user(server: &Server, token: &str) -> StoreClient {
    client::store_client(
        client::connect(&server.url).await.unwrap(),
        &server.token(token),
    )
}

async fn session(c: &mut StoreClient) -> String {
    c.begin_session(pb::BeginSessionRequest {
        expected_bytes: 0,
        ttl_seconds: 600,
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .session_id
}

fn chunk(data: &[u8]) -> (ChunkId, Bytes) {
    (ChunkId::of(data), Bytes::copy_from_slice(data))
}

fn assert_status(status: &tonic::Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status).as_deref(), Some(reason), "{status:?}");
}

#[tokio::test]
async fn every_rpc_works_over_grpc() {
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let sid = session(&mut alice).await;
    let renewed = alice
        .renew_session(pb::RenewSessionRequest {
            session_id: sid.clone(),
            ttl_seconds: 900,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.expires_at_unix_ms, 1_700_000_000_000 + 900_000);

    let chunks: Vec<_> = (0..50u32)
        .map(|i| chunk(&[i.to_le_bytes().as_slice(), &vec![i as u8; 70_000]].concat()))
        .collect();
    let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();
    let missing = alice
        .find_missing(pb::FindMissingRequest {
            session_id: sid.clone(),
            ids: ids.iter().map(id_bytes).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .missing_ids;
    assert_eq!(missing.len(), 50);
    let acked = put_all(&mut alice, &sid, chunks.clone(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(acked, ids, "every chunk acknowledged, in order");
    let missing = alice
        .find_missing(pb::FindMissingRequest {
            session_id: sid.clone(),
            ids: ids.iter().map(id_bytes).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .missing_ids;
    assert!(missing.is_empty());
    let got = get_all(&mut alice, &ids).await.unwrap();
    assert_eq!(got, chunks);

    let manifest = pb::Manifest {
        entries: chunks
            .iter()
            .map(|(id, d)| pb::ManifestEntry {
                chunk_id: id_bytes(id),
                length: d.len() as u32,
            })
            .collect(),
        total_length: chunks.iter().map(|c| c.1.len() as u64).sum(),
        file_hash: id_bytes(&ChunkId::of(b"whole file")),
    };
    let mid = alice
        .put_manifest(pb::PutManifestRequest {
            session_id: sid.clone(),
            manifest: Some(manifest.clone()),
            edit: None,
        })
        .await
        .unwrap()
        .into_inner()
        .manifest_id;
    let back = alice
        .get_manifest(pb::GetManifestRequest {
            manifest_id: mid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .manifest;
    assert_eq!(back, Some(manifest));
    for _ in 0..2 {
        alice
            .reference(pb::ReferenceRequest {
                manifest_id: mid.clone(),
                holder: "asset/1/v1".into(),
            })
            .await
            .unwrap();
    }
    let usage = alice
        .get_usage(pb::GetUsageRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.chunks_owned, 51, "50 chunks and the manifest");
    alice
        .end_session(pb::EndSessionRequest {
            session_id: sid.clone(),
        })
        .await
        .unwrap();
    alice
        .release(pb::ReleaseRequest {
            manifest_id: mid,
            holder: "asset/1/v1".into(),
        })
        .await
        .unwrap();

    let mut admin = as_user(&server, "admin-token").await;
    let scrub = admin.scrub(pb::ScrubRequest {}).await.unwrap().into_inner();
    assert_eq!(scrub.chunks_verified, 51);
    assert!(scrub.corrupt_chunk_ids.is_empty() && scrub.corrupt_packs.is_empty());
    let gc = admin
        .collect_garbage(pb::CollectGarbageRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        gc.chunks_collected, 0,
        "the ended session still holds its pins during the grace period"
    );
}

#[tokio::test]
async fn a_chunk_whose_bytes_do_not_match_its_id_is_refused_and_nothing_is_stored() {
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let sid = session(&mut alice).await;
    let good = chunk(b"good bytes");
    let forged = (ChunkId::of(b"claimed"), Bytes::from_static(b"other bytes"));
    let err = put_all(&mut alice, &sid, vec![good.clone(), forged], 1 << 20)
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "HASH_MISMATCH");
    let missing = alice
        .find_missing(pb::FindMissingRequest {
            session_id: sid,
            ids: vec![id_bytes(&good.0)],
        })
        .await
        .unwrap()
        .into_inner()
        .missing_ids;
    assert_eq!(
        missing.len(),
        1,
        "the batch with a bad chunk stored nothing"
    );
}

#[tokio::test]
async fn oversized_chunks_and_messages_are_refused() {
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let sid = session(&mut alice).await;
    let big = chunk(&vec![1u8; (8 << 20) + 1]);
    let err = put_all(&mut alice, &sid, vec![big], 1).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "CHUNK_TOO_LARGE");
    // A message over the wire limit is refused by the decoder before it is buffered whole.
    let mut unlimited = keepsake_proto::v1::chunk_store_client::ChunkStoreClient::with_interceptor(
        client::connect(&server.url).await.unwrap(),
        keepsake_transport::client::BearerAuth::new(&server.token("alice-token")),
    )
    .max_encoding_message_size(64 << 20);
    let huge = vec![
        chunk(&vec![2u8; 6 << 20]),
        chunk(&vec![3u8; 6 << 20]),
        chunk(&vec![4u8; 6 << 20]),
    ];
    let err = put_all(&mut unlimited, &sid, huge, usize::MAX)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
}

#[tokio::test]
async fn malformed_ids_and_unknown_sessions_get_clear_errors() {
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let sid = session(&mut alice).await;
    let err = alice
        .find_missing(pb::FindMissingRequest {
            session_id: sid.clone(),
            ids: vec![Bytes::from_static(b"short")],
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(err.message().contains("32 bytes"), "{}", err.message());
    let err = alice
        .get_manifest(pb::GetManifestRequest {
            manifest_id: Bytes::from_static(&[0; 31]),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    let err = alice
        .find_missing(pb::FindMissingRequest {
            session_id: "no-such-session".into(),
            ids: vec![],
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "SESSION_NOT_FOUND");
}

#[tokio::test]
async fn a_manifest_naming_unowned_chunks_lists_exactly_those() {
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let mut bob = as_user(&server, "bob-token").await;
    let (a_sid, b_sid) = (session(&mut alice).await, session(&mut bob).await);
    let mine = chunk(b"bob's own chunk");
    let alices = chunk(b"alice's chunk");
    put_all(&mut alice, &a_sid, vec![alices.clone()], 1 << 20)
        .await
        .unwrap();
    put_all(&mut bob, &b_sid, vec![mine.clone()], 1 << 20)
        .await
        .unwrap();
    let manifest = pb::Manifest {
        entries: [&mine, &alices]
            .iter()
            .map(|(id, d)| pb::ManifestEntry {
                chunk_id: id_bytes(id),
                length: d.len() as u32,
            })
            .collect(),
        total_length: (mine.1.len() + alices.1.len()) as u64,
        file_hash: id_bytes(&ChunkId::of(b"f")),
    };
    let err = bob
        .put_manifest(pb::PutManifestRequest {
            session_id: b_sid,
            manifest: Some(manifest),
            edit: None,
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "MISSING_CHUNKS");
    use tonic_types::StatusExt;
    let violations = err.get_details_precondition_failure().unwrap().violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].subject, alices.0.to_hex());
}

#[tokio::test]
async fn a_manifest_sent_as_an_edit_is_stored_as_if_whole_and_foreign_bases_are_refused() {
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let mut bob = as_user(&server, "bob-token").await;
    let sid = session(&mut alice).await;
    let original = noise(3 << 20, "edited manifest");
    let base_id = upload_file(&mut alice, &sid, &original).await;
    let mut edited = original.clone();
    edited[1_500_000..1_500_019].copy_from_slice(b"2025:01:11 08:30:00");
    let manifest = put_chunks_of(&mut alice, &sid, &edited).await;
    let base = alice
        .get_manifest(pb::GetManifestRequest {
            manifest_id: base_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .manifest
        .unwrap();
    let base = keepsake_transport::convert::WireManifest::try_from(base)
        .unwrap()
        .0;
    let base_id = ChunkId::from_slice(&base_id).unwrap();
    let edit = keepsake_transport::convert::manifest_edit_to_wire(&base_id, &base, &manifest);
    let spliced: usize = edit.splices.iter().map(|s| s.entries.len()).sum();
    assert!(
        spliced <= 2 && edit.splices.len() <= 3,
        "{} splices carrying {spliced} entries for a one-chunk edit",
        edit.splices.len()
    );
    let put =
        |manifest: Option<pb::Manifest>, edit: Option<pb::ManifestEdit>| pb::PutManifestRequest {
            session_id: sid.clone(),
            manifest,
            edit,
        };
    let id = alice
        .put_manifest(put(None, Some(edit.clone())))
        .await
        .unwrap()
        .into_inner()
        .manifest_id;
    assert_eq!(
        id,
        id_bytes(&manifest.id()),
        "the edit rebuilt another manifest"
    );
    // Bob cannot build on Alice's manifest: it reads as absent.
    let bob_sid = session(&mut bob).await;
    let err = bob
        .put_manifest(pb::PutManifestRequest {
            session_id: bob_sid,
            manifest: None,
            edit: Some(edit.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let whole = keepsake_transport::convert::manifest_to_wire(&manifest);
    let err = alice
        .put_manifest(put(Some(whole), Some(edit.clone())))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    let mut outside = edit;
    outside.splices[0].base_count = u32::MAX;
    let err = alice
        .put_manifest(put(None, Some(outside)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn the_token_is_taken_from_authorization_or_keepsakes_own_header() {
    let server = start().await;
    let token = server.token("alice-token");
    let bearer = format!("Bearer {token}");
    let mut standard = keepsake_proto::v1::chunk_store_client::ChunkStoreClient::with_interceptor(
        client::connect(&server.url).await.unwrap(),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("authorization", bearer.parse().unwrap());
            req.metadata_mut()
                .insert(client::CLIENT_VERSION_HEADER, "1.0.0".parse().unwrap());
            Ok(req)
        },
    );
    standard.get_usage(pb::GetUsageRequest {}).await.unwrap();
    let mut own = keepsake_proto::v1::chunk_store_client::ChunkStoreClient::with_interceptor(
        client::connect(&server.url).await.unwrap(),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert(client::TOKEN_HEADER, token.parse().unwrap());
            req.metadata_mut()
                .insert(client::CLIENT_VERSION_HEADER, "1.0.0".parse().unwrap());
            Ok(req)
        },
    );
    own.get_usage(pb::GetUsageRequest {}).await.unwrap();
    let mut forged = keepsake_proto::v1::chunk_store_client::ChunkStoreClient::with_interceptor(
        client::connect(&server.url).await.unwrap(),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert(client::TOKEN_HEADER, "ks1.k1.00.00".parse().unwrap());
            req.metadata_mut()
                .insert(client::CLIENT_VERSION_HEADER, "1.0.0".parse().unwrap());
            Ok(req)
        },
    );
    let err = forged.get_usage(pb::GetUsageRequest {}).await.unwrap_err();
    assert_status(&err, Code::Unauthenticated, "UNAUTHENTICATED");
}

#[tokio::test]
async fn another_accounts_chunk_reads_exactly_like_an_absent_one() {
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let mut bob = as_user(&server, "bob-token").await;
    let a_sid = session(&mut alice).await;
    let secret = chunk(b"alice's private photo");
    put_all(&mut alice, &a_sid, vec![secret.clone()], 1 << 20)
        .await
        .unwrap();
    let absent = ChunkId::of(b"exists nowhere");
    let foreign = get_all(&mut bob, &[secret.0]).await.unwrap_err();
    let missing = get_all(&mut bob, &[absent]).await.unwrap_err();
    assert_status(&foreign, Code::NotFound, "NOT_FOUND");
    assert_status(&missing, Code::NotFound, "NOT_FOUND");
    assert_eq!(
        foreign.message().replace(&secret.0.to_hex(), "ID"),
        missing.message().replace(&absent.to_hex(), "ID")
    );
    let b_sid = session(&mut bob).await;
    let missing_for_bob = bob
        .find_missing(pb::FindMissingRequest {
            session_id: b_sid,
            ids: vec![id_bytes(&secret.0)],
        })
        .await
        .unwrap()
        .into_inner()
        .missing_ids;
    assert_eq!(missing_for_bob.len(), 1, "bob cannot learn alice holds it");
    let err = bob
        .renew_session(pb::RenewSessionRequest {
            session_id: a_sid,
            ttl_seconds: 60,
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "SESSION_NOT_FOUND");
}

#[tokio::test]
async fn old_clients_and_missing_bad_or_expired_tokens_are_refused_but_health_answers() {
    let server = start().await;
    let channel = client::connect(&server.url).await.unwrap();
    // No version at all counts as the oldest client: told to update before anything else.
    let mut versionless =
        keepsake_proto::v1::chunk_store_client::ChunkStoreClient::new(channel.clone());
    let err = versionless
        .get_usage(pb::GetUsageRequest {})
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "CLIENT_TOO_OLD");
    assert_eq!(
        err.get_details_error_info().unwrap().metadata["required_version"],
        "0.1.0"
    );
    let mut anonymous = keepsake_proto::v1::chunk_store_client::ChunkStoreClient::with_interceptor(
        channel.clone(),
        client::BearerAuth::anonymous(),
    );
    let err = anonymous
        .get_usage(pb::GetUsageRequest {})
        .await
        .unwrap_err();
    assert_status(&err, Code::Unauthenticated, "UNAUTHENTICATED");
    let mut wrong = as_user(&server, "not-a-token").await;
    let err = wrong.get_usage(pb::GetUsageRequest {}).await.unwrap_err();
    assert_status(&err, Code::Unauthenticated, "UNAUTHENTICATED");
    let mut alice = as_user(&server, "alice-token").await;
    let err = alice.scrub(pb::ScrubRequest {}).await.unwrap_err();
    assert_status(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    alice.get_usage(pb::GetUsageRequest {}).await.unwrap();
    server.clock.advance(16 * 60 * 1000);
    let err = alice.get_usage(pb::GetUsageRequest {}).await.unwrap_err();
    assert_status(&err, Code::Unauthenticated, "UNAUTHENTICATED");
    assert!(err.message().contains("expired"), "{}", err.message());
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "keepsake.v1.ChunkStore".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn a_full_disk_is_resource_exhausted_and_the_store_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let backend = CappedBackend::new(LocalFsBackend::open(dir.path()).unwrap(), 200_000).unwrap();
    let server = start_with(Some(Arc::new(backend))).await;
    let mut alice = as_user(&server, "alice-token").await;
    let sid = session(&mut alice).await;
    let first = chunk(&[5u8; 100_000]);
    put_all(&mut alice, &sid, vec![first.clone()], 1 << 20)
        .await
        .unwrap();
    let err = put_all(&mut alice, &sid, vec![chunk(&[6u8; 150_000])], 1 << 20)
        .await
        .unwrap_err();
    assert_status(&err, Code::ResourceExhausted, "STORAGE_FULL");
    assert_eq!(get_all(&mut alice, &[first.0]).await.unwrap(), vec![first]);
    assert_eq!(
        std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(),
        0,
        "nothing half-written"
    );
}

fn wire_snapshot() -> pb::Snapshot {
    pb::Snapshot {
        now_unix_ms: 1_700_000_000_000,
        account: Some("alice".into()),
        sync_enabled: true,
        network: pb::NetworkType::Cellular as i32,
        cellular_allowed: false,
        battery_percent: Some(80),
        charging: true,
        device_free_bytes: Some(50_000_000_000),
        quota: Some(pb::Quota {
            used_bytes: 1,
            limit_bytes: 5_000_000_000,
            pending_bytes: 0,
        }),
        client_version: Some(pb::Version {
            major: 0,
            minor: 1,
            patch: 0,
        }),
        server_min_version: Some(pb::Version {
            major: 0,
            minor: 1,
            patch: 0,
        }),
        server_reachable: Some(true),
        ..Default::default()
    }
}

async fn policy_client(
    server: &Server,
    token: &str,
) -> keepsake_proto::v1::policy_client::PolicyClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        keepsake_transport::client::BearerAuth,
    >,
> {
    keepsake_proto::v1::policy_client::PolicyClient::with_interceptor(
        client::connect(&server.url).await.unwrap(),
        keepsake_transport::client::BearerAuth::new(&server.token(token)),
    )
}

#[tokio::test]
async fn policy_evaluate_and_explain_over_grpc() {
    let server = start().await;
    let mut policy = policy_client(&server, "alice-token").await;
    let decision = policy
        .evaluate(pb::EvaluateRequest {
            snapshot: Some(wire_snapshot()),
        })
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    let metadata = &decision.classes[0];
    assert_eq!(metadata.work_class, pb::WorkClass::Metadata as i32);
    assert!(metadata.allowed, "metadata flows on cellular");
    let photos = decision
        .classes
        .iter()
        .find(|c| c.work_class == pb::WorkClass::PhotoUpload as i32)
        .unwrap();
    assert!(!photos.allowed);
    assert_eq!(photos.reasons[0].code, "CELLULAR_NOT_ALLOWED");
    assert!(!photos.reasons[0].fix.is_empty());
    let explained = policy
        .explain(pb::ExplainRequest {
            snapshot: Some(wire_snapshot()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!explained.syncing);
    assert!(
        explained.checklist.contains("✘ Connection and mobile data"),
        "{}",
        explained.checklist
    );
    assert!(
        explained
            .checklist_json
            .contains("\"CELLULAR_NOT_ALLOWED\"")
    );
}

#[tokio::test]
async fn policy_refuses_malformed_snapshots_and_anonymous_callers() {
    let server = start().await;
    let mut policy = policy_client(&server, "alice-token").await;
    let err = policy
        .evaluate(pb::EvaluateRequest { snapshot: None })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    let mut bad = wire_snapshot();
    bad.battery_percent = Some(150);
    let err = policy
        .evaluate(pb::EvaluateRequest {
            snapshot: Some(bad),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(
        err.message().contains("battery_percent"),
        "{}",
        err.message()
    );
    let mut anonymous = policy_client(&server, "nobody").await;
    let err = anonymous
        .evaluate(pb::EvaluateRequest {
            snapshot: Some(wire_snapshot()),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::Unauthenticated, "UNAUTHENTICATED");
}

fn noise(len: usize, key: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new_derive_key(key)
        .finalize_xof()
        .fill(&mut out);
    out
}

type DeltaClient = keepsake_proto::v1::delta_client::DeltaClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        keepsake_transport::client::BearerAuth,
    >,
>;

async fn delta_client(server: &Server, token: &str) -> DeltaClient {
    keepsake_proto::v1::delta_client::DeltaClient::with_interceptor(
        client::connect(&server.url).await.unwrap(),
        keepsake_transport::client::BearerAuth::new(&server.token(token)),
    )
    .max_decoding_message_size(16 << 20)
}

/// Sends `file`'s chunks; returns its manifest, not yet stored.
async fn put_chunks_of(c: &mut StoreClient, sid: &str, file: &[u8]) -> keepsake_store::Manifest {
    let mut chunks = Vec::new();
    let manifest =
        keepsake_delta::chunk_stream(file, keepsake_delta::ChunkParams::PHOTO, |id, d| {
            chunks.push((id, Bytes::copy_from_slice(d)));
            Ok(())
        })
        .unwrap();
    put_all(c, sid, chunks, 1 << 20).await.unwrap();
    manifest
}

/// Uploads `file` as alice would: chunks, then its manifest. Returns the manifest id.
async fn upload_file(c: &mut StoreClient, sid: &str, file: &[u8]) -> Bytes {
    let manifest = put_chunks_of(c, sid, file).await;
    c.put_manifest(pb::PutManifestRequest {
        session_id: sid.to_string(),
        manifest: Some(keepsake_transport::convert::manifest_to_wire(&manifest)),
        edit: None,
    })
    .await
    .unwrap()
    .into_inner()
    .manifest_id
}

async fn signature_of(d: &mut DeltaClient, manifest_id: &Bytes) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = d
        .signature(pb::SignatureRequest {
            manifest_id: manifest_id.clone(),
        })
        .await?
        .into_inner();
    let mut sig = Vec::new();
    while let Some(piece) = stream.message().await? {
        sig.extend_from_slice(&piece.data);
    }
    Ok(sig)
}

async fn apply(
    d: &mut DeltaClient,
    sid: &str,
    base: &Bytes,
    declared: ChunkId,
    delta: Vec<u8>,
) -> Result<pb::ApplyDeltaResponse, tonic::Status> {
    let pieces: Vec<pb::ApplyDeltaRequest> = delta
        .chunks(100_000)
        .enumerate()
        .map(|(i, piece)| pb::ApplyDeltaRequest {
            session_id: if i == 0 {
                sid.to_string()
            } else {
                String::new()
            },
            base_manifest_id: if i == 0 { base.clone() } else { Bytes::new() },
            declared_file_hash: if i == 0 {
                id_bytes(&declared)
            } else {
                Bytes::new()
            },
            delta: Bytes::copy_from_slice(piece),
        })
        .collect();
    d.apply_delta(tokio_stream::iter(pieces))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_small_edit_travels_as_a_delta_and_is_rebuilt_server_side() {
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let mut delta = delta_client(&server, "alice-token").await;
    let sid = session(&mut alice).await;
    let base = noise(3 << 20, "delta base");
    let base_id = upload_file(&mut alice, &sid, &base).await;
    let mut edited = base.clone();
    edited[1_500_000..1_500_064].copy_from_slice(&[0x5A; 64]);
    let limits = keepsake_delta::rsync::RsyncLimits::default();
    let sig = signature_of(&mut delta, &base_id).await.unwrap();
    let d = keepsake_delta::rsync::delta(&sig, &edited, &limits).unwrap();
    assert!(
        d.len() < 10_000,
        "a 64-byte edit makes a small delta, got {}",
        d.len()
    );
    let rebuilt = apply(&mut delta, &sid, &base_id, ChunkId::of(&edited), d)
        .await
        .unwrap();
    assert!(
        rebuilt.new_bytes <= 2 * (256 << 10),
        "only the edited chunk is new: {}",
        rebuilt.new_bytes
    );
    let manifest = alice
        .get_manifest(pb::GetManifestRequest {
            manifest_id: rebuilt.manifest_id,
        })
        .await
        .unwrap()
        .into_inner()
        .manifest
        .unwrap();
    let ids: Vec<ChunkId> = manifest
        .entries
        .iter()
        .map(|e| ChunkId::from_slice(&e.chunk_id).unwrap())
        .collect();
    let bytes: Vec<u8> = get_all(&mut alice, &ids)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|(_, d)| d.to_vec())
        .collect();
    assert_eq!(bytes, edited, "the server rebuilt exactly the edited file");
}

#[tokio::test]
async fn deltas_against_foreign_bases_or_with_wrong_hashes_store_nothing() {
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let sid = session(&mut alice).await;
    let base = noise(500_000, "delta base 2");
    let base_id = upload_file(&mut alice, &sid, &base).await;
    let mut bob_delta = delta_client(&server, "bob-token").await;
    let err = signature_of(&mut bob_delta, &base_id).await.unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND");

    let mut delta = delta_client(&server, "alice-token").await;
    let limits = keepsake_delta::rsync::RsyncLimits::default();
    let sig = signature_of(&mut delta, &base_id).await.unwrap();
    let mut edited = base.clone();
    edited[0..4].copy_from_slice(b"EDIT");
    let d = keepsake_delta::rsync::delta(&sig, &edited, &limits).unwrap();
    let usage_before = alice
        .get_usage(pb::GetUsageRequest {})
        .await
        .unwrap()
        .into_inner();
    let err = apply(
        &mut delta,
        &sid,
        &base_id,
        ChunkId::of(b"not the result"),
        d.clone(),
    )
    .await
    .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "HASH_MISMATCH");
    let err = apply(
        &mut delta,
        &sid,
        &base_id,
        ChunkId::of(&edited),
        d[..d.len() / 2].to_vec(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let usage_after = alice
        .get_usage(pb::GetUsageRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage_before, usage_after, "nothing was stored");
    let mut bob_store_sid = as_user(&server, "bob-token").await;
    let bob_sid = session(&mut bob_store_sid).await;
    let err = apply(&mut bob_delta, &bob_sid, &base_id, ChunkId::of(&edited), d)
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND");
}

/// The changed stretch of an edited file travels as a delta: the server rebuilds exactly
/// the chunks named, checks each against its id, and refuses a stretch that is not on
/// chunk boundaries, a rebuild that is wrong, or another account's version.
#[tokio::test]
async fn a_changed_stretch_is_rebuilt_chunk_by_chunk_and_checked() {
    use keepsake_delta::span;
    let server = start().await;
    let mut alice = as_user(&server, "alice-token").await;
    let mut delta = delta_client(&server, "alice-token").await;
    let sid = session(&mut alice).await;
    let base = noise(2 << 20, "span base");
    let base_id = upload_file(&mut alice, &sid, &base).await;
    let mut edited = base.clone();
    edited[1_000_000..1_000_019].copy_from_slice(b"2025:01:11 08:30:00");
    let params = keepsake_delta::ChunkParams::PHOTO;
    let (bm, nm) = (
        keepsake_delta::manifest_of(&base, params),
        keepsake_delta::manifest_of(&edited, params),
    );
    let old: std::collections::HashSet<ChunkId> = bm.entries.iter().map(|e| e.chunk).collect();
    let missing = nm
        .entries
        .iter()
        .map(|e| e.chunk)
        .filter(|c| !old.contains(c))
        .collect();
    let spans = span::plan_spans(&bm, &nm, &missing);
    assert_eq!(spans.len(), 1, "one edit, one stretch: {spans:?}");
    let s = &spans[0];
    let run = &edited[s.new_offset as usize..(s.new_offset + s.new_len()) as usize];
    let wanted: Vec<Bytes> = s.chunks.iter().map(|(id, _)| id_bytes(id)).collect();
    let signature_of = |wanted: Vec<Bytes>| pb::SpanSignatureRequest {
        base_manifest_id: base_id.clone(),
        offset: s.base_offset,
        length: s.base_len,
        session_id: sid.clone(),
        wanted_ids: wanted,
    };
    let sig = delta
        .span_signature(signature_of(wanted.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!sig.all_held, "the edited chunks are new to the account");
    let sig = sig.signature;
    let d = span::span_delta(&sig, run).unwrap();
    let request =
        |chunks: &[(ChunkId, u32)], offset: u64, delta: Vec<u8>| pb::PutChunksByDeltaRequest {
            session_id: sid.clone(),
            base_manifest_id: base_id.clone(),
            offset,
            length: s.base_len,
            chunks: chunks
                .iter()
                .map(|(id, length)| pb::SpanChunk {
                    id: id_bytes(id),
                    length: *length,
                })
                .collect(),
            delta: delta.into(),
        };
    let usage = |c: &mut StoreClient| {
        let mut c = c.clone();
        async move {
            c.get_usage(pb::GetUsageRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let before = usage(&mut alice).await;
    // Off the chunk boundaries.
    let err = delta
        .put_chunks_by_delta(request(&s.chunks, s.base_offset + 1, d.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A chunk id the rebuilt bytes do not have.
    let mut wrong = s.chunks.clone();
    wrong[0].0 = ChunkId::of(b"not this chunk");
    let err = delta
        .put_chunks_by_delta(request(&wrong, s.base_offset, d.clone()))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "HASH_MISMATCH");
    // Another account's version reads as absent.
    let mut bob = delta_client(&server, "bob-token").await;
    let err = bob
        .put_chunks_by_delta(request(&s.chunks, s.base_offset, d.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::NotFound | Code::FailedPrecondition | Code::PermissionDenied
        ),
        "{err:?}"
    );
    assert_eq!(usage(&mut alice).await, before, "nothing was stored");
    let reply = delta
        .put_chunks_by_delta(request(&s.chunks, s.base_offset, d))
        .await
        .unwrap()
        .into_inner();
    let acked: Vec<ChunkId> = reply
        .acknowledged_ids
        .iter()
        .map(|id| ChunkId::from_slice(id).unwrap())
        .collect();
    assert_eq!(
        acked,
        s.chunks.iter().map(|(id, _)| *id).collect::<Vec<_>>()
    );
    let all: Vec<ChunkId> = nm.entries.iter().map(|e| e.chunk).collect();
    let bytes: Vec<u8> = get_all(&mut alice, &all)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|(_, d)| d.to_vec())
        .collect();
    assert_eq!(
        bytes, edited,
        "the stored chunks make exactly the edited file"
    );
    // Asked again (an attempt cut off after its delta landed): nothing to send.
    let again = delta
        .span_signature(signature_of(wanted))
        .await
        .unwrap()
        .into_inner();
    assert!(again.all_held && again.signature.is_empty(), "{again:?}");
    let mut no_session = signature_of(vec![id_bytes(&s.chunks[0].0)]);
    no_session.session_id.clear();
    let err = delta.span_signature(no_session).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
}

// ---- Library and Accounts ----

async fn library(server: &Server, name: &str) -> client::LibraryApi {
    client::library_client(
        client::connect(&server.url).await.unwrap(),
        client::BearerAuth::new(&server.token(name)),
    )
}

async fn accounts(server: &Server, auth: client::BearerAuth) -> client::AccountsApi {
    client::accounts_client(client::connect(&server.url).await.unwrap(), auth)
}

fn clock(wall_ms: i64) -> Option<pb::Clock> {
    Some(pb::Clock {
        wall_ms,
        counter: 0,
        device: "test-device".into(),
    })
}

/// Uploads `data` as one file under a reservation and commits it; returns the asset id,
/// the manifest id and the reservation id.
async fn upload_and_commit(
    server: &Server,
    name: &str,
    data: &[u8],
    request_id: &str,
) -> (String, Bytes, String) {
    let mut lib = library(server, name).await;
    let mut store = as_user(server, name).await;
    let reservation = lib
        .begin_upload(pb::BeginUploadRequest {
            bytes: data.len() as u64 + 4096,
            request_id: format!("{request_id}-upload"),
        })
        .await
        .unwrap()
        .into_inner()
        .reservation_id;
    let chunks: Vec<_> = data.chunks(64 << 10).map(chunk).collect();
    put_all(&mut store, &reservation, chunks.clone(), 1 << 20)
        .await
        .unwrap();
    let manifest = keepsake_store::Manifest::from_chunks(&chunks, ChunkId::of(data));
    let manifest_id = store
        .put_manifest(pb::PutManifestRequest {
            session_id: reservation.clone(),
            manifest: Some(keepsake_transport::convert::manifest_to_wire(&manifest)),
            edit: None,
        })
        .await
        .unwrap()
        .into_inner()
        .manifest_id;
    let committed = lib
        .commit_asset(pb::CommitAssetRequest {
            request_id: request_id.into(),
            manifest_id: manifest_id.clone(),
            kind: pb::AssetKind::Photo.into(),
            original_name: "IMG_0001.JPG".into(),
            reservation_id: reservation.clone(),
            capture_time_ms: Some(1_700_000_000_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (committed.asset_id, manifest_id, reservation)
}

#[tokio::test]
async fn upload_commit_and_the_feed_over_grpc_with_a_watcher_told_at_once() {
    let server = start().await;
    let mut lib = library(&server, "alice-token").await;
    let mut watch = library(&server, "alice-token")
        .await
        .watch_changes(pb::WatchChangesRequest {
            cursor: 0,
            from_now: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert!(first.changes.is_empty(), "an empty library starts empty");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (asset_id, manifest_id, _) = upload_and_commit(&server, "alice-token", &data, "c1").await;
    // The watcher hears of the commit without polling (its poll interval is 5 s).
    let pushed = tokio::time::timeout(std::time::Duration::from_secs(2), watch.message())
        .await
        .expect("the watcher was told within 2 s")
        .unwrap()
        .unwrap();
    let Some(pb::change::Row::Asset(asset)) = &pushed.changes[0].row else {
        panic!("expected an asset row: {pushed:?}");
    };
    assert_eq!(asset.asset_id, asset_id);
    assert_eq!(asset.manifest_id, manifest_id);
    assert_eq!(asset.size, data.len() as u64);
    assert_eq!(asset.file_hash, id_bytes(&ChunkId::of(&data)));
    // A retried commit is the same asset; identical content under a new id (a copy under
    // another name) is a photo of its own, found by its content beside the first.
    let (again, _, _) = upload_and_commit(&server, "alice-token", &data, "c1").await;
    assert_eq!(again, asset_id);
    let dedup = lib
        .commit_asset(pb::CommitAssetRequest {
            request_id: "c2".into(),
            manifest_id: manifest_id.clone(),
            kind: pb::AssetKind::Photo.into(),
            original_name: "copy.jpg".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!dedup.deduplicated);
    assert_ne!(dedup.asset_id, asset_id);
    assert_eq!(dedup.path, "copy.jpg");
    let found = lib
        .find_assets_by_content(pb::FindAssetsByContentRequest {
            file_hashes: vec![id_bytes(&ChunkId::of(&data))],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.matches[0].assets[0].asset_id, asset_id);
    assert_eq!(found.matches[0].assets[1].asset_id, dedup.asset_id);
    let twins = lib
        .list_duplicates(pb::ListDuplicatesRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(twins.groups.len(), 1);
    assert_eq!(twins.groups[0].assets.len(), 2);
    lib.set_metadata(pb::SetMetadataRequest {
        asset_id: asset_id.clone(),
        clock: clock(1_700_000_000_000),
        field: Some(pb::set_metadata_request::Field::Favorite(true)),
    })
    .await
    .unwrap();
    let page = lib
        .list_changes(pb::ListChangesRequest {
            cursor: pushed.cursor,
            page_size: 10,
        })
        .await
        .unwrap()
        .into_inner();
    // The copy's row comes first, then the favourite's.
    let Some(pb::change::Row::Asset(asset)) = &page.changes.last().and_then(|c| c.row.clone())
    else {
        panic!("expected an asset row");
    };
    assert_eq!(asset.asset_id, asset_id);
    assert!(asset.favorite);
    // The row carries the newest field clock, for devices to merge into their own.
    assert_eq!(asset.clock, clock(1_700_000_000_000));
    // A clock far ahead of the server is refused, with the offset.
    let err = lib
        .set_metadata(pb::SetMetadataRequest {
            asset_id: asset_id.clone(),
            clock: clock(1_700_000_000_000 + 3_600_000),
            field: Some(pb::set_metadata_request::Field::Hidden(true)),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "CLOCK_SKEW");
    // A cursor from the future is refused.
    let err = lib
        .list_changes(pb::ListChangesRequest {
            cursor: 1 << 40,
            page_size: 10,
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "CURSOR_FROM_FUTURE");
    // Purge: a tombstone in the feed and in content lookups.
    lib.purge_asset(pb::PurgeAssetRequest {
        asset_id: asset_id.clone(),
    })
    .await
    .unwrap();
    let found = lib
        .find_assets_by_content(pb::FindAssetsByContentRequest {
            file_hashes: vec![id_bytes(&ChunkId::of(&data))],
        })
        .await
        .unwrap()
        .into_inner();
    // The copy is a photo of its own and stays; the tombstone names the purged path.
    assert_eq!(found.matches[0].assets.len(), 1);
    assert_eq!(found.matches[0].assets[0].asset_id, dedup.asset_id);
    assert!(found.matches[0].purged_at_ms.is_some());
    assert_eq!(found.matches[0].purged_paths.len(), 1);
}

#[tokio::test]
async fn over_quota_begin_upload_is_refused_with_the_numbers_before_any_byte() {
    let server = start().await;
    let mut lib = library(&server, "alice-token").await;
    let err = lib
        .begin_upload(pb::BeginUploadRequest {
            bytes: (64 << 20) + 1,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::ResourceExhausted, "QUOTA_EXCEEDED");
    let info = err.get_details_error_info().unwrap();
    assert_eq!(info.metadata["limit_bytes"], (64u64 << 20).to_string());
    assert_eq!(
        info.metadata["needed_bytes"],
        ((64u64 << 20) + 1).to_string()
    );
    assert_eq!(info.metadata["used_bytes"], "0");
    assert!(err.get_details_quota_failure().is_some());
    lib.begin_upload(pb::BeginUploadRequest {
        bytes: 64 << 20,
        request_id: String::new(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn devices_enrol_refresh_report_and_a_revoked_device_is_refused_at_once() {
    let server = start().await;
    let mut anonymous = accounts(&server, client::BearerAuth::anonymous()).await;
    let err = anonymous
        .sign_in(pb::SignInRequest {
            account: "alice".into(),
            password: "wrong horse".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::Unauthenticated, "UNAUTHENTICATED");
    let err = anonymous
        .enroll_device(pb::EnrollDeviceRequest {
            account: "alice".into(),
            password: "correct horse".into(),
            device_name: "old phone".into(),
            platform: "ios".into(),
            client_version: "0.0.9".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "CLIENT_TOO_OLD");
    let enrolled = anonymous
        .enroll_device(pb::EnrollDeviceRequest {
            account: "alice".into(),
            password: "correct horse".into(),
            device_name: "Alice's phone".into(),
            platform: "ios".into(),
            client_version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let refreshed = anonymous
        .refresh_token(pb::RefreshTokenRequest {
            device_id: enrolled.device_id.clone(),
            device_token: enrolled.device_token.clone(),
            client_version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access
        .unwrap();
    let device_auth = client::BearerAuth::new(&refreshed.token);
    let mut phone = accounts(&server, device_auth.clone()).await;
    phone
        .report_device_state(pb::ReportDeviceStateRequest {
            state: Some(pb::DeviceState {
                state: "blocked".into(),
                reason: "WAITING_FOR_WIFI".into(),
                pending_items: 3,
                network: "cellular".into(),
                battery_percent: Some(80),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut owner = accounts(
        &server,
        client::BearerAuth::new(&server.token("alice-token")),
    )
    .await;
    let devices = owner
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert_eq!(devices.len(), 1);
    let state = devices[0].state.as_ref().unwrap();
    assert_eq!(
        (state.reason.as_str(), state.pending_items),
        ("WAITING_FOR_WIFI", 3)
    );
    assert!(devices[0].last_seen_ms.is_some());
    // A user token cannot create accounts; a device token cannot report for another device.
    let err = owner
        .create_account(pb::CreateAccountRequest {
            account: "mallory".into(),
            password: "correct horse".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    owner
        .revoke_device(pb::RevokeDeviceRequest {
            device_id: enrolled.device_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Its still-unexpired access token stops working at the library at once, with a reason
    // its agent can show: not "sign in", but "this device was removed; enrol it again".
    let mut revoked =
        client::library_client(client::connect(&server.url).await.unwrap(), device_auth);
    let err = revoked
        .list_changes(pb::ListChangesRequest::default())
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, "DEVICE_REVOKED");
    let err = anonymous
        .refresh_token(pb::RefreshTokenRequest {
            device_id: enrolled.device_id,
            device_token: enrolled.device_token,
            client_version: "0.1.0".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, "DEVICE_REVOKED");
    // Still listed, marked revoked; removing takes it out of the list.
    let listed = owner
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert!(listed[0].revoked_at_ms.is_some());
    owner
        .remove_device(pb::RemoveDeviceRequest {
            device_id: listed[0].device_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let listed = owner
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert!(listed.is_empty(), "{listed:?}");
    // Rotation keeps existing tokens working.
    let mut admin = accounts(
        &server,
        client::BearerAuth::new(&server.token("admin-token")),
    )
    .await;
    admin
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap();
    owner.get_account(pb::GetAccountRequest {}).await.unwrap();
}

#[tokio::test]
async fn account_b_cannot_read_list_change_or_learn_about_a_s_assets_albums_or_chunks() {
    let server = start().await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let (asset_id, manifest_id, reservation) =
        upload_and_commit(&server, "alice-token", &data, "a1").await;
    let mut alice = library(&server, "alice-token").await;
    alice
        .put_album(pb::PutAlbumRequest {
            album_id: "trip".into(),
            name: "Trip".into(),
            clock: clock(1_700_000_000_000),
        })
        .await
        .unwrap();
    alice
        .set_album_member(pb::SetAlbumMemberRequest {
            album_id: "trip".into(),
            asset_id: asset_id.clone(),
            present: true,
            clock: clock(1_700_000_000_000),
        })
        .await
        .unwrap();
    let mut alice_accounts = accounts(
        &server,
        client::BearerAuth::new(&server.token("alice-token")),
    )
    .await;
    let alice_device = alice_accounts
        .enroll_device(pb::EnrollDeviceRequest {
            account: "alice".into(),
            password: "correct horse".into(),
            device_name: "phone".into(),
            platform: "ios".into(),
            client_version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .device_id;
    let before = alice
        .list_changes(pb::ListChangesRequest {
            cursor: 0,
            page_size: 100,
        })
        .await
        .unwrap()
        .into_inner();

    let mut bob = library(&server, "bob-token").await;
    let mut bob_store = as_user(&server, "bob-token").await;
    let mut bob_accounts =
        accounts(&server, client::BearerAuth::new(&server.token("bob-token"))).await;
    let not_found = |r: Result<_, tonic::Status>, what: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.code(), Code::NotFound, "{what}: {err:?}");
    };
    not_found(
        bob.get_asset(pb::GetAssetRequest {
            asset_id: asset_id.clone(),
        })
        .await
        .map(|_| ()),
        "GetAsset",
    );
    not_found(
        bob.list_versions(pb::ListVersionsRequest {
            asset_id: asset_id.clone(),
        })
        .await
        .map(|_| ()),
        "ListVersions",
    );
    not_found(
        bob.set_metadata(pb::SetMetadataRequest {
            asset_id: asset_id.clone(),
            clock: clock(1_700_000_000_001),
            field: Some(pb::set_metadata_request::Field::Title("mine".into())),
        })
        .await
        .map(|_| ()),
        "SetMetadata",
    );
    for r in [
        bob.trash_asset(pb::TrashAssetRequest {
            asset_id: asset_id.clone(),
            alone: false,
        })
        .await
        .map(|_| ()),
        bob.restore_asset(pb::RestoreAssetRequest {
            asset_id: asset_id.clone(),
        })
        .await
        .map(|_| ()),
        bob.purge_asset(pb::PurgeAssetRequest {
            asset_id: asset_id.clone(),
        })
        .await
        .map(|_| ()),
        bob.delete_album(pb::DeleteAlbumRequest {
            album_id: "trip".into(),
            clock: clock(1_700_000_000_001),
        })
        .await
        .map(|_| ()),
        bob.set_album_member(pb::SetAlbumMemberRequest {
            album_id: "trip".into(),
            asset_id: asset_id.clone(),
            present: false,
            clock: clock(1_700_000_000_001),
        })
        .await
        .map(|_| ()),
        bob.renew_upload(pb::RenewUploadRequest {
            reservation_id: reservation.clone(),
        })
        .await
        .map(|_| ()),
        bob.commit_asset(pb::CommitAssetRequest {
            request_id: "steal".into(),
            manifest_id: manifest_id.clone(),
            kind: pb::AssetKind::Photo.into(),
            original_name: "x.jpg".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        bob_store
            .get_manifest(pb::GetManifestRequest {
                manifest_id: manifest_id.clone(),
            })
            .await
            .map(|_| ()),
        bob_accounts
            .revoke_device(pb::RevokeDeviceRequest {
                device_id: alice_device.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        bob_accounts
            .remove_device(pb::RemoveDeviceRequest {
                device_id: alice_device.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    ] {
        not_found(r, "mutation or read of another account's id");
    }
    let found = bob
        .find_assets_by_content(pb::FindAssetsByContentRequest {
            file_hashes: vec![id_bytes(&ChunkId::of(&data))],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(found.matches[0].assets.is_empty() && found.matches[0].purged_at_ms.is_none());
    let feed = bob
        .list_changes(pb::ListChangesRequest {
            cursor: 0,
            page_size: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(feed.changes.is_empty(), "{feed:?}");
    let devices = bob_accounts
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(devices.devices.is_empty());
    // Naming alice's account is an administrator's right, not bob's.
    let err = bob_accounts
        .list_devices(pb::ListDevicesRequest {
            account: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let sid = session(&mut bob_store).await;
    let ids: Vec<Bytes> = data
        .chunks(64 << 10)
        .map(|c| id_bytes(&ChunkId::of(c)))
        .collect();
    let missing = bob_store
        .find_missing(pb::FindMissingRequest {
            session_id: sid,
            ids: ids.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        missing.missing_ids, ids,
        "bob cannot learn alice holds these chunks"
    );
    assert!(
        get_all(&mut bob_store, &[ChunkId::of(&data[..64 << 10])])
            .await
            .is_err()
    );
    let usage = bob_accounts
        .get_account(pb::GetAccountRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.account.unwrap().used_bytes, 0);
    // Bob's album with the same id is his own; alice's is untouched.
    bob.put_album(pb::PutAlbumRequest {
        album_id: "trip".into(),
        name: "Bob's trip".into(),
        clock: clock(1_700_000_000_002),
    })
    .await
    .unwrap();
    let after = alice
        .list_changes(pb::ListChangesRequest {
            cursor: 0,
            page_size: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before, "nothing of alice's changed");
}

// ---- Faults on the wire ----

/// Under 100 random schedules of cuts, delays and stalls, every upload and download either
/// succeeds or fails with a transient typed error, never outlives its deadline, and never
/// reports a chunk as stored that the server does not durably hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_100_fault_schedules_every_call_succeeds_or_fails_transiently_and_acks_are_durable() {
    use keepsake_testkit::fault_proxy::{FaultProxy, Schedule};
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    let server = start().await;
    let deadline = std::time::Duration::from_millis(1500);
    let config = ClientConfig {
        call_timeout: deadline,
        stream_timeout: deadline,
        stall_timeout: deadline,
        max_bytes_in_flight: 96 << 10,
        message_bytes: 32 << 10,
    };
    let (mut succeeded, mut transient, mut cuts, mut stalls) = (0, 0, 0u64, 0u64);
    for group in 0..10u64 {
        let mut runs = Vec::new();
        for seed in group * 10..group * 10 + 10 {
            let proxy = FaultProxy::start(server.addr, Schedule::random(seed))
                .await
                .unwrap();
            let channel = tonic::transport::Endpoint::from_shared(proxy.url())
                .unwrap()
                .connect_timeout(deadline)
                .connect_lazy();
            let mut cloud = CloudClient::new(
                channel,
                client::BearerAuth::new(&server.token("alice-token")),
                config.clone(),
            );
            let session = server
                .store
                .begin_session("alice", 0, 600_000, None)
                .unwrap()
                .id;
            let chunks: Vec<(ChunkId, Bytes)> = (0..24u32)
                .map(|i| {
                    let mut data = vec![(seed % 251) as u8; 16 << 10];
                    data[..4].copy_from_slice(&i.to_le_bytes());
                    data[4..12].copy_from_slice(&seed.to_le_bytes());
                    chunk(&data)
                })
                .collect();
            runs.push(tokio::spawn(async move {
                let started = std::time::Instant::now();
                let mut acknowledged = Vec::new();
                let put = cloud
                    .put_chunks(&session, chunks.clone(), &mut acknowledged)
                    .await;
                let put_took = started.elapsed();
                let started = std::time::Instant::now();
                // Only what was acknowledged may be asked for back.
                let get = cloud.get_chunks(&acknowledged).await;
                let get_took = started.elapsed();
                (
                    seed,
                    proxy,
                    chunks,
                    acknowledged,
                    put,
                    put_took,
                    get,
                    get_took,
                )
            }));
        }
        for run in runs {
            let (seed, proxy, chunks, acknowledged, put, put_took, get, get_took) =
                tokio::time::timeout(deadline * 4, run)
                    .await
                    .expect("a run hung past every deadline")
                    .unwrap();
            let slack = std::time::Duration::from_millis(500);
            assert!(
                put_took <= deadline + slack,
                "seed {seed}: PutChunks took {put_took:?}"
            );
            assert!(
                get_took <= deadline + slack,
                "seed {seed}: GetChunks took {get_took:?}"
            );
            for result in [put.as_ref().err(), get.as_ref().err()]
                .into_iter()
                .flatten()
            {
                assert!(
                    result.is_transient(),
                    "seed {seed}: permanent error {result:?}"
                );
                transient += 1;
            }
            if put.is_ok() {
                assert_eq!(acknowledged.len(), chunks.len(), "seed {seed}");
                succeeded += 1;
            }
            // Whatever was acknowledged — all of it, or some before a cut — is durable.
            for id in &acknowledged {
                let data = server.store.get_chunk("alice", id).unwrap_or_else(|e| {
                    panic!("seed {seed}: acknowledged {id} is not stored: {e}")
                });
                assert_eq!(ChunkId::of(&data), *id);
            }
            if let Ok(got) = get {
                assert_eq!(got.len(), acknowledged.len(), "seed {seed}");
                succeeded += 1;
            }
            cuts += proxy
                .stats()
                .cuts
                .load(std::sync::atomic::Ordering::Relaxed);
            stalls += proxy
                .stats()
                .stalls
                .load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    println!(
        "100 schedules: {succeeded} calls succeeded, {transient} failed transiently; {cuts} cuts, {stalls} stalls"
    );
    assert!(cuts > 20 && stalls > 5, "the schedules must actually hurt");
    assert!(succeeded > 20, "and some calls must still get through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_device_is_shed_while_another_device_still_gets_through() {
    let server = start_configured(
        None,
        ServerConfig {
            limits: keepsake_transport::guard::Limits {
                calls_per_second: 20.0,
                burst: 20.0,
                concurrent_per_caller: 4,
                concurrent_total: 1024,
                ..keepsake_transport::guard::Limits::default()
            },
            max_message_bytes: 1 << 20,
            ..ServerConfig::default()
        },
    )
    .await;
    let alice = as_user(&server, "alice-token").await;
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let mut c = alice.clone();
            tokio::spawn(async move { c.get_usage(pb::GetUsageRequest {}).await })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for call in flood {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                let reason = reason_of(&status).unwrap();
                assert!(
                    reason == "RATE_LIMITED" || reason == "OVERLOADED",
                    "shedding is never {reason}"
                );
                assert!(status.get_details_retry_info().is_some());
                let typed = keepsake_transport::client::CallError::from(status);
                assert!(typed.is_transient());
                shed += 1;
            }
        }
    }
    assert!(ok >= 1 && shed >= 100, "{ok} admitted, {shed} shed");
    // Bob's calls are his own: the flood took nothing from him.
    let mut bob = as_user(&server, "bob-token").await;
    for _ in 0..5 {
        bob.get_usage(pb::GetUsageRequest {}).await.unwrap();
    }
    // A message over the bound is refused, not buffered and served.
    let big = vec![7u8; 2 << 20];
    let sid = session(&mut bob).await;
    let err = put_all(&mut bob, &sid, vec![chunk(&big)], 4 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{err:?}"
    );
    let usage = bob
        .get_usage(pb::GetUsageRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        usage.bytes_owned, 0,
        "nothing of the oversized message was stored"
    );
}

#[tokio::test]
async fn tls_admits_the_pinned_certificate_only_and_health_alone_is_open() {
    use keepsake_transport::tls;
    let cert = tls::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pin = tls::fingerprint_of_pem(&cert.cert_pem).unwrap();
    let server = start_configured(
        None,
        ServerConfig {
            tls: Some(cert),
            ..ServerConfig::default()
        },
    )
    .await;
    let https = format!("https://{}", server.addr);
    let channel = client::connect_tls(&https, &pin).await.unwrap();
    let mut alice = client::store_client(channel.clone(), &server.token("alice-token"));
    alice.get_usage(pb::GetUsageRequest {}).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let mut anonymous = keepsake_proto::v1::chunk_store_client::ChunkStoreClient::with_interceptor(
        channel,
        client::BearerAuth::anonymous(),
    );
    let err = anonymous
        .get_usage(pb::GetUsageRequest {})
        .await
        .unwrap_err();
    assert_status(&err, Code::Unauthenticated, "UNAUTHENTICATED");
    // Another certificate's fingerprint: the handshake is refused.
    let other = tls::self_signed(&["localhost".into()]).unwrap();
    let wrong = tls::fingerprint_of_pem(&other.cert_pem).unwrap();
    assert!(client::connect_tls(&https, &wrong).await.is_err());
    // Plaintext to a TLS server gets nowhere.
    let plain = client::connect(&server.url).await;
    if let Ok(channel) = plain {
        let mut c = client::store_client(channel, &server.token("alice-token"));
        assert!(c.get_usage(pb::GetUsageRequest {}).await.is_err());
    }
}

/// The typed client drives every service a device needs, and its errors come back typed.
#[tokio::test]
async fn the_typed_client_drives_every_service_and_types_its_errors() {
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    let server = start().await;
    let channel = client::connect(&server.url).await.unwrap();
    let mut anonymous = CloudClient::new(
        channel.clone(),
        client::BearerAuth::anonymous(),
        ClientConfig::default(),
    );
    let wrong = anonymous.sign_in("alice", "wrong horse").await.unwrap_err();
    assert_eq!(
        (wrong.reason(), wrong.is_transient()),
        ("UNAUTHENTICATED", false)
    );
    let token = anonymous.sign_in("alice", "correct horse").await.unwrap();
    let mut cloud = CloudClient::new(
        channel,
        client::BearerAuth::new(&token),
        ClientConfig {
            max_bytes_in_flight: 256 << 10,
            message_bytes: 64 << 10,
            ..ClientConfig::default()
        },
    );
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31 % 255) as u8).collect();
    let chunks: Vec<(ChunkId, Bytes)> = data.chunks(64 << 10).map(chunk).collect();
    let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();
    let session = cloud.begin_upload(2 << 20, "up-1").await.unwrap();
    let missing = cloud.find_missing(&session, &ids).await.unwrap();
    assert_eq!(missing.len(), ids.len());
    let mut acknowledged = Vec::new();
    cloud
        .put_chunks(&session, chunks.clone(), &mut acknowledged)
        .await
        .unwrap();
    assert_eq!(
        acknowledged, ids,
        "a small window still gets every chunk acknowledged"
    );
    let manifest = keepsake_store::Manifest::from_chunks(&chunks, ChunkId::of(&data));
    let manifest_id = cloud.put_manifest(&session, &manifest).await.unwrap();
    let committed = cloud
        .commit_asset(pb::CommitAssetRequest {
            request_id: "c-1".into(),
            manifest_id: id_bytes(&manifest_id),
            kind: pb::AssetKind::Photo.into(),
            original_name: "IMG_1.JPG".into(),
            reservation_id: session.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let page = cloud.list_changes(0, 100).await.unwrap();
    assert_eq!(page.changes.len(), 1);
    let back = cloud.get_chunks(&ids).await.unwrap();
    assert_eq!(back.len(), ids.len());
    // An edit travels as an rsync delta and is rebuilt by the server.
    let mut edited = data.clone();
    edited[500_000..500_100].fill(9);
    let signature = cloud.signature(&manifest_id).await.unwrap();
    let delta = keepsake_delta::rsync::delta(
        &signature,
        &edited,
        &keepsake_delta::rsync::RsyncLimits::default(),
    )
    .unwrap();
    assert!(delta.len() < 64 << 10, "{} bytes of delta", delta.len());
    let rebuilt = cloud
        .apply_delta(
            &session,
            &manifest_id,
            &ChunkId::of(&edited),
            Bytes::from(delta),
        )
        .await
        .unwrap();
    let version = cloud
        .commit_asset(pb::CommitAssetRequest {
            request_id: "c-2".into(),
            asset_id: committed.asset_id.clone(),
            base_version: Some(committed.version),
            manifest_id: id_bytes(&rebuilt),
            kind: pb::AssetKind::Photo.into(),
            original_name: "IMG_1.JPG".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(version.version, 2);
    let decision = cloud
        .evaluate(pb::Snapshot {
            account: Some("alice".into()),
            sync_enabled: true,
            network: pb::NetworkType::Wifi.into(),
            client_version: Some(pb::Version {
                major: 0,
                minor: 1,
                patch: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!decision.classes.is_empty());
    // Permanent errors arrive typed, with their details.
    let over = cloud.begin_upload(1 << 40, "up-2").await.unwrap_err();
    assert_eq!(
        (over.reason(), over.is_transient()),
        ("QUOTA_EXCEEDED", false)
    );
    assert_eq!(over.metadata()["limit_bytes"], (64u64 << 20).to_string());
    let unknown = cloud
        .commit_asset(pb::CommitAssetRequest {
            request_id: "c-3".into(),
            manifest_id: id_bytes(&ChunkId::of(b"nothing")),
            kind: pb::AssetKind::Photo.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.reason(), unknown.is_transient()),
        ("NOT_FOUND", false)
    );
}

/// Broke once: a chunk that did not fit in the window waited for acknowledgements of
/// chunks the client had sent without asking for any, so the upload hung until its deadline.
#[tokio::test]
async fn an_upload_whose_next_chunk_does_not_fit_the_window_does_not_stall() {
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    let server = start().await;
    let mut cloud = CloudClient::new(
        client::connect(&server.url).await.unwrap(),
        client::BearerAuth::new(&server.token("alice-token")),
        ClientConfig {
            call_timeout: std::time::Duration::from_secs(3),
            stream_timeout: std::time::Duration::from_secs(3),
            stall_timeout: std::time::Duration::from_secs(3),
            max_bytes_in_flight: 256 << 10,
            message_bytes: 64 << 10,
        },
    );
    let session = server
        .store
        .begin_session("alice", 0, 600_000, None)
        .unwrap()
        .id;
    let chunks = vec![
        chunk(&[1u8; 100 << 10]),
        chunk(&[2u8; 200 << 10]),
        chunk(&[3u8; 250 << 10]),
    ];
    let mut acknowledged = Vec::new();
    cloud
        .put_chunks(&session, chunks.clone(), &mut acknowledged)
        .await
        .unwrap();
    assert_eq!(acknowledged.len(), 3);
}

/// `--limit-upload` / `--limit-download`: a limited client sends and fetches at the rate
/// it was given (a second's burst, then the rate), with a stall watchdog shorter than the
/// transfer that never fires (acknowledgements are asked for every few seconds' worth),
/// and every chunk arrives whole; the limits are shared by the client's clones (lanes).
#[tokio::test]
async fn bandwidth_limits_hold_uploads_and_downloads_to_their_rate() {
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    use keepsake_transport::throttle::Limits;
    let server = start().await;
    let cloud = CloudClient::new(
        client::connect(&server.url).await.unwrap(),
        client::BearerAuth::new(&server.token("alice-token")),
        ClientConfig {
            stall_timeout: std::time::Duration::from_millis(1_500),
            ..ClientConfig::default()
        },
    );
    let mut lane = cloud.clone();
    cloud.throttle().set(Limits {
        upload: Some(400_000),
        download: Some(400_000),
    });
    let session = server
        .store
        .begin_session("alice", 0, 600_000, None)
        .unwrap()
        .id;
    // 1.2 MB: 400 kB at once, 800 kB at 400 kB/s.
    let chunks: Vec<(ChunkId, Bytes)> = (0..12u8).map(|i| chunk(&vec![i; 100_000])).collect();
    let started = std::time::Instant::now();
    let mut acknowledged = Vec::new();
    lane.put_chunks(&session, chunks.clone(), &mut acknowledged)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(acknowledged.len(), 12);
    assert!(
        took >= std::time::Duration::from_millis(1_900),
        "upload took {took:?}"
    );
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    let started = std::time::Instant::now();
    let fetched = lane.get_chunks(&ids).await.unwrap();
    let took = started.elapsed();
    assert_eq!(fetched, chunks);
    assert!(
        took >= std::time::Duration::from_millis(1_900),
        "download took {took:?}"
    );
    // Lifted while the client lives: the same bytes come back at once.
    cloud.throttle().set(Limits::default());
    let started = std::time::Instant::now();
    lane.get_chunks(&ids).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(1_500));
}

/// The watchdog: a stream that stops moving is abandoned as TRANSFER_STALLED (transient)
/// long before its overall deadline, and the retry completes the upload.
#[tokio::test]
async fn a_stalled_upload_is_abandoned_by_the_watchdog_and_the_retry_completes() {
    use keepsake_testkit::fault_proxy::{FaultProxy, Schedule};
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    let server = start().await;
    let mut schedule = Schedule::clean();
    schedule.stall_percent = 100;
    schedule.within_bytes = 200 << 10;
    schedule.stall_for = std::time::Duration::from_secs(5);
    let proxy = FaultProxy::start(server.addr, schedule).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(proxy.url())
        .unwrap()
        .connect_lazy();
    let mut cloud = CloudClient::new(
        channel,
        client::BearerAuth::new(&server.token("alice-token")),
        ClientConfig {
            stall_timeout: std::time::Duration::from_millis(500),
            stream_timeout: std::time::Duration::from_secs(30),
            ..ClientConfig::default()
        },
    );
    let session = server
        .store
        .begin_session("alice", 0, 600_000, None)
        .unwrap()
        .id;
    let chunks: Vec<(ChunkId, Bytes)> = (0..16u8).map(|i| chunk(&[i; 64 << 10])).collect();
    let started = std::time::Instant::now();
    let mut acknowledged = Vec::new();
    let err = cloud
        .put_chunks(&session, chunks.clone(), &mut acknowledged)
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason(), err.is_transient()),
        ("TRANSFER_STALLED", true)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Drop the stalled connection; a direct one sends only what was not acknowledged.
    proxy.cut_all();
    let mut fresh = CloudClient::new(
        client::connect(&server.url).await.unwrap(),
        client::BearerAuth::new(&server.token("alice-token")),
        ClientConfig::default(),
    );
    let missing = fresh
        .find_missing(&session, &chunks.iter().map(|c| c.0).collect::<Vec<_>>())
        .await
        .unwrap();
    let rest: Vec<_> = chunks
        .into_iter()
        .filter(|c| missing.contains(&c.0))
        .collect();
    let mut more = Vec::new();
    fresh.put_chunks(&session, rest, &mut more).await.unwrap();
    assert_eq!(acknowledged.len() + more.len(), 16);
}

// ---- Bad input over every RPC ----

/// Bytes in, bytes out: lets a test put anything on the wire, whatever the method expects.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A protobuf field `number` holding `value` as a length-delimited string or bytes.
fn field(number: u32, value: &[u8]) -> Vec<u8> {
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut out = Vec::new();
    varint(u64::from(number << 3 | 2), &mut out);
    varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    out
}

/// Every method of every service this server serves: (path, client streams, server streams).
fn served_methods() -> Vec<(String, bool, bool)> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(keepsake_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            // DeviceControl is a device agent's, not the cloud's.
            if name.ends_with("DeviceControl") {
                continue;
            }
            for m in &service.method {
                methods.push((
                    format!("/{name}/{}", m.name()),
                    m.client_streaming(),
                    m.server_streaming(),
                ));
            }
        }
    }
    methods
}

/// What a bad call may change: both accounts' feeds and usage.
fn fingerprint(server: &Server) -> String {
    let feed = |account: &str| {
        server
            .cloud
            .library()
            .list_changes(account, 0, 1000)
            .unwrap()
            .changes
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
    };
    format!(
        "{:?} {:?} {:?} {:?}",
        feed("alice"),
        feed("bob"),
        server.store.usage("alice").unwrap(),
        server.store.usage("bob").unwrap()
    )
}

#[tokio::test]
async fn every_rpc_answers_malformed_hostile_or_foreign_input_with_a_clear_error_and_changes_nothing()
 {
    // Limits high enough that every call reaches its method rather than the rate limiter.
    let mut config = ServerConfig::default();
    config.limits.calls_per_second = 1e6;
    config.limits.burst = 1e6;
    let server = start_configured(None, config).await;
    // Bob has an asset and a session; alice will name them.
    let (bob_asset, bob_manifest, bob_reservation) =
        upload_and_commit(&server, "bob-token", b"bob's photo", "bob-1").await;
    let before = fingerprint(&server);
    let methods = served_methods();
    assert!(methods.len() >= 40, "only {} methods found", methods.len());

    let hostile: Vec<Vec<u8>> = vec![
        b"../../../../etc/passwd".to_vec(),
        b"..\\..\\windows\\system32".to_vec(),
        "\u{202e}gpj.exe\u{0}\u{feff}\u{1F4F7}".as_bytes().to_vec(),
        vec![0xff, 0xfe, 0xc0, 0x80], // not UTF-8
        bob_asset.as_bytes().to_vec(),
        bob_manifest.to_vec(),
        bob_reservation.as_bytes().to_vec(),
        vec![b'a'; 200_000],
    ];
    let mut payloads: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("not protobuf".into(), vec![0xff; 9]),
        ("truncated".into(), vec![0x0a, 0x7f, b'x']),
        ("a wrong wire type".into(), vec![0x0d, 1, 2, 3, 4]),
        ("17 MiB".into(), field(1, &vec![7u8; 17 << 20])),
    ];
    for (i, value) in hostile.iter().enumerate() {
        for number in 1..=4 {
            payloads.push((
                format!("hostile value {i} in field {number}"),
                field(number, value),
            ));
        }
    }

    let channel = client::connect(&server.url).await.unwrap();
    let auth = client::BearerAuth::new(&server.token("alice-token"));
    let mut grpc = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(
        channel, auth,
    ));
    let mut unclear = Vec::new();
    let mut calls = 0;
    let mut undecodable_named = 0;
    for (path, client_streams, server_streams) in &methods {
        for (what, payload) in &payloads {
            calls += 1;
            grpc.ready().await.unwrap();
            let route = || path.parse::<http::uri::PathAndQuery>().unwrap();
            let result: Result<(), tonic::Status> = match (client_streams, server_streams) {
                (false, false) => grpc
                    .unary(tonic::Request::new(payload.clone()), route(), RawCodec)
                    .await
                    .map(drop),
                (false, true) => match grpc
                    .server_streaming(tonic::Request::new(payload.clone()), route(), RawCodec)
                    .await
                {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        // A watch may stay open: its first answer is enough.
                        match tokio::time::timeout(
                            std::time::Duration::from_millis(200),
                            stream.message(),
                        )
                        .await
                        {
                            Ok(Err(status)) => Err(status),
                            _ => Ok(()),
                        }
                    }
                    Err(status) => Err(status),
                },
                (true, _) => match grpc
                    .streaming(
                        tonic::Request::new(futures::stream::iter(vec![payload.clone()])),
                        route(),
                        RawCodec,
                    )
                    .await
                {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(_)) => continue,
                                Ok(None) => break Ok(()),
                                Err(status) => break Err(status),
                            }
                        }
                    }
                    Err(status) => Err(status),
                },
            };
            if what == "not protobuf"
                && result.as_ref().err().map(tonic::Status::code) == Some(Code::InvalidArgument)
            {
                // Said in words once, not percent-escaped twice.
                let message = result.as_ref().err().map(tonic::Status::message);
                assert!(
                    !message.unwrap_or_default().contains('%'),
                    "{path}: {message:?}"
                );
                undecodable_named += 1;
            }
            if let Err(status) = &result {
                assert_ne!(
                    reason_of(status).as_deref(),
                    Some("RATE_LIMITED"),
                    "{path} with {what} never reached its method"
                );
            }
            if let Err(status) = result {
                let clear = !matches!(
                    status.code(),
                    Code::Unknown | Code::Internal | Code::DataLoss | Code::Unimplemented
                ) && !status.message().trim().is_empty();
                if !clear {
                    unclear.push(format!(
                        "{path} with {what}: {:?} {:?}",
                        status.code(),
                        status.message()
                    ));
                }
            }
            let after = fingerprint(&server);
            assert_eq!(
                before, after,
                "{path} with {what} changed the library or the store"
            );
        }
    }
    assert!(
        unclear.is_empty(),
        "{} of {calls} calls got no clear error:\n{}",
        unclear.len(),
        unclear.join("\n")
    );
    // Bytes that are no message at all are the caller's fault, and said so (a few calls
    // are refused before their body is read: by role or by the scrub's own limit).
    assert!(
        undecodable_named + 3 >= methods.len(),
        "only {undecodable_named} of {} methods call garbage INVALID_ARGUMENT",
        methods.len()
    );
    // No hostile name became an account.
    for value in &hostile {
        let name = String::from_utf8_lossy(value);
        assert!(
            server.cloud.account_info(&name).is_err(),
            "account {name:?} exists"
        );
    }
}

/// A device's commit carries its manifest — whole for a new photo, as splices for an edit —
/// so one call stores and commits; where the cloud lacks the edit's base the client sends
/// the manifest on its own and still commits; a manifest that is not the one the commit
/// names commits nothing.
#[tokio::test]
async fn a_commit_carries_its_manifest_and_falls_back_where_the_cloud_lacks_the_base() {
    use keepsake_device::{Cloud, NewAsset};
    use keepsake_store::Manifest;
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    let server = start().await;
    let mut cloud = CloudClient::new(
        client::connect(&server.url).await.unwrap(),
        client::BearerAuth::new(&server.token("alice-token")),
        ClientConfig::default(),
    );
    let session = Cloud::begin_upload(&mut cloud, 32 << 20, "carry")
        .await
        .unwrap();
    let mut sender = cloud.clone();
    let mut send = async |file: &[u8]| -> Manifest {
        let mut chunks = Vec::new();
        let manifest =
            keepsake_delta::chunk_stream(file, keepsake_delta::ChunkParams::PHOTO, |id, d| {
                chunks.push((id, Bytes::copy_from_slice(d)));
                Ok(())
            })
            .unwrap();
        let mut acknowledged = Vec::new();
        Cloud::put_chunks(&mut sender, &session, chunks, &mut acknowledged)
            .await
            .unwrap();
        manifest
    };
    let original = noise(3 << 20, "carried manifest");
    let mut edited = original.clone();
    edited[1_500_000..1_500_019].copy_from_slice(b"2025:01:11 08:30:00");
    let mut again = edited.clone();
    again[2_500_000..2_500_019].copy_from_slice(b"2026:02:12 09:31:01");
    let (m1, m2, m3) = (
        send(&original).await,
        send(&edited).await,
        send(&again).await,
    );
    let asset = |request_id: &str, manifest: &Manifest, base: Option<(&str, u32)>| NewAsset {
        camera: Default::default(),
        position_e7: None,
        orientation: 0,
        duration_ms: None,
        content_identifier: String::new(),
        lens: String::new(),
        altitude_cm: None,
        utc_offset_minutes: None,
        codec: String::new(),
        request_id: request_id.into(),
        manifest: manifest.id(),
        original_name: "IMG_0001.JPG".into(),
        path: "IMG_0001.JPG".into(),
        video: false,
        capture_time: Some(1_700_000_000_000),
        width: None,
        height: None,
        reservation_id: session.clone(),
        asset_id: base.map(|(a, _)| a.to_string()),
        base_version: base.map(|(_, v)| v),
    };
    let first = cloud
        .commit(asset("carry-1", &m1, None), &m1, None)
        .await
        .unwrap();
    let second = cloud
        .commit(
            asset("carry-2", &m2, Some((&first.asset_id, first.version))),
            &m2,
            Some((&m1.id(), &m1)),
        )
        .await
        .unwrap();
    assert_eq!(
        (second.asset_id.as_str(), second.version),
        (first.asset_id.as_str(), first.version + 1)
    );
    assert_eq!(Cloud::manifest(&mut cloud, &m2.id()).await.unwrap(), m2);
    // Splices of a base the account never had: refused with the commit, then sent whole.
    let stranger = ChunkId::of(b"a manifest alice never had");
    let third = cloud
        .commit(
            asset("carry-3", &m3, Some((&first.asset_id, second.version))),
            &m3,
            Some((&stranger, &m2)),
        )
        .await
        .unwrap();
    assert_eq!(third.version, second.version + 1);
    assert_eq!(Cloud::manifest(&mut cloud, &m3.id()).await.unwrap(), m3);
    // The manifest sent must be the one named: otherwise nothing is committed.
    let other = send(&noise(1 << 20, "another photo")).await;
    let mut lib = library(&server, "alice-token").await;
    let err = lib
        .commit_asset(pb::CommitAssetRequest {
            request_id: "carry-4".into(),
            manifest_id: id_bytes(&ChunkId::of(b"not that manifest")),
            kind: pb::AssetKind::Photo.into(),
            original_name: "IMG_0002.JPG".into(),
            reservation_id: session.clone(),
            manifest: Some(keepsake_transport::convert::manifest_to_wire(&other)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    let found = lib
        .find_assets_by_content(pb::FindAssetsByContentRequest {
            file_hashes: vec![id_bytes(&other.file_hash)],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        found.matches.iter().all(|m| m.assets.is_empty()),
        "{found:?}"
    );
}

/// ApplyEdits answers each edit in place — applied, lost to a newer clock, refused for its
/// own reason, or malformed — and a call over the limit is refused before anything is done.
#[tokio::test]
async fn apply_edits_answers_each_edit_in_place_and_a_malformed_one_stops_nothing() {
    let server = start().await;
    let mut lib = library(&server, "alice-token").await;
    let data = noise(100_000, "batched edits");
    let (asset_id, _, _) = upload_and_commit(&server, "alice-token", &data, "b1").await;
    use pb::library_edit::Edit as E;
    let favorite = |value: bool, wall_ms: i64| pb::LibraryEdit {
        edit: Some(E::SetMetadata(pb::SetMetadataRequest {
            asset_id: asset_id.clone(),
            clock: clock(wall_ms),
            field: Some(pb::set_metadata_request::Field::Favorite(value)),
        })),
    };
    let edits = vec![
        favorite(true, 1_700_000_000_000),
        // No clock: malformed, answered on its own.
        pb::LibraryEdit {
            edit: Some(E::SetMetadata(pb::SetMetadataRequest {
                asset_id: asset_id.clone(),
                clock: None,
                field: Some(pb::set_metadata_request::Field::Hidden(true)),
            })),
        },
        // Older than the first: loses, not an error.
        favorite(false, 1_600_000_000_000),
        pb::LibraryEdit {
            edit: Some(E::TrashAsset(pb::TrashAssetRequest {
                asset_id: "no-such-asset".into(),
                alone: false,
            })),
        },
        pb::LibraryEdit {
            edit: Some(E::PutAlbum(pb::PutAlbumRequest {
                album_id: "trip".into(),
                name: "Trip".into(),
                clock: clock(1_700_000_000_001),
            })),
        },
        pb::LibraryEdit {
            edit: Some(E::SetAlbumMember(pb::SetAlbumMemberRequest {
                album_id: "trip".into(),
                asset_id: asset_id.clone(),
                present: true,
                clock: clock(1_700_000_000_002),
            })),
        },
    ];
    let outcomes = lib
        .apply_edits(pb::ApplyEditsRequest { edits })
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    let got: Vec<(bool, &str)> = outcomes
        .iter()
        .map(|o| (o.applied, o.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (true, ""),
            (false, "INVALID_ARGUMENT"),
            (false, ""),
            (false, "NOT_FOUND"),
            (true, ""),
            (true, ""),
        ]
    );
    assert!(outcomes[1].message.contains("clock"), "{outcomes:?}");
    let asset = lib
        .get_asset(pb::GetAssetRequest {
            asset_id: asset_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .asset
        .unwrap();
    assert!(asset.favorite && !asset.hidden, "{asset:?}");
    let too_many = vec![favorite(true, 1_700_000_000_000); 1001];
    let err = lib
        .apply_edits(pb::ApplyEditsRequest { edits: too_many })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
}

/// A batch of edits is worth many calls of server time, so it costs ten from the caller's
/// bucket: a device cannot apply 200,000 edits a second by batching 1000 into each call.
#[tokio::test]
async fn an_apply_edits_call_costs_ten_calls_from_the_rate_limit() {
    let server = start_configured(
        None,
        ServerConfig {
            limits: keepsake_transport::guard::Limits {
                calls_per_second: 20.0,
                burst: 40.0,
                concurrent_per_caller: 4,
                concurrent_total: 1024,
                ..keepsake_transport::guard::Limits::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    // The server's clock stands still here, so the bucket never refills.
    let mut lib = library(&server, "alice-token").await;
    for n in 0..4 {
        lib.apply_edits(pb::ApplyEditsRequest { edits: Vec::new() })
            .await
            .unwrap_or_else(|e| panic!("batch {n} of the burst refused: {e:?}"));
    }
    let err = lib
        .apply_edits(pb::ApplyEditsRequest { edits: Vec::new() })
        .await
        .unwrap_err();
    assert_status(&err, Code::ResourceExhausted, "RATE_LIMITED");
    let retry = err
        .get_details_error_info()
        .and_then(|info| info.metadata.get("retry_after_ms").cloned());
    assert_eq!(
        retry.as_deref(),
        Some("500"),
        "ten calls at 20 a second: {err:?}"
    );
}

/// Regression: open WatchChanges streams held the same permits as the calls that work, so a
/// node with a thousand watching phones shed every upload as OVERLOADED. Watches now have a
/// bound of their own, per caller and in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_watches_leave_room_for_calls_and_have_a_bound_of_their_own() {
    let server = start_configured(
        None,
        ServerConfig {
            limits: keepsake_transport::guard::Limits {
                concurrent_per_caller: 4,
                concurrent_total: 4,
                watches_per_caller: 6,
                watches_total: 1_000,
                ..keepsake_transport::guard::Limits::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let alice = library(&server, "alice-token").await;
    let mut watches = Vec::new();
    for _ in 0..6 {
        let mut stream = alice
            .clone()
            .watch_changes(pb::WatchChangesRequest {
                cursor: 0,
                from_now: true,
            })
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().expect("the opening page");
        watches.push(stream);
    }
    // More open streams than calls may be in flight, and calls still get through.
    for _ in 0..3 {
        alice
            .clone()
            .list_changes(pb::ListChangesRequest {
                cursor: 0,
                page_size: 10,
            })
            .await
            .unwrap();
    }
    let refused = alice
        .clone()
        .watch_changes(pb::WatchChangesRequest {
            cursor: 0,
            from_now: true,
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason_of(&refused).as_deref(), Some("OVERLOADED"));
    drop(watches);
}
