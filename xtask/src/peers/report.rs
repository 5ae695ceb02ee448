//! The table the run prints, each figure beside its baseline.

use super::*;

pub(super) struct Report {
    pub(super) files: usize,
    pub(super) videos: usize,
    pub(super) total: u64,
    pub(super) edited: usize,
    pub(super) cp: Measured,
    pub(super) chunk_gib_s: f64,
    pub(super) discard_gib_s: f64,
    pub(super) ks: KeepsakeFigures,
    pub(super) rs: RsyncFigures,
    pub(super) rt: ResticFigures,
    pub(super) st: SyncthingFigures,
}

/// Bytes in the unit that keeps a small figure readable.
pub(super) fn mib(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub(super) fn row(name: &str, c: &Cost) -> String {
    format!(
        "| {name} | {:.1} s | {:.1} s | {} | {} |",
        c.wall_s,
        c.cpu_s,
        mib(c.peak_kib << 10),
        c.wire.map_or("—".into(), mib)
    )
}

pub(super) fn report(r: &Report) {
    let ks = &r.ks;
    let lib_gib = gib(r.total);
    println!(
        "\nbench peers: {} files ({} videos), {}; {} edited",
        r.files,
        r.videos,
        mib(r.total),
        r.edited
    );
    println!("\n| baseline | value |\n|---|---|");
    println!("| cp -r + sync, same disk | {:.1} s |", r.cp.cost.wall_s);
    println!(
        "| FastCDC + BLAKE3 (+ file hash), 2 threads | {:.2} GiB/s ({:.1} s for the library) |",
        r.chunk_gib_s,
        lib_gib / r.chunk_gib_s
    );
    println!(
        "| discard tonic stream, loopback | {:.2} GiB/s ({:.1} s for the library) |",
        r.discard_gib_s,
        lib_gib / r.discard_gib_s
    );
    println!("\n| 1. first sync | wall | CPU | peak memory | wire |\n|---|---|---|---|---|");
    println!("{}", row("Keepsake A → cloud → B", &ks.first));
    println!("{}", row("syncthing A → B", &r.st.first));
    println!("{}", row("rsync → daemon (one hop, no fsync)", &r.rs.first));
    println!("{}", row("restic backup (local repository)", &r.rt.first));
    println!("{}", row("cp -r + sync", &r.cp.cost));
    println!("\n| 3. 1% edits | wall | CPU | peak memory | wire |\n|---|---|---|---|---|");
    println!("{}", row("Keepsake A → cloud → B", &ks.edits));
    println!("{}", row("syncthing A → B", &r.st.edits));
    println!("{}", row("rsync → daemon", &r.rs.edits));
    println!("{}", row("restic incremental backup", &r.rt.edits));
    let ratio = |a: f64, b: f64| a / b;
    println!("\n| figure | value | target |\n|---|---|---|");
    println!(
        "| first sync: Keepsake / syncthing | {:.2} | ≤ 1.0 (moonshot ≤ 0.8) |",
        ratio(ks.first.wall_s, r.st.first.wall_s)
    );
    let [server, a, b] = ks.first_cpu;
    println!(
        "| first sync, CPU-seconds per GiB: Keepsake server / A / B (all) against syncthing (both ends) and restic | {:.1} / {:.1} / {:.1} ({:.1}) against {:.1} and {:.1} | (context) |",
        server / lib_gib,
        a / lib_gib,
        b / lib_gib,
        (server + a + b) / lib_gib,
        r.st.first.cpu_s / lib_gib,
        r.rt.first.cpu_s / lib_gib
    );
    println!(
        "| first sync: Keepsake / rsync | {:.2} | aim ≤ 1.0 |",
        ratio(ks.first.wall_s, r.rs.first.wall_s)
    );
    println!(
        "| first sync: Keepsake / cp | {:.2} | (context) |",
        ratio(ks.first.wall_s, r.cp.cost.wall_s)
    );
    println!(
        "| first sync: Keepsake / restic backup | {:.2} | (context) |",
        ratio(ks.first.wall_s, r.rt.first.wall_s)
    );
    let ingest_gib_s = lib_gib / ks.ingest_s;
    println!(
        "| ingest: library / time until A's folder is all in the cloud ({:.1} s), against raw chunk+hash on 2 threads | {:.2} ({:.2} GiB/s) | ≥ 0.7 |",
        ks.ingest_s,
        ingest_gib_s / r.chunk_gib_s,
        ingest_gib_s
    );
    let reinstall_wire = ks.reinstall.wire.unwrap_or(0);
    println!(
        "| 2. reinstall over a full copy: wire / library | {:.3}% ({}, {:.1} s) | ≤ 0.5% |",
        100.0 * reinstall_wire as f64 / r.total as f64,
        mib(reinstall_wire),
        ks.reinstall.wall_s
    );
    println!(
        "| 5. every file renamed on A, until B has the new names: wire / library (assets and paths checked unchanged) | {:.3}% ({}, {:.1} s) | ≤ 0.5% |",
        100.0 * ks.moves_wire as f64 / r.total as f64,
        mib(ks.moves_wire),
        ks.moves.wall_s
    );
    println!(
        "| 3. 1% edits: Keepsake upload wire / rsync literal | {:.2} ({} / {}) | ≤ 1.0 |",
        ratio(ks.edit_upload_wire as f64, r.rs.edit_literal as f64),
        mib(ks.edit_upload_wire),
        mib(r.rs.edit_literal)
    );
    println!(
        "| 3. 1% edits: Keepsake A's link both ways / rsync's whole wire (literal data + checksums + file list) | {:.2} ({} / {}) | (context) |",
        ratio(
            ks.edit_link_wire as f64,
            r.rs.edits.wire.unwrap_or(0) as f64
        ),
        mib(ks.edit_link_wire),
        mib(r.rs.edits.wire.unwrap_or(0))
    );
    println!(
        "| 3. 1% edits: restic added to its repository | {} | (context) |",
        mib(r.rt.added_bytes)
    );
    println!(
        "| 3. one photo edited on A → on B, median (Keepsake, {} edits / syncthing, {}) | {:.0} ms / {:.0} ms | ≤ 1 s |",
        ks.edit_latency_ms.len(),
        r.st.edit_latency_ms.len(),
        median(&ks.edit_latency_ms),
        median(&r.st.edit_latency_ms)
    );
    let m = &ks.metadata;
    println!(
        "| 4. {} metadata changes on A: sent in / visible on B after | {:.1} s / {:.1} s ({} to B) | — |",
        m["changes"],
        m["sent_seconds"].as_f64().unwrap_or(f64::NAN),
        m["visible_seconds"].as_f64().unwrap_or(f64::NAN),
        mib(ks.metadata_wire)
    );
    println!(
        "| 4. one metadata change → B's journal, median / max of 20 | {:.0} / {:.0} ms | ≤ 1 s |",
        m["probe_median_ms"].as_f64().unwrap_or(f64::NAN),
        m["probe_max_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "| server peak memory over the whole run | {} | ≤ 256 MiB |",
        mib(ks.server_peak_kib << 10)
    );
    println!(
        "| restic repository after the first backup | {} ({:.2}× the library) | (context) |",
        mib(r.rt.repo_bytes),
        r.rt.repo_bytes as f64 / r.total as f64
    );
}
