//! End to end: the real `keepsake` binary, real gRPC, real `kill -9`.

use bytes::Bytes;
use keepsake_store::ChunkId;
use keepsake_testkit::{get_all, put_all};
use keepsake_transport::client::pb as keepsake_transport_pb;
use keepsake_transport::client::{self, StoreClient};
use keepsake_transport::convert::id_bytes;
use keepsake_transport::reason_of;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `keepsake` binary, rebuilt once per test run so a stale one is never tested
/// (`cargo test -p keepsake-e2e` alone does not build other packages' binaries). Built with
/// the features a test build resolves (`--workspace … --examples`): `-p keepsake` would
/// resolve without dev-dependencies and rebuild most of the graph a second time.
fn keepsake_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            // What cargo tells a test about its package is not the build's business, and
            // ring's build script reruns when CARGO_MANIFEST_DIR changes: with it, every
            // CI step that runs this rebuilt ring and the 25 crates above it (a minute).
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if key.starts_with("CARGO_PKG_")
                    || matches!(
                        &*key,
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                    )
                {
                    build.env_remove(&*key);
                }
            }
            let ok = build
                // `--test e2e` (this binary, built already) resolves features as the test
                // build did, so this builds the server alone, not the graph again.
                .args([
                    "build",
                    "--quiet",
                    "--workspace",
                    "--bin",
                    "keepsake",
                    "--test",
                    "e2e",
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok, "building the keepsake binary failed");
            std::env::current_exe()
                .unwrap()
                .parent()
                .and_then(Path::parent)
                .unwrap()
                .join("keepsake")
        })
        .clone()
}

