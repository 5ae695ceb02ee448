//! Searching an account's library: capture dates, camera, place (a box or a radius), kind,
//! favourite, hidden, album and file name, newest first, a page at a time. Each query
//! starts from an index (capture time, place or camera); the rest filter what it yields.

use super::*;
use keepsake_sql::Value;

/// What to look for; every field set narrows the answer, none set is the whole library.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchQuery {
    /// Taken at or after (Unix ms).
    pub taken_from: Option<UnixMillis>,
    /// Taken before (Unix ms).
    pub taken_until: Option<UnixMillis>,
    /// Part of the camera's maker or model, any case ("iphone", "EOS R5").
    pub camera: Option<String>,
    /// Taken inside a box: (south, west, north, east), 1e-7 degree units.
    pub within_e7: Option<(i32, i32, i32, i32)>,
    /// Taken within this many metres of (latitude, longitude) in 1e-7 degree units.
    pub near_e7: Option<((i32, i32), u32)>,
    /// Photos or videos only.
    pub kind: Option<AssetKind>,
    /// Favourites only (or only those that are not).
    pub favorite: Option<bool>,
    /// Hidden only (or only those that are not).
    pub hidden: Option<bool>,
    /// In this album (its id, or its name).
    pub album: Option<String>,
    /// Part of the path in the library, any case ("rome", "IMG_12").
    pub name: Option<String>,
    /// Live Photos only: stills with their movie.
    pub live_photos: bool,
    /// Recently Deleted instead of the live library.
    pub trashed: bool,
    /// Directly in this folder of the library ("" is the top), not in its subfolders.
    pub folder: Option<String>,
}

/// A folder of the library with how many live assets it holds directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// Its path ("trip/day 1"); "" for the top of the library.
    pub path: String,
    /// Live assets directly in it (companions included).
    pub assets: u64,
}

/// An album as a list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlbumSummary {
    /// Its id.
    pub album_id: String,
    /// Its name.
    pub name: String,
    /// Live members.
    pub assets: u64,
    /// The newest live member, to show as its cover.
    pub cover: Option<String>,
}

/// One page of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    /// Newest first (by capture time, then id).
    pub assets: Vec<Asset>,
    /// Where the next page starts; `None` on the last.
    pub next: Option<String>,
}

/// The most assets a page holds.
pub const MAX_SEARCH_PAGE: usize = 500;

const EARTH_RADIUS_M: f64 = 6_371_000.0;

fn metres_between((a_lat, a_lon): (i32, i32), (b_lat, b_lon): (i32, i32)) -> f64 {
    let rad = |e7: i32| f64::from(e7) / 1e7 * std::f64::consts::PI / 180.0;
    let (dlat, dlon) = (rad(b_lat) - rad(a_lat), rad(b_lon) - rad(a_lon));
    let h = (dlat / 2.0).sin().powi(2)
        + rad(a_lat).cos() * rad(b_lat).cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
}

/// The box around a circle, for the index to start from (the distance filters after).
fn box_around((lat, lon): (i32, i32), metres: u32) -> (i32, i32, i32, i32) {
    let dlat = f64::from(metres) / EARTH_RADIUS_M * 180.0 / std::f64::consts::PI;
    let cos = (f64::from(lat) / 1e7 * std::f64::consts::PI / 180.0)
        .cos()
        .max(0.01);
    let dlon = (dlat / cos).min(180.0);
    let e7 = |d: f64| (d * 1e7) as i64;
    let clamp = |v: i64, max: i64| v.clamp(-max, max) as i32;
    (
        clamp(i64::from(lat) - e7(dlat), 900_000_000),
        clamp(i64::from(lon) - e7(dlon), 1_800_000_000),
        clamp(i64::from(lat) + e7(dlat), 900_000_000),
        clamp(i64::from(lon) + e7(dlon), 1_800_000_000),
    )
}

