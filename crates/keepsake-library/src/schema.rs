//! The library's SQLite schema.

use keepsake_sql::{Db, OptionalExtension};

const V1: &str = "
-- Per account: the last sequence number handed out, the compaction horizon, and how
-- many compactions moved it (cursors carry the epoch they were issued in).
CREATE TABLE feed (
    account TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL,
    horizon INTEGER NOT NULL DEFAULT 0,
    epoch   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE assets (
    account         TEXT NOT NULL,
    asset_id        TEXT NOT NULL,
    kind            TEXT NOT NULL,
    capture_time    INTEGER,
    width           INTEGER,
    height          INTEGER,
    original_name   TEXT NOT NULL,
    current_version INTEGER NOT NULL,
    state           TEXT NOT NULL,   -- live | trashed | purged
    state_at        INTEGER,
    favorite        INTEGER NOT NULL DEFAULT 0,
    favorite_clock  TEXT NOT NULL DEFAULT '',
    hidden          INTEGER NOT NULL DEFAULT 0,
    hidden_clock    TEXT NOT NULL DEFAULT '',
    title           TEXT NOT NULL DEFAULT '',
    title_clock     TEXT NOT NULL DEFAULT '',
    seq             INTEGER NOT NULL,
    PRIMARY KEY (account, asset_id)
) WITHOUT ROWID;
CREATE INDEX assets_by_seq ON assets(account, seq);
CREATE TABLE versions (
    account      TEXT NOT NULL,
    asset_id     TEXT NOT NULL,
    version      INTEGER NOT NULL,
    manifest     BLOB NOT NULL,
    file_hash    BLOB NOT NULL,
    size         INTEGER NOT NULL,
    base_version INTEGER,
    device       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    -- The version that was current when this one arrived from a stale base.
    conflicts_with INTEGER,
    PRIMARY KEY (account, asset_id, version)
) WITHOUT ROWID;
CREATE INDEX versions_by_hash ON versions(account, file_hash);
CREATE TABLE requests (
    account      TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    fingerprint  BLOB NOT NULL,
    asset_id     TEXT NOT NULL,
    version      INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    conflict     INTEGER NOT NULL,
    deduplicated INTEGER NOT NULL,
    PRIMARY KEY (account, request_id)
) WITHOUT ROWID;
CREATE TABLE purged_content (
    account   TEXT NOT NULL,
    file_hash BLOB NOT NULL,
    purged_at INTEGER NOT NULL,
    PRIMARY KEY (account, file_hash)
) WITHOUT ROWID;
CREATE TABLE albums (
    account       TEXT NOT NULL,
    album_id      TEXT NOT NULL,
    name          TEXT NOT NULL,
    name_clock    TEXT NOT NULL,
    deleted       INTEGER NOT NULL DEFAULT 0,
    deleted_clock TEXT NOT NULL DEFAULT '',
    seq           INTEGER NOT NULL,
    PRIMARY KEY (account, album_id)
) WITHOUT ROWID;
CREATE INDEX albums_by_seq ON albums(account, seq);
-- One element per (album, asset) with its own clock, so concurrent adds both survive.
CREATE TABLE album_members (
    account  TEXT NOT NULL,
    album_id TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    present  INTEGER NOT NULL,
    clock    TEXT NOT NULL,
    PRIMARY KEY (account, album_id, asset_id)
) WITHOUT ROWID;
";

const V2: &str = "
CREATE TABLE accounts (
    account    TEXT PRIMARY KEY,
    password   TEXT NOT NULL,   -- Argon2id PHC string
    plan       TEXT NOT NULL,
    admin      INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE devices (
    device_id      TEXT PRIMARY KEY,
    account        TEXT NOT NULL,
    name           TEXT NOT NULL,
    platform       TEXT NOT NULL,
    client_version TEXT NOT NULL,
    token_hash     BLOB NOT NULL,   -- BLAKE3 of a 256-bit random token
    enrolled_at    INTEGER NOT NULL,
    revoked_at     INTEGER,
    last_seen      INTEGER,
    report         TEXT,            -- the latest DeviceReport, JSON
    reason         TEXT,
    reason_since   INTEGER
) WITHOUT ROWID;
CREATE INDEX devices_by_account ON devices(account);
-- Quota held for an upload in flight; the id is the store session opened for it.
CREATE TABLE reservations (
    reservation_id TEXT PRIMARY KEY,
    account        TEXT NOT NULL,
    request_id     TEXT,
    bytes          INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX reservations_by_account ON reservations(account);
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY,
    secret     BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
) WITHOUT ROWID;
-- Store references to take or drop, written in the same transaction as the library
-- change that needs them, so a crash between the two databases loses nothing:
-- 'pending' = referenced for a commit not yet made; 'release' = purged, to be released.
CREATE TABLE ref_outbox (
    account  TEXT NOT NULL,
    manifest BLOB NOT NULL,
    holder   TEXT NOT NULL,
    action   TEXT NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (account, manifest, holder)
) WITHOUT ROWID;
-- The store reference that keeps this version's content (NULL: committed without one).
ALTER TABLE versions ADD COLUMN holder TEXT;
";

const V3: &str = "
-- Thumbnails, previews and posters to make, one job per committed version.
CREATE TABLE derive_jobs (
    account    TEXT NOT NULL,
    asset_id   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    manifest   BLOB NOT NULL,
    video      INTEGER NOT NULL,
    -- queued, done, failed (gave up: see last_error), none (nothing can be made)
    state      TEXT NOT NULL DEFAULT 'queued',
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (account, asset_id, version)
) WITHOUT ROWID;
CREATE INDEX derive_jobs_due ON derive_jobs(state, next_at);
-- What was made: content-addressed in the store, rooted under its own holder.
CREATE TABLE derivatives (
    account  TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    version  INTEGER NOT NULL,
    role     TEXT NOT NULL,
    manifest BLOB NOT NULL,
    holder   TEXT NOT NULL,
    width    INTEGER NOT NULL,
    height   INTEGER NOT NULL,
    bytes    INTEGER NOT NULL,
    PRIMARY KEY (account, asset_id, version, role)
) WITHOUT ROWID;
";

const V4: &str = "
-- Set by a scrub that found a chunk of the current version corrupt; cleared when a device
-- that still holds the original sent the missing chunks again.
ALTER TABLE assets ADD COLUMN damaged INTEGER NOT NULL DEFAULT 0;
";

const V5: &str = "
-- Every commit asks whether its manifest belongs to a damaged asset; without this (nearly
-- always empty) partial index that question scanned the account's assets.
CREATE INDEX assets_damaged ON assets(account, asset_id) WHERE damaged = 1;
";

const V6: &str = "
-- A file is an asset: its place in the folder (folders and exact name) is part of the
-- library. `path_key` folds case and Unicode normalization, so no two live assets share a
-- name on a case-insensitive or normalizing file system; the later one was numbered.
-- A rename is a metadata change, merged last-writer-wins by `path_clock`.
ALTER TABLE assets ADD COLUMN path TEXT;
ALTER TABLE assets ADD COLUMN path_key TEXT;
ALTER TABLE assets ADD COLUMN path_clock TEXT NOT NULL DEFAULT '';
-- Purge tombstones per asset and path, never per content: a new copy of a purged photo's
-- bytes is a new photo, and only a file at the purged asset's path is taken for it.
CREATE TABLE purged_files (
    account   TEXT NOT NULL,
    file_hash BLOB NOT NULL,
    path      TEXT NOT NULL,
    asset_id  TEXT NOT NULL,
    purged_at INTEGER NOT NULL,
    PRIMARY KEY (account, file_hash, asset_id)
) WITHOUT ROWID;
";

const V7: &str = "
-- A reservation remembers the device that made it: its own earlier reservations never
-- count against a device's next upload (a crash of either side must not block it).
ALTER TABLE reservations ADD COLUMN device TEXT;
-- Failed sign-ins, per account and per client address ('account:NAME', 'address:IP'):
-- each failure past a few free ones doubles the wait before the next attempt is checked.
-- Kept here, not in a server's memory, so several servers on one library agree.
CREATE TABLE sign_in_failures (
    key      TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_at  INTEGER NOT NULL
) WITHOUT ROWID;
-- What the owner is shown: failed sign-ins since their last successful one.
ALTER TABLE accounts ADD COLUMN failed_sign_ins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN last_failed_at INTEGER;
ALTER TABLE accounts ADD COLUMN last_failed_from TEXT;
";

const V8: &str = "
-- A device its owner removed from the ledger: revoked too, kept so its agent hears
-- DEVICE_REVOKED rather than an unknown device.
ALTER TABLE devices ADD COLUMN removed_at INTEGER;
-- The proof each owner is shown: at the last scrub, how many of the account's originals
-- verified and how many wait for a device to send them again.
CREATE TABLE integrity (
    account    TEXT PRIMARY KEY,
    verified   INTEGER NOT NULL,
    waiting    INTEGER NOT NULL,
    checked_at INTEGER NOT NULL
) WITHOUT ROWID;
";

const V9: &str = "
-- What each version's file says of itself (camera, place, orientation, length), as JSON.
ALTER TABLE versions ADD COLUMN details TEXT;
";

const V10: &str = "
-- What search starts from: the current version's camera ('make model', lower case) and
-- place, beside the capture time.
ALTER TABLE assets ADD COLUMN camera TEXT;
ALTER TABLE assets ADD COLUMN lat_e7 INTEGER;
ALTER TABLE assets ADD COLUMN lon_e7 INTEGER;
-- In the order search answers in (newest first, undated last), so a page is read from the
-- index and stops, never sorting the whole library; state and the folded path ride along so
-- a name search filters the index without reading each row.
CREATE INDEX assets_by_time ON assets(account, (coalesce(capture_time, 0)), asset_id, state, path_key);
CREATE INDEX assets_by_place ON assets(account, lat_e7, lon_e7) WHERE lat_e7 IS NOT NULL;
";

const V11: &str = "
-- Companion resources: a Live Photo's movie points at its still, a RAW at its JPEG.
ALTER TABLE assets ADD COLUMN content_id TEXT;
ALTER TABLE assets ADD COLUMN pair_of TEXT;
ALTER TABLE assets ADD COLUMN pair_role TEXT;
CREATE INDEX assets_by_content_id ON assets(account, content_id) WHERE content_id IS NOT NULL;
CREATE INDEX assets_by_pair ON assets(account, pair_of) WHERE pair_of IS NOT NULL;
";

const V12: &str = "
-- When a person set the capture date or the place in the library: a later version's own
-- (from its file) no longer replaces it.
ALTER TABLE assets ADD COLUMN capture_clock TEXT NOT NULL DEFAULT '';
ALTER TABLE assets ADD COLUMN place_clock TEXT NOT NULL DEFAULT '';
";

const V13: &str = "
-- Every three-character piece of each live asset's folded path: a search by part of a name
-- starts from the rarest piece's assets instead of reading the whole library.
CREATE TABLE asset_grams (
    account  TEXT NOT NULL,
    gram     TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    PRIMARY KEY (account, gram, asset_id)
) WITHOUT ROWID;
";

const V14: &str = "
-- Background work that must run once across every server on one database (maintenance,
-- derivations): whoever holds a live lease runs it; a dead holder's lease runs out.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
";

/// Fills the name index for assets committed before it existed (once: afterwards every
/// commit, rename and restore keeps it).
fn index_old_names(conn: &mut Db) -> Result<(), crate::LibraryError> {
    let indexed = conn
        .query_row("SELECT 1 FROM asset_grams LIMIT 1", (), |_| Ok(()))
        .optional()?
        .is_some();
    if indexed {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let live: Vec<(String, String, String)> = tx.query_map(
        "SELECT account, asset_id, path_key FROM assets WHERE state = 'live' AND path_key IS NOT NULL",
        (),
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    for (account, asset_id, key) in live {
        crate::library::index_name(&tx, &account, &asset_id, (None, Some(&key)))?;
    }
    tx.commit()?;
    Ok(())
}

/// Gives assets committed before paths existed a path: their name at the top of the
/// folder, numbered in commit order where two fold to one key (a downloader's flattened
/// " (2)" twins were already apart). Then no two live assets share a key, and the index
/// can say so.
fn give_old_assets_paths(conn: &mut Db) -> Result<(), crate::LibraryError> {
    let tx = conn.transaction()?;
    let old: Vec<(String, String, String, String)> = {
        let mut stmt = tx.prepare(
            "SELECT account, asset_id, original_name, state FROM assets
             WHERE path IS NULL ORDER BY account, seq",
        )?;
        stmt.query_map((), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?
    };
    for (account, asset_id, name, state) in old {
        let mut path = if keepsake_path::check(&name).is_ok() {
            name
        } else {
            format!("asset-{asset_id}")
        };
        let mut n = 1;
        while state == "live"
            && tx
                .query_row(
                    "SELECT 1 FROM assets WHERE account = ?1 AND path_key = ?2 AND state = 'live'",
                    keepsake_sql::params![account, keepsake_path::fold(&path)],
                    |_| Ok(()),
                )
                .optional()?
                .is_some()
        {
            n += 1;
            path = keepsake_path::numbered(&path, n);
        }
        tx.execute(
            "UPDATE assets SET path = ?3, path_key = ?4 WHERE account = ?1 AND asset_id = ?2",
            keepsake_sql::params![account, asset_id, path, keepsake_path::fold(&path)],
        )?;
    }
    tx.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS assets_by_path ON assets(account, path_key)
             WHERE state = 'live';",
    )?;
    tx.commit()?;
    Ok(())
}

/// Opens the index with the durability commits rely on.
pub fn prepare(conn: &mut Db) -> Result<(), crate::LibraryError> {
    if let Some(sqlite) = conn.as_sqlite() {
        keepsake_store::durable_sqlite(sqlite).map_err(keepsake_sql::SqlError::from)?;
    }
    conn.migrate(
        "library",
        &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14],
    )?;
    give_old_assets_paths(conn)?;
    index_old_names(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library written before paths: two live photos named alike (a downloader's
    /// flattened twins had one name in the library), one trashed under the same name.
    /// Upgraded, each keeps its name or a numbered one, and the index holds them apart.
    #[test]
    fn a_library_from_before_paths_gives_every_asset_a_path_of_its_own() {
        let mut conn = Db::open_sqlite(None).unwrap();
        conn.migrate("library", &[V1, V2, V3, V4, V5]).unwrap();
        for (id, name, state, seq) in [
            ("a1", "IMG_0001.JPG", "live", 1),
            ("a2", "img_0001.jpg", "live", 2),
            ("a3", "IMG_0001.JPG", "trashed", 3),
            ("a4", "../odd", "live", 4),
        ] {
            conn.execute(
                "INSERT INTO assets (account, asset_id, kind, original_name, current_version,
                                     state, seq) VALUES ('u', ?1, 'photo', ?2, 1, ?3, ?4)",
                keepsake_sql::params![id, name, state, seq],
            )
            .unwrap();
        }
        prepare(&mut conn).unwrap();
        let path = |conn: &Db, id: &str| -> String {
            conn.query_row("SELECT path FROM assets WHERE asset_id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
        };
        assert_eq!(path(&conn, "a1"), "IMG_0001.JPG");
        assert_eq!(path(&conn, "a2"), "img_0001 (2).jpg");
        assert_eq!(path(&conn, "a3"), "IMG_0001.JPG");
        assert_eq!(path(&conn, "a4"), "asset-a4");
        // Opening again changes nothing.
        prepare(&mut conn).unwrap();
        assert_eq!(path(&conn, "a2"), "img_0001 (2).jpg");
    }
}