/// The stdout of a finished `keepsake` command that must have succeeded.
fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file below `dir` (a store's packs live in nested folders).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

struct Server {
    child: Child,
    url: String,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(data: &Path, listen: &str) -> Server {
    let (child, url) = hardening::serve(data, listen, &[]);
    let token = sign_in(&url, data).await;
    Server { child, url, token }
}

/// Signs in as the administrator the server created on its first start.
async fn sign_in(url: &str, data: &Path) -> String {
    let credentials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("initial-credentials.json")).unwrap())
            .unwrap();
    let mut accounts = client::accounts_client(
        client::connect(url).await.unwrap(),
        client::BearerAuth::anonymous(),
    );
    accounts
        .sign_in(keepsake_transport_pb::SignInRequest {
            account: credentials["account"].as_str().unwrap().into(),
            password: credentials["password"].as_str().unwrap().into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access
        .unwrap()
        .token
}

async fn connect(server: &Server) -> StoreClient {
    client::store_client(client::connect(&server.url).await.unwrap(), &server.token)
}

async fn begin(c: &mut StoreClient) -> String {
    c.begin_session(keepsake_transport_pb::BeginSessionRequest {
        expected_bytes: 0,
        ttl_seconds: 3600,
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .session_id
}

fn chunks(tag: u8, n: usize, size: usize) -> Vec<(ChunkId, Bytes)> {
    (0..n)
        .map(|i| {
            let mut data = vec![tag, (i % 256) as u8, (i / 256) as u8];
            data.resize(size, tag ^ (i as u8));
            (ChunkId::of(&data), Bytes::from(data))
        })
        .collect()
}

#[tokio::test]
async fn acknowledged_chunks_survive_kill_9_mid_upload() {
    let data = tempfile::tempdir().unwrap();
    let first = chunks(1, 64, 64 << 10);
    let second = chunks(2, 2048, 64 << 10);
    let mut acknowledged: Vec<ChunkId> = Vec::new();
    {
        let mut server = start(data.path(), "127.0.0.1:0").await;
        let mut c = connect(&server).await;
        let sid = begin(&mut c).await;
        acknowledged.extend(put_all(&mut c, &sid, first.clone(), 1 << 20).await.unwrap());
        assert_eq!(acknowledged.len(), first.len());
        // Stream 128 MiB and kill the server with SIGKILL as soon as the first batch is acknowledged.
        let outbound = tokio_stream::iter(second.clone().into_iter().map(move |(id, data)| {
            keepsake_transport_pb::PutChunksRequest {
                session_id: sid.clone(),
                chunks: vec![keepsake_transport_pb::Chunk {
                    id: id_bytes(&id),
                    data,
                }],
                flush: false,
            }
        }));
        let mut acks = c.put_chunks(outbound).await.unwrap().into_inner();
        let ack = acks
            .message()
            .await
            .unwrap()
            .expect("one batch acknowledged");
        acknowledged.extend(
            ack.acknowledged_ids
                .iter()
                .map(|id| ChunkId::from_slice(id).unwrap()),
        );
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        // Whatever else the client heard before the kill was acknowledged too.
        while let Ok(Some(ack)) = acks.message().await {
            acknowledged.extend(
                ack.acknowledged_ids
                    .iter()
                    .map(|id| ChunkId::from_slice(id).unwrap()),
            );
        }
    }
    assert!(
        acknowledged.len() > first.len(),
        "the kill came after at least one more batch"
    );
    let server = start(data.path(), "127.0.0.1:0").await;
    let mut c = connect(&server).await;
    let got = get_all(&mut c, &acknowledged).await.unwrap();
    assert_eq!(
        got.len(),
        acknowledged.len(),
        "every acknowledged chunk survives kill -9"
    );
    let all: std::collections::HashMap<ChunkId, Bytes> =
        first.iter().chain(second.iter()).cloned().collect();
    for (id, bytes) in got {
        assert_eq!(all[&id], bytes);
    }
    // Chunks that were in flight are either absent or intact: FindMissing says which to resend.
    let sid = begin(&mut c).await;
    let missing = c
        .find_missing(keepsake_transport_pb::FindMissingRequest {
            session_id: sid.clone(),
            ids: second.iter().map(|c| id_bytes(&c.0)).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .missing_ids;
    let present: Vec<ChunkId> = second
        .iter()
        .map(|c| c.0)
        .filter(|id| !missing.contains(&id_bytes(id)))
        .collect();
    let readable = get_all(&mut c, &present).await.unwrap();
    assert_eq!(readable.len(), present.len());
    // Resending just the missing ones completes the upload.
    let resend: Vec<_> = second
        .iter()
        .filter(|c| missing.contains(&id_bytes(&c.0)))
        .cloned()
        .collect();
    put_all(&mut c, &sid, resend, 1 << 20).await.unwrap();
    let admin_scrub = c
        .scrub(keepsake_transport_pb::ScrubRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(admin_scrub.corrupt_chunk_ids.is_empty(), "{admin_scrub:?}");
    assert_eq!(
        admin_scrub.chunks_verified as usize,
        first.len() + second.len()
    );
}

#[tokio::test]
async fn the_binary_refuses_calls_without_a_valid_token() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), "127.0.0.1:0").await;
    let mut anonymous = client::store_client(client::connect(&server.url).await.unwrap(), "wrong");
    let err = anonymous
        .get_usage(keepsake_transport_pb::GetUsageRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason_of(&err).as_deref(), Some("UNAUTHENTICATED"));
    // It restarted itself with two malloc arenas (the benchmark's server memory rests on
    // it), keeping the process id it was started with.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let environ = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
        assert!(
            environ
                .split(|b| *b == 0)
                .any(|v| v == b"MALLOC_ARENA_MAX=2"),
            "the server runs without MALLOC_ARENA_MAX=2"
        );
    }
}

/// Broke once: the server printed its address, the reader closed the pipe, and the
/// server's next line of output killed it (CI's Python check then found nobody home).
/// Here the pipe is closed before the server prints anything at all.
#[tokio::test]
async fn a_server_whose_stdout_was_closed_keeps_serving() {
    let data = tempfile::tempdir().unwrap();
    // With stdout closed the server cannot tell us its port, so we choose a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(keepsake_binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        token: String::new(),
    };
    // A real process needs a moment to start; bounded, and it fails if the server died.
    let mut answered = false;
    for _ in 0..100 {
        if let Ok(channel) = client::connect(&server.url).await {
            server.token = sign_in(&server.url, data.path()).await;
            let mut c = client::store_client(channel, &server.token);
            answered = c
                .get_usage(keepsake_transport_pb::GetUsageRequest {})
                .await
                .is_ok();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(answered, "the server stopped when its stdout was closed");
}

#[test]
fn an_unknown_service_is_a_clear_error() {
    let out = Command::new(keepsake_binary())
        .args([
            "serve",
            "--services",
            "store,photos",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown service \"photos\""), "{stderr}");
}

/// Uploads `content` to a running server as one photo named `name`, as a device would:
/// reservation, chunks, manifest, commit. Returns the commit request and its answer.
async fn upload_photo(
    server: &Server,
    name: &str,
    content: &[u8],
) -> (
    keepsake_transport_pb::CommitAssetRequest,
    keepsake_transport_pb::CommitAssetResponse,
    keepsake_store::Manifest,
) {
    let file_chunks: Vec<(ChunkId, Bytes)> = content
        .chunks(64 << 10)
        .map(|c| (ChunkId::of(c), Bytes::copy_from_slice(c)))
        .collect();
    let manifest = keepsake_store::Manifest::from_chunks(&file_chunks, ChunkId::of(content));
    let channel = client::connect(&server.url).await.unwrap();
    let mut library =
        client::library_client(channel.clone(), client::BearerAuth::new(&server.token));
    let mut store = client::store_client(channel, &server.token);
    let reservation = library
        .begin_upload(keepsake_transport_pb::BeginUploadRequest {
            bytes: content.len() as u64 + 4096,
            request_id: format!("upload-{name}"),
        })
        .await
        .unwrap()
        .into_inner()
        .reservation_id;
    put_all(&mut store, &reservation, file_chunks, 1 << 20)
        .await
        .unwrap();
    let manifest_id = store
        .put_manifest(keepsake_transport_pb::PutManifestRequest {
            session_id: reservation.clone(),
            manifest: Some(keepsake_transport::convert::manifest_to_wire(&manifest)),
            edit: None,
        })
        .await
        .unwrap()
        .into_inner()
        .manifest_id;
    let request = keepsake_transport_pb::CommitAssetRequest {
        request_id: format!("photo-{name}"),
        manifest_id,
        kind: keepsake_transport_pb::AssetKind::Photo.into(),
        original_name: name.into(),
        reservation_id: reservation,
        ..Default::default()
    };
    let answer = library
        .commit_asset(request.clone())
        .await
        .unwrap()
        .into_inner();
    (request, answer, manifest)
}

/// A commit the server acknowledged is in the library after `kill -9`, and the same
/// commit retried after the restart returns the first answer instead of a duplicate.
#[tokio::test]
async fn an_acknowledged_commit_survives_kill_9_and_its_retry_is_no_duplicate() {
    let data = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..500_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let (request, first, manifest) = {
        let mut server = start(data.path(), "127.0.0.1:0").await;
        let (request, first, manifest) = upload_photo(&server, "IMG_0001.JPG", &content).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        (request, first, manifest)
    };
    let server = start(data.path(), "127.0.0.1:0").await;
    let mut library = client::library_client(
        client::connect(&server.url).await.unwrap(),
        client::BearerAuth::new(&server.token),
    );
    let retried = library.commit_asset(request).await.unwrap().into_inner();
    assert_eq!(retried, first);
    let feed = library
        .list_changes(keepsake_transport_pb::ListChangesRequest {
            cursor: 0,
            page_size: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(feed.changes.len(), 1, "{feed:?}");
    let Some(keepsake_transport_pb::change::Row::Asset(asset)) = &feed.changes[0].row else {
        panic!("expected an asset: {feed:?}");
    };
    assert_eq!(asset.asset_id, first.asset_id);
    assert_eq!(asset.size, content.len() as u64);
    let mut store =
        client::store_client(client::connect(&server.url).await.unwrap(), &server.token);
    let back = get_all(
        &mut store,
        &manifest.entries.iter().map(|e| e.chunk).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let joined: Vec<u8> = back.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    assert_eq!(joined, content);
}

/// `keepsake scrub`, the command an administrator runs, reports the corruption a failing
/// disk caused and names the photo that lost content, through the real binary.
#[tokio::test]
async fn keepsake_scrub_names_the_photo_a_flipped_bit_damaged() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), "127.0.0.1:0").await;
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    upload_photo(&server, "IMG_4242.JPG", &content).await;
    let run_scrub = || {
        let credentials: serde_json::Value = serde_json::from_slice(
            &std::fs::read(data.path().join("initial-credentials.json")).unwrap(),
        )
        .unwrap();
        let out = Command::new(keepsake_binary())
            .arg("scrub")
            .env("KEEPSAKE_SERVER", &server.url)
            .env("KEEPSAKE_ACCOUNT", credentials["account"].as_str().unwrap())
            .env(
                "KEEPSAKE_PASSWORD",
                credentials["password"].as_str().unwrap(),
            )
            .output()
            .unwrap();
        succeeded(out)
    };
    let clean = run_scrub();
    assert!(clean.contains(", 0 corrupt"), "{clean}");
    // One bit flipped in the pack that holds the photo's data: what a failing disk does.
    let mut flipped = 0;
    for path in files_under(&data.path().join("store/objects")) {
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(4096).position(|w| w == &content[..4096]) {
            bytes[at + 100] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1, "the photo's first chunk is in one pack");
    let report = run_scrub();
    assert!(report.contains(", 1 corrupt"), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("damaged: IMG_4242.JPG")),
        "the damaged photo is named: {report}"
    );
}

// ---- Devices: two (and more) library folders kept in sync through a real server ----

/// PostgreSQL + S3 in place of SQLite + files, when `cargo xtask ci`'s PostgreSQL step sets
/// `KEEPSAKE_TEST_POSTGRES` and `KEEPSAKE_TEST_S3`: a database and a bucket folder per data
/// directory, so a server restarted on the same directory finds its own rows and packs.
mod backend {
    use std::path::Path;

    /// (database URL, blobs URL) for the server whose data is `data`.
    pub fn for_data(data: &Path) -> Option<(String, String)> {
        let base = std::env::var("KEEPSAKE_TEST_POSTGRES").ok()?;
        let blobs = std::env::var("KEEPSAKE_TEST_S3").ok()?;
        let tag = &blake3::hash(data.as_os_str().as_encoded_bytes()).to_hex()[..16];
        let name = format!("e2e_{tag}");
        let admin = keepsake_sql::Db::postgres(&base, "public").unwrap();
        if let Err(e) = admin.execute_batch(&format!("CREATE DATABASE {name}")) {
            assert!(e.to_string().contains("already exists"), "{e}");
        }
        let (server, _) = base.rsplit_once('/').unwrap();
        Some((format!("{server}/{name}"), format!("{blobs}&prefix={name}")))
    }

    /// The `keepsake serve` options that put the server's data there.
    pub fn serve_args(data: &Path) -> Vec<String> {
        match for_data(data) {
            Some((database, blobs)) => vec!["--database".into(), database, "--blobs".into(), blobs],
            None => Vec::new(),
        }
    }
}

mod devices {
    use super::*;
    use keepsake_device::{Device, DeviceConfig, SyncReport};
    use keepsake_library::{Cloud, KdfCost, Library, LibraryConfig};
    use keepsake_store::{OsEntropy, Store, StoreConfig, SystemClock};
    use keepsake_transport::auth::Authenticator;
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    use keepsake_transport::server::{ServerConfig, Services, serve};
    use std::sync::Arc;

    pub struct Cloudy {
        pub url: String,
        pub cloud: Arc<Cloud>,
        pub store: Arc<Store>,
        /// Where the store keeps its packs and index.
        pub store_dir: PathBuf,
        _dir: tempfile::TempDir,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    /// The whole cloud in this process, over real gRPC on loopback.
    pub async fn cloud() -> Cloudy {
        cloud_with(keepsake_library::default_plans(), Default::default()).await
    }

    /// The same with chosen plans and minimum client version.
    pub async fn cloud_with(
        plans: Vec<keepsake_library::Plan>,
        min_version: keepsake_library::ClientVersion,
    ) -> Cloudy {
        cloud_limited(plans, min_version, ServerConfig::default()).await
    }

    /// A cloud for bulk tests: each device may make 50,000 calls a second, so a library of
    /// hundreds of photos is not paced by the per-device rate limit.
    pub async fn bulk_cloud() -> Cloudy {
        let mut config = ServerConfig::default();
        config.limits.calls_per_second = 50_000.0;
        config.limits.burst = 100_000.0;
        cloud_limited(
            keepsake_library::default_plans(),
            Default::default(),
            config,
        )
        .await
    }

    async fn cloud_limited(
        plans: Vec<keepsake_library::Plan>,
        min_version: keepsake_library::ClientVersion,
        server_config: ServerConfig,
    ) -> Cloudy {
        let dir = tempfile::tempdir().unwrap();
        let (store, library_db) = match super::backend::for_data(dir.path()) {
            None => (
                Store::open_local(
                    &dir.path().join("store"),
                    Arc::new(SystemClock),
                    Arc::new(OsEntropy),
                    StoreConfig::default(),
                )
                .unwrap(),
                keepsake_sql::Db::open_sqlite(Some(&dir.path().join("library.sqlite"))).unwrap(),
            ),
            Some((database, blobs)) => (
                Store::open(keepsake_store::StoreParts {
                    backend: Arc::new(
                        keepsake_store::S3Backend::connect(
                            &keepsake_store::S3Location::parse(&blobs).unwrap(),
                        )
                        .unwrap(),
                    ),
                    index: keepsake_store::IndexAt::Postgres {
                        url: database.clone(),
                        schema: "store".into(),
                    },
                    clock: Arc::new(SystemClock),
                    entropy: Arc::new(OsEntropy),
                    config: StoreConfig::default(),
                })
                .unwrap(),
                keepsake_sql::Db::postgres(&database, "library").unwrap(),
            ),
        };
        let store = Arc::new(store);
        let library = Library::open_on(
            library_db,
            Arc::new(SystemClock),
            Arc::new(OsEntropy),
            LibraryConfig {
                kdf: KdfCost {
                    memory_kib: 64,
                    iterations: 1,
                },
                plans,
                min_client_version: min_version,
                ..LibraryConfig::default()
            },
        )
        .unwrap();
        let cloud = Arc::new(Cloud::new(library, store.clone()).unwrap());
        cloud
            .create_account("alice", "correct horse", None, false)
            .unwrap();
        let auth = Authenticator::new(cloud.verifier(), Arc::new(SystemClock), min_version);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            Services {
                store: Some(store.clone()),
                cloud: Some(cloud.clone()),
                delta: true,
                remote_store: None,
                ..Services::default()
            },
            auth,
            server_config,
            async move {
                let _ = stopped.await;
            },
        ));
        Cloudy {
            url,
            cloud,
            store,
            store_dir: dir.path().join("store"),
            _dir: dir,
            _stop: stop,
        }
    }

    /// An enrolled device with its folder and data directory.
    pub async fn device(c: &Cloudy, folder: &Path, data: &Path, name: &str) -> Device<CloudClient> {
        device_with(c, folder, data, name, |_| {}).await
    }

    /// The same, with its configuration adjusted.
    pub async fn device_with(
        c: &Cloudy,
        folder: &Path,
        data: &Path,
        name: &str,
        adjust: impl FnOnce(&mut DeviceConfig),
    ) -> Device<CloudClient> {
        device_at(c, &c.url, folder, data, name, adjust).await
    }

    /// The same, reaching the cloud at `url` (a proxy in front of it).
    pub async fn device_at(
        c: &Cloudy,
        url: &str,
        folder: &Path,
        data: &Path,
        name: &str,
        adjust: impl FnOnce(&mut DeviceConfig),
    ) -> Device<CloudClient> {
        let (client, device_id) = enrolled_client(c, url, name).await;
        let mut config = DeviceConfig::new(folder.into(), data.into(), device_id);
        config.stable_ms = 0;
        adjust(&mut config);
        Device::open(config, client, Arc::new(SystemClock)).unwrap()
    }

    /// A client for a device newly enrolled as `name`, reaching the cloud at `url`, and
    /// the device's id. Enrolled as the newest client, so a test can raise the minimum
    /// past what the device's calls then say they are.
    pub async fn enrolled_client(c: &Cloudy, url: &str, name: &str) -> (CloudClient, String) {
        let enrolled = c
            .cloud
            .enroll_device("alice", "correct horse", name, "linux", "99.0.0")
            .unwrap();
        let client = CloudClient::new(
            client::connect(url).await.unwrap(),
            client::BearerAuth::new(&enrolled.access.token),
            ClientConfig::default(),
        );
        (client, enrolled.device_id)
    }

    /// A real JPEG of `w`×`h` (a gradient), as a camera writes one.
    pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
        use image::ImageEncoder;
        let picture =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x / 12) as u8, (y / 8) as u8, 90]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
            .write_image(picture.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        jpeg
    }

    pub fn photo(seed: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        blake3::Hasher::new_derive_key(&format!("keepsake e2e photo {seed}"))
            .finalize_xof()
            .fill(&mut data);
        data
    }

    /// The folder's content as sorted whole-file hashes: names are data and may differ
    /// between devices (a rename is local), the photos may not.
    pub fn folder_contents(dir: &Path) -> Vec<String> {
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

    pub async fn sync(d: &mut Device<CloudClient>) -> SyncReport {
        d.sync_once().await.unwrap()
    }

    /// Passes until one completes, as the agent would: a shed or rate-limited pass waits
    /// and goes on. Counts are summed over the passes.
    pub async fn sync_through(d: &mut Device<CloudClient>) -> SyncReport {
        let mut total = SyncReport::default();
        loop {
            match d.sync_once().await {
                Ok(r) => {
                    total.previews += r.previews;
                    total.kept_in_cloud += r.kept_in_cloud;
                    total.downloaded += r.downloaded;
                    total.evicted += r.evicted;
                    total.uploaded += r.uploaded;
                    total.blocked = r.blocked;
                    return total;
                }
                Err(keepsake_device::DeviceError::Cloud(e)) if e.transient => {
                    // A shed or rate-limited call: a short pause, as the agent's backoff would.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A replayable random source: `next(n)` is in `0..n`.
    pub fn seeded(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut rng = seed.max(1);
        move |n| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        }
    }

    /// The device's process ends and starts again on the same folder and journal.
    pub async fn restart(c: &Cloudy, d: Device<CloudClient>) -> Device<CloudClient> {
        let config = d.config().clone();
        drop(d);
        let (client, _) = enrolled_client(c, &c.url, "restarted").await;
        Device::open(config, client, Arc::new(SystemClock)).unwrap()
    }

    /// What a device shows of its library: (asset, favourite, hidden, trashed, album
    /// names) — comparable across devices, whose local file names may differ.
    pub fn view(d: &Device<CloudClient>) -> Vec<(String, bool, bool, bool, Vec<String>)> {
        let mut v: Vec<_> = d
            .assets()
            .unwrap()
            .into_iter()
            .map(|a| {
                let mut albums = a.albums;
                albums.sort();
                (a.asset_id, a.favorite, a.hidden, a.trashed, albums)
            })
            .collect();
        v.sort();
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_deletes_restores_and_purges_reach_the_other_device_and_moves_send_nothing() {
    let root = tempfile::tempdir().unwrap();
    deletes_restores_purges_and_moves(root.path(), root.path()).await;
}

/// The agent's data directory defaults to the working directory, so a folder on a memory
/// card or another disk is on another file system than the Recently Deleted, the
/// temporary files and the imports: every move between them was a rename, refused with
/// EXDEV, and a trash, restore or purge on such a device failed its pass again and again —
/// sync stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_on_another_file_system_than_the_data_directory_still_trashes_restores_and_purges()
{
    let folders = tempfile::tempdir().unwrap();
    let Ok(data) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm here: the same run as the test above, on one file system");
        return;
    };
    let device_of = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    if device_of(folders.path()) == device_of(data.path()) {
        eprintln!("/dev/shm is on the same file system as the temporary directory here");
    }
    deletes_restores_purges_and_moves(folders.path(), data.path()).await;
}

/// Two devices, the folders under `folders` and their data directories under `data`.
async fn deletes_restores_purges_and_moves(folders: &Path, data: &Path) {
    use devices::*;
    let c = cloud().await;
    let (fa, fb) = (folders.join("A"), folders.join("B"));
    let mut a = device(&c, &fa, &data.join("a-data"), "phone A").await;
    let mut b = device(&c, &fb, &data.join("b-data"), "phone B").await;
    let photos = [
        ("IMG_0001.JPG", photo(1, 150_000)),
        ("IMG_0002.JPG", photo(2, 1_200_000)),
        ("VID_0003.MP4", photo(3, 3_000_000)),
    ];
    for (name, data) in &photos {
        std::fs::write(fa.join(name), data).unwrap();
    }
    let up = sync(&mut a).await;
    assert_eq!((up.uploaded, up.linked), (3, 0), "{up:?}");
    let down = sync(&mut b).await;
    assert_eq!(down.downloaded, 3, "{down:?}");
    assert_eq!(folder_contents(&fa), folder_contents(&fb));
    // Nothing changed: a second pass on either side does nothing.
    assert_eq!(sync(&mut a).await, Default::default());
    assert_eq!(sync(&mut b).await, Default::default());

    // A rename on A is no new asset and sends no byte.
    std::fs::rename(fa.join("IMG_0001.JPG"), fa.join("holiday.jpg")).unwrap();
    let moved = sync(&mut a).await;
    assert_eq!(
        (moved.uploaded, moved.bytes_sent, moved.trashed_remotely),
        (0, 0, 0),
        "{moved:?}"
    );

    // A delete on A lands in B's Recently Deleted; a restore brings it back.
    std::fs::remove_file(fa.join("IMG_0002.JPG")).unwrap();
    assert_eq!(sync(&mut a).await.trashed_remotely, 1);
    let gone = sync(&mut b).await;
    assert_eq!(gone.trashed_here, 1, "{gone:?}");
    assert!(!fb.join("IMG_0002.JPG").exists());
    assert_eq!(b.recently_deleted().unwrap(), 1);
    let page = c.cloud.library().list_changes("alice", 0, 100).unwrap();
    let trashed_id = page
        .changes
        .iter()
        .find_map(|ch| match ch {
            keepsake_library::Change::Asset(x) if x.original_name == "IMG_0002.JPG" => {
                Some(x.asset_id.clone())
            }
            _ => None,
        })
        .unwrap();
    c.cloud.library().restore("alice", &trashed_id).unwrap();
    let back = sync(&mut b).await;
    assert_eq!(back.restored, 1, "{back:?}");
    assert_eq!(std::fs::read(fb.join("IMG_0002.JPG")).unwrap(), photos[1].1);
    let again = sync(&mut a).await;
    assert_eq!(
        again.downloaded, 1,
        "A deleted it, the restore brings it back there too"
    );

    // A purge elsewhere removes it everywhere, and a device holding an old copy does not
    // bring it back.
    let video_id = c
        .cloud
        .library()
        .find_by_content("alice", &[ChunkId::of(&photos[2].1)])
        .unwrap()[0]
        .assets[0]
        .asset_id
        .clone();
    c.cloud.purge("alice", &video_id).unwrap();
    assert_eq!(sync(&mut a).await.purged, 1);
    assert_eq!(sync(&mut b).await.purged, 1);
    assert!(!fa.join("VID_0003.MP4").exists() && !fb.join("VID_0003.MP4").exists());
    let fc = folders.join("C");
    std::fs::create_dir_all(&fc).unwrap();
    // The purged photo's own file, at its path, on a device that never synced: the photo
    // purged elsewhere, not a new one (a copy under another name would be a new photo).
    std::fs::write(fc.join("VID_0003.MP4"), &photos[2].1).unwrap();
    let mut old = device(&c, &fc, &data.join("c-data"), "old laptop").await;
    let c_report = sync(&mut old).await;
    assert_eq!(
        (
            c_report.not_resurrected,
            c_report.uploaded,
            c_report.bytes_sent
        ),
        (1, 0, 0),
        "{c_report:?}"
    );
    assert!(
        c.cloud
            .library()
            .find_by_content("alice", &[ChunkId::of(&photos[2].1)])
            .unwrap()[0]
            .assets
            .is_empty()
    );
    assert_eq!(folder_contents(&fa), folder_contents(&fb));
    assert_eq!(folder_contents(&fa), folder_contents(&fc));
    let halfway: Vec<PathBuf> = [folders, data]
        .into_iter()
        .flat_map(files_under)
        .filter(|p| p.to_string_lossy().contains(".keepsake-part-"))
        .collect();
    assert!(halfway.is_empty(), "copies left halfway: {halfway:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstalled_device_sends_nothing_and_an_unmounted_folder_deletes_nothing() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone").await;
    for i in 0..5 {
        std::fs::write(fa.join(format!("IMG_{i}.JPG")), photo(100 + i, 200_000)).unwrap();
    }
    assert_eq!(sync(&mut a).await.uploaded, 5);
    drop(a);
    // Reinstall: a new journal over the same folder.
    let mut again = device(&c, &fa, &root.path().join("a-data-2"), "phone again").await;
    let r = sync(&mut again).await;
    assert_eq!(
        (r.uploaded, r.bytes_sent, r.linked, r.downloaded),
        (0, 0, 5, 0),
        "{r:?}"
    );
    // The disk goes away: nothing is deleted anywhere, and the reason says why.
    let away = root.path().join("A-unmounted");
    std::fs::rename(&fa, &away).unwrap();
    std::fs::create_dir_all(&fa).unwrap();
    let r = sync(&mut again).await;
    assert_eq!(r.blocked.as_deref(), Some("FOLDER_MISSING"));
    assert_eq!(r.trashed_remotely, 0);
    let live = c.cloud.library().list_changes("alice", 0, 100).unwrap();
    assert_eq!(live.changes.len(), 5);
    assert!(live.changes.iter().all(|ch| matches!(ch,
        keepsake_library::Change::Asset(x) if x.state == keepsake_library::AssetState::Live)));
    // The disk comes back: nothing was lost while it was away.
    std::fs::remove_dir_all(&fa).unwrap();
    std::fs::rename(&away, &fa).unwrap();
    let r = sync(&mut again).await;
    assert_eq!((r.blocked, r.trashed_remotely, r.uploaded), (None, 0, 0));
}

/// Regression: a device installed over a copy of the library made moments before (its files
/// still "being written" to the scan) downloaded every photo again as "IMG (2).JPG" beside
/// the copy — found by `cargo xtask bench peers`' reinstall scenario.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstall_over_a_fresh_copy_adopts_it_and_downloads_no_twins() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone").await;
    for i in 0..5 {
        std::fs::write(fa.join(format!("IMG_{i}.JPG")), photo(300 + i, 200_000)).unwrap();
    }
    assert_eq!(sync(&mut a).await.uploaded, 5);
    let fb = root.path().join("B");
    // Files modified within the last minute are still being written, as far as its scan knows.
    let mut b = device_with(
        &c,
        &fb,
        &root.path().join("b-data"),
        "restored phone",
        |config| {
            config.stable_ms = 60_000;
        },
    )
    .await;
    for i in 0..5 {
        let name = format!("IMG_{i}.JPG");
        std::fs::copy(fa.join(&name), fb.join(&name)).unwrap();
    }
    // The device's clock counts whole milliseconds: a file stamped later in the current one
    // reads as "from the future" (hashed at once), which is not the case under test.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let r = sync(&mut b).await;
    // Nothing fetched ahead either: the files at the assets' names might be theirs.
    assert_eq!(
        (
            r.unstable,
            r.downloaded,
            r.bytes_received,
            r.adopted,
            r.fetched_ahead
        ),
        (5, 0, 0, 5, 0),
        "{r:?}"
    );
    let r = sync(&mut b).await;
    assert_eq!((r.uploaded, r.downloaded, r.bytes_sent), (0, 0, 0), "{r:?}");
    let mut names: Vec<String> = std::fs::read_dir(&fb)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(
        names,
        (0..5).map(|i| format!("IMG_{i}.JPG")).collect::<Vec<_>>()
    );
}

/// A device following the feed fetches the next photos' content on lanes while it writes
/// the current one; what it writes is still exactly what was uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_photos_are_fetched_ahead_and_arrive_exact() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone").await;
    for i in 0..5 {
        std::fs::write(fa.join(format!("IMG_{i}.JPG")), photo(400 + i, 200_000)).unwrap();
    }
    assert_eq!(sync(&mut a).await.uploaded, 5);
    let fb = root.path().join("B");
    let mut b = device(&c, &fb, &root.path().join("b-data"), "tablet").await;
    let r = sync(&mut b).await;
    assert_eq!((r.downloaded, r.fetched_ahead), (5, 5), "{r:?}");
    for i in 0..5 {
        let name = format!("IMG_{i}.JPG");
        assert_eq!(
            std::fs::read(fb.join(&name)).unwrap(),
            std::fs::read(fa.join(&name)).unwrap()
        );
    }
}

/// Most of the library vanishing at once waits for confirmation; a few deletes do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_delete_waits_for_confirmation() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device_with(&c, &fa, &root.path().join("a-data"), "phone", |cfg| {
        cfg.mass_delete_min = 3;
    })
    .await;
    for i in 0..8 {
        std::fs::write(fa.join(format!("IMG_{i}.JPG")), photo(300 + i, 30_000)).unwrap();
    }
    assert_eq!(sync(&mut a).await.uploaded, 8);
    std::fs::remove_file(fa.join("IMG_0.JPG")).unwrap();
    assert_eq!(
        sync(&mut a).await.trashed_remotely,
        1,
        "one delete just goes"
    );
    for i in 1..7 {
        std::fs::remove_file(fa.join(format!("IMG_{i}.JPG"))).unwrap();
    }
    let r = sync(&mut a).await;
    assert_eq!(
        (r.blocked.as_deref(), r.trashed_remotely),
        (Some("DELETES_NEED_CONFIRMATION"), 0)
    );
    assert_eq!(sync(&mut a).await.trashed_remotely, 0, "still waiting");
    a.confirm_deletes().unwrap();
    assert_eq!(sync(&mut a).await.trashed_remotely, 6);
    // A confirmation covers one pass, not every mass delete after it.
    for i in 8..16 {
        std::fs::write(fa.join(format!("IMG_{i}.JPG")), photo(300 + i, 30_000)).unwrap();
    }
    assert_eq!(sync(&mut a).await.uploaded, 8);
    for i in 8..14 {
        std::fs::remove_file(fa.join(format!("IMG_{i}.JPG"))).unwrap();
    }
    let r = sync(&mut a).await;
    assert_eq!(r.blocked.as_deref(), Some("DELETES_NEED_CONFIRMATION"));
}

#[test]
fn plaintext_off_loopback_is_refused_unless_forced() {
    let out = Command::new(keepsake_binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-self-signed"), "{stderr}");
}

/// Three devices, random interleavings of adds, deletes, renames and syncs, one device
/// offline for a long stretch: after everyone syncs, every folder holds exactly the
/// library's live photos, each once, and nothing deleted came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge_after_random_interleavings() {
    use devices::*;
    for seed in 1..=4u64 {
        let c = cloud().await;
        let root = tempfile::tempdir().unwrap();
        let mut devs = Vec::new();
        let mut folders = Vec::new();
        for i in 0..3 {
            let f = root.path().join(format!("f{i}"));
            devs.push(
                device(
                    &c,
                    &f,
                    &root.path().join(format!("d{i}")),
                    &format!("dev {i}"),
                )
                .await,
            );
            folders.push(f);
        }
        let mut next = seeded(seed);
        let mut made = 0u64;
        let mut deleted: Vec<String> = Vec::new();
        for step in 0..60 {
            // Device 2 is offline for the middle half of the run.
            let d = next(3) as usize;
            if d == 2 && (15..45).contains(&step) {
                continue;
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(&folders[d])
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    !p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(".keepsake")
                })
                .collect();
            // Directory order is the file system's; the run must replay from its seed.
            files.sort();
            match next(10) {
                0..=3 => {
                    made += 1;
                    std::fs::write(
                        folders[d].join(format!("P{seed}_{made}.JPG")),
                        photo(seed * 1000 + made, 20_000 + next(50_000) as usize),
                    )
                    .unwrap();
                }
                4 if !files.is_empty() => {
                    let victim = &files[next(files.len() as u64) as usize];
                    deleted.push(
                        blake3::hash(&std::fs::read(victim).unwrap())
                            .to_hex()
                            .to_string(),
                    );
                    std::fs::remove_file(victim).unwrap();
                }
                5 if !files.is_empty() => {
                    let from = &files[next(files.len() as u64) as usize];
                    std::fs::rename(from, from.with_extension("renamed.jpg")).unwrap();
                }
                _ => {
                    sync(&mut devs[d]).await;
                }
            }
        }
        for _ in 0..2 {
            for d in devs.iter_mut() {
                sync(d).await;
            }
        }
        let expected = folder_contents(&folders[0]);
        for f in &folders[1..] {
            assert_eq!(folder_contents(f), expected, "seed {seed}");
        }
        let live: Vec<String> = c
            .cloud
            .library()
            .list_changes("alice", 0, 1000)
            .unwrap()
            .changes
            .iter()
            .filter_map(|ch| match ch {
                keepsake_library::Change::Asset(a)
                    if a.state == keepsake_library::AssetState::Live =>
                {
                    Some(a.file_hash.to_hex())
                }
                _ => None,
            })
            .collect();
        let mut live_sorted = live.clone();
        live_sorted.sort();
        assert_eq!(
            live_sorted, expected,
            "seed {seed}: folders equal the library"
        );
        let mut unique = live_sorted.clone();
        unique.dedup();
        assert_eq!(unique.len(), live.len(), "seed {seed}: no content twice");
        // Every photo is unique, so a deleted one may only be live again if it came back
        // from the dead: it must not.
        for gone in &deleted {
            assert!(
                !live.contains(gone),
                "seed {seed}: a deleted photo was resurrected"
            );
        }
        println!("seed {seed}: {} photos live on 3 devices", expected.len());
    }
}

