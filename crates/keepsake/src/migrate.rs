//! `keepsake migrate`: an embedded server (SQLite + packs under --data) moved up to
//! PostgreSQL + an S3 bucket. Packs go first, each verified chunk by chunk before it leaves
//! and read back whole after, so no copied row ever points at a missing or wrong byte; then
//! every row, table by table, in one transaction each. A rerun skips what landed (objects of
//! the same size, rows by key): an interrupted move resumes. The devices go on unchanged —
//! the same ids, tokens, keys and content addresses — and send nothing again.

use anyhow::{Context, Result, bail};
use keepsake_sql::{Db, Value};
use keepsake_store::pack::{Slot, record_in, verify_record};
use keepsake_store::{
    Backend, ChunkId, IndexAt, LocalFsBackend, OsEntropy, S3Backend, S3Location, Store,
    StoreConfig, StoreParts, SystemClock,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file that marks a data directory whose library moved away.
pub const MOVED_MARKER: &str = "moved-to-postgres.json";

/// Copies the server data in `data` to `database` (PostgreSQL) and `blobs` (S3).
pub fn run(data: &Path, database: &str, blobs: &str) -> Result<()> {
    let _lock = crate::lock_data(data)?;
    let library_file = data.join("library.sqlite");
    let index_file = data.join("store/index.sqlite");
    if !library_file.exists() || !index_file.exists() {
        bail!(
            "{} holds no embedded server (library.sqlite and store/index.sqlite)",
            data.display()
        );
    }
    let location = S3Location::parse(blobs).map_err(anyhow::Error::msg)?;
    let bucket = S3Backend::connect(&location)
        .map_err(|e| anyhow::anyhow!("cannot use the bucket {blobs}: {e}"))?;
    let clock = Arc::new(SystemClock);
    let entropy = Arc::new(OsEntropy);

    // Both sides at this binary's schema, so their tables and columns are the same.
    let config = keepsake_library::LibraryConfig::default();
    drop(keepsake_library::Library::open(
        Some(library_file.clone()),
        clock.clone(),
        entropy.clone(),
        config.clone(),
    )?);
    drop(keepsake_library::Library::open_on(
        connect(database, crate::backends::LIBRARY_SCHEMA)?,
        clock.clone(),
        entropy.clone(),
        config,
    )?);
    let local = LocalFsBackend::open(data.join("store/objects"))?;
    drop(Store::open(StoreParts {
        backend: Arc::new(LocalFsBackend::open(data.join("store/objects"))?),
        index: IndexAt::File(index_file.clone()),
        clock: clock.clone(),
        entropy: entropy.clone(),
        config: StoreConfig::default(),
    })?);
    drop(Store::open(StoreParts {
        backend: Arc::new(LocalFsBackend::open(data.join("store/objects"))?),
        index: IndexAt::Postgres {
            url: database.to_string(),
            schema: crate::backends::STORE_SCHEMA.into(),
        },
        clock,
        entropy,
        config: StoreConfig::default(),
    })?);

    let index = Db::open_sqlite(Some(&index_file))?;
    copy_packs(&index, &local, &bucket)?;
    let mut store_target = connect(database, crate::backends::STORE_SCHEMA)?;
    copy_rows("store", &index, &mut store_target)?;
    store_target.execute_batch(
        "SELECT setval(pg_get_serial_sequence('packs', 'pack_id'),
                       GREATEST((SELECT MAX(pack_id) FROM packs), 1))",
    )?;
    let library = Db::open_sqlite(Some(&library_file))?;
    let mut library_target = connect(database, crate::backends::LIBRARY_SCHEMA)?;
    copy_rows("library", &library, &mut library_target)?;
    let marker = serde_json::json!({
        "database": crate::backends::redacted(database),
        "blobs": blobs,
    });
    std::fs::write(data.join(MOVED_MARKER), serde_json::to_vec_pretty(&marker)?)?;
    println!(
        "migrate: done. Start the server with --data {} --database {} --blobs {blobs}",
        data.display(),
        crate::backends::redacted(database)
    );
    Ok(())
}

fn connect(url: &str, schema: &str) -> Result<Db> {
    Db::postgres(url, schema)
        .with_context(|| format!("connecting to {}", crate::backends::redacted(url)))
}

