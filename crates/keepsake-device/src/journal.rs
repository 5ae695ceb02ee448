//! The device's journal: what each file in the folder is, what the cloud acknowledged,
//! where the feed was read to. SQLite, outside the library folder.

use crate::cloud::{Edit, Hlc};
use keepsake_store::{ChunkId, Manifest, ManifestId};
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use std::path::Path;

const V1: &str = "
-- One row per file in the folder, by path relative to it.
CREATE TABLE files (
    path      TEXT PRIMARY KEY,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    inode     INTEGER NOT NULL,
    file_hash BLOB NOT NULL,
    asset_id  TEXT,
    version   INTEGER,
    -- pending: not yet in the cloud; synced: the cloud holds this exact content.
    state     TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX files_by_asset ON files(asset_id);
CREATE INDEX files_by_hash ON files(file_hash);
-- Chunks the cloud acknowledged as durable, per file content: never sent twice.
CREATE TABLE acked (
    file_hash BLOB NOT NULL,
    chunk     BLOB NOT NULL,
    PRIMARY KEY (file_hash, chunk)
) WITHOUT ROWID;
-- The device's Recently Deleted: files moved out of the folder because their asset was trashed.
CREATE TABLE trashed (
    asset_id  TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    stored_as TEXT NOT NULL,
    file_hash BLOB NOT NULL,
    version   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

const V2: &str = "
-- What the device knows of each asset's metadata (the feed's view, newest first).
CREATE TABLE meta (
    asset_id TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    state    TEXT NOT NULL,
    favorite INTEGER NOT NULL,
    hidden   INTEGER NOT NULL
) WITHOUT ROWID;
-- Live albums and their members (a JSON array of asset ids).
CREATE TABLE albums (
    album_id TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    members  TEXT NOT NULL
) WITHOUT ROWID;
-- Edits made on this device that the cloud has not acknowledged yet, in order.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    edit       TEXT NOT NULL,
    wall_ms    INTEGER NOT NULL,
    counter    INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
";

const V4: &str = "
-- Manifests of versions this device recently sent or fetched, newest `used` last: the
-- base of an edit, so an edit needs no round trip to learn what its previous version was.
CREATE TABLE manifests (
    id   BLOB PRIMARY KEY,
    body BLOB NOT NULL,
    used INTEGER NOT NULL
);
CREATE INDEX manifests_by_use ON manifests (used);
";

const V5: &str = "
-- A file is an asset, at its own path. `lib_path`: the asset's path in the library as
-- this device last agreed with it (NULL until committed or downloaded); the file may sit
-- under another name here (the library numbered a camera's IMG_0001, or this file system
-- refused a character). `nonce`: this file's own identity in its first commit's request
-- id, so two new files with the same bytes are two commits, not one.
ALTER TABLE files ADD COLUMN lib_path TEXT;
ALTER TABLE files ADD COLUMN nonce INTEGER NOT NULL DEFAULT 0;
";

/// How many recent manifests the journal keeps: edits are mostly of recent photos.
pub const KEPT_MANIFESTS: i64 = 256;
/// Larger manifests (long videos) are fetched when needed rather than kept.
pub const KEPT_MANIFEST_MAX_BYTES: usize = 64 << 10;

const V3: &str = "
-- Originals the device does not hold (Optimize Storage): in the cloud only, until opened.
CREATE TABLE cloud_only (
    asset_id  TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    manifest  BLOB NOT NULL,
    file_hash BLOB NOT NULL,
    size      INTEGER NOT NULL
) WITHOUT ROWID;
-- Each asset's current version as the feed last said: what eviction checks a file
-- against, and where its preview is.
CREATE TABLE current (
    asset_id TEXT PRIMARY KEY,
    version  INTEGER NOT NULL,
    manifest BLOB NOT NULL,
    preview  BLOB
) WITHOUT ROWID;
";

/// A file as the journal last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub file_hash: ChunkId,
    pub asset_id: Option<String>,
    pub version: Option<u32>,
    pub synced: bool,
    /// The asset's library path as this device last agreed with it.
    pub lib_path: Option<String>,
    /// This file's identity in the request id of its first commit.
    pub nonce: i64,
}