/// Two devices edit the same photo before either hears of the other's edit: both edits
/// are kept as versions (the later current, the other in the history, marked a conflict),
/// and both devices end with the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_edits_on_two_devices_keep_both_versions() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "A").await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "B").await;
    std::fs::write(fa.join("IMG.JPG"), photo(7, 300_000)).unwrap();
    sync(&mut a).await;
    sync(&mut b).await;
    let (edit_a, edit_b) = (photo(8, 300_000), photo(9, 310_000));
    std::fs::write(fa.join("IMG.JPG"), &edit_a).unwrap();
    std::fs::write(fb.join("IMG.JPG"), &edit_b).unwrap();
    let ra = sync(&mut a).await;
    assert_eq!(ra.uploaded, 1, "{ra:?}");
    let rb = sync(&mut b).await;
    assert_eq!(rb.uploaded, 1, "{rb:?}");
    sync(&mut a).await;
    let asset = c
        .cloud
        .library()
        .find_by_content("alice", &[ChunkId::of(&edit_b)])
        .unwrap()[0]
        .assets[0]
        .asset_id
        .clone();
    let versions = c.cloud.library().list_versions("alice", &asset).unwrap();
    let hashes: Vec<ChunkId> = versions.iter().map(|v| v.file_hash).collect();
    assert_eq!(
        hashes,
        vec![
            ChunkId::of(&photo(7, 300_000)),
            ChunkId::of(&edit_a),
            ChunkId::of(&edit_b)
        ]
    );
    assert_eq!(
        versions[2].conflicts_with,
        Some(2),
        "B's edit was made from version 1"
    );
    assert_eq!(std::fs::read(fa.join("IMG.JPG")).unwrap(), edit_b);
    assert_eq!(std::fs::read(fb.join("IMG.JPG")).unwrap(), edit_b);
}

/// A photo whose date was rewritten in place (19 bytes) reaches the cloud as a delta
/// against the stretch of the old version it replaced, not as whole 64 KiB chunks, and
/// the other device gets exactly the new bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exif_date_rewrite_travels_as_a_delta_not_whole_chunks() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let proxy = keepsake_testkit::fault_proxy::FaultProxy::start(
        c.url.trim_start_matches("http://").parse().unwrap(),
        keepsake_testkit::fault_proxy::Schedule::clean(),
    )
    .await
    .unwrap();
    let mut a = device_at(
        &c,
        &proxy.url(),
        &fa,
        &root.path().join("a-data"),
        "A",
        |_| {},
    )
    .await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "B").await;
    let original = photo(21, 3_000_000);
    std::fs::write(fa.join("IMG_0001.JPG"), &original).unwrap();
    sync(&mut a).await;
    sync(&mut a).await; // the feed brings A its own version: the base of the next edit
    sync(&mut b).await;
    let mut edited = original.clone();
    edited[1_500_000..1_500_019].copy_from_slice(b"2025:01:11 08:30:00");
    std::fs::write(fa.join("IMG_0001.JPG"), &edited).unwrap();
    let up = || {
        proxy
            .stats()
            .bytes_up
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = up();
    let r = sync(&mut a).await;
    let wire = up() - before;
    eprintln!(
        "edit pass: {wire} bytes up from A, {} of them delta",
        r.bytes_sent
    );
    assert_eq!(r.uploaded, 1, "{r:?}");
    // rsync's literal data for this edit is about one 1.7 KB block. The whole pass — every
    // call, header and frame A sent — stays near that: 7.8 KB when the manifest went whole,
    // FindMissing asked about every chunk and each call carried the token unindexed; 2.2 KB
    // before the manifest rode on the commit and the journal kept the base's manifest.
    assert!(
        wire < 2000,
        "{wire} bytes on A's uplink for a 19-byte edit of a 3 MB photo: {r:?}"
    );
    assert!(
        r.chunks_by_delta >= 1,
        "the changed chunks went whole: {r:?}"
    );
    assert!(
        r.bytes_sent < 1536,
        "{} bytes sent for a 19-byte edit: {r:?}",
        r.bytes_sent
    );
    sync(&mut b).await;
    assert_eq!(std::fs::read(fb.join("IMG_0001.JPG")).unwrap(), edited);
}

/// An edit whose changed chunks the account already holds (an attempt cut off after its
/// delta landed) sends nothing again: the signature call, which now also asks what the
/// delta would store, answers that everything is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_whose_changed_chunks_the_cloud_holds_already_sends_nothing_again() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "A").await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "B").await;
    let original = photo(23, 3_000_000);
    std::fs::write(fa.join("IMG_0001.JPG"), &original).unwrap();
    sync(&mut a).await;
    sync(&mut a).await;
    let mut edited = original.clone();
    edited[1_500_000..1_500_019].copy_from_slice(b"2025:01:11 08:30:00");
    // The edited file's chunks reach the account as a delta that landed would leave them.
    let params = keepsake_delta::ChunkParams::for_len(edited.len() as u64);
    let mut chunks = Vec::new();
    keepsake_delta::chunk_stream(&edited[..], params, |id, d| {
        chunks.push((id, Bytes::copy_from_slice(d)));
        Ok(())
    })
    .unwrap();
    let session = c
        .store
        .begin_session("alice", edited.len() as u64, 600_000, None)
        .unwrap();
    c.store.put_chunks("alice", &session.id, &chunks).unwrap();
    std::fs::write(fa.join("IMG_0001.JPG"), &edited).unwrap();
    let r = sync(&mut a).await;
    assert_eq!(r.uploaded, 1, "{r:?}");
    assert_eq!(
        (r.bytes_sent, r.chunks_sent, r.chunks_by_delta),
        (0, 0, 0),
        "chunks the account held were sent again: {r:?}"
    );
    sync(&mut b).await;
    assert_eq!(std::fs::read(fb.join("IMG_0001.JPG")).unwrap(), edited);
}

