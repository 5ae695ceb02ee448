//! `cargo xtask bench library`: commit rate, a fresh device's ListChanges of the whole
//! library over loopback, a fresh device (the real sync engine) following the whole feed, and
//! WatchChanges latency from commit to notification.

use anyhow::{Result, bail};
use bytes::Bytes;
use keepsake_library::{
    AssetKind, ClientVersion, Cloud, CommitAsset, Library, LibraryConfig, Plan,
};
use keepsake_proto::v1 as pb;
use keepsake_store::{
    ChunkId, Manifest, ManifestEntry, ManifestId, OsEntropy, Store, StoreConfig, SystemClock,
};
use keepsake_transport::ChangeNotifier;
use keepsake_transport::auth::Authenticator;
use keepsake_transport::client;
use keepsake_transport::guard::Limits;
use keepsake_transport::server::{ServerConfig, Services, serve};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCOUNT: &str = "bench";
const PASSWORD: &str = "bench password";

/// The database `KEEPSAKE_BENCH_POSTGRES` names (`cargo xtask bench backends` sets it),
/// with a schema suffix of this run's own.
fn on_postgres() -> Option<(String, String)> {
    let url = std::env::var("KEEPSAKE_BENCH_POSTGRES").ok()?;
    Some((url, format!("{}", std::process::id())))
}

/// A loopback server for benchmarks.
pub struct BenchServer {
    /// Plaintext URL.
    pub url: String,
    /// The same services over TLS.
    pub tls_url: String,
    /// The TLS certificate's fingerprint.
    pub fingerprint: String,
    /// An admin token for account "bench".
    pub token: String,
    /// The cloud behind both.
    pub cloud: Arc<Cloud>,
}

/// Serves the store and the library on two loopback ports, plaintext and TLS.
pub async fn serve_cloud(dir: &Path, store: Arc<Store>) -> Result<BenchServer> {
    let db = match on_postgres() {
        Some((url, schema)) => keepsake_sql::Db::postgres(&url, &format!("library_{schema}"))?,
        None => keepsake_sql::Db::open_sqlite(Some(&dir.join("library.sqlite")))?,
    };
    let library = Library::open_on(db, Arc::new(SystemClock), Arc::new(OsEntropy), unlimited())?;
    let cloud = Arc::new(Cloud::new(library, store.clone())?);
    cloud.create_account(ACCOUNT, PASSWORD, None, true)?;
    let token = cloud.sign_in(ACCOUNT, PASSWORD)?.token;
    let url = serve_on_loopback(&cloud, &store, ServerConfig::default()).await?;
    let cert = keepsake_transport::tls::self_signed(&["127.0.0.1".into()])?;
    let fingerprint = keepsake_transport::tls::fingerprint_of_pem(&cert.cert_pem)?;
    let tls_url = serve_on_loopback(
        &cloud,
        &store,
        ServerConfig {
            tls: Some(cert),
            ..ServerConfig::default()
        },
    )
    .await?
    .replacen("http://", "https://", 1);
    Ok(BenchServer {
        url,
        tls_url,
        fingerprint,
        token,
        cloud,
    })
}

/// The library's defaults with one plan no benchmark fills.
pub(crate) fn unlimited() -> LibraryConfig {
    LibraryConfig {
        plans: vec![Plan {
            name: "unlimited".into(),
            limit_bytes: u64::MAX / 4,
        }],
        ..LibraryConfig::default()
    }
}