/// A name piece with at most this many assets drives a name search (its assets are read
/// and sorted); a commoner one means matches are dense enough that reading the library
/// newest first fills a page soon.
const DRIVE_AT_MOST: i64 = 4000;
/// Pieces of a search term counted, at most (a long term's first ones are enough).
const GRAMS_COUNTED: usize = 12;

/// How a name search reads the library.
enum NameDriver {
    /// Newest first through the time index, testing each path.
    Scan,
    /// From the assets whose paths hold this piece.
    Gram(String),
    /// Some piece of the term is in no path: nothing matches.
    Nothing,
}

impl Library {
    /// How to answer a search for `term` (folded) in the names.
    fn name_driver(&self, db: &Db, account: &str, term: &str) -> Result<NameDriver, LibraryError> {
        let mut rarest: Option<(i64, String)> = None;
        for gram in grams(term).into_iter().take(GRAMS_COUNTED) {
            // Counted no further than the bound: a common piece costs no more than a rare one.
            let count: i64 = db.query_row(
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM asset_grams
                       WHERE account = ?1 AND gram = ?2 LIMIT {}) AS hits",
                    DRIVE_AT_MOST + 1
                ),
                params![account, gram],
                |r| r.get(0),
            )?;
            if count == 0 {
                return Ok(NameDriver::Nothing);
            }
            if rarest.as_ref().is_none_or(|(n, _)| count < *n) {
                rarest = Some((count, gram));
            }
        }
        Ok(match rarest {
            Some((count, gram)) if count <= DRIVE_AT_MOST => NameDriver::Gram(gram),
            _ => NameDriver::Scan,
        })
    }

    /// One page of the live assets that match `query`, newest first, after `page` (a
    /// previous page's `next`).
    pub fn search(
        &self,
        account: &str,
        query: &SearchQuery,
        page: Option<&str>,
        page_size: usize,
    ) -> Result<SearchPage, LibraryError> {
        let page_size = page_size.clamp(1, MAX_SEARCH_PAGE);
        let db = self.db();
        let folded = query.name.as_deref().map(keepsake_path::fold);
        let driver = match &folded {
            Some(term) => self.name_driver(&db, account, term)?,
            None => NameDriver::Scan,
        };
        // A rare piece of the name drives: its few assets first (the join order fixed for
        // SQLite's planner, which would otherwise walk the time index), then sorted.
        let from = match &driver {
            NameDriver::Nothing => {
                return Ok(SearchPage {
                    assets: Vec::new(),
                    next: None,
                });
            }
            NameDriver::Gram(_) => {
                "asset_grams g CROSS JOIN assets a ON a.account = g.account AND a.asset_id = g.asset_id"
            }
            NameDriver::Scan => "assets a",
        };
        let mut sql = format!(
            "SELECT {ASSET_COLUMNS} FROM {from} JOIN versions v
               ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
             WHERE a.account = ?1 AND a.state = '{state}'
               AND NOT EXISTS (SELECT 1 FROM assets p WHERE p.account = a.account
                     AND p.asset_id = a.pair_of AND p.state = '{state}')",
            state = if query.trashed { "trashed" } else { "live" }
        );
        let mut values: Vec<Value> = vec![account.to_string().into()];
        // Every `?` of a clause is the one value bound with it.
        let mut bind = |sql: &mut String, clause: &str, value: Value| {
            values.push(value);
            sql.push_str(&clause.replace("?", &format!("?{}", values.len())));
        };
        if let Some(t) = query.taken_from {
            bind(&mut sql, " AND coalesce(a.capture_time, 0) >= ?", t.into());
        }
        if let Some(t) = query.taken_until {
            bind(&mut sql, " AND coalesce(a.capture_time, 0) < ?", t.into());
        }
        let place = query.within_e7.or(query
            .near_e7
            .map(|(centre, metres)| box_around(centre, metres)));
        if let Some((south, west, north, east)) = place {
            bind(&mut sql, " AND a.lat_e7 >= ?", i64::from(south).into());
            bind(&mut sql, " AND a.lat_e7 <= ?", i64::from(north).into());
            bind(&mut sql, " AND a.lon_e7 >= ?", i64::from(west).into());
            bind(&mut sql, " AND a.lon_e7 <= ?", i64::from(east).into());
        }
        if let Some(camera) = &query.camera {
            bind(
                &mut sql,
                " AND instr(a.camera, ?) > 0",
                camera.to_lowercase().into(),
            );
        }
        if let Some(kind) = query.kind {
            bind(
                &mut sql,
                " AND a.kind = ?",
                kind.as_str().to_string().into(),
            );
        }
        if query.live_photos {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM assets c WHERE c.account = a.account
                     AND c.pair_of = a.asset_id AND c.pair_role = 'live' AND c.state = 'live')",
            );
        }
        if let Some(favorite) = query.favorite {
            bind(&mut sql, " AND a.favorite = ?", i64::from(favorite).into());
        }
        if let Some(hidden) = query.hidden {
            bind(&mut sql, " AND a.hidden = ?", i64::from(hidden).into());
        }
        if let Some(album) = &query.album {
            bind(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM album_members m WHERE m.account = a.account
                     AND m.asset_id = a.asset_id AND m.present = 1
                     AND m.album_id IN (SELECT l.album_id FROM albums l
                          WHERE l.account = a.account AND l.deleted = 0
                            AND (l.album_id = ? OR l.name = ?)))",
                album.clone().into(),
            );
        }
        if let NameDriver::Gram(gram) = &driver {
            bind(
                &mut sql,
                " AND g.account = a.account AND g.gram = ?",
                gram.clone().into(),
            );
        }
        if let Some(name) = folded {
            // The path's collision key: case and Unicode folded as the library folds them.
            bind(&mut sql, " AND instr(a.path_key, ?) > 0", name.into());
        }
        if let Some(folder) = &query.folder {
            // The folded folder and a slash open the key; no slash after them: directly in it.
            let prefix = match keepsake_path::fold(folder.trim_matches('/')) {
                top if top.is_empty() => String::new(),
                inner => format!("{inner}/"),
            };
            let len = prefix.chars().count();
            bind(
                &mut sql,
                &format!(" AND substr(a.path_key, 1, {len}) = ?"),
                prefix.into(),
            );
            sql.push_str(&format!(
                " AND instr(substr(a.path_key, {}), '/') = 0",
                len + 1
            ));
        }
        if let Some((time, id)) = page.and_then(|p| p.split_once(':')) {
            let time: i64 = time.parse().map_err(|_| {
                LibraryError::InvalidArgument("page: not one this server gave".into())
            })?;
            values.push(time.into());
            values.push(id.to_string().into());
            let (t, i) = (values.len() - 1, values.len());
            sql.push_str(&format!(
                " AND (coalesce(a.capture_time, 0) < ?{t}
                       OR (coalesce(a.capture_time, 0) = ?{t} AND a.asset_id < ?{i}))"
            ));
        }
        // Read one row more than the page to know whether another follows; a radius is
        // checked after the box, so it reads on until the page is full.
        let limit = page_size + 1;
        sql.push_str(&format!(
            " ORDER BY coalesce(a.capture_time, 0) DESC, a.asset_id DESC LIMIT {}",
            if query.near_e7.is_some() {
                limit * 8
            } else {
                limit
            }
        ));
        let rows = db.query(&sql, values)?;
        let mut assets = Vec::with_capacity(limit);
        let mut last_read = None;
        for row in &rows {
            let asset = asset_from_row(row)?;
            last_read = Some(format!(
                "{}:{}",
                asset.capture_time.unwrap_or(0),
                asset.asset_id
            ));
            if let Some((centre, metres)) = query.near_e7 {
                let Some(at) = asset.details.position_e7 else {
                    continue;
                };
                if metres_between(centre, at) > f64::from(metres) {
                    continue;
                }
            }
            assets.push(asset);
            if assets.len() == limit {
                break;
            }
        }
        let next = if assets.len() > page_size {
            assets.truncate(page_size);
            assets
                .last()
                .map(|a| format!("{}:{}", a.capture_time.unwrap_or(0), a.asset_id))
        } else if query.near_e7.is_some() && rows.len() == limit * 8 {
            // The box held more than this page's radius took: go on from what was read.
            last_read
        } else {
            None
        };
        Ok(SearchPage { assets, next })
    }
}