/// Through a proxy that cuts, delays and stalls the connection, a device keeps retrying
/// until every photo is in the library and on the other device; no acknowledged chunk is
/// sent twice and no partial file ever appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_faulty_network_every_photo_arrives_and_no_acknowledged_chunk_is_resent() {
    use devices::*;
    use keepsake_device::{Device, DeviceConfig};
    use keepsake_testkit::fault_proxy::{FaultProxy, Schedule};
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let upstream: std::net::SocketAddr = c.url.trim_start_matches("http://").parse().unwrap();
    let mut schedule = Schedule::random(11);
    schedule.cut_percent = 60;
    schedule.within_bytes = 1 << 20;
    schedule.stall_percent = 10;
    schedule.stall_for = std::time::Duration::from_millis(1500);
    let proxy = std::sync::Arc::new(FaultProxy::start(upstream, schedule).await.unwrap());
    // On top of the schedule, the link drops every 120 ms, as on a train.
    let dropper = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(120)).await;
                proxy.cut_all();
            }
        })
    };
    let enrolled = c
        .cloud
        .enroll_device("alice", "correct horse", "on a train", "linux", "0.1.0")
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(proxy.url())
        .unwrap()
        .connect_lazy();
    let client = CloudClient::new(
        channel,
        client::BearerAuth::new(&enrolled.access.token),
        ClientConfig {
            call_timeout: std::time::Duration::from_secs(1),
            stream_timeout: std::time::Duration::from_secs(2),
            stall_timeout: std::time::Duration::from_secs(1),
            max_bytes_in_flight: 256 << 10,
            message_bytes: 64 << 10,
        },
    );
    let mut config = DeviceConfig::new(fa.clone(), root.path().join("a-data"), enrolled.device_id);
    config.stable_ms = 0;
    let mut a = Device::open(
        config,
        client,
        std::sync::Arc::new(keepsake_store::SystemClock),
    )
    .unwrap();
    let mut b = device(&c, &fb, &root.path().join("b-data"), "at home").await;
    let mut unique_chunks = std::collections::HashSet::new();
    for i in 0..12 {
        let data = photo(500 + i, 200_000 + (i as usize) * 150_000);
        for chunk in keepsake_delta::manifest_of(&data, keepsake_delta::ChunkParams::PHOTO).entries
        {
            unique_chunks.insert(chunk.chunk);
        }
        std::fs::write(fa.join(format!("T_{i}.JPG")), data).unwrap();
    }
    let (mut acknowledged, mut failures) = (0usize, 0usize);
    for _ in 0..100 {
        match a.sync_once().await {
            Ok(r) => {
                acknowledged += r.chunks_sent;
                assert!(r.blocked.is_none(), "{r:?}");
                if r == Default::default() {
                    break;
                }
            }
            Err(keepsake_device::DeviceError::Cloud(e)) => {
                assert!(
                    e.transient,
                    "only transient failures on a flaky link: {e:?}"
                );
                failures += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    dropper.abort();
    sync(&mut b).await;
    assert_eq!(folder_contents(&fa), folder_contents(&fb));
    assert_eq!(folder_contents(&fb).len(), 12);
    // The link must actually have hurt: a pass failed and the device had to connect again.
    // How many passes fail moves with the machine's speed (3 to 10 in runs here; a quiet
    // CI machine outran the old bound of 4), so the bound asks only that it happened.
    let reconnections = proxy
        .stats()
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        failures >= 1 && reconnections >= 2,
        "the proxy must actually have hurt: {failures} failed passes, {reconnections} connections"
    );
    // Chunks acknowledged in a failed pass are counted too (the report is lost with the
    // error), so count what the store holds for the account against what was needed.
    let usage = c.cloud.account_info("alice").unwrap().used_bytes;
    let content: u64 = (0..12u64).map(|i| 200_000 + i * 150_000).sum();
    assert!(
        usage >= content && usage < content + 64 * 1024,
        "usage {usage} for {content}"
    );
    // Some acknowledgements are lost with their connection (the chunk is durable; the next
    // pass learns so from FindMissing), so at most one per chunk — and none twice.
    assert!(acknowledged as u64 <= a.chunks_acknowledged());
    assert!(a.chunks_acknowledged() <= unique_chunks.len() as u64);
    assert_eq!(
        a.chunks_acknowledged_again(),
        0,
        "an acknowledged chunk was sent again"
    );
    let partial = std::fs::read_dir(&fb)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("part")
        })
        .count();
    assert_eq!(partial, 0);
    println!(
        "faulty network: {failures} failed passes, {} cuts, {} stalls",
        proxy
            .stats()
            .cuts
            .load(std::sync::atomic::Ordering::Relaxed),
        proxy
            .stats()
            .stalls
            .load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// The policy's causes stop the device with the right reason, and clearing the cause
/// resumes sync on the next pass — no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_condition_pauses_sync_with_its_reason_and_clearing_it_resumes() {
    use devices::*;
    use keepsake_policy::{Network, Snapshot};
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone").await;
    let healthy = Snapshot {
        account: Some("alice".into()),
        ..Snapshot::example()
    };
    type Cause = Box<dyn Fn(&mut Snapshot)>;
    let cases: Vec<(&str, Cause)> = vec![
        ("SYNC_DISABLED", Box::new(|s| s.sync_enabled = false)),
        ("OFFLINE", Box::new(|s| s.network = Some(Network::Offline))),
        (
            "CELLULAR_NOT_ALLOWED",
            Box::new(|s| {
                s.network = Some(Network::Cellular);
                s.cellular.allowed = false;
            }),
        ),
        (
            "LOW_BATTERY",
            Box::new(|s| {
                s.power.battery_percent = Some(5);
                s.power.charging = false;
            }),
        ),
        (
            "LOW_POWER_MODE",
            Box::new(|s| s.power.low_power_mode = true),
        ),
        (
            "DEVICE_STORAGE_LOW",
            Box::new(|s| s.storage.free_bytes = Some(10_000_000)),
        ),
    ];
    for (i, (reason, make)) in cases.iter().enumerate() {
        let mut blocked = healthy.clone();
        make(&mut blocked);
        a.set_conditions(Some(blocked));
        std::fs::write(
            fa.join(format!("IMG_{i}.JPG")),
            photo(900 + i as u64, 50_000),
        )
        .unwrap();
        let r = sync(&mut a).await;
        assert_eq!(r.blocked.as_deref(), Some(*reason), "{r:?}");
        // A full device still uploads (that is how space is freed); downloads wait.
        let uploads_go_on = *reason == "DEVICE_STORAGE_LOW";
        assert_eq!(
            r.uploaded,
            usize::from(uploads_go_on),
            "{reason}: what may upload"
        );
        a.set_conditions(Some(healthy.clone()));
        let r = sync(&mut a).await;
        assert_eq!(
            (r.blocked.as_deref(), r.uploaded),
            (None, usize::from(!uploads_go_on)),
            "{reason} cleared: {r:?}"
        );
    }
}

/// The cloud's own causes: a full plan and an outdated client each stop the device with
/// their reason; a bigger plan resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_plan_and_an_outdated_client_say_so_and_a_bigger_plan_resumes() {
    use devices::*;
    use keepsake_library::{ClientVersion, Plan};
    let plans = vec![
        Plan {
            name: "tiny".into(),
            limit_bytes: 1_000_000,
        },
        Plan {
            name: "roomy".into(),
            limit_bytes: 100_000_000,
        },
    ];
    let c = cloud_with(plans, ClientVersion::default()).await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone").await;
    std::fs::write(fa.join("BIG.MOV"), photo(1, 2_000_000)).unwrap();
    let r = sync(&mut a).await;
    assert_eq!(
        (r.blocked.as_deref(), r.uploaded, r.bytes_sent),
        (Some("QUOTA_EXCEEDED"), 0, 0)
    );
    c.cloud.library().set_plan("alice", "roomy").unwrap();
    let r = sync(&mut a).await;
    assert_eq!((r.blocked.as_deref(), r.uploaded), (None, 1), "{r:?}");

    let old = cloud_with(keepsake_library::default_plans(), ClientVersion(9, 0, 0)).await;
    let fb = root.path().join("B");
    let mut b = device(&old, &fb, &root.path().join("b-data"), "old phone").await;
    std::fs::write(fb.join("IMG.JPG"), photo(2, 10_000)).unwrap();
    let r = sync(&mut b).await;
    assert_eq!(r.blocked.as_deref(), Some("CLIENT_TOO_OLD"), "{r:?}");
}

/// Two devices add different photos under the same name: both keep theirs, the other's
/// arrives under a disambiguated name. Case-only and Unicode-normalisation renames are plain
/// renames: nothing deleted, nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_names_both_survive_and_case_or_unicode_renames_send_nothing() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "A").await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "B").await;
    std::fs::write(fa.join("IMG_0001.JPG"), photo(31, 80_000)).unwrap();
    std::fs::write(fb.join("IMG_0001.JPG"), photo(32, 90_000)).unwrap();
    sync(&mut a).await;
    sync(&mut b).await;
    sync(&mut a).await;
    assert_eq!(folder_contents(&fa), folder_contents(&fb));
    assert_eq!(folder_contents(&fa).len(), 2);
    assert!(fa.join("IMG_0001 (2).JPG").exists() && fb.join("IMG_0001 (2).JPG").exists());

    // "café" composed (NFC) and decomposed (NFD) are different byte strings for the same name.
    std::fs::write(fa.join("caf\u{e9}.jpg"), photo(33, 40_000)).unwrap();
    sync(&mut a).await;
    for (from, to) in [
        ("IMG_0001.JPG", "img_0001.jpg"),
        ("caf\u{e9}.jpg", "cafe\u{301}.jpg"),
    ] {
        std::fs::rename(fa.join(from), fa.join(to)).unwrap();
        let r = sync(&mut a).await;
        assert_eq!(
            (r.uploaded, r.bytes_sent, r.trashed_remotely),
            (0, 0, 0),
            "{from} -> {to}: {r:?}"
        );
    }
    sync(&mut b).await;
    assert_eq!(folder_contents(&fa), folder_contents(&fb));
    let live = c
        .cloud
        .library()
        .list_changes("alice", 0, 100)
        .unwrap()
        .changes
        .len();
    assert_eq!(live, 3);
}