/// Serves `cloud` and `store` on a loopback port with `config`; its `http://` address.
pub async fn serve_on_loopback(
    cloud: &Arc<Cloud>,
    store: &Arc<Store>,
    config: ServerConfig,
) -> Result<String> {
    let auth = Authenticator::new(
        cloud.verifier(),
        Arc::new(SystemClock),
        ClientVersion::default(),
    );
    let services = Services {
        store: Some(store.clone()),
        cloud: Some(cloud.clone()),
        changes: ChangeNotifier::default(),
        ..Services::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(serve(
        listener,
        services,
        auth,
        config,
        std::future::pending(),
    ));
    Ok(url)
}

/// `n` distinct one-chunk files stored for the bench account; their manifests.
fn store_files(store: &Store, first: u64, n: u64) -> Result<Vec<ManifestId>> {
    let session = store.begin_session(ACCOUNT, 0, 24 * 3_600_000, None)?;
    let mut manifests = Vec::with_capacity(n as usize);
    let ids: Vec<u64> = (first..first + n).collect();
    for batch in ids.chunks(1000) {
        let files: Vec<(ChunkId, Bytes)> = batch
            .iter()
            .map(|i| {
                let mut data = vec![0u8; 1024];
                data[..8].copy_from_slice(&i.to_le_bytes());
                (ChunkId::of(&data), Bytes::from(data))
            })
            .collect();
        store.put_chunks(ACCOUNT, &session.id, &files)?;
        for (id, data) in &files {
            let manifest = Manifest::new(
                vec![ManifestEntry {
                    chunk: *id,
                    len: data.len() as u32,
                }],
                *id,
            );
            manifests.push(store.put_manifest(ACCOUNT, &session.id, &manifest)?);
        }
    }
    Ok(manifests)
}

/// The bench library's cameras: a family's, one a year or so.
const CAMERAS: [(&str, &str); 5] = [
    ("Apple", "iPhone 15 Pro"),
    ("Apple", "iPhone 12"),
    ("Google", "Pixel 8"),
    ("Canon", "EOS R5"),
    ("Sony", "ILCE-7M4"),
];

/// Photo `i` of the bench library: a minute after the one before (about ten weeks for
/// 100,000), one of five cameras, taken at one of 1,000 places spread over the globe
/// (most photos have a place, as a phone's do), one in twenty a video, in year folders.
fn commit_of(i: usize, manifest: ManifestId) -> CommitAsset {
    let (make, model) = CAMERAS[i % CAMERAS.len()];
    let spot = (i * 7919) % 1000;
    let position_e7 = (!i.is_multiple_of(10)).then(|| {
        (
            ((spot as i64 % 140 - 70) * 10_000_000 + (i as i64 % 997) * 1_000) as i32,
            ((spot as i64 * 7 % 340 - 170) * 10_000_000 + (i as i64 % 991) * 1_000) as i32,
        )
    });
    CommitAsset {
        details: keepsake_library::MediaDetails {
            camera_make: make.into(),
            camera_model: model.into(),
            position_e7,
            ..Default::default()
        },
        request_id: format!("bench-{i}"),
        asset_id: None,
        base_version: None,
        manifest,
        kind: if i.is_multiple_of(20) {
            AssetKind::Video
        } else {
            AssetKind::Photo
        },
        capture_time: Some(1_700_000_000_000 + i as i64 * 60_000),
        width: Some(4032),
        height: Some(3024),
        original_name: format!("IMG_{i:06}.HEIC"),
        path: format!("{}/IMG_{i:06}.HEIC", 2023 + i / 50_000),
        device: "bench".into(),
        reservation_id: None,
        manifest_upload: None,
    }
}

/// Single-row durable transactions per second on this disk: what any commit is bounded by.
fn raw_durable_txn_rate(dir: &Path) -> Result<f64> {
    let conn = rusqlite::Connection::open(dir.join("baseline.sqlite"))?;
    keepsake_store::durable_sqlite(&conn)?;
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)", [])?;
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![i, [0u8; 64]],
        )?;
    }
    Ok(f64::from(n) / t.elapsed().as_secs_f64())
}

/// What following the whole feed cost a fresh device.
struct Followed {
    seconds: f64,
    passes: usize,
    rss_growth_kib: u64,
}

/// A fresh device — the real sync engine over loopback gRPC — follows the whole feed with
/// Optimize Storage on and no room for originals: it learns every asset (metadata, versions,
/// what is kept in the cloud) and downloads no file, so this times the feed as a device
/// applies it, not the disk writing files.
async fn follow_feed(cloud: &Cloud, url: &str, dir: &Path, n: u64) -> Result<Followed> {
    use keepsake_device::{Device, DeviceConfig};
    use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
    let enrolled = cloud.enroll_device(
        ACCOUNT,
        PASSWORD,
        "follower",
        "linux",
        env!("CARGO_PKG_VERSION"),
    )?;
    let client = CloudClient::new(
        client::connect(url).await?,
        client::BearerAuth::new(&enrolled.access.token),
        ClientConfig::default(),
    );
    let mut config = DeviceConfig::new(
        dir.join("follower"),
        dir.join("follower-data"),
        enrolled.device_id,
    );
    config.optimize_budget = Some(0);
    std::fs::create_dir_all(&config.folder)?;
    let mut device = Device::open(config, client, Arc::new(SystemClock))?;
    let rss_before = rss_kib();
    let t = Instant::now();
    let (mut kept, mut passes) = (0u64, 0usize);
    while kept < n && passes < 10 {
        let report = device.sync_once().await?;
        if let Some(reason) = report.blocked {
            bail!("the follower stopped: {reason}");
        }
        kept += report.kept_in_cloud as u64;
        passes += 1;
    }
    let seconds = t.elapsed().as_secs_f64();
    let rss_growth_kib = rss_kib().saturating_sub(rss_before);
    let known = device.assets()?.len() as u64;
    if kept != n || known != n {
        bail!("the follower kept {kept} assets in the cloud and knows {known}, of {n}");
    }
    Ok(Followed {
        seconds,
        passes,
        rss_growth_kib,
    })
}

pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the library benchmark.
pub async fn run(root: &Path, short: bool) -> Result<()> {
    let n: u64 = if short { 5_000 } else { 100_000 };
    let watched = if short { 200 } else { 1000 };
    let tmp_root = root.join("target/bench-tmp");
    std::fs::create_dir_all(&tmp_root)?;
    let tmp = tempfile::tempdir_in(&tmp_root)?;
    println!("bench library: {n} assets, {watched} watched commits");
    let baseline = raw_durable_txn_rate(tmp.path())?;
    std::fs::create_dir_all(tmp.path().join("again"))?;

    let store = Arc::new(match on_postgres() {
        Some((url, schema)) => Store::open(keepsake_store::StoreParts {
            backend: Arc::new(keepsake_store::LocalFsBackend::open(
                tmp.path().join("objects"),
            )?),
            index: keepsake_store::IndexAt::Postgres {
                url,
                schema: format!("store_{schema}"),
            },
            clock: Arc::new(SystemClock),
            entropy: Arc::new(OsEntropy),
            config: StoreConfig::default(),
        })?,
        None => Store::open_local(
            &tmp.path().join("store"),
            Arc::new(SystemClock),
            Arc::new(OsEntropy),
            StoreConfig::default(),
        )?,
    });
    if on_postgres().is_some() {
        println!("bench library: the library and the store index on PostgreSQL");
    }
    let BenchServer {
        url, token, cloud, ..
    } = serve_cloud(tmp.path(), store.clone()).await?;
    let setup = Instant::now();
    let manifests = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store_files(&store, 0, n)).await??
    };
    println!(
        "(setup: {n} files stored in {:.1} s)",
        setup.elapsed().as_secs_f64()
    );

    // Commit rate, in process: reference in the store, commit in the library.
    let commit_s = {
        let cloud = cloud.clone();
        tokio::task::spawn_blocking(move || -> Result<f64> {
            let t = Instant::now();
            for (i, m) in manifests.into_iter().enumerate() {
                cloud.commit_asset(ACCOUNT, &commit_of(i, m))?;
            }
            Ok(t.elapsed().as_secs_f64())
        })
        .await??
    };
    let commit_rate = n as f64 / commit_s;
    // Measured on both sides of the commits, best kept: one disturbed run must not flatter the ratio.
    let baseline = baseline.max(raw_durable_txn_rate(&tmp.path().join("again"))?);

    // A fresh device lists the whole library over loopback, page by page.
    let in_process_s = {
        let cloud = cloud.clone();
        tokio::task::spawn_blocking(move || -> Result<f64> {
            let t = Instant::now();
            let (mut cursor, mut rows) = (0, 0);
            loop {
                let page = cloud.library().list_changes(ACCOUNT, cursor, 1000)?;
                rows += page.changes.len();
                cursor = page.cursor;
                if !page.more {
                    break;
                }
            }
            if rows as u64 != n {
                bail!("in-process listing saw {rows} rows");
            }
            Ok(t.elapsed().as_secs_f64())
        })
        .await??
    };
    let searches = {
        let cloud = cloud.clone();
        tokio::task::spawn_blocking(move || search_latencies(&cloud, n)).await??
    };
    let timeline = crate::web::timeline(&url, tmp.path(), ACCOUNT, PASSWORD).await?;
    let mut lib = client::library_client(
        client::connect(&url).await?,
        client::BearerAuth::new(&token),
    );
    let rss_before = rss_kib();
    let t = Instant::now();
    let (mut cursor, mut rows, mut bytes) = (0, 0usize, 0usize);
    loop {
        let page = lib
            .list_changes(pb::ListChangesRequest {
                cursor,
                page_size: 1000,
            })
            .await?
            .into_inner();
        rows += page.changes.len();
        bytes += prost::Message::encoded_len(&page);
        cursor = page.cursor;
        if !page.more {
            break;
        }
    }
    let list_s = t.elapsed().as_secs_f64();
    let rss_growth = rss_kib().saturating_sub(rss_before);
    if rows as u64 != n {
        bail!("ListChanges saw {rows} rows, expected {n}");
    }

    let follow = follow_feed(&cloud, &url, tmp.path(), n).await?;

    // WatchChanges: time from the start of a commit to its row arriving at a watcher.
    let more = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store_files(&store, n, watched)).await??
    };
    let mut stream = lib
        .watch_changes(pb::WatchChangesRequest {
            cursor,
            from_now: false,
        })
        .await?
        .into_inner();
    stream.message().await?; // the first (empty) page: the watch is live
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(page)) = stream.message().await {
            let now = Instant::now();
            for change in page.changes {
                if let Some(pb::change::Row::Asset(a)) = change.row {
                    let _ = tx.send((a.asset_id, now));
                }
            }
        }
    });
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut commit_latency = Vec::new();
    // Paced under the guard's sustained per-caller rate: one caller committing back to back
    // is refused with RATE_LIMITED once its burst is spent (the full run's 1000 commits were),
    // and this measures the feed, not the door.
    let pace = Duration::from_secs_f64(1.0 / (0.7 * Limits::default().calls_per_second));
    let mut ticks = tokio::time::interval(pace);
    for (i, m) in more.iter().enumerate() {
        ticks.tick().await;
        let t0 = Instant::now();
        let reply = lib
            .commit_asset(pb::CommitAssetRequest {
                request_id: format!("watched-{i}"),
                manifest_id: Bytes::copy_from_slice(m.as_bytes()),
                kind: pb::AssetKind::Photo.into(),
                original_name: format!("IMG_W{i:05}.HEIC"),
                path: String::new(),
                ..Default::default()
            })
            .await?
            .into_inner();
        commit_latency.push(t0.elapsed());
        started.insert(reply.asset_id, t0);
    }
    let mut latency = Vec::new();
    while latency.len() < started.len() {
        let Ok(Some((asset, at))) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await
        else {
            bail!(
                "the watcher saw {} of {} commits",
                latency.len(),
                started.len()
            );
        };
        if let Some(t0) = started.get(&asset) {
            latency.push(at.duration_since(*t0));
        }
    }
    latency.sort();
    commit_latency.sort();

    println!("| measurement | value |");
    println!("|---|---|");
    println!("| raw durable SQLite transactions (baseline) | {baseline:.0} /s |");
    println!("| commits, in process ({n} assets) | {commit_rate:.0} /s |");
    println!(
        "| ListChanges of {n} assets over loopback, pages of 1000 | {:.0} ms ({:.1} MiB on the wire) |",
        list_s * 1000.0,
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "| the same pages in process (baseline) | {:.0} ms |",
        in_process_s * 1000.0
    );
    println!("| RSS growth while listing | {} MiB |", rss_growth >> 10);
    println!(
        "| a fresh device (sync engine, Optimize Storage) follows the feed of {n} assets | {:.1} s in {} passes ({:.0} assets/s; RSS growth {} MiB) |",
        follow.seconds,
        follow.passes,
        n as f64 / follow.seconds,
        follow.rss_growth_kib >> 10
    );
    println!(
        "| CommitAsset over loopback, p50 / p99 | {:.2} / {:.2} ms |",
        percentile(&commit_latency, 0.5).as_secs_f64() * 1000.0,
        percentile(&commit_latency, 0.99).as_secs_f64() * 1000.0
    );
    println!(
        "| commit start -> watcher notified, p50 / p99 | {:.2} / {:.2} ms |",
        percentile(&latency, 0.5).as_secs_f64() * 1000.0,
        percentile(&latency, 0.99).as_secs_f64() * 1000.0
    );
    println!();
    println!(
        "commit rate / raw durable transactions = {:.2}",
        commit_rate / baseline
    );
    println!(
        "ListChanges over loopback = {:.0} ms   (target < 2000 ms for 100,000 assets); {:.2}x in process",
        list_s * 1000.0,
        list_s / in_process_s
    );
    println!(
        "a fresh device follows the feed / ListChanges alone = {:.1}x   (target <= 5x)",
        follow.seconds / list_s
    );
    println!(
        "WatchChanges p99 = {:.1} ms   (target < 50 ms)",
        percentile(&latency, 0.99).as_secs_f64() * 1000.0
    );
    println!();
    println!("| search, first page of 100, in process ({n} assets) | p50 | p99 | rows |");
    println!("|---|---|---|---|");
    let mut searches_p50_everything = Duration::from_millis(1);
    for (kind, mut took, rows) in searches {
        took.sort();
        if kind.starts_with("everything") {
            searches_p50_everything = percentile(&took, 0.5);
        }
        println!(
            "| {kind} | {:.2} ms | {:.2} ms | {rows} |",
            percentile(&took, 0.5).as_secs_f64() * 1000.0,
            percentile(&took, 0.99).as_secs_f64() * 1000.0
        );
    }
    println!("(target: p99 < 50 ms for each kind of query)");
    let everything = searches_p50_everything;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("| web library timeline over HTTP ({n} assets, pages of 120) | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| first page (opening the library) | {:.2} ms | {:.2} ms |",
        ms(percentile(&timeline.first_page, 0.5)),
        ms(percentile(&timeline.first_page, 0.99))
    );
    println!(
        "| each next page, scrolling {} photos down | {:.2} ms | {:.2} ms |",
        timeline.shown,
        ms(percentile(&timeline.next_pages, 0.5)),
        ms(percentile(&timeline.next_pages, 0.99))
    );
    println!(
        "web first page p50 / in-process search (everything, 100 rows) p50 = {:.1}",
        percentile(&timeline.first_page, 0.5).as_secs_f64() / everything.as_secs_f64()
    );
    Ok(())
}