impl Library {
    /// Every folder that holds a live asset, and each folder above one, by path; the top
    /// of the library is "". Read from the paths, so a folder exists while it holds something.
    pub fn list_folders(&self, account: &str) -> Result<Vec<Folder>, LibraryError> {
        let rows = self.db().query(
            "SELECT path FROM assets WHERE account = ?1 AND state = 'live'",
            vec![account.to_string().into()],
        )?;
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        counts.insert(String::new(), 0);
        for row in &rows {
            let path: String = row.get(0)?;
            let parent = path.rsplit_once('/').map_or("", |(dir, _)| dir);
            *counts.entry(parent.to_string()).or_default() += 1;
            let mut above = parent;
            while let Some((up, _)) = above.rsplit_once('/') {
                counts.entry(up.to_string()).or_default();
                above = up;
            }
        }
        Ok(counts
            .into_iter()
            .map(|(path, assets)| Folder { path, assets })
            .collect())
    }

    /// The account's albums (not deleted) by name, each with its live members and cover.
    pub fn list_albums(&self, account: &str) -> Result<Vec<AlbumSummary>, LibraryError> {
        let rows = self.db().query(
            "SELECT l.album_id, l.name,
                    (SELECT count(*) FROM album_members m JOIN assets a
                       ON a.account = m.account AND a.asset_id = m.asset_id
                      WHERE m.account = l.account AND m.album_id = l.album_id
                        AND m.present = 1 AND a.state = 'live'),
                    (SELECT a.asset_id FROM album_members m JOIN assets a
                       ON a.account = m.account AND a.asset_id = m.asset_id
                      WHERE m.account = l.account AND m.album_id = l.album_id
                        AND m.present = 1 AND a.state = 'live'
                      ORDER BY coalesce(a.capture_time, 0) DESC, a.asset_id DESC LIMIT 1)
             FROM albums l WHERE l.account = ?1 AND l.deleted = 0
             ORDER BY l.name, l.album_id",
            vec![account.to_string().into()],
        )?;
        rows.iter()
            .map(|row| {
                let assets: i64 = row.get(2)?;
                Ok(AlbumSummary {
                    album_id: row.get(0)?,
                    name: row.get(1)?,
                    assets: u64::try_from(assets).unwrap_or(0),
                    cover: row.get(3)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_store::{ManualClock, SeededEntropy};

    use crate::library::pairs::tests::photo;

    fn at(camera: &str, lat: f64, lon: f64) -> MediaDetails {
        let (make, model) = camera.split_once(' ').unwrap_or((camera, ""));
        MediaDetails {
            camera_make: make.into(),
            camera_model: model.into(),
            position_e7: Some(((lat * 1e7) as i32, (lon * 1e7) as i32)),
            ..MediaDetails::default()
        }
    }

    pub(super) fn names(page: &SearchPage) -> Vec<&str> {
        page.assets.iter().map(|a| a.path.as_str()).collect()
    }

    #[test]
    fn every_filter_narrows_and_pages_walk_the_whole_answer_newest_first() {
        let lib = Library::open(
            None,
            Arc::new(ManualClock::new(1_700_000_000_000)),
            Arc::new(SeededEntropy::new(3)),
            LibraryConfig::default(),
        )
        .unwrap();
        let day = 86_400_000;
        let eiffel = photo(
            &lib,
            1,
            Some(10 * day),
            "Paris/IMG_1.JPG",
            at("Apple iPhone 15", 48.8584, 2.2945),
        );
        photo(
            &lib,
            2,
            Some(11 * day),
            "Paris/IMG_2.JPG",
            at("Apple iPhone 15", 48.8606, 2.3376),
        );
        photo(
            &lib,
            3,
            Some(12 * day),
            "Rome/IMG_3.JPG",
            at("Canon EOS R5", 41.8902, 12.4922),
        );
        photo(
            &lib,
            4,
            Some(13 * day),
            "Rome/clip.MOV",
            MediaDetails::default(),
        );
        photo(&lib, 5, None, "scan_50%.png", MediaDetails::default());
        let q = |query: SearchQuery| lib.search("alice", &query, None, 100).unwrap();
        assert_eq!(
            names(&q(SearchQuery::default())),
            [
                "Rome/clip.MOV",
                "Rome/IMG_3.JPG",
                "Paris/IMG_2.JPG",
                "Paris/IMG_1.JPG",
                "scan_50%.png"
            ]
        );
        let dates = q(SearchQuery {
            taken_from: Some(11 * day),
            taken_until: Some(13 * day),
            ..Default::default()
        });
        assert_eq!(names(&dates), ["Rome/IMG_3.JPG", "Paris/IMG_2.JPG"]);
        let iphone = q(SearchQuery {
            camera: Some("IPHONE".into()),
            ..Default::default()
        });
        assert_eq!(names(&iphone), ["Paris/IMG_2.JPG", "Paris/IMG_1.JPG"]);
        // 1 km around the Eiffel Tower: not the Louvre, 3.2 km away.
        let near = q(SearchQuery {
            near_e7: Some(((488_584_000, 22_945_000), 1_000)),
            ..Default::default()
        });
        assert_eq!(names(&near), ["Paris/IMG_1.JPG"]);
        let italy = q(SearchQuery {
            within_e7: Some((360_000_000, 60_000_000, 470_000_000, 190_000_000)),
            ..Default::default()
        });
        assert_eq!(names(&italy), ["Rome/IMG_3.JPG"]);
        let videos = q(SearchQuery {
            kind: Some(AssetKind::Video),
            ..Default::default()
        });
        assert_eq!(names(&videos), ["Rome/clip.MOV"]);
        // A name's own `%` is a character, not a wildcard.
        let named = q(SearchQuery {
            name: Some("50%".into()),
            ..Default::default()
        });
        assert_eq!(names(&named), ["scan_50%.png"]);
        let clock = |n| Hlc {
            wall_ms: n,
            counter: 0,
            device: "phone".into(),
        };
        lib.set_metadata("alice", &eiffel, &MetadataField::Favorite(true), &clock(1))
            .unwrap();
        lib.put_album("alice", "al1", "Paris trip", &clock(2))
            .unwrap();
        lib.set_member("alice", "al1", &eiffel, true, &clock(3))
            .unwrap();
        for query in [
            SearchQuery {
                favorite: Some(true),
                ..Default::default()
            },
            SearchQuery {
                album: Some("Paris trip".into()),
                ..Default::default()
            },
            SearchQuery {
                album: Some("al1".into()),
                camera: Some("iphone 15".into()),
                ..Default::default()
            },
        ] {
            assert_eq!(names(&q(query.clone())), ["Paris/IMG_1.JPG"], "{query:?}");
        }
        // Pages of two walk all five, none twice, in the same order.
        let mut seen = Vec::new();
        let mut page = None;
        loop {
            let got = lib
                .search("alice", &SearchQuery::default(), page.as_deref(), 2)
                .unwrap();
            seen.extend(got.assets.iter().map(|a| a.path.clone()));
            match got.next {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, names(&q(SearchQuery::default())));
        // Another account sees none of it.
        assert!(
            lib.search("bob", &SearchQuery::default(), None, 10)
                .unwrap()
                .assets
                .is_empty()
        );
    }

    #[test]
    fn distances_and_boxes_agree_with_the_globe() {
        // Paris to London is about 344 km.
        let paris = (488_566_000, 23_522_000);
        let london = (515_074_000, -1_278_000);
        let d = metres_between(paris, london);
        assert!((340_000.0..348_000.0).contains(&d), "{d}");
        let (s, w, n, e) = box_around(paris, 1_000);
        assert!(s < paris.0 && paris.0 < n && w < paris.1 && paris.1 < e);
        // A point 900 m north is inside the box and within the radius.
        let north = (paris.0 + 80_900, paris.1);
        assert!(north.0 < n && metres_between(paris, north) < 1_000.0);
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;
    use crate::LibraryConfig;
    use crate::library::pairs::tests::photo;
    use keepsake_store::{ManualClock, SeededEntropy};

    fn names_found(lib: &Library, term: &str) -> Vec<String> {
        let query = SearchQuery {
            name: Some(term.into()),
            ..SearchQuery::default()
        };
        let mut found: Vec<String> = lib
            .search("alice", &query, None, MAX_SEARCH_PAGE)
            .unwrap()
            .assets
            .into_iter()
            .map(|a| a.path)
            .collect();
        found.sort();
        found
    }

    /// A name search answers the same whether a rare piece of the name drives it or the
    /// library is read newest first, and follows renames, restores and purges.
    #[test]
    fn a_name_search_finds_rare_and_common_names_and_follows_renames_and_purges() {
        let lib = Library::open(
            None,
            Arc::new(ManualClock::new(1_700_000_000_000)),
            Arc::new(SeededEntropy::new(4)),
            LibraryConfig::default(),
        )
        .unwrap();
        // More `img` than any rare piece drives: that term reads newest first.
        for i in 0..(DRIVE_AT_MOST as u32 + 50) {
            let req = CommitRequest {
                request_id: format!("bulk{i}"),
                asset_id: None,
                base_version: None,
                manifest: ChunkId::of(&i.to_le_bytes()),
                file_hash: ChunkId::of(&i.to_be_bytes()),
                size: 1,
                kind: AssetKind::Photo,
                capture_time: Some(i64::from(i)),
                width: None,
                height: None,
                original_name: format!("IMG_{i:05}.JPG"),
                path: format!("Camera/IMG_{i:05}.JPG"),
                device: "phone".into(),
                details: MediaDetails::default(),
            };
            lib.commit("alice", &req).unwrap();
        }
        let d = MediaDetails::default;
        let rome = photo(&lib, 1, Some(5), "Trips/Rome 2019/Colosseum.jpg", d());
        photo(&lib, 2, Some(6), "Trips/Paris/Louvre.jpg", d());
        assert_eq!(
            names_found(&lib, "colos"),
            ["Trips/Rome 2019/Colosseum.jpg"]
        );
        assert_eq!(names_found(&lib, "ROME"), ["Trips/Rome 2019/Colosseum.jpg"]);
        assert_eq!(names_found(&lib, "img_0004").len(), 10, "IMG_00040..49");
        assert_eq!(
            lib.search(
                "alice",
                &SearchQuery {
                    name: Some("img".into()),
                    ..SearchQuery::default()
                },
                None,
                100
            )
            .unwrap()
            .assets
            .len(),
            100,
            "a common piece still fills the page"
        );
        assert!(names_found(&lib, "zzz").is_empty() && names_found(&lib, "rome 2020").is_empty());

        let clock = Hlc {
            wall_ms: 1_700_000_000_000,
            counter: 1,
            device: "web".into(),
        };
        lib.rename("alice", &rome, "Trips/Roma/Colosseo.jpg", &clock)
            .unwrap();
        assert!(names_found(&lib, "colosseum").is_empty());
        assert_eq!(names_found(&lib, "roma/colos"), ["Trips/Roma/Colosseo.jpg"]);
        lib.trash("alice", &rome).unwrap();
        assert!(
            names_found(&lib, "colosseo").is_empty(),
            "trashed is not searched"
        );
        lib.restore("alice", &rome).unwrap();
        assert_eq!(names_found(&lib, "colosseo").len(), 1);
        lib.purge("alice", &rome).unwrap();
        assert!(names_found(&lib, "colosseo").is_empty());
        let left: i64 = lib
            .db()
            .query_row(
                "SELECT count(*) FROM asset_grams WHERE asset_id = ?1",
                params![rome],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "a purged photo leaves nothing in the name index");
    }

    #[test]
    fn a_folder_shows_its_own_photos_the_tree_every_folder_and_the_trash_its_own() {
        let lib = Library::open(
            None,
            Arc::new(ManualClock::new(1_700_000_000_000)),
            Arc::new(SeededEntropy::new(5)),
            LibraryConfig::default(),
        )
        .unwrap();
        let day = 86_400_000;
        let top = photo(&lib, 1, Some(day), "IMG_1.JPG", MediaDetails::default());
        photo(
            &lib,
            2,
            Some(2 * day),
            "Trips/Rome/IMG_2.JPG",
            MediaDetails::default(),
        );
        photo(
            &lib,
            3,
            Some(3 * day),
            "Trips/Rome/IMG_3.JPG",
            MediaDetails::default(),
        );
        let deep = photo(
            &lib,
            4,
            Some(4 * day),
            "Trips/IMG_4.JPG",
            MediaDetails::default(),
        );
        // A sibling whose name starts like the folder is not in it.
        photo(
            &lib,
            5,
            Some(5 * day),
            "Tripsy/IMG_5.JPG",
            MediaDetails::default(),
        );
        let in_folder = |folder: &str| {
            let query = SearchQuery {
                folder: Some(folder.into()),
                ..Default::default()
            };
            let page = lib.search("alice", &query, None, 100).unwrap();
            super::tests::names(&page)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(in_folder(""), ["IMG_1.JPG"]);
        assert_eq!(in_folder("Trips"), ["Trips/IMG_4.JPG"]);
        assert_eq!(
            in_folder("trips/rome/"),
            ["Trips/Rome/IMG_3.JPG", "Trips/Rome/IMG_2.JPG"]
        );
        let tree: Vec<(String, u64)> = lib
            .list_folders("alice")
            .unwrap()
            .into_iter()
            .map(|f| (f.path, f.assets))
            .collect();
        assert_eq!(
            tree,
            [
                (String::new(), 1),
                ("Trips".to_string(), 1),
                ("Trips/Rome".to_string(), 2),
                ("Tripsy".to_string(), 1),
            ]
        );

        lib.trash("alice", &deep).unwrap();
        assert!(
            in_folder("Trips").is_empty(),
            "a trashed photo leaves its folder"
        );
        let trash = SearchQuery {
            trashed: true,
            ..Default::default()
        };
        let deleted = lib.search("alice", &trash, None, 100).unwrap();
        assert_eq!(super::tests::names(&deleted), ["Trips/IMG_4.JPG"]);

        let clock = |n| Hlc {
            wall_ms: n,
            counter: 0,
            device: "phone".into(),
        };
        lib.put_album("alice", "al1", "Best", &clock(1)).unwrap();
        lib.set_member("alice", "al1", &top, true, &clock(2))
            .unwrap();
        lib.set_member("alice", "al1", &deep, true, &clock(3))
            .unwrap();
        let albums = lib.list_albums("alice").unwrap();
        assert_eq!(albums.len(), 1);
        assert_eq!(albums[0].assets, 1, "a trashed member is not counted");
        assert_eq!(albums[0].cover.as_deref(), Some(top.as_str()));
        assert!(lib.list_albums("bob").unwrap().is_empty());
    }
}