/// The DeviceControl service drives an agent's folder: a photo imported through it reaches
/// the other device, a delete through it reaches the cloud, conditions land where the agent
/// reads them, and bad input is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_control_imports_deletes_and_sets_conditions() {
    use devices::*;
    use keepsake_proto::v1::device_control_client::DeviceControlClient;
    use keepsake_transport::client::pb;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let (da, db) = (root.path().join("a-data"), root.path().join("b-data"));
    let mut a = device(&c, &fa, &da, "A").await;
    let mut b = device(&c, &fb, &db, "B").await;
    let (wake, _woken) = tokio::sync::mpsc::unbounded_channel();
    let control = std::sync::Arc::new(
        keepsake_device::FolderControl::open(
            a.config(),
            root.path().join("a-control"),
            std::sync::Arc::new(keepsake_store::SystemClock),
            wake,
        )
        .unwrap(),
    );
    control.control_secret().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keepsake_transport::serve_device(
        listener,
        control.clone(),
        std::future::pending(),
    ));
    // Without the secret in the data directory, the port refuses everyone: another user
    // of the machine once listed and deleted the owner's photos through it.
    let mut stranger = DeviceControlClient::new(client::connect(&url).await.unwrap());
    let refused = stranger
        .list_assets(pb::ListAssetsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let secret = root.path().join("a-control").join("control-secret");
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions())
            & 0o077,
        0,
        "only the owner may read the secret"
    );
    let mut remote = client::control_client(
        client::connect(&url).await.unwrap(),
        &root.path().join("a-control"),
    )
    .unwrap();
    let data = photo(77, 120_000);
    let stored = remote
        .import(pb::ImportRequest {
            name: "../../Camera/IMG_7.JPG".into(),
            data: data.clone().into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stored_as;
    assert_eq!(stored, "IMG_7.JPG");
    assert_eq!(sync(&mut a).await.uploaded, 1);
    assert_eq!(sync(&mut b).await.downloaded, 1);
    assert_eq!(std::fs::read(fb.join("IMG_7.JPG")).unwrap(), data);
    remote
        .set_conditions(pb::SetConditionsRequest {
            conditions: Some(pb::Conditions {
                network: "cellular".into(),
                battery_percent: Some(40),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // Edits through DeviceControl: queued in A's journal, sent by A's next pass.
    let listed = remote
        .list_assets(pb::ListAssetsRequest {})
        .await
        .unwrap()
        .into_inner();
    let asset_id = listed.assets[0].asset_id.clone();
    assert_eq!(listed.assets[0].name, "IMG_7.JPG");
    remote
        .set_favorite(pb::SetFavoriteRequest {
            asset_id: asset_id.clone(),
            favorite: true,
        })
        .await
        .unwrap();
    remote
        .put_album(pb::LocalPutAlbumRequest {
            album_id: "best".into(),
            name: "Best of".into(),
        })
        .await
        .unwrap();
    remote
        .set_album_member(pb::LocalSetAlbumMemberRequest {
            album_id: "best".into(),
            asset_id: asset_id.clone(),
            present: true,
        })
        .await
        .unwrap();
    let unknown = remote
        .set_favorite(pb::SetFavoriteRequest {
            asset_id: "someone-elses".into(),
            favorite: true,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let blank = remote
        .put_album(pb::LocalPutAlbumRequest {
            album_id: "x".into(),
            name: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(blank.code(), tonic::Code::InvalidArgument);
    assert_eq!(sync(&mut a).await.edits_sent, 3);
    sync(&mut b).await;
    assert_eq!(view(&b), view(&a));
    assert_eq!(view(&b)[0].4, ["Best of"], "the album reached B");
    assert!(view(&b)[0].1, "the favourite reached B");

    // Settings: a pause stops the next pass, the diagnosis says so, resuming clears it.
    let mut settings = remote
        .get_settings(pb::GetSettingsRequest {})
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    assert!(settings.sync_enabled, "sync is on by default");
    let hour_from_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    settings.paused_until_ms = Some(hour_from_now);
    remote
        .set_settings(pb::SetSettingsRequest {
            settings: Some(settings),
        })
        .await
        .unwrap();
    let mut seen = keepsake_policy::Snapshot {
        account: Some("alice".into()),
        ..keepsake_policy::Snapshot::example()
    };
    control.settings().unwrap().apply_to(&mut seen);
    control.save_snapshot(&seen).unwrap();
    a.set_conditions(Some(seen));
    assert_eq!(
        sync(&mut a).await.blocked.as_deref(),
        Some("PAUSED_BY_USER")
    );
    let diagnosis = remote
        .diagnose(pb::DiagnoseRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!diagnosis.syncing);
    assert!(
        diagnosis.json.contains("PAUSED_BY_USER"),
        "{}",
        diagnosis.json
    );
    settings.paused_until_ms = None;
    remote
        .set_settings(pb::SetSettingsRequest {
            settings: Some(settings),
        })
        .await
        .unwrap();
    let mut resumed = keepsake_policy::Snapshot {
        account: Some("alice".into()),
        ..keepsake_policy::Snapshot::example()
    };
    control.settings().unwrap().apply_to(&mut resumed);
    control.save_snapshot(&resumed).unwrap();
    a.set_conditions(Some(resumed));
    assert_eq!(sync(&mut a).await.blocked, None);
    assert!(
        remote
            .diagnose(pb::DiagnoseRequest {})
            .await
            .unwrap()
            .into_inner()
            .syncing
    );

    let set = control.conditions().unwrap().unwrap();
    assert_eq!(
        (set.network.as_deref(), set.battery_percent),
        (Some("cellular"), Some(40))
    );
    let bad = remote
        .set_conditions(pb::SetConditionsRequest {
            conditions: Some(pb::Conditions {
                network: "carrier pigeon".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let escape = remote
        .delete(pb::DeleteRequest {
            name: "../B/IMG_7.JPG".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(escape.code(), tonic::Code::InvalidArgument);
    assert!(fb.join("IMG_7.JPG").exists());
    remote
        .delete(pb::DeleteRequest {
            name: "IMG_7.JPG".into(),
        })
        .await
        .unwrap();
    assert_eq!(sync(&mut a).await.trashed_remotely, 1);
    assert_eq!(sync(&mut b).await.trashed_here, 1);
    // What an agent's pass left out reaches a controller with its reason and fix.
    control
        .save_status(&keepsake_device::AgentStatus {
            skipped: vec![keepsake_device::SkippedFile {
                path: "Caf\u{FFFD}.jpg".into(),
                reason: "NAME_NOT_UTF8".into(),
                message: "rename it".into(),
            }],
            ..Default::default()
        })
        .unwrap();
    let status = remote
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.reason, "", "no reason saved: syncing");
    assert_eq!(
        status.skipped,
        [pb::SkippedFile {
            path: "Caf\u{FFFD}.jpg".into(),
            reason: "NAME_NOT_UTF8".into(),
            message: "rename it".into(),
        }]
    );
}

/// Favourites, hidden flags, albums, deletes and restores made on one device reach the
/// others; made offline, they wait in the outbox across a restart; an edit of a photo
/// purged meanwhile is dropped, not retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_on_one_device_reach_the_others_and_survive_a_restart() {
    use devices::*;
    use keepsake_device::Edit;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "A").await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "B").await;
    for i in 1..=3 {
        std::fs::write(fa.join(format!("IMG_{i}.JPG")), photo(300 + i, 40_000)).unwrap();
    }
    assert_eq!(sync(&mut a).await.uploaded, 3);
    assert_eq!(sync(&mut b).await.downloaded, 3);
    let id = |d: &keepsake_device::Device<keepsake_transport::cloud_client::CloudClient>,
              name: &str| {
        d.assets()
            .unwrap()
            .into_iter()
            .find(|x| x.name == name)
            .unwrap()
            .asset_id
    };
    let (p1, p2, p3) = (
        id(&b, "IMG_1.JPG"),
        id(&b, "IMG_2.JPG"),
        id(&b, "IMG_3.JPG"),
    );
    let unknown = b.edit(Edit::Favorite {
        asset_id: "no-such-asset".into(),
        value: true,
    });
    assert!(matches!(
        unknown,
        Err(keepsake_device::DeviceError::Unknown { .. })
    ));
    // Offline on B: shown at once, queued.
    for edit in [
        Edit::Favorite {
            asset_id: p1.clone(),
            value: true,
        },
        Edit::Hidden {
            asset_id: p2.clone(),
            value: true,
        },
        Edit::PutAlbum {
            album_id: "trip".into(),
            name: "Trip".into(),
        },
        Edit::AlbumMember {
            album_id: "trip".into(),
            asset_id: p1.clone(),
            present: true,
        },
        Edit::AlbumMember {
            album_id: "trip".into(),
            asset_id: p3.clone(),
            present: true,
        },
    ] {
        b.edit(edit).unwrap();
    }
    let shown = view(&b);
    assert!(shown.iter().any(|x| x.0 == p1 && x.1 && x.4 == ["Trip"]));
    assert_eq!(b.pending_edits().unwrap(), 5);
    let mut b = restart(&c, b).await;
    assert_eq!(
        b.pending_edits().unwrap(),
        5,
        "the outbox survives a restart"
    );
    assert_eq!(view(&b), shown, "and so does what the device shows");
    assert_eq!(sync(&mut b).await.edits_sent, 5);
    assert_eq!(b.pending_edits().unwrap(), 0);
    sync(&mut a).await;
    assert_eq!(view(&a), view(&b));
    assert!(view(&a).iter().any(|x| x.0 == p2 && x.2), "hidden on A");
    assert_eq!(a.albums().unwrap()[0].members.len(), 2);

    // Both change the same favourite before hearing of each other: they converge.
    a.edit(Edit::Favorite {
        asset_id: p1.clone(),
        value: false,
    })
    .unwrap();
    b.edit(Edit::Favorite {
        asset_id: p1.clone(),
        value: true,
    })
    .unwrap();
    sync(&mut a).await;
    sync(&mut b).await;
    sync(&mut a).await;
    assert_eq!(view(&a), view(&b), "racing favourites converge");

    // A delete and a restore made on B move the file on A and back.
    let original = std::fs::read(fa.join("IMG_3.JPG")).unwrap();
    b.edit(Edit::Trash {
        asset_id: p3.clone(),
        alone: false,
    })
    .unwrap();
    sync(&mut b).await;
    assert_eq!(sync(&mut a).await.trashed_here, 1);
    assert!(!fa.join("IMG_3.JPG").exists());
    assert!(
        view(&a).iter().any(|x| x.0 == p3 && x.3),
        "in A's Recently Deleted"
    );
    b.edit(Edit::Restore {
        asset_id: p3.clone(),
    })
    .unwrap();
    sync(&mut b).await;
    assert_eq!(sync(&mut a).await.restored, 1);
    assert_eq!(std::fs::read(fa.join("IMG_3.JPG")).unwrap(), original);
    assert_eq!(view(&a), view(&b));

    // An edit queued for a photo purged elsewhere is dropped, and the rest still go.
    b.edit(Edit::Favorite {
        asset_id: p2.clone(),
        value: true,
    })
    .unwrap();
    b.edit(Edit::Hidden {
        asset_id: p1.clone(),
        value: true,
    })
    .unwrap();
    c.cloud.purge("alice", &p2).unwrap();
    let report = sync(&mut b).await;
    assert_eq!((report.edits_dropped, report.edits_sent), (1, 1));
    sync(&mut a).await;
    assert_eq!(view(&a), view(&b));
    assert!(
        !view(&a).iter().any(|x| x.0 == p2),
        "purged: gone from every view"
    );
}

/// A device that was offline while the others made 1,000 changes catches up to exactly
/// what they show: files, favourites, hidden flags, albums, Recently Deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_for_1000_changes_converges() {
    use devices::*;
    use keepsake_device::Edit;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let mut devs = Vec::new();
    let mut folders = Vec::new();
    for i in 0..3 {
        let f = root.path().join(format!("f{i}"));
        devs.push(
            device(
                &c,
                &f,
                &root.path().join(format!("d{i}")),
                &format!("dev {i}"),
            )
            .await,
        );
        folders.push(f);
    }
    for i in 0..12u64 {
        std::fs::write(folders[0].join(format!("P{i}.JPG")), photo(900 + i, 8_000)).unwrap();
    }
    for d in devs.iter_mut() {
        sync(d).await;
    }
    let ids: Vec<String> = devs[0]
        .assets()
        .unwrap()
        .into_iter()
        .map(|a| a.asset_id)
        .collect();
    assert_eq!(ids.len(), 12);
    let mut next = seeded(0x5eed);
    for album in ["Trip", "Family"] {
        devs[0]
            .edit(Edit::PutAlbum {
                album_id: album.to_lowercase(),
                name: album.into(),
            })
            .unwrap();
    }
    sync(&mut devs[0]).await;
    sync(&mut devs[1]).await;
    let mut purged = std::collections::HashSet::new();
    let mut changes = 2;
    // Device 2 is offline throughout.
    while changes < 1000 {
        let d = next(2) as usize;
        let asset_id = ids[next(ids.len() as u64) as usize].clone();
        let edit = match next(5) {
            0 => Edit::Favorite {
                asset_id,
                value: next(2) == 0,
            },
            1 => Edit::Hidden {
                asset_id,
                value: next(2) == 0,
            },
            2 | 3 => Edit::AlbumMember {
                album_id: if next(2) == 0 { "trip" } else { "family" }.into(),
                asset_id,
                present: next(2) == 0,
            },
            _ => {
                let trashed = devs[d]
                    .assets()
                    .unwrap()
                    .iter()
                    .any(|a| a.asset_id == asset_id && a.trashed);
                if trashed && purged.len() < 3 && next(4) == 0 {
                    // Deleted for good from Recently Deleted (on the web, say).
                    c.cloud.purge("alice", &asset_id).unwrap();
                    purged.insert(asset_id);
                    changes += 1;
                    continue;
                } else if trashed {
                    Edit::Restore { asset_id }
                } else {
                    Edit::Trash {
                        asset_id,
                        alone: false,
                    }
                }
            }
        };
        match devs[d].edit(edit) {
            Ok(_) => {}
            // Purged, and this device has heard: nothing left to edit.
            Err(keepsake_device::DeviceError::Unknown { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
        changes += 1;
        if next(20) == 0 {
            sync(&mut devs[d]).await;
        }
    }
    for _ in 0..2 {
        for d in devs.iter_mut().take(2) {
            sync(d).await;
        }
    }
    let before = devs[2].cursor().unwrap();
    sync(&mut devs[2]).await;
    assert!(devs[2].cursor().unwrap() > before);
    assert_eq!(view(&devs[0]), view(&devs[1]));
    assert_eq!(
        view(&devs[2]),
        view(&devs[0]),
        "the offline device caught up"
    );
    assert_eq!(devs[2].albums().unwrap(), devs[0].albums().unwrap());
    let files = folder_contents(&folders[0]);
    assert_eq!(folder_contents(&folders[1]), files);
    assert_eq!(folder_contents(&folders[2]), files);
    let trashed = view(&devs[0]).iter().filter(|v| v.3).count();
    assert_eq!(
        files.len() + trashed + purged.len(),
        12,
        "every photo in the folder, in Recently Deleted, or purged"
    );
    println!(
        "1,000 changes: {} photos in the folders, {trashed} in Recently Deleted, {} purged",
        files.len(),
        purged.len()
    );
}

/// On mobile data with a daily cap, a device moves no more than the cap allows, says
/// CELLULAR_CAP_REACHED, remembers what it used today across passes, and sends the rest
/// on Wi-Fi.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_mobile_cap_is_kept_and_wifi_sends_the_rest() {
    use devices::*;
    use keepsake_policy::{Network, Snapshot};
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone").await;
    for i in 0..5u64 {
        std::fs::write(fa.join(format!("C{i}.JPG")), photo(700 + i, 60_000)).unwrap();
    }
    let mut cellular = Snapshot {
        account: Some("alice".into()),
        ..Snapshot::example()
    };
    cellular.network = Some(Network::Cellular);
    cellular.cellular.allowed = true;
    cellular.cellular.daily_cap_bytes = Some(150_000);
    a.set_conditions(Some(cellular.clone()));
    let first = sync(&mut a).await;
    assert_eq!(
        first.uploaded, 2,
        "{first:?}: two 60 kB photos fit a 150 kB cap, a third does not"
    );
    assert_eq!(
        first.uploaded, 2,
        "two 60 kB photos fit a 150 kB cap, a third does not"
    );
    assert_eq!(first.blocked.as_deref(), Some("CELLULAR_CAP_REACHED"));
    assert!(a.cellular_used_today().unwrap() >= 120_000);
    let second = sync(&mut a).await;
    assert_eq!(
        second.uploaded, 0,
        "today's allowance is remembered across passes"
    );
    assert_eq!(second.blocked.as_deref(), Some("CELLULAR_CAP_REACHED"));
    let mut wifi = cellular;
    wifi.network = Some(Network::Wifi);
    a.set_conditions(Some(wifi));
    let third = sync(&mut a).await;
    assert_eq!((third.uploaded, third.blocked), (3, None));
    assert_eq!(a.pending_files().unwrap(), 0);
}

/// Originals that wait for Wi-Fi are counted for the ledger (how many, how many bytes),
/// and the count is gone once they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_waiting_for_wifi_are_counted_and_the_count_clears_when_they_arrive() {
    use devices::*;
    use keepsake_policy::{Network, Snapshot};
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone").await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "laptop").await;
    for i in 0..3u64 {
        std::fs::write(fa.join(format!("W{i}.JPG")), photo(800 + i, 60_000)).unwrap();
    }
    assert_eq!(sync(&mut a).await.uploaded, 3);
    let mut cellular = Snapshot {
        account: Some("alice".into()),
        ..Snapshot::example()
    };
    cellular.network = Some(Network::Cellular);
    cellular.cellular.allowed = true;
    cellular.cellular.unlimited_updates = false;
    b.set_conditions(Some(cellular.clone()));
    let waiting = sync(&mut b).await;
    assert_eq!(waiting.downloaded, 0);
    assert_eq!(waiting.blocked.as_deref(), Some("WAITING_FOR_WIFI"));
    assert_eq!(
        (waiting.pending_downloads, waiting.pending_download_bytes),
        (3, 180_000)
    );
    let mut wifi = cellular;
    wifi.network = Some(Network::Wifi);
    b.set_conditions(Some(wifi));
    let arrived = sync(&mut b).await;
    assert_eq!((arrived.downloaded, arrived.pending_downloads), (3, 0));
}

/// `keepsake export` takes the whole library out: every original byte-identical, earlier
/// versions beside it, metadata (favourite, albums, capture time) in a JSON sidecar; a
/// second run writes nothing and verifies what is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_round_trips_every_original_and_its_metadata() {
    use devices::*;
    use keepsake_device::Edit;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "A").await;
    let first = photo(41, 90_000);
    std::fs::write(fa.join("IMG_1.JPG"), &first).unwrap();
    std::fs::write(fa.join("IMG_2.JPG"), photo(42, 70_000)).unwrap();
    std::fs::write(fa.join("CLIP.MOV"), photo(43, 300_000)).unwrap();
    sync(&mut a).await;
    // An edit: IMG_1 gets a second version; the first must still come out with --versions.
    let mut edited = first.clone();
    edited[1000..1100].fill(7);
    std::fs::write(fa.join("IMG_1.JPG"), &edited).unwrap();
    sync(&mut a).await;
    let id = a
        .assets()
        .unwrap()
        .into_iter()
        .find(|x| x.name == "IMG_2.JPG")
        .unwrap()
        .asset_id;
    a.edit(Edit::Favorite {
        asset_id: id.clone(),
        value: true,
    })
    .unwrap();
    a.edit(Edit::PutAlbum {
        album_id: "best".into(),
        name: "Best".into(),
    })
    .unwrap();
    a.edit(Edit::AlbumMember {
        album_id: "best".into(),
        asset_id: id,
        present: true,
    })
    .unwrap();
    sync(&mut a).await;
    let out = root.path().join("export");
    let export = || {
        let run = Command::new(keepsake_binary())
            .args(["export", "--versions", "--server", &c.url])
            .args(["--account", "alice", "--password", "correct horse"])
            .arg(&out)
            .output()
            .unwrap();
        succeeded(run)
    };
    let said = export();
    assert!(said.contains("4 files written"), "{said}");
    for name in ["IMG_1.JPG", "IMG_2.JPG", "CLIP.MOV"] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(fa.join(name)).unwrap(),
            "{name} byte for byte"
        );
    }
    assert_eq!(std::fs::read(out.join("IMG_1.v1.JPG")).unwrap(), first);
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("IMG_2.JPG.json")).unwrap()).unwrap();
    assert_eq!(sidecar["favorite"], true);
    assert_eq!(sidecar["albums"], serde_json::json!(["Best"]));
    assert!(sidecar["capture_time_ms"].as_i64().is_some());
    let clip: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("CLIP.MOV.json")).unwrap()).unwrap();
    assert_eq!(clip["kind"], "video");
    let again = export();
    assert!(
        again.contains("0 files written") && again.contains("3 already there"),
        "{again}"
    );
}

/// The real server makes a thumbnail and a preview of a real JPEG after its commit, lists
/// them on the asset (readable from the store, decodable, the right size), and reports a
/// file it cannot read as failed without holding up the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_makes_previews_after_commit_and_reports_what_it_cannot() {
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    let root = tempfile::tempdir().unwrap();
    let server = start(&root.path().join("server"), "127.0.0.1:0").await;
    let cloud = CloudClient::new(
        client::connect(&server.url).await.unwrap(),
        client::BearerAuth::new(&server.token),
        ClientConfig::default(),
    );
    let folder = root.path().join("camera");
    let mut config = keepsake_device::DeviceConfig::new(
        folder.clone(),
        root.path().join("camera-data"),
        "camera".into(),
    );
    config.stable_ms = 0;
    let mut device = keepsake_device::Device::open(
        config,
        cloud.clone(),
        std::sync::Arc::new(keepsake_store::SystemClock),
    )
    .unwrap();
    let (w, h) = (3000u32, 2000u32);
    let jpeg = devices::jpeg(w, h);
    std::fs::write(folder.join("IMG_0001.JPG"), &jpeg).unwrap();
    std::fs::write(
        folder.join("BROKEN.JPG"),
        b"\xFF\xD8\xFF this is not a picture",
    )
    .unwrap();
    assert_eq!(device.sync_once().await.unwrap().uploaded, 2);
    let mut lib = cloud.clone();
    let mut settled = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while settled.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "previews never settled"
        );
        let page = lib.list_changes(0, 1000).await.unwrap();
        settled = page
            .changes
            .into_iter()
            .filter_map(|c| match c.row {
                Some(keepsake_transport_pb::change::Row::Asset(a)) if a.derivation != "queued" => {
                    Some(a)
                }
                _ => None,
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let photo = settled
        .iter()
        .find(|a| a.original_name == "IMG_0001.JPG")
        .unwrap();
    assert_eq!(photo.derivation, "done");
    assert_eq!(
        (photo.width, photo.height),
        (Some(w), Some(h)),
        "the size came from the file"
    );
    for d in &photo.derivatives {
        let manifest =
            keepsake_transport::convert::chunk_id("manifest_id", &d.manifest_id).unwrap();
        let wire = lib.get_manifest(&manifest).await.unwrap();
        let manifest = keepsake_transport::convert::WireManifest::try_from(wire)
            .unwrap()
            .0;
        let ids: Vec<ChunkId> = manifest.entries.iter().map(|e| e.chunk).collect();
        let chunks = lib.get_chunks(&ids).await.unwrap();
        let bytes: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (d.width, d.height),
            "{}",
            d.role
        );
    }
    let sizes: Vec<(&str, u32, u32)> = photo
        .derivatives
        .iter()
        .map(|d| (d.role.as_str(), d.width, d.height))
        .collect();
    assert!(
        sizes.contains(&("thumbnail", 256, 171)) && sizes.contains(&("preview", 2048, 1365)),
        "{sizes:?}"
    );
    let broken = settled
        .iter()
        .find(|a| a.original_name == "BROKEN.JPG")
        .unwrap();
    assert!(
        broken.derivation.starts_with("failed"),
        "{}",
        broken.derivation
    );
    assert!(broken.derivatives.is_empty());
}

/// Optimize Storage: a device with a budget of 10% of the library keeps previews of
/// everything and originals within the budget; an original opened on demand arrives
/// verified; only originals the cloud acknowledged are ever evicted (a photo still waiting
/// to upload stays), and the device that took the photos frees its space the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_storage_keeps_previews_of_all_and_originals_within_the_budget() {
    use devices::*;
    use keepsake_library::{MadeFile, Outcome};
    let c = bulk_cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "camera").await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "phone").await;
    let mut originals = std::collections::HashMap::new();
    const ITEMS: u64 = 500;
    for i in 0..ITEMS {
        let bytes = photo(2000 + i, 4_000);
        std::fs::write(fa.join(format!("P{i:02}.JPG")), &bytes).unwrap();
        originals.insert(blake3::hash(&bytes).to_hex().to_string(), bytes);
    }
    sync_through(&mut a).await;
    assert_eq!(a.pending_files().unwrap(), 0);
    // The server's worker, with a stand-in maker: a "preview" is the first kilobyte.
    let mut made = 0;
    loop {
        let report = c
            .cloud
            .run_derivations(100, &|_, original| {
                let keepsake_library::Original::Still(original) = original else {
                    return Outcome::NoneAvailable("stills only here".into());
                };
                Outcome::Made(vec![MadeFile {
                    role: "preview".into(),
                    bytes: original[..200].to_vec(),
                    width: 20,
                    height: 10,
                }])
            })
            .unwrap();
        if report.done == 0 {
            break;
        }
        made += report.done;
    }
    assert_eq!(made, ITEMS as usize);
    // 10% of the library.
    let budget = ITEMS * 4_000 / 10;
    b.set_optimize(Some(budget));
    let r = sync_through(&mut b).await;
    let (held, previews, cloud_only) = b.storage().unwrap();
    assert!(
        held <= budget,
        "{held} bytes of originals over a {budget} budget"
    );
    assert_eq!(r.previews, ITEMS as usize, "a preview of every photo");
    assert_eq!(previews, ITEMS * 200);
    assert_eq!(cloud_only + r.downloaded as u64, ITEMS);
    assert!(r.kept_in_cloud as u64 >= ITEMS * 9 / 10, "{r:?}");
    // Open one that is in the cloud only: it arrives whole and verified.
    let asset = b
        .assets()
        .unwrap()
        .into_iter()
        .find(|x| b.preview_path(&x.asset_id).is_some() && !fb.join(&x.name).exists())
        .unwrap();
    let path = b.fetch_original(&asset.asset_id).await.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        &originals[&blake3::hash(&bytes).to_hex().to_string()],
        &bytes
    );
    // A photo taken on B and not yet uploaded (B is offline) is never evicted.
    let waiting = photo(9999, 50_000); // bigger than the whole budget: it stays all the same
    std::fs::write(fb.join("NEW.JPG"), &waiting).unwrap();
    let mut offline = keepsake_policy::Snapshot {
        account: Some("alice".into()),
        ..keepsake_policy::Snapshot::example()
    };
    offline.network = Some(keepsake_policy::Network::Offline);
    b.set_conditions(Some(offline));
    sync_through(&mut b).await;
    assert_eq!(std::fs::read(fb.join("NEW.JPG")).unwrap(), waiting);
    assert!(path.exists(), "the one just opened is the newest: kept");
    assert!(b.storage().unwrap().0 <= budget);
    // Opened through DeviceControl: asked for, fetched by the agent's next pass, answered.
    let (wake, _woken) = tokio::sync::mpsc::unbounded_channel();
    let control = std::sync::Arc::new(
        keepsake_device::FolderControl::open(
            b.config(),
            root.path().join("b-control"),
            std::sync::Arc::new(keepsake_store::SystemClock),
            wake,
        )
        .unwrap(),
    );
    let wanted = b
        .assets()
        .unwrap()
        .into_iter()
        .find(|x| !fb.join(&x.name).exists())
        .unwrap()
        .asset_id;
    assert_eq!(
        control.open_original(&wanted).unwrap(),
        None,
        "not here yet"
    );
    // What `keepsake open` does: a control without a folder of its own, beside the agent.
    let (cli_wake, _) = tokio::sync::mpsc::unbounded_channel();
    let mut bare = b.config().clone();
    bare.folder = PathBuf::new();
    let cli = keepsake_device::FolderControl::open(
        &bare,
        root.path().join("b-control"),
        std::sync::Arc::new(keepsake_store::SystemClock),
        cli_wake,
    )
    .unwrap();
    b.set_conditions(None);
    sync_through(&mut b).await;
    control.control_secret().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keepsake_transport::serve_device(
        listener,
        control.clone(),
        std::future::pending(),
    ));
    let mut remote =
        client::control_client(client::connect(&url).await.unwrap(), control.data_dir()).unwrap();
    let placed = remote
        .fetch_original(keepsake_transport_pb::FetchOriginalRequest {
            asset_id: wanted.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .path;
    let bytes = std::fs::read(&placed).unwrap();
    assert_eq!(
        &originals[&blake3::hash(&bytes).to_hex().to_string()],
        &bytes
    );
    // Regression: `keepsake open` printed a path relative to nothing.
    let from_cli = cli.open_original(&wanted).unwrap().unwrap();
    assert!(
        from_cli.is_absolute() && from_cli.exists(),
        "{}",
        from_cli.display()
    );
    // The camera frees its own space once the cloud holds its photos.
    a.set_optimize(Some(budget));
    let freed = sync_through(&mut a).await;
    assert!(freed.evicted as u64 >= ITEMS * 9 / 10 - 1, "{freed:?}");
    assert!(a.storage().unwrap().0 <= budget);
    assert_eq!(a.pending_files().unwrap(), 0);
    let live = c
        .cloud
        .library()
        .list_changes("alice", 0, 1000)
        .unwrap()
        .changes
        .len();
    // All are still in the library, and B's new photo went up once B was back online.
    assert_eq!(live as u64, ITEMS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bits_are_found_by_scrub_never_served_and_the_device_that_has_the_photo_resends_it()
{
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone A").await;
    let photos: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("IMG_{i:04}.JPG"), photo(900 + i, 700_000)))
        .collect();
    for (name, data) in &photos {
        std::fs::write(fa.join(name), data).unwrap();
    }
    assert_eq!(sync(&mut a).await.uploaded, 4);

    // One bit flipped in the middle of every stored pack: what a failing disk does.
    let mut flipped = 0;
    for path in files_under(&c.store_dir.join("objects")) {
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        flipped += 1;
    }
    assert!(flipped > 0);
    let scrub = c.cloud.scrub().unwrap();
    assert!(!scrub.store.corrupt_chunks.is_empty(), "{scrub:?}");
    assert!(!scrub.damaged.is_empty(), "{scrub:?}");
    assert_eq!(scrub.assets_verified, 4);
    // Never served: the corrupt chunks are gone from the index.
    for id in &scrub.store.corrupt_chunks {
        assert!(c.store.get_chunk("alice", id).is_err());
    }
    // A device joining now gets every whole photo and no corrupt byte: the damaged ones
    // cannot be assembled, so they wait (never written half or wrong). Its pass succeeds:
    // until 2026-11-27 the first damaged photo failed it, every pass, and stopped the feed
    // there — a photo taken after it never reached B.
    let later = photo(999, 200_000);
    let fc = root.path().join("C");
    let mut camera = device(&c, &fc, &root.path().join("c-data"), "camera C").await;
    std::fs::write(fc.join("IMG_LATER.JPG"), &later).unwrap();
    let taken = sync(&mut camera).await;
    assert_eq!(
        (taken.uploaded, taken.damaged_waiting),
        (1, scrub.damaged.len()),
        "{taken:?}"
    );
    let mut b = device(&c, &fb, &root.path().join("b-data"), "phone B").await;
    let waiting = sync(&mut b).await;
    assert_eq!(waiting.damaged_waiting, scrub.damaged.len(), "{waiting:?}");
    assert_eq!(
        waiting.downloaded,
        photos.len() + 1 - scrub.damaged.len(),
        "{waiting:?}"
    );
    assert_eq!(std::fs::read(fb.join("IMG_LATER.JPG")).unwrap(), later);
    // The feed has moved past them; the device still says what it waits for.
    assert_eq!(sync(&mut b).await.damaged_waiting, 0);
    assert_eq!(b.damaged_waiting(), scrub.damaged.len() as u64);
    // And still after a restart: the journal keeps what is waited for.
    let mut b = restart(&c, b).await;
    assert_eq!(b.damaged_waiting(), scrub.damaged.len() as u64);
    for name in folder_contents(&fb) {
        assert!(
            photos
                .iter()
                .chain([&("".to_string(), later.clone())])
                .any(|(_, d)| blake3::hash(d).to_hex().to_string() == name),
            "B holds a file no camera took"
        );
    }

    // Phone A still has the originals: it sees the flags and sends them again.
    let repaired = sync(&mut a).await;
    assert_eq!(repaired.repairs, scrub.damaged.len(), "{repaired:?}");
    let again = c.cloud.scrub().unwrap();
    assert!(again.store.corrupt_chunks.is_empty(), "{again:?}");
    assert!(again.damaged.is_empty(), "{again:?}");
    let feed = c.cloud.library().list_changes("alice", 0, 100).unwrap();
    for change in feed.changes {
        if let keepsake_library::Change::Asset(asset) = change {
            assert!(!asset.damaged, "{} is still flagged", asset.asset_id);
            assert_eq!(asset.version, 1, "a repair is no new version");
        }
    }
    // Now B completes, byte for byte: the repairs came to it through the feed.
    let completed = sync(&mut b).await;
    assert_eq!(
        (completed.downloaded, completed.damaged_waiting),
        (scrub.damaged.len(), 0),
        "{completed:?}"
    );
    assert_eq!(b.damaged_waiting(), 0);
    sync(&mut a).await;
    assert_eq!(folder_contents(&fa), folder_contents(&fb));
}

/// An edit whose previous version lost a chunk to a failing disk: the device asks the cloud
/// only about the chunks the old version lacks, so the manifest naming the lost chunk is
/// what finds it; that chunk goes again from the edited file and the edit lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_over_a_version_that_lost_a_chunk_sends_that_chunk_and_lands() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "A").await;
    let original = photo(31, 3_000_000);
    std::fs::write(fa.join("IMG_0031.JPG"), &original).unwrap();
    sync(&mut a).await;
    sync(&mut a).await; // its own version comes back: the edit's base
    // One bit flipped in the middle of the photo's data pack (manifests live in small packs
    // of their own and stay whole): a chunk the edit does not touch is lost.
    let mut flipped = 0;
    for path in files_under(&c.store_dir.join("objects")) {
        let mut bytes = std::fs::read(&path).unwrap();
        if bytes.len() > 1_000_000 {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x10;
            std::fs::write(&path, bytes).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1);
    let scrub = c.cloud.scrub().unwrap();
    assert_eq!(scrub.store.corrupt_chunks.len(), 1, "{scrub:?}");
    let mut edited = original.clone();
    edited[100..119].copy_from_slice(b"2025:01:11 08:30:00");
    std::fs::write(fa.join("IMG_0031.JPG"), &edited).unwrap();
    let r = sync_through(&mut a).await;
    assert_eq!(r.uploaded, 1, "{r:?}");
    let again = c.cloud.scrub().unwrap();
    assert!(again.store.corrupt_chunks.is_empty(), "{again:?}");
    let mut b = device(&c, &fb, &root.path().join("b-data"), "B").await;
    sync(&mut b).await;
    assert_eq!(std::fs::read(fb.join("IMG_0031.JPG")).unwrap(), edited);
}

/// Regression (found by the simulation once people could edit photos in place): a photo
/// edited on one device while another deleted it was refused as a new version on every
/// pass — the device said ASSET_NOT_LIVE for good and the edit never reached the library.
/// The edit is now kept as a photo of its own; the original stays in Recently Deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_edited_here_while_deleted_elsewhere_is_kept_as_a_new_photo() {
    use devices::*;
    use keepsake_device::Edit;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "A").await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "B").await;
    let original = photo(41, 400_000);
    std::fs::write(fa.join("IMG_0041.JPG"), &original).unwrap();
    sync(&mut a).await;
    sync(&mut a).await;
    sync(&mut b).await;
    let asset_id = b.assets().unwrap()[0].asset_id.clone();
    b.edit(Edit::Trash {
        asset_id: asset_id.clone(),
        alone: false,
    })
    .unwrap();
    sync(&mut b).await;
    let mut edited = original.clone();
    edited[100..119].copy_from_slice(b"2025:01:11 08:30:00");
    std::fs::write(fa.join("IMG_0041.JPG"), &edited).unwrap();
    let first = sync(&mut a).await;
    assert_eq!(first.kept_apart, 1, "{first:?}");
    assert_eq!(first.blocked, None, "{first:?}");
    let second = sync(&mut a).await;
    assert_eq!(second.uploaded, 1, "{second:?}");
    assert_eq!(a.pending_files().unwrap(), 0);
    let library: Vec<_> = c
        .cloud
        .library()
        .list_changes("alice", 0, 100)
        .unwrap()
        .changes
        .into_iter()
        .filter_map(|ch| match ch {
            keepsake_library::Change::Asset(a) => Some(a),
            _ => None,
        })
        .collect();
    let edited_hash = keepsake_store::ChunkId::of(&edited);
    let kept = library
        .iter()
        .find(|x| x.file_hash == edited_hash)
        .expect("the edit is in the library");
    assert_eq!(kept.state, keepsake_library::AssetState::Live);
    assert_ne!(kept.asset_id, asset_id);
    let trashed = library.iter().find(|x| x.asset_id == asset_id).unwrap();
    assert!(matches!(
        trashed.state,
        keepsake_library::AssetState::Trashed(_)
    ));
    sync(&mut b).await;
    assert_eq!(folder_contents(&fb), folder_contents(&fa));
}