/// Each kind of search, 100 times with varied arguments: its latencies and the rows the
/// first pages held in all.
fn search_latencies(
    cloud: &keepsake_library::Cloud,
    n: u64,
) -> Result<Vec<(&'static str, Vec<Duration>, usize)>> {
    use keepsake_library::SearchQuery;
    let start = 1_700_000_000_000i64;
    let span = n as i64 * 60_000;
    let kinds: [(&str, &dyn Fn(i64) -> SearchQuery); 7] = [
        ("everything, newest first", &|_| SearchQuery::default()),
        ("a day of capture dates", &|k| SearchQuery {
            taken_from: Some(start + (k * 7_919_000) % span),
            taken_until: Some(start + (k * 7_919_000) % span + 86_400_000),
            ..Default::default()
        }),
        ("a camera (part of its name)", &|k| SearchQuery {
            camera: Some(["iphone", "pixel", "eos", "ilce", "iphone 12"][k as usize % 5].into()),
            ..Default::default()
        }),
        ("a box of 10° x 10°", &|k| {
            let (lat, lon) = (
                (k % 14 - 7) as i32 * 100_000_000,
                (k % 34 - 17) as i32 * 100_000_000,
            );
            SearchQuery {
                within_e7: Some((lat, lon, lat + 100_000_000, lon + 100_000_000)),
                ..Default::default()
            }
        }),
        ("within 50 km of a place", &|k| SearchQuery {
            near_e7: Some((
                (
                    (k % 140 - 70) as i32 * 10_000_000,
                    (k * 7 % 340 - 170) as i32 * 10_000_000,
                ),
                50_000,
            )),
            ..Default::default()
        }),
        ("videos", &|_| SearchQuery {
            kind: Some(AssetKind::Video),
            ..Default::default()
        }),
        ("part of a file name", &|k| SearchQuery {
            name: Some(format!("img_{:03}", k % 1000)),
            ..Default::default()
        }),
    ];
    let mut out = Vec::new();
    for (kind, query) in kinds {
        let (mut took, mut rows) = (Vec::new(), 0);
        for k in 0..100 {
            let q = query(k);
            let t = Instant::now();
            let page = cloud.library().search(ACCOUNT, &q, None, 100)?;
            took.push(t.elapsed());
            rows += page.assets.len();
        }
        out.push((kind, took, rows));
    }
    Ok(out)
}
