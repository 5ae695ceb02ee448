//! The SQLite index: where every chunk lives, who owns it, and what holds it.

use keepsake_sql::Db;
use rusqlite::Connection;

const V1: &str = "
CREATE TABLE packs (
    pack_id    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    hash       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    -- Set once the index no longer points into the pack; deleted after a grace period.
    retired_at INTEGER
);
CREATE TABLE chunks (
    id          BLOB PRIMARY KEY,
    pack_id     INTEGER NOT NULL REFERENCES packs(pack_id),
    offset      INTEGER NOT NULL,
    len         INTEGER NOT NULL,
    is_manifest INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX chunks_by_pack ON chunks(pack_id);
-- The one composite index FindMissing needs: (account, chunk).
CREATE TABLE owners (
    account TEXT NOT NULL,
    chunk   BLOB NOT NULL,
    PRIMARY KEY (account, chunk)
) WITHOUT ROWID;
CREATE INDEX owners_by_chunk ON owners(chunk);
CREATE TABLE usage (
    account TEXT PRIMARY KEY,
    bytes   INTEGER NOT NULL,
    chunks  INTEGER NOT NULL
);
CREATE TABLE sessions (
    session_id     TEXT PRIMARY KEY,
    account        TEXT NOT NULL,
    request_id     TEXT,
    expected_bytes INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    UNIQUE (account, request_id)
);
CREATE TABLE session_pins (
    session_id TEXT NOT NULL,
    chunk      BLOB NOT NULL,
    PRIMARY KEY (session_id, chunk)
) WITHOUT ROWID;
CREATE TABLE manifest_chunks (
    manifest BLOB NOT NULL,
    chunk    BLOB NOT NULL,
    PRIMARY KEY (manifest, chunk)
) WITHOUT ROWID;
CREATE TABLE refs (
    account    TEXT NOT NULL,
    manifest   BLOB NOT NULL,
    holder     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account, manifest, holder)
) WITHOUT ROWID;
";

/// Sets a connection up so that a committed transaction survives power loss (WAL +
/// synchronous=FULL) and waits for, rather than fails on, a busy database. Every
/// Keepsake index that acknowledges writes opens its connection through this.
pub fn durable_sqlite(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
}

/// Opens another connection to the index at `path` that may only read (`query_only`): in
/// WAL mode it sees every committed write without waiting for the writer.
pub fn reader(path: &std::path::Path) -> Result<Db, crate::StoreError> {
    let conn = Connection::open(path).map_err(keepsake_sql::SqlError::from)?;
    conn.pragma_update(None, "query_only", "ON")
        .map_err(keepsake_sql::SqlError::from)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(keepsake_sql::SqlError::from)?;
    Ok(Db::sqlite(conn)?)
}

/// Packs carry no whole-pack hash: every record is the BLAKE3 of its bytes already, so
/// scrub verifies records, and hashing each pack again on write cost a pass over every
/// byte uploaded.
const V2: &str = "ALTER TABLE packs DROP COLUMN hash;";

/// `offset` is a word PostgreSQL reserves.
const V3: &str = "ALTER TABLE chunks RENAME COLUMN offset TO pack_offset;";

/// Every schema version, oldest first; the same list on SQLite and PostgreSQL.
const STEPS: &[&str] = &[V1, V2, V3];

/// Index pages of 1 KiB instead of SQLite's 4 KiB. A batch inserts rows under random 32-byte
/// keys into three trees (`chunks`, `owners`, `owners_by_chunk`), touching about one leaf
/// per row, and its commit writes every touched page whole into the WAL: smaller pages write
/// less for the same rows. The store's SQLite writes over the 2 GiB benchmark's first sync
/// fell from ~900 to ~400 MiB with this and [`CHECKPOINT_PAGES`] (docs/benchmarks.md).
const INDEX_PAGE_BYTES: i64 = 1024;

/// WAL pages between automatic checkpoints (SQLite's default is 1,000): a leaf rewritten
/// by many batches is copied into the database once per checkpoint, so fewer checkpoints
/// copy fewer pages. 16 MiB of WAL at [`INDEX_PAGE_BYTES`].
const CHECKPOINT_PAGES: i64 = 16_384;

/// Opens the index with the durability the store's acknowledgements rely on.
pub fn prepare(db: &mut Db) -> Result<(), crate::StoreError> {
    if let Some(conn) = db.as_sqlite() {
        // Takes effect only on an index not yet written; an older one keeps its pages.
        conn.pragma_update(None, "page_size", INDEX_PAGE_BYTES)
            .map_err(keepsake_sql::SqlError::from)?;
        durable_sqlite(conn).map_err(keepsake_sql::SqlError::from)?;
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)
            .map_err(keepsake_sql::SqlError::from)?;
    }
    db.migrate("store", STEPS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_size(db: &Db) -> i64 {
        db.query_row("PRAGMA page_size", (), |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_new_index_writes_small_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.sqlite");
        let mut db = Db::open_sqlite(Some(&fresh)).unwrap();
        prepare(&mut db).unwrap();
        assert_eq!(page_size(&db), INDEX_PAGE_BYTES);
        let checkpoint: i64 = db
            .query_row("PRAGMA wal_autocheckpoint", (), |r| r.get(0))
            .unwrap();
        assert_eq!(checkpoint, CHECKPOINT_PAGES);

        let old = dir.path().join("old.sqlite");
        {
            let mut db = Db::open_sqlite(Some(&old)).unwrap();
            durable_sqlite(db.as_sqlite().unwrap()).unwrap();
            db.migrate("store", STEPS).unwrap();
            assert_eq!(page_size(&db), 4096);
        }
        let mut db = Db::open_sqlite(Some(&old)).unwrap();
        prepare(&mut db).unwrap();
        assert_eq!(page_size(&db), 4096, "written pages are never resized");
        db.execute(
            "INSERT INTO packs (name, size, created_at) VALUES ('packs/ab/x', 1, 1)",
            (),
        )
        .unwrap();
    }

    #[test]
    fn an_index_from_before_v2_keeps_its_packs_and_loses_only_their_hashes() {
        let mut conn = Db::open_sqlite(None).unwrap();
        conn.migrate("store", &[V1]).unwrap();
        conn.execute(
            "INSERT INTO packs (name, hash, size, created_at) VALUES ('packs/ab/old', 'h', 7, 1)",
            (),
        )
        .unwrap();
        prepare(&mut conn).unwrap();
        let old: (String, i64) = conn
            .query_row("SELECT name, size FROM packs", (), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(old, ("packs/ab/old".to_string(), 7));
        conn.execute(
            "INSERT INTO packs (name, size, created_at) VALUES ('packs/cd/new', 9, 2)",
            (),
        )
        .unwrap();
        assert!(
            conn.query("SELECT hash FROM packs", ()).is_err(),
            "the column is gone"
        );
    }
}
