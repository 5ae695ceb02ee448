//! The library: what each account holds, changed only through sequenced commits.

use crate::{LibraryError, schema};
use keepsake_core::Hlc;
use keepsake_sql::{Db, OptionalExtension, params};
use keepsake_store::{ChunkId, Clock, Entropy, ManifestId, UnixMillis, random_hex};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

mod commit;
mod edits;
mod feed;
mod lifecycle;
mod model;
mod pairs;
mod search;

use commit::*;
use edits::*;
pub use feed::FEED_CHANNEL;
use feed::*;
pub use model::*;
pub use search::{AlbumSummary, Folder, MAX_SEARCH_PAGE, SearchPage, SearchQuery};

/// The cloud library.
pub struct Library {
    pub(crate) db: Mutex<Db>,
    pub(crate) passwords: crate::passwords::PasswordGate,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) entropy: Arc<dyn Entropy>,
    pub(crate) config: LibraryConfig,
}

const ASSET_COLUMNS: &str =
    "a.asset_id, a.kind, a.capture_time, a.width, a.height, a.original_name,
    a.current_version, v.manifest, v.file_hash, v.size, a.favorite, a.hidden, a.title, a.state,
    a.state_at, a.seq,
    greatest(a.favorite_clock, a.hidden_clock, a.title_clock, a.capture_clock, a.place_clock),
    (SELECT group_concat(d.role || ' ' || hex(d.manifest) || ' ' || d.width || ' ' || d.height
                         || ' ' || d.bytes, ';')
       FROM derivatives d WHERE d.account = a.account AND d.asset_id = a.asset_id
        AND d.version = a.current_version),
    (SELECT j.state || ' ' || coalesce(j.last_error, '') FROM derive_jobs j
      WHERE j.account = a.account AND j.asset_id = a.asset_id AND j.version = a.current_version),
    a.damaged, coalesce(a.path, a.original_name), v.details, a.pair_of, a.pair_role,
    a.place_clock, a.lat_e7, a.lon_e7";

/// The three-character pieces of a folded path (or search term), each once.
pub(crate) fn grams(key: &str) -> std::collections::BTreeSet<String> {
    let chars: Vec<char> = key.chars().collect();
    chars.windows(3).map(|w| w.iter().collect()).collect()
}

/// Moves an asset's entries in the name index from its old folded path to its new one
/// (`None`: not indexed before, or no longer).
pub(crate) fn index_name(
    tx: &Db,
    account: &str,
    asset_id: &str,
    (old, new): (Option<&str>, Option<&str>),
) -> Result<(), LibraryError> {
    let (old, new) = (
        old.map(grams).unwrap_or_default(),
        new.map(grams).unwrap_or_default(),
    );
    let gone: Vec<&String> = old.difference(&new).collect();
    let added: Vec<&String> = new.difference(&old).collect();
    // One statement each way, whatever the path's length (one round trip on PostgreSQL).
    for (grams, insert) in [(gone, false), (added, true)] {
        if grams.is_empty() {
            continue;
        }
        let mut values: Vec<keepsake_sql::Value> =
            vec![account.to_string().into(), asset_id.to_string().into()];
        let mut slots = Vec::with_capacity(grams.len());
        for gram in grams {
            values.push(gram.clone().into());
            slots.push(values.len());
        }
        let sql = if insert {
            let rows: Vec<String> = slots.iter().map(|n| format!("(?1, ?{n}, ?2)")).collect();
            format!(
                "INSERT INTO asset_grams (account, gram, asset_id) VALUES {} ON CONFLICT DO NOTHING",
                rows.join(", ")
            )
        } else {
            let list: Vec<String> = slots.iter().map(|n| format!("?{n}")).collect();
            format!(
                "DELETE FROM asset_grams WHERE account = ?1 AND asset_id = ?2 AND gram IN ({})",
                list.join(", ")
            )
        };
        tx.execute(&sql, values)?;
    }
    Ok(())
}

/// `role hexmanifest width height bytes;…` as the asset query spells it.
fn derived_from_column(text: Option<String>) -> Vec<Derived> {
    text.unwrap_or_default()
        .split(';')
        .filter_map(|one| {
            let mut parts = one.split(' ');
            let role = parts.next()?.to_string();
            let manifest = ChunkId::from_slice(&hex::decode(parts.next()?).ok()?).ok()?;
            Some(Derived {
                role,
                manifest,
                width: parts.next()?.parse().ok()?,
                height: parts.next()?.parse().ok()?,
                size: parts.next()?.parse().ok()?,
            })
        })
        .collect()
}

fn read_id(bytes: Vec<u8>) -> Result<ChunkId, keepsake_sql::SqlError> {
    ChunkId::from_slice(&bytes).map_err(|e| keepsake_sql::SqlError::Column(0, e.to_string()))
}

