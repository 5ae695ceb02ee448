//! State-machine test against a simple in-memory model: random commits (with
//! retries and replays), edits, metadata from several devices with skewed clocks,
//! albums, renames (colliding, in other cases), deletes, restores, purges, expiry and
//! compaction. Every import is an asset of its own, whatever its content. After every step the
//! library equals the model, and a device following the feed from its cursor
//! (resyncing when told its cursor expired) ends equal to it.

mod common;
use common::open_library;

use keepsake_library::*;
use keepsake_store::{ChunkId, ManualClock, SeededEntropy};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const T0: i64 = 1_700_000_000_000;
const DEVICES: [&str; 3] = ["phone", "tablet", "laptop"];

#[derive(Debug, Clone)]
enum Op {
    Import {
        content: u8,
        request: u8,
        device: usize,
    },
    Edit {
        asset: usize,
        content: u8,
        stale: bool,
        request: u8,
    },
    Meta {
        asset: usize,
        field: u8,
        value: bool,
        device: usize,
        skew: i64,
        counter: u32,
    },
    Rename {
        asset: usize,
        name: u8,
        device: usize,
        skew: i64,
    },
    Trash {
        asset: usize,
    },
    Restore {
        asset: usize,
    },
    Purge {
        asset: usize,
    },
    PutAlbum {
        album: u8,
        name: u8,
        device: usize,
        skew: i64,
    },
    DeleteAlbum {
        album: u8,
        device: usize,
    },
    Member {
        album: u8,
        asset: usize,
        present: bool,
        device: usize,
        skew: i64,
    },
    Advance {
        ms: i64,
    },
    Expire,
    Compact,
    Follow {
        page: usize,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    let skew = prop_oneof![9 => -2_000i64..2_000, 1 => Just(600_000i64)];
    prop_oneof![
        4 => (0u8..12, 0u8..20, 0usize..3).prop_map(|(content, request, device)| Op::Import { content, request, device }),
        2 => (0usize..8, 12u8..24, any::<bool>(), 20u8..40).prop_map(|(asset, content, stale, request)| Op::Edit { asset, content, stale, request }),
        3 => (0usize..8, 0u8..3, any::<bool>(), 0usize..3, skew.clone(), 0u32..3).prop_map(|(asset, field, value, device, skew, counter)| Op::Meta { asset, field, value, device, skew, counter }),
        2 => (0usize..8, 0u8..4, 0usize..3, skew.clone()).prop_map(|(asset, name, device, skew)| Op::Rename { asset, name, device, skew }),
        1 => (0usize..8).prop_map(|asset| Op::Trash { asset }),
        1 => (0usize..8).prop_map(|asset| Op::Restore { asset }),
        1 => (0usize..8).prop_map(|asset| Op::Purge { asset }),
        1 => (0u8..3, 0u8..4, 0usize..3, skew.clone()).prop_map(|(album, name, device, skew)| Op::PutAlbum { album, name, device, skew }),
        1 => (0u8..3, 0usize..3).prop_map(|(album, device)| Op::DeleteAlbum { album, device }),
        2 => (0u8..3, 0usize..8, any::<bool>(), 0usize..3, skew).prop_map(|(album, asset, present, device, skew)| Op::Member { album, asset, present, device, skew }),
        2 => (0i64..12_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Expire),
        1 => Just(Op::Compact),
        2 => (1usize..5).prop_map(|page| Op::Follow { page }),
    ]
}

/// What one asset should look like, as the model tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelAsset {
    version: u32,
    content: u8,
    favorite: (bool, Hlc),
    hidden: (bool, Hlc),
    title: (String, Hlc),
    state: &'static str,
    state_at: i64,
    path: String,
    path_clock: Hlc,
}

/// Paths renames pick from: two of them one name to a case-insensitive file system.
const RENAMES: [&str; 4] = [
    "trip/IMG_0001.JPG",
    "Trip/img_0001.jpg",
    "IMG_0002.JPG",
    "b.jpg",
];

