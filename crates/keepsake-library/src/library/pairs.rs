//! Companion resources: a Live Photo's movie belongs with its still (the two share Apple's
//! content identifier), a RAW with the JPEG of the same name and moment. Each stays a file
//! of its own at its own path — nothing is merged, hidden or deleted by pairing — but the
//! companion points at its primary, which people see; trashing and restoring the primary
//! takes the companions along. Pairing happens at the second half's commit, whichever half
//! that is, and on whatever pass it arrives.

use super::*;

/// File name endings of camera RAW formats.
const RAW_EXTENSIONS: &[&str] = &[
    "dng", "cr2", "cr3", "nef", "arw", "raf", "orf", "rw2", "pef", "srw",
];
/// Endings of the picture a RAW is shot beside.
const SHOWN_EXTENSIONS: &[&str] = &["jpg", "jpeg", "heic", "heif"];
/// A RAW and its JPEG record the same moment; a camera may round one differently.
const SAME_MOMENT_MS: i64 = 1000;

/// `dir/stem.ext` → (`dir/stem`, `ext`), on the folded key.
fn stem_and_ext(path_key: &str) -> Option<(&str, &str)> {
    let (stem, ext) = path_key.rsplit_once('.')?;
    (!stem.is_empty() && !stem.ends_with('/')).then_some((stem, ext))
}

