//! `watchers`: what one node holds — devices each watching its account's feed
//! (WatchChanges streams over a few hundred connections), the memory they take, and how
//! long a commit takes to reach every watcher of its account.
//!
//! Server and watchers share this process (an in-process server on loopback), so the
//! memory figure is both sides together: an upper bound of the node's share.

use crate::library::rss_kib;
use anyhow::{Context, Result, bail};
use keepsake_library::{Cloud, KdfCost, Library, LibraryConfig};
use keepsake_proto::v1 as pb;
use keepsake_store::{OsEntropy, Store, StoreConfig, SystemClock};
use keepsake_transport::client;
use keepsake_transport::server::ServerConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Streams per HTTP/2 connection, as many phones behind one carrier's NAT would not share
/// one; a few hundred connections in all.
const STREAMS_PER_CONNECTION: usize = 40;

/// Runs the benchmark: `accounts` accounts of `devices` watching devices each.
pub async fn run(short: bool) -> Result<()> {
    let (accounts, devices, rounds): (usize, usize, usize) =
        if short { (20, 50, 10) } else { (100, 100, 30) };
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open_local(
        &dir.path().join("store"),
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        StoreConfig::default(),
    )?);
    let library = Library::open(
        Some(dir.path().join("library.sqlite")),
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        LibraryConfig {
            // Enrolling 10,000 devices is not what is measured.
            kdf: KdfCost {
                memory_kib: 64,
                iterations: 1,
            },
            ..crate::library::unlimited()
        },
    )?;
    let cloud = Arc::new(Cloud::new(library, store.clone())?);
    let mut tokens: Vec<Vec<String>> = Vec::new();
    for a in 0..accounts {
        let account = format!("family-{a:03}");
        cloud.create_account(&account, "a long enough password", None, false)?;
        let mut of_account = Vec::new();
        for d in 0..devices {
            let enrolled = cloud.enroll_device(
                &account,
                "a long enough password",
                &format!("phone-{d}"),
                "linux",
                env!("CARGO_PKG_VERSION"),
            )?;
            of_account.push(enrolled.access.token);
        }
        tokens.push(of_account);
    }
    let url = crate::library::serve_on_loopback(&cloud, &store, ServerConfig::default()).await?;

    let watchers = accounts * devices;
    let connections = watchers.div_ceil(STREAMS_PER_CONNECTION);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(client::connect(&url).await?);
    }
    let rss_before = rss_kib();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let opened = Instant::now();
    for (a, of_account) in tokens.iter().enumerate() {
        for (d, token) in of_account.iter().enumerate() {
            let channel = channels[(a * devices + d) % connections].clone();
            let mut stream = client::library_client(channel, client::BearerAuth::new(token))
                .watch_changes(pb::WatchChangesRequest {
                    cursor: 0,
                    from_now: true,
                })
                .await
                .with_context(|| format!("watcher {} of {watchers}", a * devices + d))?
                .into_inner();
            stream.message().await?.context("the opening page")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(page)) = stream.message().await {
                    if !page.changes.is_empty() && tx.send((a, Instant::now())).is_err() {
                        return;
                    }
                }
            });
        }
    }
    let open_s = opened.elapsed().as_secs_f64();
    let rss_watching = rss_kib();

    let mut latencies = Vec::new();
    for round in 0..rounds {
        let a = round % accounts;
        let mut editor = client::library_client(
            channels[round % connections].clone(),
            client::BearerAuth::new(&tokens[a][0]),
        );
        let t0 = Instant::now();
        editor
            .put_album(pb::PutAlbumRequest {
                album_id: format!("round-{round}"),
                name: format!("Round {round}"),
                clock: Some(pb::Clock {
                    wall_ms: keepsake_store::Clock::now_ms(&keepsake_store::SystemClock),
                    counter: 0,
                    device: "bench".into(),
                }),
            })
            .await?;
        let mut arrived = 0;
        while arrived < devices {
            let (account, at) = tokio::time::timeout(Duration::from_secs(30), heard.recv())
                .await
                .map_err(|_| anyhow::anyhow!("round {round}: {arrived} of {devices} heard"))?
                .context("watchers gone")?;
            if account != a {
                bail!("a watcher of account {account} heard account {a}'s change");
            }
            latencies.push(at.duration_since(t0));
            arrived += 1;
        }
    }
    latencies.sort();
    let pick = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "bench watchers: {watchers} devices ({accounts} accounts of {devices}) watching over {connections} HTTP/2 connections, one process"
    );
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| opening every watch | {open_s:.1} s |");
    println!(
        "| resident memory before / with every watch open (server and watchers together) | {:.0} / {:.0} MiB ({:.1} KiB a watch) |",
        mib(rss_before),
        mib(rss_watching),
        (rss_watching.saturating_sub(rss_before)) as f64 / watchers as f64
    );
    println!(
        "| a commit reaching every watcher of its account ({rounds} commits, {} arrivals), p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        latencies.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3
    );
    println!("(targets: memory <= 512 MiB, p99 < 1 s)");
    Ok(())
}