fn asset_from_row(r: &keepsake_sql::Row) -> Result<Asset, keepsake_sql::SqlError> {
    let state: String = r.get(13)?;
    let at: Option<i64> = r.get(14)?;
    Ok(Asset {
        asset_id: r.get(0)?,
        kind: AssetKind::parse(&r.get::<_, String>(1)?),
        capture_time: r.get(2)?,
        width: r.get(3)?,
        height: r.get(4)?,
        original_name: r.get(5)?,
        version: r.get(6)?,
        manifest: read_id(r.get(7)?)?,
        file_hash: read_id(r.get(8)?)?,
        size: r.get::<_, i64>(9)? as u64,
        favorite: r.get(10)?,
        hidden: r.get(11)?,
        title: r.get(12)?,
        state: match state.as_str() {
            "trashed" => AssetState::Trashed(at.unwrap_or(0)),
            "purged" => AssetState::Purged(at.unwrap_or(0)),
            _ => AssetState::Live,
        },
        seq: r.get::<_, i64>(15)? as u64,
        clock: Hlc::decode(&r.get::<_, String>(16)?).unwrap_or_else(Hlc::zero),
        derived: derived_from_column(r.get(17)?),
        derivation: r
            .get::<_, Option<String>>(18)?
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
        damaged: r.get(19)?,
        path: r.get(20)?,
        details: {
            let mut details = MediaDetails::from_stored(r.get(21)?);
            // A place a person set (or cleared) is the asset's, whatever the file says.
            if !r.get::<_, String>(24)?.is_empty() {
                details.position_e7 = r
                    .get::<_, Option<i32>>(25)?
                    .zip(r.get::<_, Option<i32>>(26)?);
            }
            details
        },
        companion_of: match (
            r.get::<_, Option<String>>(22)?,
            r.get::<_, Option<String>>(23)?,
        ) {
            (Some(of), Some(role)) => PairRole::parse(&role).map(|role| (of, role)),
            _ => None,
        },
    })
}

impl Library {
    /// Opens the library index (`None` keeps it in memory, for tests).
    pub fn open(
        index_path: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        config: LibraryConfig,
    ) -> Result<Self, LibraryError> {
        Self::open_on(
            Db::open_sqlite(index_path.as_deref())?,
            clock,
            entropy,
            config,
        )
    }