/// Every indexed pack into the bucket, verified before and after; those already there (the
/// same size) are read back and checked, not sent again.
fn copy_packs(index: &Db, local: &LocalFsBackend, bucket: &S3Backend) -> Result<()> {
    let packs: Vec<(i64, String, u64)> = index.query_map(
        "SELECT pack_id, name, size FROM packs ORDER BY pack_id",
        (),
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut slots: HashMap<i64, Vec<(ChunkId, Slot)>> = HashMap::new();
    for row in index.query(
        "SELECT pack_id, id, pack_offset, len FROM chunks ORDER BY pack_id, pack_offset",
        (),
    )? {
        let id: Vec<u8> = row.get(1)?;
        slots.entry(row.get(0)?).or_default().push((
            ChunkId::from_slice(&id).context("a chunk id in the index is malformed")?,
            Slot {
                offset: row.get(2)?,
                len: row.get(3)?,
            },
        ));
    }
    let there: HashMap<String, u64> = bucket
        .list("")?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let total: u64 = packs.iter().map(|p| p.2).sum();
    let (mut done, mut sent, mut skipped) = (0u64, 0usize, 0usize);
    for (i, (pack_id, name, size)) in packs.iter().enumerate() {
        let bytes = match local.get(name) {
            Ok(b) => b,
            Err(keepsake_store::BackendError::NotFound(_)) => {
                // Retired and deleted, or lost: scrub reports a lost one; nothing to carry.
                println!("migrate: pack {name} is not on disk; skipped");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let empty = Vec::new();
        for (id, slot) in slots.get(pack_id).unwrap_or(&empty) {
            verify_record(id, *slot, record_in(&bytes, *slot)).with_context(|| {
                format!(
                    "chunk {} in pack {name} is corrupt on disk: run `keepsake scrub` first",
                    id.to_hex()
                )
            })?;
        }
        if there.get(name) == Some(size) {
            skipped += 1;
        } else {
            bucket.put(name, &bytes)?;
            sent += 1;
        }
        let back = bucket.get(name)?;
        if blake3::hash(&back) != blake3::hash(&bytes) {
            bail!("pack {name} read back from the bucket differs from the one on disk");
        }
        done += size;
        if i % 50 == 0 || i + 1 == packs.len() {
            println!(
                "migrate: packs {}/{} ({} of {} MiB), verified",
                i + 1,
                packs.len(),
                done >> 20,
                total >> 20
            );
        }
    }
    println!("migrate: {sent} packs sent, {skipped} already in the bucket");
    Ok(())
}

/// Every row of every table in `from` into the same table in `to`, a table per transaction;
/// rows whose key is there already are kept (a rerun resumes), keyless tables are replaced.
fn copy_rows(what: &str, from: &Db, to: &mut Db) -> Result<()> {
    let mut waiting: Vec<String> = from.query_map(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
         ORDER BY name",
        (),
        |r| r.get(0),
    )?;
    // A table after those its foreign keys point at (the store's chunks after its packs).
    let mut tables = Vec::new();
    while !waiting.is_empty() {
        let before = waiting.len();
        let mut i = 0;
        while i < waiting.len() {
            let targets: Vec<String> = from.query_map(
                &format!("PRAGMA foreign_key_list({})", waiting[i]),
                (),
                |r| r.get(2),
            )?;
            if targets
                .iter()
                .all(|t| tables.contains(t) || *t == waiting[i])
            {
                tables.push(waiting.remove(i));
            } else {
                i += 1;
            }
        }
        if waiting.len() == before {
            bail!("the {what} tables' foreign keys form a cycle: {waiting:?}");
        }
    }
    for table in tables {
        let info = from.query(&format!("PRAGMA table_info({table})"), ())?;
        let columns: Vec<String> = info.iter().map(|r| r.get(1)).collect::<Result<_, _>>()?;
        let keyed = info
            .iter()
            .any(|r| r.get::<_, i64>(5).is_ok_and(|pk| pk > 0));
        let rows = from.query(&format!("SELECT {} FROM {table}", columns.join(", ")), ())?;
        let tx = to.transaction()?;
        if !keyed {
            tx.execute(&format!("DELETE FROM {table}"), ())?;
        }
        let per_statement = (2000 / columns.len().max(1)).max(1);
        let mut copied = 0usize;
        for batch in rows.chunks(per_statement) {
            let mut sql = format!(
                "INSERT INTO {table} ({}) VALUES ",
                columns
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut values: Vec<Value> = Vec::with_capacity(batch.len() * columns.len());
            for (r, row) in batch.iter().enumerate() {
                if r > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for c in 0..columns.len() {
                    if c > 0 {
                        sql.push_str(", ");
                    }
                    values.push(row.get(c)?);
                    sql.push_str(&format!("?{}", values.len()));
                }
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT DO NOTHING");
            copied += tx.execute(&sql, values)?;
        }
        tx.commit()?;
        println!(
            "migrate: {what}.{table}: {} rows ({copied} new)",
            rows.len()
        );
    }
    Ok(())
}

/// Refuses to serve a data directory whose library moved to PostgreSQL from its old
/// SQLite copy: two libraries diverging would lose whatever each missed.
pub fn refuse_moved(data: &Path, database: Option<&str>) -> Result<()> {
    let marker: PathBuf = data.join(MOVED_MARKER);
    if database.is_none() && marker.exists() {
        let text = std::fs::read_to_string(&marker).unwrap_or_default();
        bail!(
            "this data directory was moved to PostgreSQL + S3 ({}): start the server with \
             --database and --blobs, or delete {} to serve the old copy",
            text.split_whitespace().collect::<Vec<_>>().join(" "),
            marker.display()
        );
    }
    Ok(())
}
