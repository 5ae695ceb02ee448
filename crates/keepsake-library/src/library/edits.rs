//! Metadata, renames, Recently Deleted and albums: per-field last writer wins by clock.

use super::*;

/// An asset's path in the library.
pub(super) fn asset_path(tx: &Db, account: &str, asset_id: &str) -> Result<String, LibraryError> {
    Ok(tx.query_row(
        "SELECT coalesce(path, original_name) FROM assets WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
        |r| r.get(0),
    )?)
}

/// An asset's life state ("live", "trashed", "purged"); NOT_FOUND for other accounts' ids too.
pub(super) fn asset_state(tx: &Db, account: &str, asset_id: &str) -> Result<String, LibraryError> {
    tx.query_row(
        "SELECT state FROM assets WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| LibraryError::NotFound {
        kind: "asset",
        id: asset_id.to_string(),
    })
}

/// A coordinate, or NULL for a place cleared.
fn nullable(units: Option<i32>) -> keepsake_sql::Value {
    units.map_or(keepsake_sql::Value::Null, |u| i64::from(u).into())
}

impl Library {
    /// Applies a device's edits in order in one transaction — one durable write for all
    /// of them instead of one each. Each is applied as its own call would apply it and
    /// answered on its own (`true`: it changed something); one refused leaves no trace and
    /// stops none after it. A failure of the index itself undoes them all.
    pub fn apply_edits(
        &self,
        account: &str,
        edits: &[LibraryEdit],
    ) -> Result<Vec<Result<bool, LibraryError>>, LibraryError> {
        if edits.len() > MAX_EDITS_PER_CALL {
            return Err(LibraryError::InvalidArgument(format!(
                "{} edits in one call; at most {MAX_EDITS_PER_CALL}",
                edits.len()
            )));
        }
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let mut answers = Vec::with_capacity(edits.len());
        for edit in edits {
            let savepoint = tx.savepoint()?;
            match self.apply_edit_in(&savepoint, account, edit) {
                Ok(applied) => {
                    savepoint.commit()?;
                    answers.push(Ok(applied));
                }
                Err(e @ LibraryError::Index(_)) => return Err(e),
                // Dropping the savepoint rolls back whatever the refused edit wrote.
                Err(refused) => answers.push(Err(refused)),
            }
        }
        tx.commit()?;
        Ok(answers)
    }

    pub(super) fn apply_edit_in(
        &self,
        tx: &Db,
        account: &str,
        edit: &LibraryEdit,
    ) -> Result<bool, LibraryError> {
        match edit {
            LibraryEdit::Metadata {
                asset_id,
                field,
                clock,
            } => self.set_metadata_in(tx, account, asset_id, field, clock),
            LibraryEdit::PutAlbum {
                album_id,
                name,
                clock,
            } => self.put_album_in(tx, account, album_id, name, clock),
            LibraryEdit::DeleteAlbum { album_id, clock } => {
                self.delete_album_in(tx, account, album_id, clock)
            }
            LibraryEdit::Member {
                album_id,
                asset_id,
                present,
                clock,
            } => self.set_member_in(tx, account, album_id, asset_id, *present, clock),
            LibraryEdit::Trash { asset_id, alone } => self.trash_in(tx, account, asset_id, *alone),
            LibraryEdit::Restore { asset_id } => self.restore_in(tx, account, asset_id),
            LibraryEdit::Rename {
                asset_id,
                path,
                clock,
            } => self.rename_in(tx, account, asset_id, path, clock),
        }
    }

    pub(crate) fn check_text(&self, what: &str, text: &str) -> Result<(), LibraryError> {
        // Bidirectional overrides too: an album or device named `\u{202E}gpj.exe` shows as
        // `exe.jpg` wherever it is listed.
        if text.len() > self.config.max_text_len
            || text
                .chars()
                .any(|c| c.is_control() || keepsake_path::is_bidi_control(c))
        {
            return Err(LibraryError::InvalidArgument(format!(
                "{what} must be at most {} bytes without control or direction-override characters",
                self.config.max_text_len
            )));
        }
        Ok(())
    }

    pub(super) fn check_clock(&self, hlc: &Hlc) -> Result<(), LibraryError> {
        let ahead = hlc.wall_ms - self.clock.now_ms();
        if ahead > self.config.max_clock_ahead_ms {
            return Err(LibraryError::ClockSkew { ahead_ms: ahead });
        }
        Ok(())
    }

    /// Applies a metadata change if its clock is newer than the field's; returns whether it won.
    pub fn set_metadata(
        &self,
        account: &str,
        asset_id: &str,
        field: &MetadataField,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.write(|tx| self.set_metadata_in(tx, account, asset_id, field, hlc))
    }