/// An entry of the device's Recently Deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashedRow {
    pub asset_id: String,
    pub name: String,
    pub stored_as: String,
    pub file_hash: ChunkId,
    pub version: u32,
}

pub struct Journal {
    db: Connection,
}

fn id(bytes: Vec<u8>) -> rusqlite::Result<ChunkId> {
    ChunkId::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        path: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        mtime_ns: r.get(2)?,
        inode: r.get::<_, i64>(3)? as u64,
        file_hash: id(r.get(4)?)?,
        asset_id: r.get(5)?,
        version: r.get(6)?,
        synced: r.get::<_, String>(7)? == "synced",
        lib_path: r.get(8)?,
        nonce: r.get(9)?,
    })
}

const FILE_COLUMNS: &str =
    "path, size, mtime_ns, inode, file_hash, asset_id, version, state, lib_path, nonce";

impl Journal {
    pub fn open(path: &Path) -> Result<Self, crate::DeviceError> {
        let mut db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // The journal is knowledge the folder and the cloud can give back: a row lost to a
        // power cut only costs a re-hash and a content lookup (linked, 0 bytes), never a
        // wrong action, and the device acknowledges nothing to anyone. WAL keeps it
        // consistent; NORMAL spares an fsync per file.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        // The agent and its control service write from two connections.
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        Migrations::new(vec![M::up(V1), M::up(V2), M::up(V3), M::up(V4), M::up(V5)])
            .to_latest(&mut db)
            .map_err(|e| crate::DeviceError::Migration(e.to_string()))?;
        Ok(Self { db })
    }

    /// Opens a batch: the writes that follow share one transaction until [`Self::end_batch`]
    /// (a feed page's thousand rows cost one commit, not four thousand). A no-op when one
    /// is open. A batch is closed before any file in the folder is touched, so the journal
    /// never runs behind the folder by more than an uncommitted page of metadata.
    pub fn begin_batch(&self) -> rusqlite::Result<()> {
        if self.db.is_autocommit() {
            // Immediate: the control service writes from its own connection, and a
            // deferred batch could not upgrade while it does.
            self.db.execute_batch("BEGIN IMMEDIATE")?;
        }
        Ok(())
    }

    /// Commits the open batch, if any.
    pub fn end_batch(&self) -> rusqlite::Result<()> {
        if !self.db.is_autocommit() {
            self.db.execute_batch("COMMIT")?;
        }
        Ok(())
    }

