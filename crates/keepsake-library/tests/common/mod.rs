//! Where the tests' libraries and stores keep their rows: in memory (SQLite), or — when
//! `KEEPSAKE_TEST_POSTGRES` names a database, as `cargo xtask ci` does in its PostgreSQL
//! step — each in a fresh schema there, so the same tests prove both engines.

#![allow(dead_code)]

use keepsake_library::{Library, LibraryConfig, LibraryError};
use keepsake_store::{Clock, Entropy, IndexAt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

fn fresh_schema(component: &str) -> Option<(String, String)> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let url = std::env::var("KEEPSAKE_TEST_POSTGRES").ok()?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Some((url, format!("{component}_{}_{n}", std::process::id())))
}

/// `Library::open`, on PostgreSQL when the tests run there and the index is not a file.
pub fn open_library(
    index_path: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    config: LibraryConfig,
) -> Result<Library, LibraryError> {
    match (index_path, fresh_schema("library")) {
        (None, Some((url, schema))) => Library::open_on(
            keepsake_sql::Db::postgres(&url, &schema)?,
            clock,
            entropy,
            config,
        ),
        (path, _) => Library::open(path, clock, entropy, config),
    }
}

/// A store index in memory, or a fresh PostgreSQL schema.
pub fn store_index() -> IndexAt {
    match fresh_schema("store") {
        Some((url, schema)) => IndexAt::Postgres { url, schema },
        None => IndexAt::Memory,
    }
}

/// How many property-test cases to run: all of them on SQLite, an eighth on PostgreSQL,
/// where every case makes a schema of its own (~70 ms of DDL) — the same properties, fewer
/// random libraries, so CI's PostgreSQL step stays short.
pub fn cases(sqlite: u32) -> u32 {
    if std::env::var_os("KEEPSAKE_TEST_POSTGRES").is_some() {
        (sqlite / 8).max(8)
    } else {
        sqlite
    }
}
