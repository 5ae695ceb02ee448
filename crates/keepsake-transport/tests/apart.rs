//! The library and the store in two servers that talk gRPC: the library's `ChunkStore`
//! and the Delta service's store are a `RemoteStore` acting with a service credential.
//! Devices reach the library on one port and the store on the other, as a front that
//! routes by service path would send them.

use bytes::Bytes;
use keepsake_library::{ChunkStore, ClientVersion, Cloud, KdfCost, Library, LibraryConfig, Plan};
use keepsake_proto::v1 as pb;
use keepsake_store::{
    ChunkId, LocalFsBackend, Manifest, ManualClock, OsEntropy, Store, StoreConfig, StoreError,
    StoreParts,
};
use keepsake_testkit::put_all;
use keepsake_transport::auth::{Authenticator, SERVICE_HEADER, ServiceKey};
use keepsake_transport::client::{self, StoreClient};
use keepsake_transport::convert::manifest_to_wire;
use keepsake_transport::server::{ServerConfig, Services, serve};
use keepsake_transport::{ChangeNotifier, RemoteStore, RemoteStoreConfig, StoreAddress, reason_of};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const NOW: i64 = 1_700_000_000_000;

/// A store served alone on `addr` (bound again after a stop), trusting the library's
/// tokens and its service key.
struct StoreNode {
    addr: SocketAddr,
    store: Arc<Store>,
    auth: Authenticator,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StoreNode {
    async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let services = Services {
            store: Some(self.store.clone()),
            ..Services::default()
        };
        let auth = self.auth.clone();
        self.task = Some(tokio::spawn(async move {
            let _ = serve(
                listener,
                services,
                auth,
                ServerConfig::default(),
                async move {
                    let _ = rx.await;
                },
            )
            .await;
        }));
        self.stop = Some(tx);
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Open connections keep a stopped server's task alive; abort it like a kill.
            task.abort();
            let _ = task.await;
        }
    }
}

struct Apart {
    store_node: StoreNode,
    library_url: String,
    store_url: String,
    alice: String,
    key: ServiceKey,
    remote: Arc<RemoteStore>,
    cloud: Arc<Cloud>,
    objects: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _stop_library: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Apart {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let key = ServiceKey::generate(&OsEntropy);
    // The store's address is known before the library is made: the library connects on
    // first use.
    let store_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let remote = Arc::new(
        RemoteStore::new(
            StoreAddress::Plain(format!("http://{store_addr}")),
            key.clone(),
            clock.clone(),
            RemoteStoreConfig {
                call_timeout: Duration::from_secs(5),
                ..RemoteStoreConfig::default()
            },
        )
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
    let cloud = Arc::new(Cloud::new(library, remote.clone()).unwrap());

    let store = Arc::new(
        Store::open(StoreParts {
            backend: Arc::new(LocalFsBackend::open(dir.path().join("objects")).unwrap()),
            index: keepsake_store::IndexAt::File(dir.path().join("index.sqlite")),
            clock: clock.clone(),
            entropy: Arc::new(OsEntropy),
            config: StoreConfig::default(),
        })
        .unwrap(),
    );
    let version = ClientVersion(0, 1, 0);
    let verifier = cloud.verifier();
    let mut store_node = StoreNode {
        addr: store_addr,
        store,
        auth: Authenticator::new(cloud.verifier(), clock.clone(), version)
            .with_service_key(key.clone()),
        stop: None,
        task: None,
    };
    store_node.serve().await;
    // An account's answer includes what the store holds for it: made once the store is up.
    cloud
        .create_account("alice", "correct horse", None, false)
        .unwrap();
    let alice = cloud.sign_in("alice", "correct horse").unwrap().token;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let library_url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        Services {
            cloud: Some(cloud.clone()),
            delta: true,
            remote_store: Some(remote.clone()),
            changes: ChangeNotifier::default(),
            ..Services::default()
        },
        Authenticator::new(verifier, clock, version),
        ServerConfig::default(),
        async move {
            let _ = rx.await;
        },
    ));
    Apart {
        store_url: format!("http://{store_addr}"),
        store_node,
        library_url,
        alice,
        key,
        remote,
        cloud,
        objects: dir.path().join("objects"),
        _dir: dir,
        _stop_library: tx,
    }
}

impl Apart {
    async fn library(&self) -> client::LibraryApi {
        client::library_client(
            client::connect(&self.library_url).await.unwrap(),
            client::BearerAuth::new(&self.alice),
        )
    }

    async fn store(&self) -> StoreClient {
        client::store_client(client::connect(&self.store_url).await.unwrap(), &self.alice)
    }

