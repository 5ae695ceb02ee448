//! What an import has done, kept on disk, so that running the same import again after an
//! interruption goes on where it stopped: the folder it chose in `Imports/`, and every
//! entry already imported or found already there (which is then not even read again).

use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::Path;

/// The import journal (one SQLite file for every import run on this machine).
pub struct Journal {
    db: Connection,
}

/// An entry as the journal knows it: its size and time when it was done.
pub type Seen = (u64, Option<i64>);

impl Journal {
    /// Opens (or makes) the journal at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let db = Connection::open(path)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS imports (
                 source TEXT PRIMARY KEY,
                 destination TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS done (
                 source TEXT NOT NULL,
                 path TEXT NOT NULL,
                 size INTEGER NOT NULL,
                 modified_ms INTEGER,
                 PRIMARY KEY (source, path)
             );",
        )?;
        Ok(Self { db })
    }

    /// The folder in the library this source imports into: the one chosen the first time
    /// (a resumed import goes on in the same folder, whatever the date), else `proposed`.
    pub fn destination(&self, source: &str, proposed: &str) -> rusqlite::Result<String> {
        self.db.execute(
            "INSERT OR IGNORE INTO imports (source, destination) VALUES (?1, ?2)",
            params![source, proposed],
        )?;
        self.db.query_row(
            "SELECT destination FROM imports WHERE source = ?1",
            params![source],
            |r| r.get(0),
        )
    }

    /// Every entry of `source` done in an earlier run.
    pub fn done(&self, source: &str) -> rusqlite::Result<HashMap<String, Seen>> {
        let mut stmt = self
            .db
            .prepare("SELECT path, size, modified_ms FROM done WHERE source = ?1")?;
        let rows = stmt.query_map(params![source], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, i64>(1)? as u64, r.get(2)?),
            ))
        })?;
        rows.collect()
    }

    /// Records an entry as done (imported, or already in the library).
    pub fn record(&self, source: &str, path: &str, seen: Seen) -> rusqlite::Result<()> {
        self.db.execute(
            "INSERT OR REPLACE INTO done (source, path, size, modified_ms) VALUES (?1, ?2, ?3, ?4)",
            params![source, path, seen.0 as i64, seen.1],
        )?;
        Ok(())
    }
}