    /// Writes that land together or not at all: a transaction of their own, or a savepoint
    /// inside the open batch.
    fn scope(&self) -> rusqlite::Result<Scope<'_>> {
        let nested = !self.db.is_autocommit();
        self.db.execute_batch(if nested {
            "SAVEPOINT scope"
        } else {
            "BEGIN IMMEDIATE"
        })?;
        Ok(Scope {
            db: &self.db,
            nested,
            open: true,
        })
    }

    /// Runs one statement through the connection's statement cache.
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.db.prepare_cached(sql)?.execute(params)
    }

    /// Reads one row through the connection's statement cache.
    fn one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.db.prepare_cached(sql)?.query_row(params, f)
    }

    /// What the journal remembers under `key`.
    pub fn get(&self, key: Key<'_>) -> rusqlite::Result<Option<String>> {
        self.one("SELECT value FROM kv WHERE key = ?1", [key.text()], |r| {
            r.get(0)
        })
        .optional()
    }

    /// Remembers `value` under `key`.
    pub fn set(&self, key: Key<'_>, value: &str) -> rusqlite::Result<()> {
        self.run(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
            params![key.text(), value],
        )?;
        Ok(())
    }

    pub fn files(&self) -> rusqlite::Result<Vec<FileRow>> {
        let mut stmt = self
            .db
            .prepare_cached(&format!("SELECT {FILE_COLUMNS} FROM files ORDER BY path"))?;
        stmt.query_map([], file_row)?.collect()
    }

    pub fn file(&self, path: &str) -> rusqlite::Result<Option<FileRow>> {
        self.one(
            &format!("SELECT {FILE_COLUMNS} FROM files WHERE path = ?1"),
            [path],
            file_row,
        )
        .optional()
    }

    pub fn file_of_asset(&self, asset_id: &str) -> rusqlite::Result<Option<FileRow>> {
        self.one(
            &format!("SELECT {FILE_COLUMNS} FROM files WHERE asset_id = ?1 ORDER BY path LIMIT 1"),
            [asset_id],
            file_row,
        )
        .optional()
    }

    /// A file with this content at another path, synced ones first (uses `files_by_hash`).
    pub fn file_with_hash(
        &self,
        file_hash: &ChunkId,
        other_than: &str,
    ) -> rusqlite::Result<Option<FileRow>> {
        self.one(
            &format!(
                "SELECT {FILE_COLUMNS} FROM files WHERE file_hash = ?1 AND path != ?2
                     ORDER BY state = 'synced' DESC, path LIMIT 1"
            ),
            params![&file_hash.0[..], other_than],
            file_row,
        )
        .optional()
    }

    pub fn upsert(&self, f: &FileRow) -> rusqlite::Result<()> {
        self.run(
            "INSERT INTO files (path, size, mtime_ns, inode, file_hash, asset_id, version, state,
                                lib_path, nonce)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (path) DO UPDATE SET size = ?2, mtime_ns = ?3, inode = ?4, file_hash = ?5,
                 asset_id = ?6, version = ?7, state = ?8, lib_path = ?9, nonce = ?10",
            params![
                f.path,
                f.size as i64,
                f.mtime_ns,
                f.inode as i64,
                &f.file_hash.0[..],
                f.asset_id,
                f.version,
                if f.synced { "synced" } else { "pending" },
                f.lib_path,
                f.nonce
            ],
        )?;
        Ok(())
    }

    /// A new number for a file first seen: its identity in its first commit.
    pub fn next_nonce(&self) -> rusqlite::Result<i64> {
        let tx = self.scope()?;
        let n: i64 = tx
            .query_row("SELECT value FROM kv WHERE key = 'file_nonce'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            + 1;
        tx.execute(
            "INSERT INTO kv (key, value) VALUES ('file_nonce', ?1)
             ON CONFLICT (key) DO UPDATE SET value = ?1",
            [n.to_string()],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Moves a file's row to another path in one transaction (a rename seen by the scan,
    /// or made by the device for a rename elsewhere).
    pub fn relocate(&self, from: &str, to: &FileRow) -> rusqlite::Result<()> {
        let tx = self.scope()?;
        tx.execute("DELETE FROM files WHERE path = ?1", [from])?;
        // Same connection: the upsert is part of the transaction.
        self.upsert(to)?;
        tx.commit()
    }

    pub fn remove(&self, path: &str) -> rusqlite::Result<()> {
        self.run("DELETE FROM files WHERE path = ?1", [path])?;
        Ok(())
    }

    pub fn record_acked(&self, file_hash: &ChunkId, chunks: &[ChunkId]) -> rusqlite::Result<()> {
        let tx = self.scope()?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR IGNORE INTO acked (file_hash, chunk) VALUES (?1, ?2)")?;
            for c in chunks {
                stmt.execute(params![&file_hash.0[..], &c.0[..]])?;
            }
        }
        tx.commit()
    }

    pub fn acked(&self, file_hash: &ChunkId) -> rusqlite::Result<Vec<ChunkId>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT chunk FROM acked WHERE file_hash = ?1")?;
        stmt.query_map([&file_hash.0[..]], |r| id(r.get(0)?))?
            .collect()
    }

    pub fn forget_acked(&self, file_hash: &ChunkId) -> rusqlite::Result<()> {
        self.run("DELETE FROM acked WHERE file_hash = ?1", [&file_hash.0[..]])?;
        Ok(())
    }

    pub fn trashed(&self, asset_id: &str) -> rusqlite::Result<Option<TrashedRow>> {
        self.one(
            "SELECT asset_id, name, stored_as, file_hash, version FROM trashed WHERE asset_id = ?1",
            [asset_id],
            |r| {
                Ok(TrashedRow {
                    asset_id: r.get(0)?,
                    name: r.get(1)?,
                    stored_as: r.get(2)?,
                    file_hash: id(r.get(3)?)?,
                    version: r.get(4)?,
                })
            },
        )
        .optional()
    }

    pub fn put_trashed(&self, t: &TrashedRow) -> rusqlite::Result<()> {
        self.run(
            "INSERT INTO trashed (asset_id, name, stored_as, file_hash, version) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (asset_id) DO UPDATE SET name = ?2, stored_as = ?3, file_hash = ?4, version = ?5",
            params![t.asset_id, t.name, t.stored_as, &t.file_hash.0[..], t.version],
        )?;
        Ok(())
    }

    pub fn remove_trashed(&self, asset_id: &str) -> rusqlite::Result<()> {
        self.run("DELETE FROM trashed WHERE asset_id = ?1", [asset_id])?;
        Ok(())
    }

    pub fn count_pending(&self) -> rusqlite::Result<u64> {
        self.one(
            "SELECT COUNT(*) FROM files WHERE state = 'pending'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
    }

    pub fn pending_bytes(&self) -> rusqlite::Result<u64> {
        self.one(
            "SELECT COALESCE(SUM(size), 0) FROM files WHERE state = 'pending'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
    }

    pub fn count_trashed(&self) -> rusqlite::Result<u64> {
        self.one("SELECT COUNT(*) FROM trashed", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }

    /// Queues an edit, stamped after every stamp this device has issued or seen.
    pub fn queue_edit(&self, edit: &Edit, now_ms: i64, device: &str) -> rusqlite::Result<Hlc> {
        let tx = self.scope()?;
        let last = read_clock(&tx)?;
        let stamp = if now_ms > last.0 {
            Hlc {
                wall_ms: now_ms,
                counter: 0,
                device: device.to_string(),
            }
        } else {
            Hlc {
                wall_ms: last.0,
                counter: last.1 + 1,
                device: device.to_string(),
            }
        };
        write_clock(&tx, stamp.wall_ms, stamp.counter)?;
        let body = serde_json::to_string(edit)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        tx.execute(
            "INSERT INTO outbox (edit, wall_ms, counter) VALUES (?1, ?2, ?3)",
            params![body, stamp.wall_ms, stamp.counter],
        )?;
        tx.commit()?;
        Ok(stamp)
    }

    /// Moves the device's clock past a stamp received from the cloud.
    pub fn observe_clock(&self, seen: &Hlc) -> rusqlite::Result<()> {
        let tx = self.scope()?;
        let last = read_clock(&tx)?;
        if (seen.wall_ms, seen.counter) > last {
            write_clock(&tx, seen.wall_ms, seen.counter)?;
        }
        tx.commit()
    }

    /// Queued edits in the order they were made: (seq, edit, stamp's wall and counter).
    pub fn outbox(&self) -> rusqlite::Result<Vec<(i64, Edit, i64, u32)>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT seq, edit, wall_ms, counter FROM outbox ORDER BY seq")?;
        stmt.query_map([], |r| {
            let body: String = r.get(1)?;
            let edit: Edit = serde_json::from_str(&body).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            Ok((r.get(0)?, edit, r.get(2)?, r.get(3)?))
        })?
        .collect()
    }

    pub fn outbox_done(&self, seq: i64) -> rusqlite::Result<()> {
        self.run("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        Ok(())
    }

    pub fn outbox_failed(&self, seq: i64, error: &str) -> rusqlite::Result<()> {
        self.run(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            params![seq, error],
        )?;
        Ok(())
    }

    pub fn count_outbox(&self) -> rusqlite::Result<u64> {
        self.one("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }

    pub fn put_meta(&self, m: &MetaRow) -> rusqlite::Result<()> {
        self.run(
            "INSERT INTO meta (asset_id, name, state, favorite, hidden) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (asset_id) DO UPDATE SET name = ?2, state = ?3, favorite = ?4, hidden = ?5",
            params![m.asset_id, m.name, m.state, m.favorite, m.hidden],
        )?;
        Ok(())
    }

    pub fn meta(&self, asset_id: &str) -> rusqlite::Result<Option<MetaRow>> {
        self.one(
            "SELECT asset_id, name, state, favorite, hidden FROM meta WHERE asset_id = ?1",
            [asset_id],
            meta_row,
        )
        .optional()
    }

    pub fn metas(&self) -> rusqlite::Result<Vec<MetaRow>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT asset_id, name, state, favorite, hidden FROM meta ORDER BY name, asset_id",
        )?;
        stmt.query_map([], meta_row)?.collect()
    }

    pub fn remove_meta(&self, asset_id: &str) -> rusqlite::Result<()> {
        self.run("DELETE FROM meta WHERE asset_id = ?1", [asset_id])?;
        Ok(())
    }

    pub fn put_album(
        &self,
        album_id: &str,
        name: &str,
        members: &[String],
    ) -> rusqlite::Result<()> {
        let members = serde_json::to_string(members)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        self.run(
            "INSERT INTO albums (album_id, name, members) VALUES (?1, ?2, ?3)
             ON CONFLICT (album_id) DO UPDATE SET name = ?2, members = ?3",
            params![album_id, name, members],
        )?;
        Ok(())
    }

    pub fn remove_album(&self, album_id: &str) -> rusqlite::Result<()> {
        self.run("DELETE FROM albums WHERE album_id = ?1", [album_id])?;
        Ok(())
    }

    /// Live albums: (id, name, members).
    pub fn albums(&self) -> rusqlite::Result<Vec<(String, String, Vec<String>)>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT album_id, name, members FROM albums ORDER BY name, album_id")?;
        stmt.query_map([], |r| {
            let members: String = r.get(2)?;
            let members: Vec<String> = serde_json::from_str(&members).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            Ok((r.get(0)?, r.get(1)?, members))
        })?
        .collect()
    }
}

/// An asset's metadata as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRow {
    pub asset_id: String,
    pub name: String,
    /// "live" or "trashed".
    pub state: String,
    pub favorite: bool,
    pub hidden: bool,
}

fn meta_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MetaRow> {
    Ok(MetaRow {
        asset_id: r.get(0)?,
        name: r.get(1)?,
        state: r.get(2)?,
        favorite: r.get(3)?,
        hidden: r.get(4)?,
    })
}

/// See [`Journal::scope`]: rolled back when dropped uncommitted.
struct Scope<'a> {
    db: &'a Connection,
    nested: bool,
    open: bool,
}

