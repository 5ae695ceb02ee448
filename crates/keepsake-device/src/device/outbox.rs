//! Local edits and deletes, queued in the journal, sent to the cloud.

use super::*;

/// Queued edits sent in one call: one round trip and one durable write on the server for
/// a person's "add these 500 photos to an album".
pub(super) const EDITS_PER_CALL: usize = 500;

impl<C: Cloud> Device<C> {
    /// Files gone from the folder go to Recently Deleted everywhere — unless they only
    /// moved, or so many vanished at once that the folder itself is suspect.
    pub(super) async fn local_deletes(
        &mut self,
        seen: &HashSet<String>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let rows = self.journal.files()?;
        let present_assets: HashSet<String> = rows
            .iter()
            .filter(|r| seen.contains(&r.path))
            .filter_map(|r| r.asset_id.clone())
            .collect();
        let mut deletes = Vec::new();
        for row in rows.iter().filter(|r| !seen.contains(&r.path)) {
            // Moves were paired by the scan. A file whose asset another file here still
            // shows is one of two files an older version of the device linked to one asset:
            // the asset stays while any of its files does.
            let moved = row
                .asset_id
                .as_ref()
                .is_some_and(|a| present_assets.contains(a));
            // A photo the library has goes to Recently Deleted even when this device had
            // changed it since (an edit not yet sent): the person deleted the photo, and the
            // edit goes with it. Only content the library never had leaves no trace.
            if moved || row.asset_id.is_none() {
                self.journal.remove(&row.path)?;
            } else {
                deletes.push(row.clone());
            }
        }
        let synced = rows.iter().filter(|r| r.synced).count().max(1);
        let confirmed = self.journal.get(Key::ConfirmDeletes)?.as_deref() == Some("1");
        if !confirmed
            && deletes.len() > self.config.mass_delete_min
            && deletes.len() as f64 > self.config.mass_delete_share * synced as f64
        {
            tracing::warn!(
                count = deletes.len(),
                "many files vanished at once; deletes wait for confirmation"
            );
            report.blocked = Some("DELETES_NEED_CONFIRMATION".into());
            return Ok(());
        }
        // Sent as edits are, many a call: deleting 300 photos is one round trip, not 300.
        // Trash ignores clocks: the default stamp is never compared.
        for batch in deletes.chunks(EDITS_PER_CALL) {
            let trashes: Vec<(Edit, Hlc)> = batch
                .iter()
                .map(|row| {
                    let asset_id = row.asset_id.clone().unwrap_or_default();
                    // The file alone: a Live Photo's still deleted here leaves its movie.
                    let edit = Edit::Trash {
                        asset_id,
                        alone: true,
                    };
                    (edit, Hlc::default())
                })
                .collect();
            for (row, answer) in batch.iter().zip(self.cloud.edits(&trashes).await?) {
                match answer {
                    Ok(()) => {}
                    // Already gone in the cloud: nothing left to delete.
                    Err(e) if matches!(e.reason, Reason::NotFound | Reason::AssetNotLive) => {}
                    Err(e) => return Err(e.into()),
                }
                self.journal.remove(&row.path)?;
                report.trashed_remotely += 1;
            }
        }
        if confirmed {
            self.journal.set(Key::ConfirmDeletes, "")?;
        }
        Ok(())
    }

    /// Sends the outbox in order, up to [`EDITS_PER_CALL`] edits a call. A transient failure
    /// ends the pass (the rest waits); an edit refused for good is dropped with a log line,
    /// so one stale edit never blocks the ones behind it.
    pub(super) async fn send_edits(&mut self, report: &mut SyncReport) -> Result<(), DeviceError> {
        let outbox = self.journal.outbox()?;
        for batch in outbox.chunks(EDITS_PER_CALL) {
            let edits: Vec<(Edit, Hlc)> = batch
                .iter()
                .map(|(_, edit, wall_ms, counter)| {
                    let stamp = Hlc {
                        wall_ms: *wall_ms,
                        counter: *counter,
                        device: self.config.device_id.clone(),
                    };
                    (edit.clone(), stamp)
                })
                .collect();
            let answers = match self.cloud.edits(&edits).await {
                Ok(answers) => answers,
                Err(e) => {
                    self.journal.outbox_failed(batch[0].0, e.reason.as_str())?;
                    return Err(e.into());
                }
            };
            let mut stopped = None;
            for ((seq, edit, _, _), answer) in batch.iter().zip(answers) {
                match answer {
                    Ok(()) => {
                        self.journal.outbox_done(*seq)?;
                        report.edits_sent += 1;
                    }
                    Err(e)
                        if !e.transient
                            && matches!(
                                e.reason.as_str(),
                                "NOT_FOUND" | "ASSET_NOT_LIVE" | "INVALID_ARGUMENT"
                            ) =>
                    {
                        tracing::warn!(?edit, reason = %e.reason, message = %e.message, "edit refused for good; dropped");
                        self.journal.outbox_done(*seq)?;
                        report.edits_dropped += 1;
                    }
                    // Transient, or CLOCK_SKEW, CLIENT_TOO_OLD…: the device must change, the
                    // edit must wait. Those after it that the cloud applied are done all the
                    // same — sent again, a trash could undo a restore made elsewhere since.
                    Err(e) => {
                        self.journal.outbox_failed(*seq, e.reason.as_str())?;
                        stopped.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = stopped {
                return Err(e.into());
            }
        }
        Ok(())
    }
}