    pub(super) fn set_metadata_in(
        &self,
        tx: &Db,
        account: &str,
        asset_id: &str,
        field: &MetadataField,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.check_clock(hlc)?;
        let (columns, clock_column, values): (&str, &str, Vec<keepsake_sql::Value>) = match field {
            MetadataField::Favorite(v) => (
                "favorite = ?3",
                "favorite_clock",
                vec![i64::from(*v).into()],
            ),
            MetadataField::Hidden(v) => ("hidden = ?3", "hidden_clock", vec![i64::from(*v).into()]),
            MetadataField::Title(t) => {
                self.check_text("title", t)?;
                ("title = ?3", "title_clock", vec![t.clone().into()])
            }
            MetadataField::CaptureTime(t) => {
                ("capture_time = ?3", "capture_clock", vec![(*t).into()])
            }
            MetadataField::Place(place) => {
                if let Some((lat, lon)) = place
                    && (lat.unsigned_abs() > 900_000_000 || lon.unsigned_abs() > 1_800_000_000)
                {
                    return Err(LibraryError::InvalidArgument(
                        "place: latitude within ±90°, longitude within ±180°".into(),
                    ));
                }
                let (lat, lon) = place.map_or((None, None), |(a, o)| (Some(a), Some(o)));
                (
                    "lat_e7 = ?3, lon_e7 = ?6",
                    "place_clock",
                    vec![nullable(lat), nullable(lon)],
                )
            }
        };
        let stored: String = tx
            .query_row(
                &format!("SELECT {clock_column} FROM assets WHERE account = ?1 AND asset_id = ?2 AND state != 'purged'"),
                params![account, asset_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            })?;
        let encoded = hlc.encode();
        if encoded <= stored {
            return Ok(false);
        }
        let seq = next_seq(tx, account)?;
        let mut bound: Vec<keepsake_sql::Value> =
            vec![account.to_string().into(), asset_id.to_string().into()];
        let mut values = values.into_iter();
        bound.push(values.next().expect("every field sets a column"));
        bound.push(encoded.into());
        bound.push((seq as i64).into());
        bound.extend(values);
        tx.execute(
            &format!(
                "UPDATE assets SET {columns}, {clock_column} = ?4, seq = ?5 WHERE account = ?1 AND asset_id = ?2"
            ),
            bound,
        )?;
        Ok(true)
    }

    /// Moves an asset to Recently Deleted with its companions (idempotent).
    pub fn trash(&self, account: &str, asset_id: &str) -> Result<(), LibraryError> {
        self.write(|tx| self.trash_in(tx, account, asset_id, false))
            .map(|_| ())
    }

    /// Moves only this resource to Recently Deleted, not its companions or the asset it is
    /// a companion of (a file deleted from a folder); idempotent.
    pub fn trash_alone(&self, account: &str, asset_id: &str) -> Result<(), LibraryError> {
        self.write(|tx| self.trash_in(tx, account, asset_id, true))
            .map(|_| ())
    }

    /// Brings an asset back from Recently Deleted, with the companions that went with it
    /// (idempotent).
    pub fn restore(&self, account: &str, asset_id: &str) -> Result<(), LibraryError> {
        self.write(|tx| self.restore_in(tx, account, asset_id))
            .map(|_| ())
    }