/// Regression (found by the simulation with edits in place): a photo a person edited and
/// then deleted before the edit synced was dropped from the device's journal without a
/// word to the cloud — every other device kept it, this one lost it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_photo_with_an_unsent_edit_deletes_it_everywhere() {
    use devices::*;
    use keepsake_policy::{Network, Snapshot};
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "A").await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "B").await;
    let original = photo(51, 300_000);
    std::fs::write(fa.join("IMG_0051.JPG"), &original).unwrap();
    sync(&mut a).await;
    sync(&mut a).await;
    sync(&mut b).await;
    assert_eq!(folder_contents(&fb).len(), 1);
    // Offline, A's pass only scans: the edit is known, not sent.
    let healthy = Snapshot {
        account: Some("alice".into()),
        ..Snapshot::example()
    };
    let mut offline = healthy.clone();
    offline.network = Some(Network::Offline);
    a.set_conditions(Some(offline));
    let mut edited = original.clone();
    edited[100..119].copy_from_slice(b"2025:01:11 08:30:00");
    std::fs::write(fa.join("IMG_0051.JPG"), &edited).unwrap();
    assert_eq!(sync(&mut a).await.blocked.as_deref(), Some("OFFLINE"));
    std::fs::remove_file(fa.join("IMG_0051.JPG")).unwrap();
    a.set_conditions(Some(healthy));
    let r = sync(&mut a).await;
    assert_eq!(r.trashed_remotely, 1, "{r:?}");
    assert_eq!(sync(&mut b).await.trashed_here, 1);
    assert!(folder_contents(&fb).is_empty());
    assert!(b.assets().unwrap().iter().all(|x| x.trashed));
}