    async fn begin_upload(&self, bytes: u64, request_id: &str) -> Result<String, tonic::Status> {
        Ok(self
            .library()
            .await
            .begin_upload(pb::BeginUploadRequest {
                bytes,
                request_id: request_id.into(),
            })
            .await?
            .into_inner()
            .reservation_id)
    }
}

fn chunks_of(data: &[u8]) -> Vec<(ChunkId, Bytes)> {
    data.chunks(64 << 10)
        .map(|c| (ChunkId::of(c), Bytes::copy_from_slice(c)))
        .collect()
}

fn photo(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn commit_request(manifest: &Manifest, reservation: &str, name: &str) -> pb::CommitAssetRequest {
    pb::CommitAssetRequest {
        request_id: format!("commit-{name}"),
        manifest_id: Bytes::copy_from_slice(&manifest.id().0),
        kind: pb::AssetKind::Photo.into(),
        original_name: name.into(),
        reservation_id: reservation.into(),
        capture_time_ms: Some(NOW),
        manifest: Some(manifest_to_wire(manifest)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_apart_from_its_store_reserves_commits_and_reads_through_grpc() {
    let apart = start().await;
    let data = photo(300_000, 1);
    let reservation = apart.begin_upload(400_000, "upload-1").await.unwrap();

    // The device sends its chunks to the store, under the session the library opened there.
    let chunks = chunks_of(&data);
    let mut store = apart.store().await;
    put_all(&mut store, &reservation, chunks.clone(), 1 << 20)
        .await
        .unwrap();

    // The commit carries the manifest: the library stores it, reads it back and roots it
    // in the store — all over gRPC.
    let manifest = Manifest::from_chunks(&chunks, ChunkId::of(&data));
    let mut lib = apart.library().await;
    let committed = lib
        .commit_asset(commit_request(&manifest, &reservation, "IMG_0001.JPG"))
        .await
        .unwrap()
        .into_inner();
    let asset = lib
        .get_asset(pb::GetAssetRequest {
            asset_id: committed.asset_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .asset
        .unwrap();
    assert_eq!(asset.size, data.len() as u64, "the size is the store's");
    assert_eq!(&asset.manifest_id[..], &manifest.id().0[..]);

    // What the store holds for the account is what the library accounts for.
    let usage = store
        .get_usage(pb::GetUsageRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(usage.bytes_owned >= data.len() as u64, "{usage:?}");

    // The library reads an original back through the store, verified whole (previews
    // are made from it), and stores a preview there.
    let remote = apart.remote.clone();
    let id = manifest.id();
    let copy = tokio::task::spawn_blocking(move || {
        let mut copy = Vec::new();
        remote.copy_file("alice", &id, u64::MAX, &mut copy).unwrap();
        let preview = photo(5 << 20, 9);
        let stored = remote.store_file("alice", &preview, "preview:1").unwrap();
        let mut back = Vec::new();
        remote
            .copy_file("alice", &stored, u64::MAX, &mut back)
            .unwrap();
        assert_eq!(back, preview);
        let too_small = remote.copy_file("alice", &id, 1000, &mut Vec::new());
        assert_eq!(
            too_small.unwrap_err().kind(),
            std::io::ErrorKind::FileTooLarge
        );
        // The store's refusals come back as the store would have returned them, from the
        // status's fields, not its sentence.
        let unknown = ChunkId::of(b"never stored");
        assert!(matches!(
            remote.manifest("alice", &unknown),
            Err(StoreError::NotFound { kind: "manifest", id }) if id == unknown
        ));
        let session = remote.open_session("alice", 10, 60_000, None).unwrap();
        remote.end_session("alice", &session.id).unwrap();
        match remote.renew_session("alice", &session.id, 60_000) {
            Err(StoreError::SessionExpired(s) | StoreError::SessionNotFound(s)) => {
                assert_eq!(s, session.id)
            }
            other => panic!("a renewal of an ended session: {other:?}"),
        }
        copy
    })
    .await
    .unwrap();
    assert_eq!(copy, data);

    // A commit naming chunks the store never received is refused with their ids, as the
    // embedded store refuses it: the device knows what to send.
    let other = photo(200_000, 2);
    let reservation = apart.begin_upload(300_000, "upload-2").await.unwrap();
    let lost = Manifest::from_chunks(&chunks_of(&other), ChunkId::of(&other));
    let refused = lib
        .commit_asset(commit_request(&lost, &reservation, "IMG_0002.JPG"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(reason_of(&refused).as_deref(), Some("MISSING_CHUNKS"));
    let named = client::CallError::from(refused);
    assert!(!named.missing_chunks().is_empty());
    assert!(
        named
            .missing_chunks()
            .iter()
            .all(|id| chunks_of(&other).iter().any(|(c, _)| c == id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_scrubs_the_store_apart_and_flags_the_photo_that_lost_a_chunk() {
    let apart = start().await;
    let data = photo(400_000, 3);
    let reservation = apart.begin_upload(500_000, "upload-1").await.unwrap();
    let chunks = chunks_of(&data);
    put_all(
        &mut apart.store().await,
        &reservation,
        chunks.clone(),
        1 << 20,
    )
    .await
    .unwrap();
    let manifest = Manifest::from_chunks(&chunks, ChunkId::of(&data));
    let committed = apart
        .library()
        .await
        .commit_asset(commit_request(&manifest, &reservation, "IMG_0003.JPG"))
        .await
        .unwrap()
        .into_inner();

    // A bit flips at rest in the store's largest pack (the photo's chunks; its manifest
    // is a small pack of its own).
    let mut packs = Vec::new();
    let mut dirs = vec![apart.objects.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                packs.push((entry.metadata().unwrap().len(), path));
            }
        }
    }
    let (_, largest) = packs.into_iter().max().unwrap();
    let mut bytes = std::fs::read(&largest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&largest, bytes).unwrap();

    // The library's scrub, through the store's gRPC API: the store finds the chunk, and
    // the library flags the photo for a device that has it to send again.
    let (cloud, remote) = (apart.cloud.clone(), apart.remote.clone());
    let (scrub, collected) = tokio::task::spawn_blocking(move || {
        (cloud.scrub().unwrap(), remote.collect_garbage().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(scrub.store.corrupt_chunks.len(), 1, "{scrub:?}");
    assert_eq!(scrub.damaged.len(), 1, "{scrub:?}");
    assert_eq!(scrub.damaged[0].asset_id, committed.asset_id);
    assert_eq!(scrub.damaged[0].original_name, "IMG_0003.JPG");
    // The photo is referenced: nothing of it is collected.
    assert_eq!(collected.chunks_collected, 0, "{collected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_is_a_transient_unavailable_and_work_resumes_when_it_is_back() {
    let mut apart = start().await;
    apart.begin_upload(1000, "before").await.unwrap();

    apart.store_node.stop().await;
    let refused = apart.begin_upload(1000, "while-down").await.unwrap_err();
    let call = client::CallError::from(refused.clone());
    assert!(call.is_transient(), "{refused:?}");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("store"), "{refused:?}");

    apart.store_node.serve().await;
    // The same request id, retried: one reservation, now that the store answers.
    let reservation = apart.begin_upload(1000, "while-down").await.unwrap();
    let again = apart.begin_upload(1000, "while-down").await.unwrap();
    assert_eq!(reservation, again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_credential_is_good_only_on_the_store_only_with_its_key_and_only_while_fresh() {
    let apart = start().await;
    let channel = client::connect(&apart.store_url).await.unwrap();
    let usage = |credential: String| {
        let channel = channel.clone();
        async move {
            let mut request = tonic::Request::new(pb::GetUsageRequest {});
            request
                .metadata_mut()
                .insert(SERVICE_HEADER, credential.parse().unwrap());
            request
                .metadata_mut()
                .insert(client::CLIENT_VERSION_HEADER, "0.9.0".parse().unwrap());
            keepsake_proto::v1::chunk_store_client::ChunkStoreClient::new(channel)
                .get_usage(request)
                .await
        }
    };
    // The store's key, live: the library acts for alice.
    usage(apart.key.credential("alice", NOW)).await.unwrap();
    // Another key, an expired credential, one minted far ahead, or a tampered account.
    let stranger = ServiceKey::generate(&OsEntropy);
    let forged = apart.key.credential("alice", NOW).replacen(
        &hex::encode("alice"),
        &hex::encode("mallory"),
        1,
    );
    for credential in [
        stranger.credential("alice", NOW),
        apart.key.credential("alice", NOW - 61_000),
        apart.key.credential("alice", NOW + 3_600_000),
        forged,
        "svc1.garbage".to_string(),
    ] {
        let refused = usage(credential.clone()).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{credential}");
    }
    // The library's own service refuses service credentials: they are not a user's token.
    let mut request = tonic::Request::new(pb::ListAlbumsRequest::default());
    request.metadata_mut().insert(
        SERVICE_HEADER,
        apart.key.credential("alice", NOW).parse().unwrap(),
    );
    request
        .metadata_mut()
        .insert(client::CLIENT_VERSION_HEADER, "0.9.0".parse().unwrap());
    let refused = keepsake_proto::v1::library_client::LibraryClient::new(
        client::connect(&apart.library_url).await.unwrap(),
    )
    .list_albums(request)
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}