    pub(super) fn set_state_in(
        &self,
        tx: &Db,
        account: &str,
        asset_id: &str,
        to: &str,
        from: &[&str],
    ) -> Result<bool, LibraryError> {
        let now = self.clock.now_ms();
        let state = asset_state(tx, account, asset_id)?;
        if state == to {
            return Ok(false);
        }
        if !from.contains(&state.as_str()) {
            return Err(LibraryError::NotLive(asset_id.to_string()));
        }
        if to == "live" {
            // Another file may have taken its name while it was in Recently Deleted.
            let path = asset_path(tx, account, asset_id)?;
            let free = free_path(tx, account, &path, Some(asset_id))?;
            if free != path {
                let (old, new) = (keepsake_path::fold(&path), keepsake_path::fold(&free));
                tx.execute(
                    "UPDATE assets SET path = ?3, path_key = ?4 WHERE account = ?1 AND asset_id = ?2",
                    params![account, asset_id, free, new],
                )?;
                index_name(tx, account, asset_id, (Some(&old), Some(&new)))?;
            }
        }
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE assets SET state = ?3, state_at = ?4, seq = ?5 WHERE account = ?1 AND asset_id = ?2",
            params![account, asset_id, to, now, seq as i64],
        )?;
        Ok(true)
    }

    /// Moves an asset to another path (idempotent; last writer by clock wins). A path
    /// another live asset holds is numbered, decided here, once, for every device.
    pub fn rename(
        &self,
        account: &str,
        asset_id: &str,
        path: &str,
        clock: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.write(|tx| self.rename_in(tx, account, asset_id, path, clock))
    }

    pub(super) fn rename_in(
        &self,
        tx: &Db,
        account: &str,
        asset_id: &str,
        path: &str,
        clock: &Hlc,
    ) -> Result<bool, LibraryError> {
        keepsake_path::check(path).map_err(|e| LibraryError::InvalidArgument(e.to_string()))?;
        self.check_clock(clock)?;
        let (state, current, current_clock): (String, Option<String>, String) = tx
            .query_row(
                "SELECT state, path, path_clock FROM assets WHERE account = ?1 AND asset_id = ?2",
                params![account, asset_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            })?;
        if state == "purged" {
            return Err(LibraryError::NotLive(asset_id.to_string()));
        }
        let newer = Hlc::decode(&current_clock).is_none_or(|seen| *clock > seen);
        if !newer || current.as_deref() == Some(path) {
            return Ok(false);
        }
        let free = if state == "live" {
            free_path(tx, account, path, Some(asset_id))?
        } else {
            path.to_string()
        };
        let seq = next_seq(tx, account)?;
        let old = keepsake_path::fold(&asset_path(tx, account, asset_id)?);
        let new = keepsake_path::fold(&free);
        index_name(tx, account, asset_id, (Some(&old), Some(&new)))?;
        tx.execute(
            "UPDATE assets SET path = ?3, path_key = ?4, path_clock = ?5, seq = ?6
             WHERE account = ?1 AND asset_id = ?2",
            params![
                account,
                asset_id,
                free,
                keepsake_path::fold(&free),
                clock.encode(),
                seq as i64
            ],
        )?;
        Ok(true)
    }

    /// Creates or renames an album; the name merges last-writer-wins by HLC.
    pub fn put_album(
        &self,
        account: &str,
        album_id: &str,
        name: &str,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.write(|tx| self.put_album_in(tx, account, album_id, name, hlc))
    }

    pub(super) fn put_album_in(
        &self,
        tx: &Db,
        account: &str,
        album_id: &str,
        name: &str,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.check_clock(hlc)?;
        self.check_text("album name", name)?;
        if album_id.is_empty() || album_id.len() > 64 {
            return Err(LibraryError::InvalidArgument(
                "album_id must be 1..=64 bytes".into(),
            ));
        }
        let stored: Option<(String, bool)> = tx
            .query_row(
                "SELECT name_clock, deleted FROM albums WHERE account = ?1 AND album_id = ?2",
                params![account, album_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let encoded = hlc.encode();
        if let Some((clock, deleted)) = &stored
            && (*deleted || encoded <= *clock)
        {
            return Ok(false);
        }
        let seq = next_seq(tx, account)?;
        tx.execute(
            "INSERT INTO albums (account, album_id, name, name_clock, seq) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account, album_id) DO UPDATE SET name = ?3, name_clock = ?4, seq = ?5",
            params![account, album_id, name, encoded, seq as i64],
        )?;
        Ok(true)
    }

    /// Deletes an album (a tombstone that wins over every later rename).
    pub fn delete_album(
        &self,
        account: &str,
        album_id: &str,
        hlc: &Hlc,
    ) -> Result<(), LibraryError> {
        self.write(|tx| self.delete_album_in(tx, account, album_id, hlc))
            .map(|_| ())
    }

    pub(super) fn delete_album_in(
        &self,
        tx: &Db,
        account: &str,
        album_id: &str,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.check_clock(hlc)?;
        let deleted: bool = tx
            .query_row(
                "SELECT deleted FROM albums WHERE account = ?1 AND album_id = ?2",
                params![account, album_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "album",
                id: album_id.to_string(),
            })?;
        if deleted {
            return Ok(false);
        }
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE albums SET deleted = 1, deleted_clock = ?3, seq = ?4 WHERE account = ?1 AND album_id = ?2",
            params![account, album_id, hlc.encode(), seq as i64],
        )?;
        Ok(true)
    }

    /// Adds or removes an asset in an album; each (album, asset) pair merges on its own clock.
    pub fn set_member(
        &self,
        account: &str,
        album_id: &str,
        asset_id: &str,
        present: bool,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.write(|tx| self.set_member_in(tx, account, album_id, asset_id, present, hlc))
    }

    pub(super) fn set_member_in(
        &self,
        tx: &Db,
        account: &str,
        album_id: &str,
        asset_id: &str,
        present: bool,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.check_clock(hlc)?;
        let live_album: bool = tx
            .query_row(
                "SELECT deleted = 0 FROM albums WHERE account = ?1 AND album_id = ?2",
                params![account, album_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false);
        if !live_album {
            return Err(LibraryError::NotFound {
                kind: "album",
                id: album_id.to_string(),
            });
        }
        let asset_exists: bool = tx
            .query_row(
                "SELECT 1 FROM assets WHERE account = ?1 AND asset_id = ?2 AND state != 'purged'",
                params![account, asset_id],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !asset_exists {
            return Err(LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            });
        }
        let stored: Option<String> = tx
            .query_row(
                "SELECT clock FROM album_members WHERE account = ?1 AND album_id = ?2 AND asset_id = ?3",
                params![account, album_id, asset_id],
                |r| r.get(0),
            )
            .optional()?;
        let encoded = hlc.encode();
        if stored.is_some_and(|c| encoded <= c) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO album_members (account, album_id, asset_id, present, clock) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account, album_id, asset_id) DO UPDATE SET present = ?4, clock = ?5",
            params![account, album_id, asset_id, present, encoded],
        )?;
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE albums SET seq = ?3 WHERE account = ?1 AND album_id = ?2",
            params![account, album_id, seq as i64],
        )?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LibraryConfig;
    use crate::library::pairs::tests::photo;
    use keepsake_store::{ManualClock, SeededEntropy};

    /// A person corrects a photo's date and place in the library: the file is untouched,
    /// the asset says what they set, search finds it there, and a later version of the
    /// file (an edit on a phone, with the camera's old date and place) does not undo it.
    #[test]
    fn a_date_and_place_set_in_the_library_outrank_every_version_of_the_file() {
        let lib = Library::open(
            None,
            Arc::new(ManualClock::new(1_700_000_000_000)),
            Arc::new(SeededEntropy::new(9)),
            LibraryConfig::default(),
        )
        .unwrap();
        let camera = MediaDetails {
            position_e7: Some((100_000_000, 200_000_000)),
            ..MediaDetails::default()
        };
        let id = photo(&lib, 1, Some(1_000), "scan.jpg", camera.clone());
        let clock = |n: u32| Hlc {
            wall_ms: 1_700_000_000_000,
            counter: n,
            device: "web".into(),
        };
        let taken = 946_684_800_000; // 2000-01-01, the day the print was taken
        let rome = Some((419_028_000, 124_964_000));
        assert!(
            lib.set_metadata("alice", &id, &MetadataField::CaptureTime(taken), &clock(1))
                .unwrap()
        );
        assert!(
            lib.set_metadata("alice", &id, &MetadataField::Place(rome), &clock(2))
                .unwrap()
        );
        let asset = lib.get_asset("alice", &id).unwrap();
        assert_eq!(
            (asset.capture_time, asset.details.position_e7),
            (Some(taken), rome)
        );
        assert!(asset.clock >= clock(2), "devices merge the edit's clock");

        // A new version with the file's own date and place.
        let edited = CommitRequest {
            request_id: "v2".into(),
            asset_id: Some(id.clone()),
            base_version: Some(1),
            manifest: ChunkId::of(b"v2m"),
            file_hash: ChunkId::of(b"v2h"),
            size: 11,
            kind: AssetKind::Photo,
            capture_time: Some(2_000),
            width: None,
            height: None,
            original_name: "scan.jpg".into(),
            path: String::new(),
            device: "phone".into(),
            details: camera,
        };
        lib.commit("alice", &edited).unwrap();
        let asset = lib.get_asset("alice", &id).unwrap();
        assert_eq!(asset.version, 2);
        assert_eq!(
            (asset.capture_time, asset.details.position_e7),
            (Some(taken), rome)
        );
        let near_rome = crate::SearchQuery {
            near_e7: Some(((419_000_000, 124_900_000), 5_000)),
            ..crate::SearchQuery::default()
        };
        assert_eq!(
            lib.search("alice", &near_rome, None, 10)
                .unwrap()
                .assets
                .len(),
            1
        );

        // Cleared: no place at all, not the file's.
        assert!(
            lib.set_metadata("alice", &id, &MetadataField::Place(None), &clock(3))
                .unwrap()
        );
        assert_eq!(
            lib.get_asset("alice", &id).unwrap().details.position_e7,
            None
        );
        // An older clock loses.
        assert!(
            !lib.set_metadata("alice", &id, &MetadataField::Place(rome), &clock(0))
                .unwrap()
        );
    }
}
