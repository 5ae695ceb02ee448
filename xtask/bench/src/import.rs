//! `cargo xtask bench import`: a Takeout archive (photo-like bytes and their sidecars)
//! brought into an empty library over loopback gRPC by `keepsake_import`, against the raw
//! chunk+hash rate of the same bytes in the same run — the work an import cannot avoid.

use crate::library::serve_cloud;
use anyhow::Result;
use keepsake_delta::{ChunkParams, manifest_of};
use keepsake_store::{OsEntropy, Store, StoreConfig, SystemClock};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Runs the import benchmark.
pub async fn run(root: &Path, short: bool) -> Result<()> {
    let (photos, size) = if short { (40, 2 << 20) } else { (200, 3 << 20) };
    let tmp_root = root.join("target/bench-tmp");
    std::fs::create_dir_all(&tmp_root)?;
    let tmp = tempfile::tempdir_in(&tmp_root)?;
    let files: Vec<Vec<u8>> = (0..photos)
        .map(|i: u32| {
            let mut data = vec![0u8; size];
            blake3::Hasher::new_derive_key("keepsake bench import")
                .update(&i.to_le_bytes())
                .finalize_xof()
                .fill(&mut data);
            data
        })
        .collect();
    let total: usize = files.iter().map(Vec::len).sum();
    println!(
        "bench import: {photos} photos of {} MiB in a Takeout zip",
        size >> 20
    );

    // The floor: chunking and hashing the same bytes, in memory, on this machine now.
    let t = Instant::now();
    for data in &files {
        let manifest = manifest_of(data, ChunkParams::for_len(data.len() as u64));
        std::hint::black_box(manifest);
    }
    let floor = total as f64 / t.elapsed().as_secs_f64();

    let archive = tmp.path().join("takeout-001.zip");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&archive)?);
        // Takeout stores photos deflated; they do not shrink, so storing them is the same
        // bytes to read without timing a compressor.
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (i, data) in files.iter().enumerate() {
            let name = format!("Takeout/Google Photos/Photos from 2020/IMG_{i:04}.jpg");
            zip.start_file(name.as_str(), stored)?;
            zip.write_all(data)?;
            zip.start_file(format!("{name}.supplemental-metadata.json"), stored)?;
            let sidecar = serde_json::json!({
                "title": format!("IMG_{i:04}.jpg"),
                "photoTakenTime": {"timestamp": (1_580_000_000 + i * 60).to_string()},
                "geoData": {"latitude": 48.85, "longitude": 2.35},
                "favorited": i % 10 == 0,
            });
            zip.write_all(sidecar.to_string().as_bytes())?;
        }
        zip.finish()?;
    }
    drop(files);

    let store = Arc::new(Store::open_local(
        &tmp.path().join("store"),
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        StoreConfig::default(),
    )?);
    let server = serve_cloud(tmp.path(), store).await?;
    let mut cloud = keepsake_transport::cloud_client::CloudClient::new(
        keepsake_transport::client::connect(&server.url).await?,
        keepsake_transport::client::BearerAuth::new(&server.token),
        keepsake_transport::cloud_client::ClientConfig::default(),
    );
    let source = keepsake_import::Source::open(&archive)?;
    let journal = keepsake_import::Journal::open(&tmp.path().join("imports.sqlite3"))?;
    let options = keepsake_import::Options {
        account: "bench".into(),
        keep_duplicates: false,
        spool: tmp.path().to_path_buf(),
        clock: Arc::new(SystemClock),
    };
    let t = Instant::now();
    let summary =
        keepsake_import::import(&mut cloud, &source, &journal, &options, &mut |_| {}).await?;
    let took = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.imported == u64::from(photos) && summary.skipped.is_empty(),
        "the import did not take every photo: {summary:?}"
    );
    let rate = total as f64 / took;
    let mib = |r: f64| r / f64::from(1u32 << 20);
    println!();
    println!(
        "| import of {photos} photos ({} MiB) | figure |",
        total >> 20
    );
    println!("|---|---|");
    println!(
        "| chunk + hash in memory (floor) | {:.0} MiB/s |",
        mib(floor)
    );
    println!(
        "| import over loopback, durable | {:.0} MiB/s ({:.1} photos/s) |",
        mib(rate),
        f64::from(photos) / took
    );
    println!();
    println!("import rate / chunk+hash rate = {:.2}", rate / floor);
    Ok(())
}