/// The model's numbering: `stem (n).ext`, case folded (every name here is ASCII).
fn model_free(assets: &BTreeMap<String, ModelAsset>, path: &str, except: Option<&str>) -> String {
    let taken = |candidate: &str| {
        assets.iter().any(|(id, a)| {
            a.state == "live"
                && Some(id.as_str()) != except
                && a.path.to_lowercase() == candidate.to_lowercase()
        })
    };
    let mut candidate = path.to_string();
    let mut n = 2;
    while taken(&candidate) {
        candidate = match path.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem} ({n}).{ext}"),
            None => format!("{path} ({n})"),
        };
        n += 1;
    }
    candidate
}

/// A commit's answer without its path, which is where the asset is now.
fn answer_of(c: &Committed) -> (String, u32, u64, bool, bool) {
    (
        c.asset_id.clone(),
        c.version,
        c.seq,
        c.conflict,
        c.deduplicated,
    )
}

#[derive(Debug, Clone, Default)]
struct ModelAlbum {
    name: (String, Hlc),
    deleted: bool,
    members: BTreeMap<String, (bool, Hlc)>,
}

fn hash_of(content: u8) -> ChunkId {
    ChunkId::of(&[b'f', content])
}

fn request(
    id: String,
    asset_id: Option<String>,
    base: Option<u32>,
    content: u8,
    device: &str,
) -> CommitRequest {
    CommitRequest {
        request_id: id,
        asset_id,
        base_version: base,
        manifest: ChunkId::of(&[b'm', content]),
        file_hash: hash_of(content),
        size: 1000 + u64::from(content),
        kind: AssetKind::Photo,
        capture_time: None,
        width: None,
        height: None,
        original_name: format!("IMG_{content:04}.JPG"),
        path: String::new(),
        device: device.to_string(),
        details: Default::default(),
    }
}

/// A comparable projection of one feed row.
type Row = (String, String);

fn project(change: &Change) -> Row {
    match change {
        Change::Asset(a) => (
            format!("asset {}", a.asset_id),
            format!(
                "v{} {:?} fav={} hid={} title={:?} path={:?} state={}",
                a.version,
                a.file_hash,
                a.favorite,
                a.hidden,
                a.title,
                a.path,
                match a.state {
                    AssetState::Live => "live",
                    AssetState::Trashed(_) => "trashed",
                    AssetState::Purged(_) => "purged",
                }
            ),
        ),
        Change::Album(a) => (
            format!("album {}", a.album_id),
            format!("{:?} deleted={} members={:?}", a.name, a.deleted, a.members),
        ),
    }
}

fn read_all(lib: &Library) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut cursor = 0;
    loop {
        let page = lib.list_changes("alice", cursor, 7).unwrap();
        for c in &page.changes {
            let (k, v) = project(c);
            assert!(
                out.insert(k.clone(), v).is_none(),
                "{k} appears twice in one read"
            );
        }
        cursor = page.cursor;
        if !page.more {
            return out;
        }
    }
}

fn expected(
    assets: &BTreeMap<String, ModelAsset>,
    albums: &BTreeMap<u8, ModelAlbum>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (id, a) in assets {
        out.insert(
            format!("asset {id}"),
            format!(
                "v{} {:?} fav={} hid={} title={:?} path={:?} state={}",
                a.version,
                hash_of(a.content),
                a.favorite.0,
                a.hidden.0,
                a.title.0,
                a.path,
                a.state
            ),
        );
    }
    for (n, album) in albums {
        let members: Vec<&String> = album
            .members
            .iter()
            .filter(|(_, (p, _))| *p)
            .map(|(id, _)| id)
            .collect();
        out.insert(
            format!("album a{n}"),
            format!(
                "{:?} deleted={} members={:?}",
                album.name.0, album.deleted, members
            ),
        );
    }
    out
}

struct Follower {
    cursor: u64,
    rows: BTreeMap<String, String>,
}

impl Follower {
    fn pull(&mut self, lib: &Library, page: usize) {
        loop {
            match lib.list_changes("alice", self.cursor, page) {
                Ok(p) => {
                    for c in &p.changes {
                        let (k, v) = project(c);
                        self.rows.insert(k, v);
                    }
                    self.cursor = p.cursor;
                    if !p.more {
                        return;
                    }
                }
                Err(LibraryError::CursorExpired { .. }) => {
                    // Told to resync: start over from zero.
                    self.cursor = 0;
                    self.rows.clear();
                }
                Err(e) => panic!("follower: {e}"),
            }
        }
    }