impl Scope<'_> {
    fn commit(mut self) -> rusqlite::Result<()> {
        self.open = false;
        self.db.execute_batch(if self.nested {
            "RELEASE scope"
        } else {
            "COMMIT"
        })
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        if self.open {
            let undo = if self.nested {
                "ROLLBACK TO scope; RELEASE scope"
            } else {
                "ROLLBACK"
            };
            if let Err(e) = self.db.execute_batch(undo) {
                tracing::warn!(error = %e, "the journal could not undo a failed write");
            }
        }
    }
}

impl std::ops::Deref for Scope<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.db
    }
}

fn read_clock(tx: &Connection) -> rusqlite::Result<(i64, u32)> {
    let value: Option<String> = tx
        .query_row("SELECT value FROM kv WHERE key = 'hlc'", [], |r| r.get(0))
        .optional()?;
    Ok(value
        .and_then(|v| {
            let (wall, counter) = v.split_once(':')?;
            Some((wall.parse().ok()?, counter.parse().ok()?))
        })
        .unwrap_or((0, 0)))
}

fn write_clock(tx: &Connection, wall: i64, counter: u32) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO kv (key, value) VALUES ('hlc', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
        [format!("{wall}:{counter}")],
    )?;
    Ok(())
}

/// An original kept in the cloud only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudOnlyRow {
    pub asset_id: String,
    pub name: String,
    pub version: u32,
    pub manifest: ChunkId,
    pub file_hash: ChunkId,
    pub size: u64,
}

