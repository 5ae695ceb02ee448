//! Benchmarks, each reporting ratios to baselines measured in the same run.
//! Run through `cargo xtask bench <name> [--short]`, which builds this in release.
//!
//! - `store`: the store over loopback gRPC against BLAKE3 of the bytes, a tonic
//!   stream that discards them, and a sequential write + fsync of them.
//! - `policy`: the cost of one policy evaluation.
//! - `delta`: chunk + hash throughput against raw FastCDC + BLAKE3.
//! - `library`: commit rate, a fresh device's ListChanges of the whole library over
//!   loopback, and WatchChanges latency from commit to notification.
//! - `watchers`: 10,000 devices watching their feeds on one node: memory, and a commit's
//!   arrival at every watcher of its account.
//! - `media`: thumbnails + previews of 12 MP JPEGs per second, one and two threads,
//!   against decoding alone.

mod helpers;
mod import;
mod library;
mod media;
mod watchers;
mod web;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use keepsake_proto::v1 as pb;
use keepsake_proto::v1::chunk_store_server::{ChunkStore, ChunkStoreServer};
use keepsake_store::{ChunkId, OsEntropy, Store, StoreConfig, SystemClock};
use keepsake_testkit::{get_all, put_all};
use keepsake_transport::client;
use keepsake_transport::convert::id_bytes;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

const CHUNK: usize = 64 << 10;
const MESSAGE_BYTES: usize = 1 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("bench lives in xtask/bench")
        .to_path_buf();
    let short = args.iter().any(|a| a == "--short");
    match args.first().map(String::as_str) {
        Some("store") => runtime()?.block_on(store(&root, short)),
        Some("policy") => policy(short),
        Some("delta") => delta(short),
        Some("library") => runtime()?.block_on(library::run(&root, short)),
        Some("media") => media::run(short),
        Some("import") => runtime()?.block_on(import::run(&root, short)),
        Some("watchers") => runtime()?.block_on(watchers::run(short)),
        // Helpers of `cargo xtask bench peers`, which drives whole processes.
        Some("chunk") => helpers::chunk_dir(Path::new(args.get(1).context("bench chunk DIR")?)),
        Some("discard") => runtime()?.block_on(helpers::discard(
            args.get(1).context("bench discard MIB")?.parse()?,
        )),
        Some("cross-node") => {
            let arg = |name: &str| named_arg(&args, "cross-node", name);
            runtime()?.block_on(helpers::cross_node(
                &arg("--watch")?,
                &arg("--edit")?,
                &arg("--account")?,
                arg("--rounds")?.parse()?,
            ))
        }
        Some("edits") => {
            let arg = |name: &str| named_arg(&args, "edits", name);
            runtime()?.block_on(helpers::edits(helpers::Edits {
                url: arg("--url")?,
                account: arg("--account")?,
                password: std::env::var("KEEPSAKE_PASSWORD").context("KEEPSAKE_PASSWORD")?,
                count: arg("--count")?.parse()?,
                journal: arg("--journal")?.into(),
                probes: arg("--probes")?.parse()?,
            }))
        }
        _ => bail!(
            "usage: cargo xtask bench <peers|sync|backends|nodes|compare|store|policy|delta|library|watchers|media|import> [--short]"
        ),
    }
}

/// Serves a ChunkStore that discards uploads and serves `chunks` from memory, on loopback
/// with the store's frame and window sizes; its URL.
async fn spawn_discard_store(chunks: Vec<(ChunkId, Bytes)>) -> Result<String> {
    let discard = DiscardStore {
        chunks: Arc::new(chunks),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .max_frame_size(1 << 20)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            .add_service(
                ChunkStoreServer::new(discard)
                    .max_decoding_message_size(16 << 20)
                    .max_encoding_message_size(16 << 20),
            )
            .serve_with_incoming(
                tokio_stream::wrappers::TcpListenerStream::new(listener).map(|c| {
                    c.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                }),
            ),
    );
    Ok(url)
}