/// One file the device cannot read — a name that is not UTF-8 (copied from an old
/// camera), or bytes the disk no longer gives back — failed the scan, so every pass
/// failed and no other photo synced. Such a file is now left out and named, with why and
/// what fixes it, and everything else syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_device_cannot_read_is_named_and_the_rest_still_syncs() {
    use devices::*;
    use std::os::unix::ffi::OsStrExt;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone").await;
    std::fs::write(fa.join("IMG_0001.JPG"), photo(900, 100_000)).unwrap();
    let latin1 = std::ffi::OsStr::from_bytes(b"Caf\xe9.jpg");
    std::fs::write(fa.join(latin1), photo(901, 100_000)).unwrap();
    // A link is not followed (it could lead out of the folder, or in a circle), but said.
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, fa.join("Card")).unwrap();
    let r = sync(&mut a).await;
    assert_eq!(r.uploaded, 1, "{r:?}");
    let mut said: Vec<(&str, &str)> = r
        .skipped
        .iter()
        .map(|f| (f.path.as_str(), f.reason.as_str()))
        .collect();
    said.sort();
    assert_eq!(
        said,
        [
            ("Caf\u{FFFD}.jpg", "NAME_NOT_UTF8"),
            ("Card", "SYMLINK_NOT_FOLLOWED")
        ],
        "{r:?}"
    );
    for f in &r.skipped {
        let fix = if f.reason == "NAME_NOT_UTF8" {
            "rename it"
        } else {
            "move or copy"
        };
        assert!(f.message.contains(fix), "{f:?}");
    }
    // Said again on every pass until it is fixed; then it syncs like any other.
    assert_eq!(sync(&mut a).await.skipped, r.skipped);
    std::fs::rename(fa.join(latin1), fa.join("Café.jpg")).unwrap();
    std::fs::remove_file(fa.join("Card")).unwrap();
    let fixed = sync(&mut a).await;
    assert_eq!((fixed.uploaded, fixed.skipped.len()), (1, 0), "{fixed:?}");
    let fb = root.path().join("B");
    let mut b = device(&c, &fb, &root.path().join("b-data"), "tablet").await;
    assert_eq!(sync(&mut b).await.downloaded, 2);
    assert_eq!(folder_contents(&fa), folder_contents(&fb));
}

/// A photo named `12:30.jpg` on one device is written as `12_30.jpg` on a device whose
/// folder is an exFAT memory card, which refuses the colon (the download failed there on
/// every pass), and as written everywhere else. The library keeps the original name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_named_with_a_colon_arrives_under_a_name_a_memory_card_accepts() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "laptop").await;
    std::fs::write(fa.join("12:30 lunch?.jpg"), photo(950, 50_000)).unwrap();
    assert_eq!(sync(&mut a).await.uploaded, 1);
    let mut b = device_with(&c, &fb, &root.path().join("b-data"), "camera card", |cfg| {
        cfg.fs = keepsake_device::FsRules::memory_card();
    })
    .await;
    assert_eq!(sync(&mut b).await.downloaded, 1);
    assert!(fb.join("12_30 lunch_.jpg").exists());
    let fc = root.path().join("C");
    let mut laptop = device(&c, &fc, &root.path().join("c-data"), "laptop 2").await;
    assert_eq!(sync(&mut laptop).await.downloaded, 1);
    assert!(
        fc.join("12:30 lunch?.jpg").exists(),
        "ext4 takes the name as written"
    );
    assert_eq!(folder_contents(&fa), folder_contents(&fb));
    let page = c.cloud.library().list_changes("alice", 0, 10).unwrap();
    assert!(page.changes.iter().any(|ch| matches!(
        ch,
        keepsake_library::Change::Asset(x) if x.original_name == "12:30 lunch?.jpg"
    )));
}

/// A photo edited on one device while another purged it for good: the edit is kept as a
/// photo of its own, as for a photo only trashed, and nothing blocks the passes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_edited_here_while_purged_elsewhere_is_kept_and_sync_goes_on() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "A").await;
    let original = photo(960, 300_000);
    std::fs::write(fa.join("IMG_0960.JPG"), &original).unwrap();
    assert_eq!(sync(&mut a).await.uploaded, 1);
    let mut b = device(&c, &fb, &root.path().join("b-data"), "B").await;
    assert_eq!(sync(&mut b).await.downloaded, 1);
    let asset_id = c
        .cloud
        .library()
        .find_by_content("alice", &[ChunkId::of(&original)])
        .unwrap()[0]
        .assets[0]
        .asset_id
        .clone();
    c.cloud.purge("alice", &asset_id).unwrap();
    let mut edited = original.clone();
    edited[10..20].copy_from_slice(b"edited on ");
    std::fs::write(fb.join("IMG_0960.JPG"), &edited).unwrap();
    let first = sync_through(&mut b).await;
    assert_eq!(first.blocked, None, "{first:?}");
    let second = sync_through(&mut b).await;
    assert_eq!(second.blocked, None, "{second:?}");
    assert_eq!(first.uploaded + second.uploaded, 1, "{first:?} {second:?}");
    sync(&mut a).await;
    assert_eq!(std::fs::read(fb.join("IMG_0960.JPG")).unwrap(), edited);
    assert_eq!(folder_contents(&fa), folder_contents(&fb));
}

/// Two agents started on one data directory (a service and a manual run) each downloaded
/// every new photo into the folder: " (2)" twins of everything. The second now refuses to
/// start and says why; once the first stops, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_data_directory_refuses_to_start() {
    use devices::*;
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (folder, data) = (root.path().join("A"), root.path().join("a-data"));
    let first = device(&c, &folder, &data, "service").await;
    let (client, _) = enrolled_client(&c, &c.url, "manual run").await;
    let config = first.config().clone();
    let second = keepsake_device::Device::open(
        config.clone(),
        client.clone(),
        std::sync::Arc::new(keepsake_store::SystemClock),
    );
    match second {
        Err(e @ keepsake_device::DeviceError::AlreadyRunning(_)) => {
            assert!(e.to_string().contains("stop it first"), "{e}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("two agents on one data directory"),
    }
    drop(first);
    keepsake_device::Device::open(
        config,
        client,
        std::sync::Arc::new(keepsake_store::SystemClock),
    )
    .unwrap();
}

/// What README promises `keepsake status` and `keepsake doctor` say: the files an agent
/// left out, each with its fix, and the photos it waits for.
#[test]
fn status_and_doctor_name_the_files_left_out_and_the_photos_waited_for() {
    let data = tempfile::tempdir().unwrap();
    let status = keepsake_device::AgentStatus {
        skipped: vec![keepsake_device::SkippedFile {
            path: "Card".into(),
            reason: "SYMLINK_NOT_FOLLOWED".into(),
            message: "move or copy the photos in".into(),
        }],
        damaged_waiting: 2,
        ..Default::default()
    };
    std::fs::write(
        data.path().join("status.json"),
        serde_json::to_vec(&status).unwrap(),
    )
    .unwrap();
    let said = succeeded(
        Command::new(keepsake_binary())
            .args(["status", "--data"])
            .arg(data.path())
            .output()
            .unwrap(),
    );
    assert!(
        said.contains("1 file left out of sync:")
            && said.contains("Card: move or copy the photos in [SYMLINK_NOT_FOLLOWED]")
            && said.contains("2 photos are damaged in the cloud"),
        "{said}"
    );
    // Nothing listens there: the doctor says so and still reads the agent's status.
    let doctor = Command::new(keepsake_binary())
        .args([
            "doctor",
            "--json",
            "--server",
            "http://127.0.0.1:9",
            "--library",
        ])
        .arg(data.path())
        .arg("--device-data")
        .arg(data.path())
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_eq!(
        json["skipped_files"][0]["reason"], "SYMLINK_NOT_FOLLOWED",
        "{json}"
    );
    assert_eq!(json["damaged_waiting"], 2, "{json}");
}

#[path = "e2e/fleet.rs"]
mod fleet;
#[path = "e2e/hardening.rs"]
mod hardening;
#[path = "e2e/imports.rs"]
mod imports;
#[path = "e2e/integrity.rs"]
mod integrity;
#[path = "e2e/pairs.rs"]
mod pairs;
#[path = "e2e/running.rs"]
mod running;
#[path = "e2e/web.rs"]
mod web;

// ---- A camera roll as people have them: twins, folders, odd names, renames ----

mod camera_roll {
    use super::devices::*;
    use keepsake_device::{Device, Edit, FsRules};
    use keepsake_library::{Asset, AssetState, Change};
    use keepsake_transport::cloud_client::CloudClient;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// A roll of 24 files as a new user's camera roll and downloads folder have them:
    /// copies under other names, case and Unicode siblings, spaces at either end, emoji,
    /// the same name in two folders, deep folders. Bytes repeat on purpose.
    pub fn roll() -> Vec<(String, Vec<u8>)> {
        let p = |seed| photo(seed, 40_000 + (seed as usize % 7) * 3_001);
        vec![
            ("IMG_0001.JPG".into(), p(1)),
            ("copy of IMG_0001.JPG".into(), p(1)),
            ("IMG_0002.JPG".into(), p(2)),
            ("img_0002.jpg".into(), p(2)),
            ("😀 party.heic".into(), p(3)),
            ("party again 🎉.heic".into(), p(3)),
            (" leading space.jpg".into(), p(4)),
            ("trailing space .jpg".into(), p(5)),
            ("Caf\u{e9}.jpg".into(), p(6)),
            ("Cafe\u{301}.jpg".into(), p(7)),
            ("a/dup.jpg".into(), p(8)),
            ("b/dup.jpg".into(), p(8)),
            ("IMG_0003.JPG".into(), p(9)),
            ("sub/IMG_0003.JPG".into(), p(10)),
            ("deep/a/b/c/d/e/nested.jpg".into(), p(2)),
            ("IMG_0009.JPG".into(), p(11)),
            ("IMG_0009 copy.JPG".into(), p(11)),
            ("IMG_0016.JPG".into(), p(12)),
            ("IMG_0017.JPG".into(), p(13)),
            ("2024/summer/IMG_0100.JPG".into(), p(14)),
            ("2024/summer/IMG_0101.JPG".into(), p(15)),
            ("2024/summer/IMG_0102.JPG".into(), p(16)),
            ("VID_0001.MOV".into(), p(17)),
            ("12:30 lunch.jpg".into(), p(18)),
        ]
    }

    pub fn write_roll(folder: &Path, roll: &[(String, Vec<u8>)]) {
        for (path, bytes) in roll {
            let at = folder.join(path);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(at, bytes).unwrap();
        }
    }

    /// Every file under `dir` by relative path, with its whole-file hash.
    pub fn tree(dir: &Path) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".keepsake") {
                    continue;
                }
                let path = e.path();
                if e.file_type().unwrap().is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    let hash = blake3::hash(&std::fs::read(&path).unwrap())
                        .to_hex()
                        .to_string();
                    out.insert(rel, hash);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    /// The library's live assets by path, with their content hash.
    pub fn library_tree(c: &Cloudy) -> BTreeMap<String, String> {
        live(c)
            .into_iter()
            .map(|a| {
                (
                    a.path,
                    blake3::Hash::from_bytes(a.file_hash.0).to_hex().to_string(),
                )
            })
            .collect()
    }

    pub fn live(c: &Cloudy) -> Vec<Asset> {
        assets(c)
            .into_iter()
            .filter(|a| a.state == AssetState::Live)
            .collect()
    }

    pub fn assets(c: &Cloudy) -> Vec<Asset> {
        let page = c.cloud.library().list_changes("alice", 0, 1000).unwrap();
        page.changes
            .into_iter()
            .filter_map(|ch| match ch {
                Change::Asset(a) => Some(a),
                Change::Album(_) => None,
            })
            .collect()
    }

    pub fn id_at(c: &Cloudy, path: &str) -> String {
        live(c)
            .into_iter()
            .find(|a| a.path == path)
            .unwrap_or_else(|| panic!("no live asset at {path}"))
            .asset_id
    }

    /// A and B, A holding the roll and both synced.
    pub async fn two_devices(
        c: &Cloudy,
        root: &Path,
    ) -> (Device<CloudClient>, Device<CloudClient>) {
        let (fa, fb) = (root.join("A"), root.join("B"));
        std::fs::create_dir_all(&fa).unwrap();
        write_roll(&fa, &roll());
        let mut a = device(c, &fa, &root.join("a-data"), "phone A").await;
        let mut b = device(c, &fb, &root.join("b-data"), "phone B").await;
        sync(&mut a).await;
        sync(&mut b).await;
        (a, b)
    }

    /// Broke once: 8 of 37 files with another file's bytes never reached the cloud or
    /// the other device ("8 already in the cloud"), the rest arrived flattened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_with_the_same_bytes_folders_and_odd_names_all_reach_an_empty_device() {
        let root = tempfile::tempdir().unwrap();
        let c = cloud().await;
        let (fa, fb) = (root.path().join("A"), root.path().join("B"));
        std::fs::create_dir_all(&fa).unwrap();
        let roll = roll();
        write_roll(&fa, &roll);
        let mut a = device(&c, &fa, &root.path().join("a-data"), "phone A").await;
        let up = sync(&mut a).await;
        assert_eq!((up.uploaded, up.linked), (roll.len(), 0), "{up:?}");
        // Twins are assets of their own, but their bytes went once.
        let distinct: std::collections::HashSet<&Vec<u8>> = roll.iter().map(|(_, b)| b).collect();
        let distinct_bytes: u64 = distinct.iter().map(|b| b.len() as u64).sum();
        assert!(
            up.bytes_sent <= distinct_bytes,
            "{} > {distinct_bytes}",
            up.bytes_sent
        );
        let library = library_tree(&c);
        assert_eq!(library.len(), roll.len(), "{library:#?}");
        // The later of two names a case-insensitive file system takes for one is numbered
        // in the library, and A was told; A's own files keep their names.
        let numbered: Vec<&str> = up.numbered.iter().map(|(_, lib)| lib.as_str()).collect();
        assert_eq!(numbered.len(), 2, "{:?}", up.numbered);
        assert!(numbered.iter().all(|p| p.contains(" (2).")), "{numbered:?}");
        let written: BTreeMap<String, String> = roll
            .iter()
            .map(|(p, b)| (p.clone(), blake3::hash(b).to_hex().to_string()))
            .collect();
        assert_eq!(tree(&fa), written, "A's folder was changed by its own sync");

        let mut b = device(&c, &fb, &root.path().join("b-data"), "phone B").await;
        let down = sync(&mut b).await;
        assert_eq!(down.downloaded, roll.len(), "{down:?}");
        // B holds exactly the library: every path, folder and exact name (spaces, emoji,
        // colon on this file system), every byte.
        assert_eq!(tree(&fb), library);
        assert!(fb.join(" leading space.jpg").is_file());
        assert!(fb.join("deep/a/b/c/d/e/nested.jpg").is_file());
        assert!(fb.join("a/dup.jpg").is_file() && fb.join("b/dup.jpg").is_file());
        assert!(fb.join("sub/IMG_0003.JPG").is_file() && fb.join("IMG_0003.JPG").is_file());
        // A second pass on either side does nothing.
        assert_eq!(sync(&mut a).await, Default::default());
        assert_eq!(sync(&mut b).await, Default::default());
    }

    /// Broke once: purging IMG_0001.JPG on B removed "copy of IMG_0001.JPG" from A's folder
    /// — a file nobody deleted, not even in A's Recently Deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purging_one_of_two_twins_leaves_the_other_on_every_device() {
        let root = tempfile::tempdir().unwrap();
        let c = cloud().await;
        let (mut a, mut b) = two_devices(&c, root.path()).await;
        let original = id_at(&c, "IMG_0001.JPG");
        b.edit(Edit::Trash {
            asset_id: original.clone(),
            alone: false,
        })
        .unwrap();
        sync(&mut b).await;
        c.cloud.purge("alice", &original).unwrap();
        sync(&mut a).await;
        sync(&mut b).await;
        let (fa, fb) = (root.path().join("A"), root.path().join("B"));
        assert!(!fa.join("IMG_0001.JPG").exists() && !fb.join("IMG_0001.JPG").exists());
        for folder in [&fa, &fb] {
            assert_eq!(
                std::fs::read(folder.join("copy of IMG_0001.JPG")).unwrap(),
                roll()[1].1
            );
        }
        assert!(library_tree(&c).contains_key("copy of IMG_0001.JPG"));
        // Trash expiry takes the same path as a purge; a new copy of purged bytes is a
        // new photo, not a resurrection.
        std::fs::write(fa.join("IMG_0001 again.JPG"), &roll()[0].1).unwrap();
        let again = sync(&mut a).await;
        assert_eq!((again.uploaded, again.not_resurrected), (1, 0), "{again:?}");
    }

    /// Broke once: `rm IMG_0009.JPG` on A while "IMG_0009 copy.JPG" had the same bytes
    /// left B's IMG_0009.JPG live (the delete was taken for a move to the copy).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_one_twin_deletes_that_photo_everywhere_and_only_it() {
        let root = tempfile::tempdir().unwrap();
        let c = cloud().await;
        let (mut a, mut b) = two_devices(&c, root.path()).await;
        let (fa, fb) = (root.path().join("A"), root.path().join("B"));
        std::fs::remove_file(fa.join("IMG_0009.JPG")).unwrap();
        assert_eq!(sync(&mut a).await.trashed_remotely, 1);
        assert_eq!(sync(&mut b).await.trashed_here, 1);
        assert!(!fb.join("IMG_0009.JPG").exists());
        assert!(fb.join("IMG_0009 copy.JPG").is_file());
        assert!(!library_tree(&c).contains_key("IMG_0009.JPG"));
        // Moving a file out of the folder is a delete; bringing it back to its old path
        // while it is in Recently Deleted restores that photo, on every device.
        std::fs::write(fa.join("IMG_0009.JPG"), &roll()[15].1).unwrap();
        let back = sync(&mut a).await;
        assert_eq!((back.restored_by_return, back.uploaded), (1, 0), "{back:?}");
        assert_eq!(sync(&mut b).await.restored, 1);
        assert!(fb.join("IMG_0009.JPG").is_file());
        assert_eq!(live(&c).len(), roll().len());
    }

    /// Broke once: `mv IMG_0016.JPG renamed16.jpg` and a move into `trip/` on A left B
    /// with the old names.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renames_and_moves_reach_every_device_and_send_no_byte() {
        let root = tempfile::tempdir().unwrap();
        let c = cloud().await;
        let (mut a, mut b) = two_devices(&c, root.path()).await;
        let (fa, fb) = (root.path().join("A"), root.path().join("B"));
        let before = assets(&c).len();
        std::fs::rename(fa.join("IMG_0016.JPG"), fa.join("renamed16.jpg")).unwrap();
        std::fs::create_dir_all(fa.join("trip")).unwrap();
        std::fs::rename(fa.join("IMG_0017.JPG"), fa.join("trip/IMG_0017.JPG")).unwrap();
        // A whole folder renamed: each photo in it moves.
        std::fs::rename(fa.join("2024/summer"), fa.join("2024/Summer in Rome")).unwrap();
        let moved = sync(&mut a).await;
        assert_eq!(
            (
                moved.uploaded,
                moved.bytes_sent,
                moved.trashed_remotely,
                moved.renames_sent
            ),
            (0, 0, 0, 5),
            "{moved:?}"
        );
        let seen = sync(&mut b).await;
        assert_eq!(
            (seen.renamed_here, seen.downloaded, seen.bytes_received),
            (5, 0, 0),
            "{seen:?}"
        );
        assert!(fb.join("renamed16.jpg").is_file() && !fb.join("IMG_0016.JPG").exists());
        assert!(fb.join("trip/IMG_0017.JPG").is_file());
        assert!(fb.join("2024/Summer in Rome/IMG_0101.JPG").is_file());
        assert!(
            !fb.join("2024/summer").exists(),
            "the emptied folder stays behind"
        );
        assert_eq!(
            assets(&c).len(),
            before,
            "a rename made or dropped an asset"
        );
        assert_eq!(tree(&fb), library_tree(&c));
        // A rename made on B travels back the same way.
        std::fs::rename(fb.join("renamed16.jpg"), fb.join("trip/sixteen.jpg")).unwrap();
        assert_eq!(sync(&mut b).await.renames_sent, 1);
        assert_eq!(sync(&mut a).await.renamed_here, 1);
        assert!(fa.join("trip/sixteen.jpg").is_file());
    }

    /// A folder on a memory card (or macOS, or Windows) takes `Café` written two ways,
    /// or `IMG.JPG` and `img.jpg`, for one name: the library numbered the later, so such a
    /// device holds both photos, and a name the card refuses (`12:30`) is changed there
    /// only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_folding_file_system_holds_every_sibling_under_its_own_name() {
        let root = tempfile::tempdir().unwrap();
        let c = cloud().await;
        let fa = root.path().join("A");
        std::fs::create_dir_all(&fa).unwrap();
        write_roll(&fa, &roll());
        let mut a = device(&c, &fa, &root.path().join("a-data"), "phone A").await;
        sync(&mut a).await;
        let card = root.path().join("card");
        let mut b = device_with(&c, &card, &root.path().join("card-data"), "camera", |cfg| {
            cfg.fs = FsRules::memory_card();
        })
        .await;
        let down = sync(&mut b).await;
        assert_eq!(down.downloaded, roll().len(), "{down:?}");
        let on_card = tree(&card);
        assert_eq!(on_card.len(), roll().len());
        let keys: std::collections::HashSet<String> =
            on_card.keys().map(|p| keepsake_path::fold(p)).collect();
        assert_eq!(
            keys.len(),
            on_card.len(),
            "two names one file on a card: {on_card:#?}"
        );
        assert!(card.join("12_30 lunch.jpg").is_file());
        assert_eq!(sync(&mut b).await, Default::default());
    }

    /// A path with `..` (or absolute, or with a backslash) from a hostile client is refused
    /// by the server, and nothing is written outside any folder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hostile_path_is_refused_and_writes_nothing() {
        use keepsake_transport::client::pb as wire;
        let root = tempfile::tempdir().unwrap();
        let c = cloud().await;
        let (mut a, mut b) = two_devices(&c, root.path()).await;
        let enrolled = c
            .cloud
            .enroll_device("alice", "correct horse", "mallory", "linux", "99.0.0")
            .unwrap();
        let channel = keepsake_transport::client::connect(&c.url).await.unwrap();
        let mut library = keepsake_transport::client::library_client(
            channel,
            keepsake_transport::client::BearerAuth::new(&enrolled.access.token),
        );
        let target = id_at(&c, "IMG_0002.JPG");
        for evil in [
            "../escaped.jpg",
            "/tmp/escaped.jpg",
            "a/../../escaped.jpg",
            "a\\..\\x.jpg",
            ".keepsake-library",
            "x\u{202e}gpj.exe",
        ] {
            let renamed = library
                .rename_asset(wire::RenameAssetRequest {
                    asset_id: target.clone(),
                    path: evil.into(),
                    clock: Some(wire::Clock {
                        wall_ms: 1,
                        counter: 0,
                        device: "mallory".into(),
                    }),
                })
                .await;
            assert_eq!(
                renamed.unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{evil:?} was accepted"
            );
            let committed = library
                .commit_asset(wire::CommitAssetRequest {
                    request_id: format!("evil {evil}"),
                    manifest_id: vec![0u8; 32].into(),
                    kind: wire::AssetKind::Photo.into(),
                    original_name: "x.jpg".into(),
                    path: evil.into(),
                    ..Default::default()
                })
                .await;
            assert_eq!(
                committed.unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{evil:?}"
            );
        }
        sync(&mut a).await;
        sync(&mut b).await;
        assert!(!root.path().join("escaped.jpg").exists());
        assert_eq!(tree(&root.path().join("B")), library_tree(&c));
    }

    /// Litter no one means to keep (`.DS_Store`, `Thumbs.db`, `._IMG`, partial downloads)
    /// and what `.keepsakeignore` names stay out of the library, and status lists them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn litter_and_ignored_files_stay_out_and_are_listed() {
        let root = tempfile::tempdir().unwrap();
        let c = cloud().await;
        let fa = root.path().join("A");
        std::fs::create_dir_all(fa.join("drafts")).unwrap();
        for name in [
            ".DS_Store",
            "Thumbs.db",
            "._IMG_0001.JPG",
            "video.mp4.part",
            "drafts/x.jpg",
            "edit.psd",
        ] {
            std::fs::write(fa.join(name), b"litter").unwrap();
        }
        std::fs::write(fa.join(".keepsakeignore"), "drafts/\n*.psd\n").unwrap();
        std::fs::write(fa.join("IMG_0001.JPG"), photo(1, 30_000)).unwrap();
        let mut a = device(&c, &fa, &root.path().join("a-data"), "phone A").await;
        let up = sync(&mut a).await;
        assert_eq!(up.uploaded, 1, "{up:?}");
        assert_eq!(
            library_tree(&c).keys().collect::<Vec<_>>(),
            ["IMG_0001.JPG"]
        );
        for name in [
            ".DS_Store",
            "Thumbs.db",
            "._IMG_0001.JPG",
            "video.mp4.part",
            "drafts",
            "edit.psd",
        ] {
            assert!(
                up.ignored.iter().any(|i| i == name),
                "{name} not listed: {:?}",
                up.ignored
            );
        }
    }
}