impl Library {
    /// Pairs the asset just committed with its other half, if the account holds it.
    pub(super) fn pair_new(
        &self,
        tx: &Db,
        account: &str,
        asset_id: &str,
        path: &str,
        req: &CommitRequest,
    ) -> Result<(), LibraryError> {
        let id = req.details.content_identifier.trim();
        if !id.is_empty() {
            let others: Vec<(String, String)> = tx.query_map(
                "SELECT asset_id, kind FROM assets
                 WHERE account = ?1 AND content_id = ?2 AND state = 'live'
                   AND asset_id <> ?3 AND pair_of IS NULL
                 ORDER BY seq",
                params![account, id, asset_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mine = req.kind.as_str();
            if let Some((other, _)) = others.iter().find(|(_, kind)| kind != mine) {
                let (primary, companion) = if req.kind == AssetKind::Video {
                    (other.as_str(), asset_id)
                } else {
                    (asset_id, other.as_str())
                };
                return self.link(tx, account, companion, primary, PairRole::Live);
            }
            return Ok(());
        }
        let key = keepsake_path::fold(path);
        let Some((stem, ext)) = stem_and_ext(&key) else {
            return Ok(());
        };
        let raw = RAW_EXTENSIONS.contains(&ext);
        if !raw && !SHOWN_EXTENSIONS.contains(&ext) {
            return Ok(());
        }
        // Every live file with this stem, from the path index: `stem.` up to `stem/`.
        let siblings: Vec<(String, String, Option<i64>, Option<String>)> = tx.query_map(
            "SELECT asset_id, path_key, capture_time, pair_of FROM assets
             WHERE account = ?1 AND path_key > ?2 AND path_key < ?3 AND state = 'live'
               AND asset_id <> ?4",
            params![account, format!("{stem}."), format!("{stem}/"), asset_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let same_moment = |t: Option<i64>| match (t, req.capture_time) {
            (Some(a), Some(b)) => (a - b).abs() <= SAME_MOMENT_MS,
            _ => false,
        };
        let other = siblings.iter().find(|(_, other_key, taken, pair_of)| {
            let other_ext = stem_and_ext(other_key).map(|(s, e)| (s == stem, e));
            let fits = match other_ext {
                Some((true, e)) if raw => SHOWN_EXTENSIONS.contains(&e),
                Some((true, e)) => RAW_EXTENSIONS.contains(&e),
                _ => false,
            };
            fits && pair_of.is_none() && same_moment(*taken)
        });
        match other {
            Some((other, ..)) if raw => self.link(tx, account, asset_id, other, PairRole::Raw),
            Some((other, ..)) => self.link(tx, account, other, asset_id, PairRole::Raw),
            None => Ok(()),
        }
    }

    fn link(
        &self,
        tx: &Db,
        account: &str,
        companion: &str,
        primary: &str,
        role: PairRole,
    ) -> Result<(), LibraryError> {
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE assets SET pair_of = ?3, pair_role = ?4, seq = ?5
             WHERE account = ?1 AND asset_id = ?2",
            params![account, companion, primary, role.as_str(), seq as i64],
        )?;
        tracing::debug!(account, companion, primary, role = role.as_str(), "paired");
        Ok(())
    }

    /// The companions of `asset_id` in `state`; in Recently Deleted, only those that went
    /// there with it (at the same moment): a RAW deleted on its own earlier stays deleted.
    pub(super) fn companions(
        &self,
        tx: &Db,
        account: &str,
        asset_id: &str,
        state: &str,
    ) -> Result<Vec<String>, LibraryError> {
        Ok(tx.query_map(
            "SELECT c.asset_id FROM assets c JOIN assets p
               ON p.account = c.account AND p.asset_id = c.pair_of
             WHERE c.account = ?1 AND c.pair_of = ?2 AND c.state = ?3
               AND (c.state = 'live' OR c.state_at = p.state_at)",
            params![account, asset_id, state],
            |r| r.get(0),
        )?)
    }

    /// Trashes an asset and, unless `alone`, its live companions.
    pub(super) fn trash_in(
        &self,
        tx: &Db,
        account: &str,
        asset_id: &str,
        alone: bool,
    ) -> Result<bool, LibraryError> {
        let changed = self.set_state_in(tx, account, asset_id, "trashed", &["live"])?;
        if !alone {
            // The same moment as the primary's, to the millisecond: how restore and purge
            // tell the companions that went with it from one deleted on its own.
            let at: Option<i64> = tx.query_row(
                "SELECT state_at FROM assets WHERE account = ?1 AND asset_id = ?2",
                params![account, asset_id],
                |r| r.get(0),
            )?;
            for companion in self.companions(tx, account, asset_id, "live")? {
                self.set_state_in(tx, account, &companion, "trashed", &["live"])?;
                tx.execute(
                    "UPDATE assets SET state_at = ?3 WHERE account = ?1 AND asset_id = ?2",
                    params![account, companion, at],
                )?;
            }
        }
        Ok(changed)
    }

    /// Restores an asset and the companions in Recently Deleted with it.
    pub(super) fn restore_in(
        &self,
        tx: &Db,
        account: &str,
        asset_id: &str,
    ) -> Result<bool, LibraryError> {
        // Asked before the primary's own state changes: the moment it went is the key.
        let with_it = self.companions(tx, account, asset_id, "trashed")?;
        let changed = self.set_state_in(tx, account, asset_id, "live", &["trashed"])?;
        for companion in with_it {
            self.set_state_in(tx, account, &companion, "live", &["trashed"])?;
        }
        Ok(changed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::LibraryConfig;
    use keepsake_store::{ManualClock, SeededEntropy};

    fn library_at(clock: Arc<ManualClock>) -> Library {
        Library::open(
            None,
            clock,
            Arc::new(SeededEntropy::new(5)),
            LibraryConfig::default(),
        )
        .unwrap()
    }

    /// Commits photo (or, named `.MOV`, video) number `n` for alice at `path`.
    pub(crate) fn photo(
        lib: &Library,
        n: u8,
        taken: Option<i64>,
        path: &str,
        details: MediaDetails,
    ) -> String {
        let req = CommitRequest {
            request_id: format!("r{n}"),
            asset_id: None,
            base_version: None,
            manifest: ChunkId::of(&[n, 1]),
            file_hash: ChunkId::of(&[n, 2]),
            size: 10,
            kind: if path.ends_with(".MOV") {
                AssetKind::Video
            } else {
                AssetKind::Photo
            },
            capture_time: taken,
            width: None,
            height: None,
            original_name: path.rsplit('/').next().unwrap().into(),
            path: path.into(),
            device: "phone".into(),
            details,
        };
        lib.commit("alice", &req).unwrap().asset_id
    }

    /// A file with Apple's content `identifier`, if any.
    fn file(lib: &Library, n: u8, path: &str, taken: Option<i64>, identifier: &str) -> String {
        let details = MediaDetails {
            content_identifier: identifier.into(),
            ..MediaDetails::default()
        };
        photo(lib, n, taken, path, details)
    }

    fn paired(lib: &Library, id: &str) -> Option<(String, PairRole)> {
        lib.get_asset("alice", id).unwrap().companion_of
    }

    fn live(lib: &Library, id: &str) -> bool {
        lib.get_asset("alice", id).unwrap().state == AssetState::Live
    }

    #[test]
    fn a_live_photos_halves_pair_in_either_order_and_are_trashed_and_restored_as_one() {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let lib = library_at(clock.clone());
        let still = file(&lib, 1, "DCIM/IMG_0001.HEIC", Some(5), "UUID-A");
        let movie = file(&lib, 2, "DCIM/IMG_0001.MOV", Some(5), "UUID-A");
        assert_eq!(paired(&lib, &movie), Some((still.clone(), PairRole::Live)));
        assert_eq!(paired(&lib, &still), None);
        // The movie first, the still on a later pass.
        let movie2 = file(&lib, 3, "DCIM/IMG_0002.MOV", Some(6), "UUID-B");
        let other = file(&lib, 4, "DCIM/IMG_0003.HEIC", Some(7), "UUID-C");
        let still2 = file(&lib, 5, "DCIM/IMG_0002.HEIC", Some(6), "UUID-B");
        assert_eq!(
            paired(&lib, &movie2),
            Some((still2.clone(), PairRole::Live))
        );
        assert_eq!(paired(&lib, &other), None);

        // Search shows a Live Photo once, by its still.
        let all = lib
            .search("alice", &SearchQuery::default(), None, 100)
            .unwrap();
        let ids: Vec<&str> = all.assets.iter().map(|a| a.asset_id.as_str()).collect();
        assert!(!ids.contains(&movie.as_str()) && ids.contains(&still.as_str()));
        let lives = SearchQuery {
            live_photos: true,
            ..SearchQuery::default()
        };
        let found = lib.search("alice", &lives, None, 100).unwrap();
        let mut ids: Vec<&str> = found.assets.iter().map(|a| a.asset_id.as_str()).collect();
        ids.sort();
        let mut want = vec![still.as_str(), still2.as_str()];
        want.sort();
        assert_eq!(ids, want);

        lib.trash("alice", &still).unwrap();
        assert!(!live(&lib, &still) && !live(&lib, &movie), "trashed as one");
        lib.restore("alice", &still).unwrap();
        assert!(live(&lib, &still) && live(&lib, &movie), "restored as one");

        // A file deleted from a folder takes only itself: the still stays a still, and
        // stays without its movie when it goes to Recently Deleted and comes back.
        lib.trash_alone("alice", &movie).unwrap();
        assert!(live(&lib, &still) && !live(&lib, &movie));
        clock.advance(1000);
        lib.trash("alice", &still).unwrap();
        lib.restore("alice", &still).unwrap();
        assert!(
            live(&lib, &still) && !live(&lib, &movie),
            "the movie deleted alone stays so"
        );
        lib.trash("alice", &still2).unwrap();
        clock.advance(5000);
        let released = lib.purge("alice", &still2).unwrap();
        assert!(
            matches!(
                lib.get_asset("alice", &movie2).unwrap().state,
                AssetState::Purged(_)
            ),
            "purged with its still"
        );
        assert_eq!(released.len(), 2);
    }

    #[test]
    fn a_raw_pairs_with_the_jpeg_of_its_name_and_moment_only() {
        let lib = library_at(Arc::new(ManualClock::new(1_700_000_000_000)));
        let jpeg = file(&lib, 1, "Trip/DSC_0001.JPG", Some(1_000), "");
        let raw = file(&lib, 2, "Trip/DSC_0001.NEF", Some(1_400), "");
        assert_eq!(paired(&lib, &raw), Some((jpeg.clone(), PairRole::Raw)));
        // The RAW first.
        let raw2 = file(&lib, 3, "Trip/DSC_0002.ARW", Some(9_000), "");
        let jpeg2 = file(&lib, 4, "Trip/DSC_0002.jpg", Some(9_000), "");
        assert_eq!(paired(&lib, &raw2), Some((jpeg2, PairRole::Raw)));
        // Another moment, another folder, another stem: three photos of their own.
        let later = file(&lib, 5, "Trip/DSC_0003.JPG", Some(1_000), "");
        let raw3 = file(&lib, 6, "Trip/DSC_0003.CR2", Some(60_000), "");
        let elsewhere = file(&lib, 7, "Other/DSC_0001.NEF", Some(1_000), "");
        let longer = file(&lib, 8, "Trip/DSC_0001.x.DNG", Some(1_000), "");
        for id in [&later, &raw3, &elsewhere, &longer] {
            assert_eq!(paired(&lib, id), None, "{id}");
        }
        assert_eq!(paired(&lib, &jpeg), None, "the JPEG is the one shown");
    }
}