impl Journal {
    /// The ids a family of keys is kept for (the assets waited for, the nonces sent…).
    pub fn listed(&self, family: Family) -> rusqlite::Result<Vec<String>> {
        let prefix = family.prefix();
        let mut stmt = self
            .db
            .prepare_cached("SELECT key FROM kv WHERE substr(key, 1, length(?1)) = ?1")?;
        stmt.query_map([prefix], |r| r.get::<_, String>(0))?
            .map(|k| k.map(|k| k[prefix.len()..].to_string()))
            .collect()
    }

    /// Forgets what was remembered under `key`.
    pub fn forget(&self, key: Key<'_>) -> rusqlite::Result<()> {
        self.run("DELETE FROM kv WHERE key = ?1", [key.text()])?;
        Ok(())
    }

    pub fn set_current(
        &self,
        asset_id: &str,
        version: u32,
        manifest: &ChunkId,
        preview: Option<&ChunkId>,
    ) -> rusqlite::Result<()> {
        self.run(
            "INSERT INTO current (asset_id, version, manifest, preview) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (asset_id) DO UPDATE SET version = ?2, manifest = ?3, preview = ?4",
            params![
                asset_id,
                version,
                &manifest.0[..],
                preview.map(|p| p.0.to_vec())
            ],
        )?;
        Ok(())
    }