    /// Opens the library on a connection of either engine (its schema brought up to date).
    pub fn open_on(
        mut conn: Db,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        config: LibraryConfig,
    ) -> Result<Self, LibraryError> {
        schema::prepare(&mut conn)?;
        Ok(Self {
            db: Mutex::new(conn),
            passwords: crate::passwords::PasswordGate::new(config.kdf, config.password_limits),
            clock,
            entropy,
            config,
        })
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one transaction of its own, committed if it succeeds.
    fn write<T>(&self, f: impl FnOnce(&Db) -> Result<T, LibraryError>) -> Result<T, LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Queues a store reference for release (drained by the cloud after the transaction).
/// Gives an asset a new sequence number: the feed shows it again, with what changed.
pub(crate) fn touch_asset(tx: &Db, account: &str, asset_id: &str) -> Result<(), LibraryError> {
    let seq = next_seq(tx, account)?;
    tx.execute(
        "UPDATE assets SET seq = ?3 WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id, seq as i64],
    )?;
    Ok(())
}

pub(crate) fn queue_release(
    tx: &Db,
    account: &str,
    manifest: &[u8],
    holder: &str,
    now: UnixMillis,
) -> Result<(), LibraryError> {
    tx.execute(
        "INSERT INTO ref_outbox (account, manifest, holder, action, at) VALUES (?1, ?2, ?3, 'release', ?4)
         ON CONFLICT (account, manifest, holder) DO UPDATE SET action = 'release', at = ?4",
        params![account, manifest, holder, now],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql` (parameters: an account and a 32-byte id), on a schema with
    /// statistics that make the feed index look attractive, as a large library does.
    fn plan_of(sql: &str) -> String {
        let mut db = Db::open_sqlite(None).unwrap();
        schema::prepare(&mut db).unwrap();
        let conn = db.as_sqlite().unwrap();
        conn.execute_batch("ANALYZE").unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params!["a", [0u8; 32]], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        plan.join("\n")
    }

    /// Broke once: with wholly random asset ids, a fresh device listing 100,000 assets
    /// looked each up all over the versions index (ListChanges 773 → 2,557 ms).
    #[test]
    fn asset_ids_begin_with_the_commit_time_so_a_feed_page_reads_neighbouring_rows() {
        let entropy = keepsake_store::SeededEntropy::new(1);
        let t0 = 1_795_000_000_000;
        let ids: Vec<String> = (0..200)
            .map(|i| new_asset_id(t0 + i / 3, &entropy))
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Later commits sort after earlier ones (same millisecond: any order).
        for (i, id) in ids.iter().enumerate() {
            for (j, later) in ids.iter().enumerate().skip(i + 1) {
                if j / 3 > i / 3 {
                    assert!(id < later, "{id} !< {later}");
                }
            }
        }
    }

    /// Broke once: the content lookup walked the feed index, so commits slowed as the
    /// library grew (246 commits/s at 5,000 assets instead of 1,233).
    #[test]
    fn content_lookup_uses_the_hash_index_not_a_walk_of_the_feed() {
        let plan = plan_of(&SAME_CONTENT_SQL.replace("{ASSET_COLUMNS}", ASSET_COLUMNS));
        assert!(plan.contains("versions_by_hash"), "{plan}");
        assert!(!plan.contains("assets_by_seq"), "{plan}");
    }

    /// Broke once: the damaged-asset check walked every version of the account, so the
    /// 100,000-commit benchmark had not finished after 16 minutes.
    #[test]
    fn commit_damaged_check_starts_from_the_damaged_index_not_a_walk_of_the_versions() {
        let plan = plan_of(DAMAGED_WITH_SQL);
        assert!(
            plan.lines()
                .next()
                .unwrap_or_default()
                .contains("assets_damaged"),
            "{plan}"
        );
        assert!(
            plan.contains("SEARCH v USING PRIMARY KEY (account=? AND asset_id=? AND version=?)"),
            "{plan}"
        );
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;
    use keepsake_store::{ManualClock, SeededEntropy};

    fn lib() -> Library {
        Library::open(
            None,
            Arc::new(ManualClock::new(1_700_000_000_000)),
            Arc::new(SeededEntropy::new(1)),
            LibraryConfig::default(),
        )
        .unwrap()
    }

    fn req(id: &str, content: &[u8], path: &str) -> CommitRequest {
        CommitRequest {
            request_id: id.into(),
            asset_id: None,
            base_version: None,
            manifest: ChunkId::of(&[b"m", content].concat()),
            file_hash: ChunkId::of(content),
            size: content.len() as u64,
            kind: AssetKind::Photo,
            capture_time: Some(1),
            width: None,
            height: None,
            original_name: keepsake_path::file_name(path).into(),
            path: path.into(),
            device: "phone".into(),
            details: Default::default(),
        }
    }

    /// Broke once: a purge's tombstone was per content, so a new copy of the bytes was
    /// taken for the purged photo; now it names the purged asset's path.
    #[test]
    fn a_purge_leaves_a_tombstone_per_asset_and_path() {
        let lib = lib();
        let a = lib
            .commit("u", &req("1", b"x", "trip/VID_0003.MP4"))
            .unwrap();
        let b = lib.commit("u", &req("2", b"x", "copy.mp4")).unwrap();
        lib.purge("u", &a.asset_id).unwrap();
        let found = lib.find_by_content("u", &[ChunkId::of(b"x")]).unwrap();
        assert_eq!(found[0].purged_paths, ["trip/VID_0003.MP4"]);
        assert_eq!(found[0].assets.len(), 1);
        assert_eq!(found[0].assets[0].asset_id, b.asset_id);
    }

    /// Broke once: an edit that rewrote the capture date kept the old date on the asset.
    #[test]
    fn a_new_version_brings_its_own_capture_time() {
        let lib = lib();
        let a = lib.commit("u", &req("1", b"x", "IMG_1.JPG")).unwrap();
        let mut edit = req("2", b"y", "IMG_1.JPG");
        edit.asset_id = Some(a.asset_id.clone());
        edit.base_version = Some(1);
        edit.capture_time = Some(42);
        lib.commit("u", &edit).unwrap();
        assert_eq!(
            lib.get_asset("u", &a.asset_id).unwrap().capture_time,
            Some(42)
        );
    }

    /// Two names a case-insensitive file system takes for one, and a restore onto a name
    /// taken meanwhile, are numbered by the library.
    #[test]
    fn collisions_are_numbered_on_the_folded_key() {
        let lib = lib();
        let first = lib.commit("u", &req("1", b"x", "Caf\u{e9}.jpg")).unwrap();
        let second = lib.commit("u", &req("2", b"y", "CAFE\u{301}.JPG")).unwrap();
        assert_eq!(second.path, "CAFE\u{301} (2).JPG");
        lib.trash("u", &first.asset_id).unwrap();
        let third = lib.commit("u", &req("3", b"z", "café.jpg")).unwrap();
        assert_eq!(third.path, "café.jpg");
        lib.restore("u", &first.asset_id).unwrap();
        assert_eq!(
            lib.get_asset("u", &first.asset_id).unwrap().path,
            "Caf\u{e9} (3).jpg"
        );
        let clock = Hlc {
            wall_ms: 1_700_000_000_000,
            counter: 0,
            device: "phone".into(),
        };
        assert!(
            lib.rename("u", &third.asset_id, "trip/café.jpg", &clock)
                .unwrap()
        );
        assert!(
            lib.rename("u", &third.asset_id, "../x.jpg", &clock)
                .is_err()
        );
        assert_eq!(lib.duplicates("u", 10).unwrap().len(), 0);
    }
}