mod upgrade {
    use super::camera_roll::*;
    use super::devices::*;
    use keepsake_device::Edit;

    /// A device of the version before paths linked a copy of a photo to the photo's asset
    /// (one asset, two files) and the library kept only names (a photo from `sub/` was
    /// at the top). Upgraded, it splits the copy into a photo of its own and sends the
    /// folder back as a rename — and uploads no chunk again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_device_s_merged_twins_are_split_and_nothing_is_sent_again() {
        let root = tempfile::tempdir().unwrap();
        let c = cloud().await;
        let fa = root.path().join("A");
        std::fs::create_dir_all(fa.join("sub")).unwrap();
        let (one, three) = (photo(1, 90_000), photo(3, 70_000));
        std::fs::write(fa.join("IMG_0001.JPG"), &one).unwrap();
        std::fs::write(fa.join("copy of IMG_0001.JPG"), &one).unwrap();
        std::fs::write(fa.join("sub/IMG_0003.JPG"), &three).unwrap();
        let data = root.path().join("a-data");
        let mut a = device(&c, &fa, &data, "old phone").await;
        sync(&mut a).await;
        // Make the journal and the library what the older version left behind.
        let copy = id_at(&c, "copy of IMG_0001.JPG");
        let original = id_at(&c, "IMG_0001.JPG");
        let nested = id_at(&c, "sub/IMG_0003.JPG");
        a.edit(Edit::Trash {
            asset_id: copy.clone(),
            alone: false,
        })
        .unwrap();
        sync(&mut a).await;
        c.cloud.purge("alice", &copy).unwrap();
        let clock = keepsake_library::Hlc {
            wall_ms: 1,
            counter: 0,
            device: "migration".into(),
        };
        c.cloud
            .library()
            .rename("alice", &nested, "IMG_0003.JPG", &clock)
            .unwrap();
        let config = a.config().clone();
        drop(a);
        std::fs::write(fa.join("copy of IMG_0001.JPG"), &one).unwrap();
        let journal = rusqlite::Connection::open(data.join("journal.sqlite")).unwrap();
        journal
            .execute_batch(&format!(
                "INSERT OR REPLACE INTO files (path, size, mtime_ns, inode, file_hash, asset_id,
                        version, state, lib_path, nonce)
                   SELECT 'copy of IMG_0001.JPG', size, mtime_ns, inode, file_hash, asset_id,
                          version, state, NULL, 0 FROM files WHERE asset_id = '{original}';
                 UPDATE files SET lib_path = NULL, nonce = 0;
                 DELETE FROM kv WHERE key = 'files_apart';"
            ))
            .unwrap();
        drop(journal);
        let meta = std::fs::metadata(fa.join("copy of IMG_0001.JPG")).unwrap();
        let journal = rusqlite::Connection::open(data.join("journal.sqlite")).unwrap();
        journal
            .execute(
                "UPDATE files SET size = ?1, mtime_ns = ?2, inode = ?3 WHERE path = 'copy of IMG_0001.JPG'",
                rusqlite::params![
                    meta.len() as i64,
                    {
                        use std::os::unix::fs::MetadataExt;
                        meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
                    },
                    {
                        use std::os::unix::fs::MetadataExt;
                        meta.ino() as i64
                    }
                ],
            )
            .unwrap();
        drop(journal);
        assert_eq!(
            live(&c).len(),
            2,
            "the older library: one asset for two files"
        );

        let mut a = restart_with(&c, config).await;
        let upgraded = sync(&mut a).await;
        assert_eq!(upgraded.uploaded, 1, "{upgraded:?}");
        assert_eq!(upgraded.bytes_sent, 0, "{upgraded:?}");
        assert_eq!(upgraded.trashed_remotely, 0, "{upgraded:?}");
        let library = library_tree(&c);
        assert_eq!(library.len(), 3, "{library:#?}");
        assert!(library.contains_key("copy of IMG_0001.JPG"));
        assert!(library.contains_key("sub/IMG_0003.JPG"), "{library:#?}");
        assert_eq!(tree(&fa), library);
        assert_eq!(sync(&mut a).await, Default::default());
    }

    async fn restart_with(
        c: &Cloudy,
        config: keepsake_device::DeviceConfig,
    ) -> keepsake_device::Device<keepsake_transport::cloud_client::CloudClient> {
        let (client, _) = enrolled_client(c, &c.url, "upgraded").await;
        keepsake_device::Device::open(
            config,
            client,
            std::sync::Arc::new(keepsake_store::SystemClock),
        )
        .unwrap()
    }
}

/// A folder of 1,000 photos renamed is 1,000 moves: nothing sent but renames, no delete
/// (the mass-delete guard does not wait for a confirmation), and the other device moves
/// every file. A copy to another file system caught half-way (half the files gone from
/// the old folder, none yet in the new) is deletes, and the guard waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_a_thousand_photos_renamed_is_a_thousand_moves() {
    use camera_roll::{library_tree, tree};
    use devices::*;
    let root = tempfile::tempdir().unwrap();
    let c = bulk_cloud().await;
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    std::fs::create_dir_all(fa.join("2025/Lisbon")).unwrap();
    for i in 0..1000u64 {
        std::fs::write(
            fa.join(format!("2025/Lisbon/IMG_{i:04}.JPG")),
            photo(20_000 + i, 2_000),
        )
        .unwrap();
    }
    let mut a = device(&c, &fa, &root.path().join("a-data"), "laptop").await;
    let mut b = device(&c, &fb, &root.path().join("b-data"), "phone").await;
    assert_eq!(sync_through(&mut a).await.uploaded, 1000);
    assert_eq!(sync_through(&mut b).await.downloaded, 1000);
    std::fs::rename(fa.join("2025/Lisbon"), fa.join("2025/Lisbon and Porto")).unwrap();
    let moved = sync(&mut a).await;
    assert_eq!(
        (
            moved.renames_sent,
            moved.uploaded,
            moved.bytes_sent,
            moved.trashed_remotely,
            moved.blocked.clone()
        ),
        (1000, 0, 0, 0, None),
        "{moved:?}"
    );
    let followed = sync(&mut b).await;
    assert_eq!(
        (followed.renamed_here, followed.downloaded),
        (1000, 0),
        "{followed:?}"
    );
    assert!(!fb.join("2025/Lisbon").exists());
    assert_eq!(tree(&fb), library_tree(&c));
    assert_eq!(library_tree(&c).len(), 1000);

    // Half the files gone, their copies not there yet: deletes, and the guard waits.
    for i in 0..600u64 {
        std::fs::remove_file(fa.join(format!("2025/Lisbon and Porto/IMG_{i:04}.JPG"))).unwrap();
    }
    let halfway = sync(&mut a).await;
    assert_eq!(
        halfway.blocked.as_deref(),
        Some("DELETES_NEED_CONFIRMATION"),
        "{halfway:?}"
    );
    assert_eq!(library_tree(&c).len(), 1000);
}