    /// (version, manifest, preview manifest) of an asset's current version.
    pub fn current(
        &self,
        asset_id: &str,
    ) -> rusqlite::Result<Option<(u32, ChunkId, Option<ChunkId>)>> {
        self.one(
            "SELECT version, manifest, preview FROM current WHERE asset_id = ?1",
            [asset_id],
            |r| {
                let preview: Option<Vec<u8>> = r.get(2)?;
                Ok((r.get(0)?, id(r.get(1)?)?, preview.map(id).transpose()?))
            },
        )
        .optional()
    }

    /// Every asset with a preview: (asset, preview manifest).
    pub fn previews(&self) -> rusqlite::Result<Vec<(String, ChunkId)>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT asset_id, preview FROM current WHERE preview IS NOT NULL")?;
        stmt.query_map([], |r| Ok((r.get(0)?, id(r.get(1)?)?)))?
            .collect()
    }

    /// Keeps a version's manifest (the most recent [`KEPT_MANIFESTS`] of them), encoded and
    /// hashed once: its id is the BLAKE3 of the encoding.
    pub fn keep_manifest(&self, manifest: &Manifest) -> rusqlite::Result<()> {
        let body = manifest.encode();
        if body.len() > KEPT_MANIFEST_MAX_BYTES {
            return Ok(());
        }
        self.run(
            "INSERT INTO manifests (id, body, used)
             VALUES (?1, ?2, (SELECT coalesce(max(used), 0) + 1 FROM manifests))
             ON CONFLICT (id) DO UPDATE SET used = excluded.used",
            params![&ChunkId::of(&body).0[..], body],
        )?;
        self.run(
            "DELETE FROM manifests WHERE used <= (SELECT max(used) FROM manifests) - ?1",
            [KEPT_MANIFESTS],
        )?;
        Ok(())
    }

    /// A kept manifest, only if its bytes still hash to its id.
    pub fn kept_manifest(&self, id: &ManifestId) -> rusqlite::Result<Option<Manifest>> {
        let body: Option<Vec<u8>> = self
            .db
            .query_row(
                "SELECT body FROM manifests WHERE id = ?1",
                [&id.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        // The id is the BLAKE3 of these very bytes: check them before decoding.
        Ok(body
            .filter(|b| ChunkId::of(b) == *id)
            .and_then(|b| Manifest::decode(&b).ok()))
    }

    pub fn remove_current(&self, asset_id: &str) -> rusqlite::Result<()> {
        self.run("DELETE FROM current WHERE asset_id = ?1", [asset_id])?;
        Ok(())
    }

    pub fn put_cloud_only(&self, c: &CloudOnlyRow) -> rusqlite::Result<()> {
        self.run(
            "INSERT INTO cloud_only (asset_id, name, version, manifest, file_hash, size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (asset_id) DO UPDATE SET name = ?2, version = ?3, manifest = ?4,
                 file_hash = ?5, size = ?6",
            params![
                c.asset_id,
                c.name,
                c.version,
                &c.manifest.0[..],
                &c.file_hash.0[..],
                c.size as i64
            ],
        )?;
        Ok(())
    }

    pub fn cloud_only(&self, asset_id: &str) -> rusqlite::Result<Option<CloudOnlyRow>> {
        self.one(
                "SELECT asset_id, name, version, manifest, file_hash, size FROM cloud_only WHERE asset_id = ?1",
                [asset_id],
                |r| {
                    Ok(CloudOnlyRow {
                        asset_id: r.get(0)?,
                        name: r.get(1)?,
                        version: r.get(2)?,
                        manifest: id(r.get(3)?)?,
                        file_hash: id(r.get(4)?)?,
                        size: r.get::<_, i64>(5)? as u64,
                    })
                },
            )
            .optional()
    }

    pub fn remove_cloud_only(&self, asset_id: &str) -> rusqlite::Result<()> {
        self.run("DELETE FROM cloud_only WHERE asset_id = ?1", [asset_id])?;
        Ok(())
    }

    pub fn count_cloud_only(&self) -> rusqlite::Result<u64> {
        self.one("SELECT COUNT(*) FROM cloud_only", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as u64)
    }

    /// Bytes of originals in the folder that the cloud holds (synced).
    pub fn synced_bytes(&self) -> rusqlite::Result<u64> {
        self.one(
            "SELECT COALESCE(SUM(size), 0) FROM files WHERE state = 'synced'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
    }

    /// Evicts a synced original: it becomes cloud-only, in one transaction, before the
    /// file itself is removed (a crash in between leaves a file the scan links again).
    pub fn evict(&self, f: &FileRow, manifest: &ChunkId) -> rusqlite::Result<()> {
        let tx = self.scope()?;
        // Same connection: these statements are inside the transaction.
        self.put_cloud_only(&CloudOnlyRow {
            asset_id: f.asset_id.clone().unwrap_or_default(),
            name: f.path.clone(),
            version: f.version.unwrap_or(0),
            manifest: *manifest,
            file_hash: f.file_hash,
            size: f.size,
        })?;
        tx.execute("DELETE FROM files WHERE path = ?1", [&f.path])?;
        tx.commit()
    }
}

#[cfg(test)]
mod tests;

/// What the journal's small key/value table holds, one variant per kind of entry. The
/// texts are the journal's on-disk format: never change one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// The feed position this device has applied.
    Cursor,
    /// The folder this journal belongs to.
    Folder,
    /// The folder's marker file was written once.
    FolderMarked,
    /// The owner confirmed the deletions waiting ("1"), or none wait ("").
    ConfirmDeletes,
    /// "1" when the first scan of a new journal found files in the folder.
    FoundFull,
    /// The request id of the reservation uploads go under until all is sent.
    PassReservation,
    /// The upgrade that splits an older version's merged twins has run.
    FilesApart,
    /// Bytes moved over mobile data on this day (days since the epoch, local time).
    CellularBytes(i64),
    /// An original someone asked to open, by asset.
    WantOriginal(&'a str),
    /// A photo the cloud flagged damaged that this device waits for, by asset.
    DamagedWaiting(&'a str),
    /// A new file's commit sent and not yet answered, by its nonce: the content sent.
    Attempt(i64),
}

/// Keys kept per id, listed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// [`Key::WantOriginal`].
    WantOriginal,
    /// [`Key::DamagedWaiting`].
    DamagedWaiting,
    /// [`Key::Attempt`].
    Attempt,
}

impl Family {
    fn prefix(self) -> &'static str {
        match self {
            Family::WantOriginal => "want_original:",
            Family::DamagedWaiting => "damaged_waiting:",
            Family::Attempt => "attempt:",
        }
    }
}

impl Key<'_> {
    fn text(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow::{Borrowed, Owned};
        match self {
            Key::Cursor => Borrowed("cursor"),
            Key::Folder => Borrowed("folder"),
            Key::FolderMarked => Borrowed("folder_marked"),
            Key::ConfirmDeletes => Borrowed("confirm_deletes"),
            Key::FoundFull => Borrowed("found_full"),
            Key::PassReservation => Borrowed("pass_reservation"),
            Key::FilesApart => Borrowed("files_apart"),
            Key::CellularBytes(day) => Owned(format!("cellular_bytes:{day}")),
            Key::WantOriginal(id) => Owned(format!("{}{id}", Family::WantOriginal.prefix())),
            Key::DamagedWaiting(id) => Owned(format!("{}{id}", Family::DamagedWaiting.prefix())),
            Key::Attempt(nonce) => Owned(format!("{}{nonce}", Family::Attempt.prefix())),
        }
    }
}