    /// Rows that still describe something; tombstones a follower may hold after the server compacted them are dropped.
    fn visible(&self, server: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        self.rows
            .iter()
            .filter(|(k, v)| {
                server.contains_key(*k)
                    || !(v.ends_with("state=purged") || v.contains("deleted=true"))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    #[test]
    fn the_library_and_every_follower_equal_the_model(ops in proptest::collection::vec(arb_op(), 1..80)) {
        let clock = Arc::new(ManualClock::new(T0));
        let lib = open_library(None, clock.clone(), Arc::new(SeededEntropy::new(9)), LibraryConfig {
            trash_retention_ms: 20_000,
            tombstone_retention_ms: 10_000,
            ..LibraryConfig::default()
        }).unwrap();
        let mut assets: BTreeMap<String, ModelAsset> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut albums: BTreeMap<u8, ModelAlbum> = BTreeMap::new();
        let mut requests: HashMap<String, (CommitRequest, Committed)> = HashMap::new();
        let mut follower = Follower { cursor: 0, rows: BTreeMap::new() };
        let pick = |order: &Vec<String>, i: usize| order.get(i % order.len().max(1)).cloned();
        for op in ops {
            let now = clock.now();
            match op {
                Op::Import { content, request: r, device } => {
                    let req = request(format!("r{r}"), None, None, content, DEVICES[device]);
                    let result = lib.commit("alice", &req);
                    match requests.get(&req.request_id) {
                        Some((first, answer)) if *first == req => prop_assert_eq!(answer_of(&result.unwrap()), answer_of(answer)),
                        Some(_) => prop_assert!(matches!(result, Err(LibraryError::RequestIdReused(_))), "{:?}", result),
                        None => {
                            // A file is an asset: the same bytes again are another photo.
                            let c = result.unwrap();
                            prop_assert!(!c.deduplicated);
                            prop_assert!(!assets.contains_key(&c.asset_id));
                            let path = model_free(&assets, &req.original_name, None);
                            prop_assert_eq!(&c.path, &path);
                            let zero = Hlc::zero();
                            assets.insert(c.asset_id.clone(), ModelAsset {
                                version: 1, content, favorite: (false, zero.clone()), hidden: (false, zero.clone()),
                                title: (String::new(), zero.clone()), state: "live", state_at: now,
                                path, path_clock: zero,
                            });
                            order.push(c.asset_id.clone());
                            requests.insert(req.request_id.clone(), (req, c));
                        }
                    }
                }
                Op::Edit { asset, content, stale, request: r } => {
                    let Some(id) = pick(&order, asset) else { continue };
                    let Some(current) = assets.get(&id).map(|a| a.version) else { continue };
                    let base = if stale { current.saturating_sub(1).max(1) - u32::from(current == 1) } else { current };
                    let req = request(format!("e{r}"), Some(id.clone()), Some(base), content, "tablet");
                    let result = lib.commit("alice", &req);
                    match requests.get(&req.request_id) {
                        Some((first, answer)) if *first == req => prop_assert_eq!(answer_of(&result.unwrap()), answer_of(answer)),
                        Some(_) => prop_assert!(matches!(result, Err(LibraryError::RequestIdReused(_))), "{:?}", result),
                        None => {
                            let model = assets.get_mut(&id).unwrap();
                            if model.state != "live" {
                                prop_assert!(result.is_err());
                                continue;
                            }
                            let c = result.unwrap();
                            if content == model.content {
                                // The content it already has: no new version, nothing to
                                // conflict with (a second device re-sending a repair).
                                prop_assert_eq!((c.version, c.conflict, c.deduplicated), (model.version, false, true));
                                requests.insert(req.request_id.clone(), (req, c));
                                continue;
                            }
                            prop_assert_eq!(c.conflict, base != model.version);
                            model.version = c.version;
                            model.content = content;
                            requests.insert(req.request_id.clone(), (req, c));
                        }
                    }
                }
                Op::Meta { asset, field, value, device, skew, counter } => {
                    let Some(id) = pick(&order, asset) else { continue };
                    let Some(model) = assets.get_mut(&id) else { continue };
                    let hlc = Hlc { wall_ms: now + skew, counter, device: DEVICES[device].into() };
                    let change = match field {
                        0 => MetadataField::Favorite(value),
                        1 => MetadataField::Hidden(value),
                        _ => MetadataField::Title(format!("t{}{}", value, device)),
                    };
                    let result = lib.set_metadata("alice", &id, &change, &hlc);
                    if skew > 300_000 {
                        prop_assert!(matches!(result, Err(LibraryError::ClockSkew { .. })), "{:?}", result);
                        continue;
                    }
                    if model.state == "purged" {
                        prop_assert!(result.is_err());
                        continue;
                    }
                    let applied = result.unwrap();
                    let wins = |clock: &Hlc| hlc > *clock;
                    match change {
                        MetadataField::Favorite(v) => { prop_assert_eq!(applied, wins(&model.favorite.1)); if applied { model.favorite = (v, hlc); } }
                        MetadataField::Hidden(v) => { prop_assert_eq!(applied, wins(&model.hidden.1)); if applied { model.hidden = (v, hlc); } }
                        MetadataField::Title(t) => { prop_assert_eq!(applied, wins(&model.title.1)); if applied { model.title = (t, hlc); } }
                        // The date and the place have tests of their own (library/edits.rs).
                        MetadataField::CaptureTime(_) | MetadataField::Place(_) => unreachable!("not generated"),
                    }
                }
                Op::Rename { asset, name, device, skew } => {
                    let Some(id) = pick(&order, asset) else { continue };
                    let Some(model) = assets.get(&id).cloned() else { continue };
                    let hlc = Hlc { wall_ms: now + skew, counter: 0, device: DEVICES[device].into() };
                    let asked = RENAMES[usize::from(name)];
                    let result = lib.rename("alice", &id, asked, &hlc);
                    if skew > 300_000 {
                        prop_assert!(matches!(result, Err(LibraryError::ClockSkew { .. })), "{:?}", result);
                        continue;
                    }
                    if model.state == "purged" {
                        prop_assert!(result.is_err());
                        continue;
                    }
                    let applied = result.unwrap();
                    let wins = hlc > model.path_clock && model.path != asked;
                    prop_assert_eq!(applied, wins);
                    if wins {
                        let path = if model.state == "live" { model_free(&assets, asked, Some(&id)) } else { asked.to_string() };
                        let m = assets.get_mut(&id).unwrap();
                        (m.path, m.path_clock) = (path, hlc);
                    }
                }
                Op::Trash { asset } | Op::Restore { asset } | Op::Purge { asset } => {
                    let free_if_restored = match pick(&order, asset).and_then(|id| assets.get(&id).map(|a| (id, a))) {
                        Some((id, a)) => model_free(&assets, &a.path, Some(&id)),
                        None => String::new(),
                    };
                    let Some(id) = pick(&order, asset) else { continue };
                    let Some(model) = assets.get_mut(&id) else { continue };
                    let result = match op {
                        Op::Trash { .. } => lib.trash("alice", &id).map(|_| ()),
                        Op::Restore { .. } => lib.restore("alice", &id).map(|_| ()),
                        _ => lib.purge("alice", &id).map(|_| ()),
                    };
                    let (to, from): (&'static str, &[&str]) = match op {
                        Op::Trash { .. } => ("trashed", &["live", "trashed"]),
                        Op::Restore { .. } => ("live", &["trashed", "live"]),
                        _ => ("purged", &["live", "trashed", "purged"]),
                    };
                    if from.contains(&model.state) {
                        prop_assert!(result.is_ok(), "{:?} {:?}", op, result);
                        if model.state != to {
                            if to == "live" {
                                // Its name was taken while it was in Recently Deleted.
                                model.path = free_if_restored;
                            }
                            model.state = to;
                            model.state_at = now;
                            if to == "purged" {
                                for album in albums.values_mut() {
                                    album.members.remove(&id);
                                }
                            }
                        }
                    } else {
                        prop_assert!(result.is_err());
                    }
                }
                Op::PutAlbum { album, name, device, skew } => {
                    let hlc = Hlc { wall_ms: now + skew, counter: 0, device: DEVICES[device].into() };
                    let result = lib.put_album("alice", &format!("a{album}"), &format!("album {name}"), &hlc);
                    if skew > 300_000 {
                        prop_assert!(matches!(result, Err(LibraryError::ClockSkew { .. })), "{:?}", result);
                        continue;
                    }
                    let applied = result.unwrap();
                    let entry = albums.entry(album);
                    let exists = matches!(entry, std::collections::btree_map::Entry::Occupied(_));
                    let model = entry.or_insert_with(|| ModelAlbum { name: (String::new(), Hlc::zero()), ..Default::default() });
                    let wins = !model.deleted && (!exists || hlc > model.name.1);
                    prop_assert_eq!(applied, wins);
                    if wins { model.name = (format!("album {name}"), hlc); }
                }
                Op::DeleteAlbum { album, device } => {
                    let hlc = Hlc { wall_ms: now, counter: 0, device: DEVICES[device].into() };
                    let result = lib.delete_album("alice", &format!("a{album}"), &hlc);
                    match albums.get_mut(&album) {
                        Some(model) => { prop_assert!(result.is_ok()); model.deleted = true; }
                        None => prop_assert!(matches!(result, Err(LibraryError::NotFound { .. })), "{:?}", result),
                    }
                }
                Op::Member { album, asset, present, device, skew } => {
                    let Some(id) = pick(&order, asset) else { continue };
                    let hlc = Hlc { wall_ms: now + skew, counter: 0, device: DEVICES[device].into() };
                    let result = lib.set_member("alice", &format!("a{album}"), &id, present, &hlc);
                    if skew > 300_000 {
                        prop_assert!(matches!(result, Err(LibraryError::ClockSkew { .. })), "{:?}", result);
                        continue;
                    }
                    let asset_ok = assets.get(&id).is_some_and(|a| a.state != "purged");
                    match albums.get_mut(&album) {
                        Some(model) if !model.deleted && asset_ok => {
                            let applied = result.unwrap();
                            let wins = model.members.get(&id).is_none_or(|(_, c)| hlc > *c);
                            prop_assert_eq!(applied, wins);
                            if wins { model.members.insert(id, (present, hlc)); }
                        }
                        _ => prop_assert!(result.is_err()),
                    }
                }
                Op::Advance { ms } => clock.advance(ms),
                Op::Expire => {
                    let expired = lib.expire_trash().unwrap();
                    let mut want = BTreeSet::new();
                    for (id, a) in assets.iter_mut() {
                        if a.state == "trashed" && a.state_at + 20_000 <= now {
                            a.state = "purged";
                            a.state_at = now;
                            want.insert(id.clone());
                            for album in albums.values_mut() {
                                album.members.remove(id);
                            }
                        }
                    }
                    let got: BTreeSet<String> = expired.into_iter().map(|(_, id, _)| id).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Compact => {
                    lib.compact().unwrap();
                    assets.retain(|_, a| !(a.state == "purged" && a.state_at + 10_000 <= now));
                    albums.retain(|_, a| !a.deleted);
                }
                Op::Follow { page } => follower.pull(&lib, page),
            }
            let server = read_all(&lib);
            prop_assert_eq!(&server, &expected(&assets, &albums));
        }
        follower.pull(&lib, 3);
        let server = read_all(&lib);
        prop_assert_eq!(follower.visible(&server), server);
    }
}

trait Now {
    fn now(&self) -> i64;
}

impl Now for ManualClock {
    fn now(&self) -> i64 {
        keepsake_store::Clock::now_ms(self)
    }
}

#[test]
fn cursors_from_the_future_and_past_the_horizon_are_refused() {
    let clock = Arc::new(ManualClock::new(T0));
    let lib = open_library(
        None,
        clock.clone(),
        Arc::new(SeededEntropy::new(1)),
        LibraryConfig {
            tombstone_retention_ms: 1_000,
            ..LibraryConfig::default()
        },
    )
    .unwrap();
    let a = lib
        .commit("alice", &request("r1".into(), None, None, 1, "phone"))
        .unwrap();
    lib.commit("alice", &request("r2".into(), None, None, 2, "phone"))
        .unwrap();
    assert!(matches!(
        lib.list_changes("alice", 99, 10),
        Err(LibraryError::CursorFromFuture { .. })
    ));
    lib.purge("alice", &a.asset_id).unwrap();
    clock.advance(2_000);
    lib.compact().unwrap();
    assert!(matches!(
        lib.list_changes("alice", 1, 10),
        Err(LibraryError::CursorExpired { .. })
    ));
    // A cursor issued after the compaction stays valid even below the horizon.
    let first = lib.list_changes("alice", 0, 1).unwrap();
    assert!(lib.list_changes("alice", first.cursor, 10).is_ok());
    let fresh = lib.list_changes("alice", 0, 10).unwrap();
    assert_eq!(
        fresh.changes.len(),
        1,
        "reading from zero yields exactly the current library"
    );
    // Another account sees nothing of alice's.
    assert!(lib.list_changes("bob", 0, 10).unwrap().changes.is_empty());
    assert!(matches!(
        lib.trash("bob", &a.asset_id),
        Err(LibraryError::NotFound { .. })
    ));
    let found = lib.find_by_content("alice", &[hash_of(1)]).unwrap();
    assert!(found[0].assets.is_empty());
    assert!(
        found[0].purged_at.is_none(),
        "the tombstone expired with compaction"
    );
}

/// Broke once: purging an asset removed it from its albums without re-sequencing
/// them, so a follower kept showing the purged photo in the album.
#[test]
fn purging_an_asset_resequences_the_albums_that_held_it() {
    let lib = open_library(
        None,
        Arc::new(ManualClock::new(T0)),
        Arc::new(SeededEntropy::new(3)),
        LibraryConfig::default(),
    )
    .unwrap();
    let a = lib
        .commit("alice", &request("r1".into(), None, None, 1, "phone"))
        .unwrap();
    let hlc = Hlc {
        wall_ms: T0,
        counter: 0,
        device: "phone".into(),
    };
    lib.put_album("alice", "trip", "Trip", &hlc).unwrap();
    lib.set_member("alice", "trip", &a.asset_id, true, &hlc)
        .unwrap();
    let cursor = lib.list_changes("alice", 0, 100).unwrap().cursor;
    lib.purge("alice", &a.asset_id).unwrap();
    let page = lib.list_changes("alice", cursor, 100).unwrap();
    let album = page
        .changes
        .iter()
        .find_map(|c| match c {
            Change::Album(a) => Some(a.clone()),
            _ => None,
        })
        .expect("the album changed");
    assert!(album.members.is_empty());
}

/// Broke once: a device reading from zero after a compaction got a page cursor below
/// the horizon, was told to resync, and looped forever.
#[test]
fn a_fresh_read_after_compaction_never_loops_on_cursor_expired() {
    let clock = Arc::new(ManualClock::new(T0));
    let lib = open_library(
        None,
        clock.clone(),
        Arc::new(SeededEntropy::new(4)),
        LibraryConfig {
            tombstone_retention_ms: 1,
            ..LibraryConfig::default()
        },
    )
    .unwrap();
    let keep = lib
        .commit("alice", &request("r1".into(), None, None, 1, "phone"))
        .unwrap();
    let gone = lib
        .commit("alice", &request("r2".into(), None, None, 2, "phone"))
        .unwrap();
    lib.purge("alice", &gone.asset_id).unwrap();
    clock.advance(10);
    lib.compact().unwrap();
    let first = lib.list_changes("alice", 0, 1).unwrap();
    assert_eq!(first.changes.len(), 1);
    let rest = lib.list_changes("alice", first.cursor, 10).unwrap();
    assert!(rest.changes.is_empty() && !rest.more);
    assert!(matches!(&first.changes[0], Change::Asset(a) if a.asset_id == keep.asset_id));
}
