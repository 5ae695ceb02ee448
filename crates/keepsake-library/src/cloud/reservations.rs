//! Quota reservations: room held for an upload, per device, until it commits or lapses.

use super::*;

/// Quota held for an upload, and the store session to upload under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Its id, which is also the store session's id.
    pub reservation_id: String,
    /// Bytes still reserved.
    pub bytes: u64,
    /// When it lapses unless renewed.
    pub expires_at: UnixMillis,
}

/// Bytes held by the account's unexpired reservations.
pub(super) fn held_bytes(
    conn: &keepsake_sql::Db,
    account: &str,
    now: UnixMillis,
    except_device: Option<&str>,
) -> Result<u64, LibraryError> {
    let held: i64 = conn.query_row(
        "SELECT COALESCE(SUM(bytes), 0) FROM reservations
         WHERE account = ?1 AND expires_at > ?2 AND (CAST(?3 AS TEXT) IS NULL OR device IS DISTINCT FROM ?3)",
        params![account, now, except_device],
        |r| r.get(0),
    )?;
    Ok(held as u64)
}

impl Cloud {
    /// Reserves quota for `bytes` and opens the store session to upload them under.
    /// Over quota, the answer comes here, before a byte is sent. Idempotent per request id.
    pub fn begin_upload(
        &self,
        account: &str,
        bytes: u64,
        request_id: Option<&str>,
    ) -> Result<Reservation, LibraryError> {
        self.begin_upload_for(account, None, bytes, request_id)
    }

    /// [`Cloud::begin_upload`] for an enrolled device. A device's own reservations never
    /// count against its next one: after a crash of either side, or a pass that failed
    /// half-way, the device goes on at once instead of waiting out its own leases. A
    /// retried request id whose lease lapsed is renewed, never answered expired.
    pub fn begin_upload_for(
        &self,
        account: &str,
        device: Option<&str>,
        bytes: u64,
        request_id: Option<&str>,
    ) -> Result<Reservation, LibraryError> {
        if request_id.is_some_and(|r| r.is_empty() || r.len() > 128) {
            return Err(LibraryError::InvalidArgument(
                "request_id must be 1..=128 bytes".into(),
            ));
        }
        let (plan, _) = self.library.account_plan(account)?;
        let used = self.store.used_bytes(account)?;
        let now = self.library.clock.now_ms();
        let mut db = self.library.db();
        let tx = db.transaction()?;
        if let Some(rid) = request_id {
            let prior: Option<Reservation> = tx
                .query_row(
                    "SELECT reservation_id, bytes, expires_at FROM reservations
                     WHERE account = ?1 AND request_id = ?2",
                    params![account, rid],
                    |r| {
                        Ok(Reservation {
                            reservation_id: r.get(0)?,
                            bytes: r.get::<_, i64>(1)? as u64,
                            expires_at: r.get(2)?,
                        })
                    },
                )
                .optional()?;
            if let Some(prior) = prior {
                if prior.expires_at > now {
                    return Ok(prior);
                }
                drop(tx);
                drop(db);
                match self.renew_upload(account, &prior.reservation_id) {
                    Ok(renewed) => return Ok(renewed),
                    // The store's session is gone with its lease: a new one below.
                    Err(LibraryError::Store(_)) => {
                        self.library.db().execute(
                            "DELETE FROM reservations WHERE reservation_id = ?1",
                            [&prior.reservation_id],
                        )?;
                        return self.begin_upload_for(account, device, bytes, request_id);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let held = held_bytes(&tx, account, now, device)?;
        if used.saturating_add(held).saturating_add(bytes) > plan.limit_bytes {
            tracing::info!(
                account,
                used,
                held,
                bytes,
                limit = plan.limit_bytes,
                "upload refused: quota"
            );
            return Err(LibraryError::QuotaExceeded {
                used_bytes: used,
                reserved_bytes: held,
                needed_bytes: bytes,
                limit_bytes: plan.limit_bytes,
            });
        }
        // The reservation row makes a request id idempotent; the session takes none, so a
        // request id taken up again after a release or a lapse opens a new one.
        let session =
            self.store
                .open_session(account, bytes, self.library.config.upload_ttl_ms, None)?;
        tx.execute(
            "INSERT INTO reservations (reservation_id, account, request_id, bytes, expires_at, device)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                session.id,
                account,
                request_id,
                bytes as i64,
                session.expires_at,
                device
            ],
        )?;
        tx.commit()?;
        Ok(Reservation {
            reservation_id: session.id,
            bytes,
            expires_at: session.expires_at,
        })
    }

    /// Extends a reservation and its store session.
    pub fn renew_upload(
        &self,
        account: &str,
        reservation_id: &str,
    ) -> Result<Reservation, LibraryError> {
        let bytes: i64 = self
            .library
            .db()
            .query_row(
                "SELECT bytes FROM reservations WHERE reservation_id = ?1 AND account = ?2",
                params![reservation_id, account],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "reservation",
                id: reservation_id.to_string(),
            })?;
        let session =
            self.store
                .renew_session(account, reservation_id, self.library.config.upload_ttl_ms)?;
        self.library.db().execute(
            "UPDATE reservations SET expires_at = ?2 WHERE reservation_id = ?1",
            params![reservation_id, session.expires_at],
        )?;
        Ok(Reservation {
            reservation_id: reservation_id.to_string(),
            bytes: bytes as u64,
            expires_at: session.expires_at,
        })
    }

    /// Releases a reservation and its store session: its unused bytes stop counting at
    /// once. Chunks sent under it stay the account's until a collection finds them
    /// unreferenced. Idempotent: an unknown reservation is already released.
    pub fn end_upload(&self, account: &str, reservation_id: &str) -> Result<(), LibraryError> {
        let removed = self.library.db().execute(
            "DELETE FROM reservations WHERE reservation_id = ?1 AND account = ?2",
            params![reservation_id, account],
        )?;
        if removed > 0 {
            match self.store.end_session(account, reservation_id) {
                Ok(()) | Err(StoreError::SessionNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(
                account,
                reservation = reservation_id,
                "reservation released"
            );
        }
        Ok(())
    }
}