/// The value after `--name` in `args`, for the helper `command` of the peers harness.
fn named_arg(args: &[String], command: &str, name: &str) -> Result<String> {
    let i = args
        .iter()
        .position(|a| a == name)
        .with_context(|| format!("bench {command} needs {name}"))?;
    args.get(i + 1)
        .cloned()
        .with_context(|| format!("{name} needs a value"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn gib_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / (1u64 << 30) as f64
}

/// Deterministic incompressible bytes: BLAKE3 XOF of a fixed key.
fn test_chunks(total: usize, key: &str) -> Vec<(ChunkId, Bytes)> {
    let mut reader = blake3::Hasher::new_derive_key(key).finalize_xof();
    (0..total / CHUNK)
        .map(|_| {
            let mut data = vec![0u8; CHUNK];
            reader.fill(&mut data);
            (ChunkId::of(&data), Bytes::from(data))
        })
        .collect()
}

/// Uploads `chunks` then downloads them; the seconds each took.
async fn put_then_get(
    c: &mut client::StoreClient,
    session: &str,
    chunks: &[(ChunkId, Bytes)],
) -> Result<(f64, f64)> {
    let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();
    let t = Instant::now();
    let acked = put_all(c, session, chunks.to_vec(), MESSAGE_BYTES).await?;
    let put_s = t.elapsed().as_secs_f64();
    if acked.len() != ids.len() {
        bail!("only {} of {} chunks acknowledged", acked.len(), ids.len());
    }
    let t = Instant::now();
    let got = get_all(c, &ids).await?;
    let get_s = t.elapsed().as_secs_f64();
    if got.len() != ids.len() {
        bail!("only {} of {} chunks read back", got.len(), ids.len());
    }
    Ok((put_s, get_s))
}

async fn store(root: &Path, short: bool) -> Result<()> {
    let total: usize = if short { 64 << 20 } else { 1 << 30 };
    let tmp_root = root.join("target/bench-tmp");
    std::fs::create_dir_all(&tmp_root)?;
    let tmp = tempfile::tempdir_in(&tmp_root)?;
    println!(
        "bench store: {} MiB in {} KiB chunks",
        total >> 20,
        CHUNK >> 10
    );
    let chunks = test_chunks(total, "keepsake bench store v1");
    let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();

    // (a) BLAKE3 of the same bytes, chunk by chunk as the store verifies them.
    let t = Instant::now();
    for (id, data) in &chunks {
        assert_eq!(ChunkId::of(data), *id);
    }
    let blake3_s = t.elapsed().as_secs_f64();

    // (c) sequential write + fsync of the same bytes.
    let t = Instant::now();
    {
        let mut file = std::fs::File::create(tmp.path().join("baseline"))?;
        for (_, data) in &chunks {
            file.write_all(data)?;
        }
        file.sync_all()?;
    }
    let fsync_s = t.elapsed().as_secs_f64();
    std::fs::remove_file(tmp.path().join("baseline"))?;

    // (b) a tonic stream that discards the bytes (and serves them from memory).
    let discard_url = spawn_discard_store(chunks.clone()).await?;
    let mut discard_client = client::store_client(client::connect(&discard_url).await?, "x");
    let t = Instant::now();
    put_all(&mut discard_client, "s", chunks.clone(), MESSAGE_BYTES).await?;
    let discard_put_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let got = get_all(&mut discard_client, &ids).await?;
    let discard_get_s = t.elapsed().as_secs_f64();
    assert_eq!(got.len(), ids.len());

    // The store alone, no network: where its own time goes.
    let (direct_put_s, direct_get_s) = {
        let store = Store::open_local(
            &tmp.path().join("direct"),
            Arc::new(SystemClock),
            Arc::new(OsEntropy),
            StoreConfig::default(),
        )?;
        let session = store.begin_session("bench", 0, 3_600_000, None)?;
        let t = Instant::now();
        for batch in chunks.chunks(256) {
            store.put_chunks("bench", &session.id, batch)?;
        }
        let put_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for id in &ids {
            store.get_chunk("bench", id)?;
        }
        (put_s, t.elapsed().as_secs_f64())
    };
    std::fs::remove_dir_all(tmp.path().join("direct"))?;

    // The real store over loopback gRPC.
    let store = Arc::new(Store::open_local(
        &tmp.path().join("store"),
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        StoreConfig::default(),
    )?);
    let server = library::serve_cloud(tmp.path(), store).await?;
    let token = server.token.clone();
    let mut c = client::store_client(client::connect(&server.url).await?, &token);
    let session = c
        .begin_session(pb::BeginSessionRequest {
            expected_bytes: total as u64,
            ttl_seconds: 3600,
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .session_id;
    let (put_s, get_s) = put_then_get(&mut c, &session, &chunks).await?;
    // The same through TLS, with other bytes (the first set is stored already).
    let tls_chunks = test_chunks(total, "keepsake bench store tls v1");
    let mut tls = client::store_client(
        client::connect_tls(&server.tls_url, &server.fingerprint).await?,
        &token,
    );
    let (tls_put_s, tls_get_s) = put_then_get(&mut tls, &session, &tls_chunks).await?;
    drop(tls_chunks);

    // FindMissing of 100,000 ids: every stored chunk plus absent ones.
    let mut probe: Vec<Bytes> = ids.iter().map(id_bytes).collect();
    let mut n = 0u64;
    while probe.len() < 100_000 {
        probe.push(id_bytes(&ChunkId::of(&n.to_le_bytes())));
        n += 1;
    }
    let t = Instant::now();
    let missing = c
        .find_missing(pb::FindMissingRequest {
            session_id: session,
            ids: probe,
        })
        .await?
        .into_inner()
        .missing_ids;
    let find_missing_s = t.elapsed().as_secs_f64();
    if missing.len() != 100_000 - ids.len() {
        bail!("FindMissing returned {} ids", missing.len());
    }

    let (put, get) = (gib_per_s(total, put_s), gib_per_s(total, get_s));
    let (tls_put, tls_get) = (gib_per_s(total, tls_put_s), gib_per_s(total, tls_get_s));
    let (b3, fsync) = (gib_per_s(total, blake3_s), gib_per_s(total, fsync_s));
    let (dput, dget) = (
        gib_per_s(total, discard_put_s),
        gib_per_s(total, discard_get_s),
    );
    println!("| measurement | GiB/s |");
    println!("|---|---|");
    println!("| (a) BLAKE3 of the chunks, one core | {b3:.2} |");
    println!("| (b) discard stream, upload | {dput:.2} |");
    println!("| (b) discard stream, download | {dget:.2} |");
    println!("| (c) sequential write + fsync | {fsync:.2} |");
    println!(
        "| store alone, put_chunks (16 MiB batches) | {:.2} |",
        gib_per_s(total, direct_put_s)
    );
    println!(
        "| store alone, get_chunk | {:.2} |",
        gib_per_s(total, direct_get_s)
    );
    println!("| PutChunks through the store | {put:.2} |");
    println!("| GetChunks through the store | {get:.2} |");
    println!("| PutChunks through the store, TLS | {tls_put:.2} |");
    println!("| GetChunks through the store, TLS | {tls_get:.2} |");
    println!();
    println!("put / BLAKE3 = {:.2}", put / b3);
    println!(
        "put / min(discard upload, write+fsync) = {:.2}   (target >= 0.5)",
        put / dput.min(fsync)
    );
    println!(
        "get / discard download = {:.2}   (target >= 0.6)",
        get / dget
    );
    println!(
        "with TLS: put / min(discard upload, write+fsync) = {:.2}, get / discard download = {:.2}",
        tls_put / dput.min(fsync),
        tls_get / dget
    );
    println!(
        "FindMissing of 100,000 ids: {:.0} ms   (target < 1000 ms)",
        find_missing_s * 1000.0
    );
    Ok(())
}

/// Chunk + hash throughput of the delta engine against raw FastCDC + BLAKE3 of the
/// same bytes: one core, both cores across files, and one large file pipelined.
/// The outputs of a manifest (chunk ids, and the whole-file hash when asked) computed with
/// no streaming machinery: FastCDC cuts, BLAKE3 per chunk and of the file. The raw baseline.
pub(crate) fn raw_manifest_outputs(file: &[u8], p: keepsake_delta::ChunkParams, file_hash: bool) {
    let cdc = fastcdc::v2020::FastCDC::with_level(
        file,
        p.min as usize,
        p.avg as usize,
        p.max as usize,
        fastcdc::v2020::Normalization::Level0,
    );
    let mut whole = blake3::Hasher::new();
    for c in cdc {
        let data = &file[c.offset..c.offset + c.length];
        std::hint::black_box(blake3::hash(data));
        if file_hash {
            whole.update(data);
        }
    }
    std::hint::black_box(whole.finalize());
}

fn delta(short: bool) -> Result<()> {
    use keepsake_delta::{ChunkParams, chunk_files_parallel, chunk_stream, chunk_stream_pipelined};
    let (files, size) = if short { (8, 4 << 20) } else { (64, 8 << 20) };
    let library: Vec<Vec<u8>> = (0..files)
        .map(|i| {
            let mut data = vec![0u8; size];
            blake3::Hasher::new_derive_key(&format!("keepsake bench delta {i}"))
                .finalize_xof()
                .fill(&mut data);
            data
        })
        .collect();
    let total = files * size;
    let p = ChunkParams::PHOTO;
    let best_of = |f: &dyn Fn()| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    // The same outputs as a manifest (chunk ids and the whole-file hash), computed
    // with no streaming machinery: cut, hash each chunk, hash the file.
    let raw_cut = |with_file_hash: bool| {
        for file in &library {
            raw_manifest_outputs(file, p, with_file_hash);
        }
    };
    let raw = best_of(&|| raw_cut(true));
    let raw_chunks_only = best_of(&|| raw_cut(false));
    let one = best_of(&|| {
        for file in &library {
            chunk_stream(&file[..], p, |_, _| Ok(())).expect("chunking");
        }
    });
    let two = best_of(&|| {
        let readers: Vec<&[u8]> = library.iter().map(|f| &f[..]).collect();
        for m in chunk_files_parallel(readers, |_| p, 2, |_, _| Ok(())) {
            m.expect("chunking");
        }
    });
    let big: Vec<u8> = library.concat();
    let single = best_of(&|| {
        chunk_stream(&big[..], ChunkParams::LARGE, |_, _| Ok(())).expect("chunking");
    });
    let piped = best_of(&|| {
        chunk_stream_pipelined(&big[..], ChunkParams::LARGE, |_, _| Ok(())).expect("chunking");
    });
    let rate = |secs: f64| gib_per_s(total, secs);
    println!(
        "bench delta: {files} files of {} MiB ({} MiB), best of 3",
        size >> 20,
        total >> 20
    );
    println!("| measurement | GiB/s |");
    println!("|---|---|");
    println!(
        "| raw FastCDC + BLAKE3 per chunk, one core | {:.2} |",
        rate(raw_chunks_only)
    );
    println!(
        "| raw FastCDC + BLAKE3 per chunk + BLAKE3 of the file, one core | {:.2} |",
        rate(raw)
    );
    println!("| chunk_stream, one core | {:.2} |", rate(one));
    println!("| chunk_files_parallel, two workers | {:.2} |", rate(two));
    println!(
        "| one {} MiB file, large-file params, chunk_stream | {:.2} |",
        total >> 20,
        rate(single)
    );
    println!("| same file, chunk_stream_pipelined | {:.2} |", rate(piped));
    println!();
    println!(
        "one core / raw (same outputs) = {:.2}   (target >= 0.7)",
        raw / one
    );
    println!(
        "one core / raw (chunk hashes only) = {:.2}",
        raw_chunks_only / one
    );
    println!(
        "two workers / one core = {:.2}   (target >= 1.6)",
        one / two
    );
    println!("pipelined / single = {:.2}", single / piped);
    Ok(())
}

/// Cost of `evaluate`, which runs on every agent loop, against a same-run baseline:
/// cloning the snapshot it reads (the least any caller does per evaluation).
fn policy(short: bool) -> Result<()> {
    use keepsake_policy::{Network, PolicyConfig, Snapshot, evaluate};
    let n: u32 = if short { 20_000 } else { 1_000_000 };
    let config = PolicyConfig::default();
    let mut snapshots = vec![Snapshot::example(); 4];
    snapshots[1].network = Some(Network::Cellular);
    snapshots[2].power.low_power_mode = true;
    snapshots[3].account = None;
    let t = Instant::now();
    let mut blocked = 0usize;
    for i in 0..n {
        let d = evaluate(std::hint::black_box(&snapshots[i as usize % 4]), &config);
        blocked += d.classes.iter().filter(|c| !c.allowed).count();
    }
    let per_call = t.elapsed().as_secs_f64() / f64::from(n);
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(snapshots[i as usize % 4].clone());
    }
    let clone = t.elapsed().as_secs_f64() / f64::from(n);
    println!("bench policy: {n} evaluations over 4 snapshots ({blocked} blocked classes seen)");
    println!(
        "evaluate: {:.2} µs per call   (target < 5 µs)",
        per_call * 1e6
    );
    println!(
        "snapshot clone baseline: {:.3} µs; evaluate / clone = {:.1}",
        clone * 1e6,
        per_call / clone
    );
    Ok(())
}

/// A ChunkStore that discards uploads and serves downloads from memory: the wire's ceiling.
#[derive(Clone)]
struct DiscardStore {
    chunks: Arc<Vec<(ChunkId, Bytes)>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn not_here<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the discard baseline only streams"))
}

#[tonic::async_trait]
impl ChunkStore for DiscardStore {
    async fn begin_session(
        &self,
        _: Request<pb::BeginSessionRequest>,
    ) -> Result<Response<pb::BeginSessionResponse>, Status> {
        not_here()
    }
    async fn renew_session(
        &self,
        _: Request<pb::RenewSessionRequest>,
    ) -> Result<Response<pb::RenewSessionResponse>, Status> {
        not_here()
    }
    async fn end_session(
        &self,
        _: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        not_here()
    }
    async fn find_missing(
        &self,
        _: Request<pb::FindMissingRequest>,
    ) -> Result<Response<pb::FindMissingResponse>, Status> {
        not_here()
    }

    type PutChunksStream = BoxStream<pb::PutChunksResponse>;

    async fn put_chunks(
        &self,
        request: Request<Streaming<pb::PutChunksRequest>>,
    ) -> Result<Response<Self::PutChunksStream>, Status> {
        let mut inbound = request.into_inner();
        let acks = async_stream_acks(async move {
            let mut ids = Vec::new();
            while let Some(msg) = inbound.message().await? {
                ids.extend(msg.chunks.into_iter().map(|c| c.id));
            }
            Ok(pb::PutChunksResponse {
                acknowledged_ids: ids,
                new_bytes: 0,
            })
        });
        Ok(Response::new(acks))
    }

    type GetChunksStream = BoxStream<pb::GetChunksResponse>;

    async fn get_chunks(
        &self,
        _: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        // Same message shape as the store: 16 chunks of 64 KiB, about 1 MiB per message.
        let chunks = self.chunks.clone();
        let stream = tokio_stream::iter((0..chunks.len().div_ceil(16)).map(move |m| {
            Ok(pb::GetChunksResponse {
                chunks: chunks[m * 16..((m + 1) * 16).min(chunks.len())]
                    .iter()
                    .map(|(id, data)| pb::Chunk {
                        id: id_bytes(id),
                        data: data.clone(),
                    })
                    .collect(),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn put_manifest(
        &self,
        _: Request<pb::PutManifestRequest>,
    ) -> Result<Response<pb::PutManifestResponse>, Status> {
        not_here()
    }
    async fn get_manifest(
        &self,
        _: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        not_here()
    }
    async fn reference(
        &self,
        _: Request<pb::ReferenceRequest>,
    ) -> Result<Response<pb::ReferenceResponse>, Status> {
        not_here()
    }
    async fn release(
        &self,
        _: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        not_here()
    }
    async fn get_usage(
        &self,
        _: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        not_here()
    }
    async fn scrub(
        &self,
        _: Request<pb::ScrubRequest>,
    ) -> Result<Response<pb::ScrubResponse>, Status> {
        not_here()
    }
    async fn collect_garbage(
        &self,
        _: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        not_here()
    }
    async fn recheck(
        &self,
        _: Request<pb::RecheckRequest>,
    ) -> Result<Response<pb::RecheckResponse>, Status> {
        not_here()
    }
}

fn async_stream_acks(
    fut: impl std::future::Future<Output = Result<pb::PutChunksResponse, Status>> + Send + 'static,
) -> BoxStream<pb::PutChunksResponse> {
    Box::pin(futures::stream::once(fut))
}
