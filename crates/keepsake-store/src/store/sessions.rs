//! Upload sessions: the lease that keeps a device's chunks from collection until it commits.

use super::*;

/// A leased upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub id: String,
    /// When the lease ends.
    pub expires_at: UnixMillis,
}

pub(super) fn check_live_session(
    conn: &Db,
    account: &str,
    session_id: &str,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let row: Option<(String, i64, Option<i64>)> = conn
        .prepare_cached("SELECT account, expires_at, ended_at FROM sessions WHERE session_id = ?1")?
        .query_row([session_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    match row {
        // Another account's session looks exactly like no session.
        None => Err(StoreError::SessionNotFound(session_id.to_string())),
        Some((owner, _, _)) if owner != account => {
            Err(StoreError::SessionNotFound(session_id.to_string()))
        }
        Some((_, expires_at, ended_at)) if ended_at.is_some() || expires_at <= now => {
            Err(StoreError::SessionExpired(session_id.to_string()))
        }
        Some(_) => Ok(()),
    }
}

impl Store {
    /// Opens a leased session; a retry with the same `request_id` returns the same session.
    pub fn begin_session(
        &self,
        account: &str,
        expected_bytes: u64,
        ttl_ms: i64,
        request_id: Option<&str>,
    ) -> Result<Session, StoreError> {
        if expected_bytes > self.config.max_expected_bytes {
            return Err(StoreError::InvalidArgument(format!(
                "expected_bytes {expected_bytes} exceeds {}",
                self.config.max_expected_bytes
            )));
        }
        if request_id.is_some_and(|r| r.len() > 128) {
            return Err(StoreError::InvalidArgument(
                "request_id is longer than 128 bytes".into(),
            ));
        }
        let ttl = self.clamp_ttl(ttl_ms);
        let now = self.clock.now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(rid) = request_id {
            let prior: Option<(String, i64, i64)> = tx
                .query_row(
                    "SELECT session_id, expected_bytes, expires_at FROM sessions
                     WHERE account = ?1 AND request_id = ?2",
                    params![account, rid],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((id, expected, expires_at)) = prior {
                if expected as u64 != expected_bytes {
                    return Err(StoreError::RequestIdReused(rid.to_string()));
                }
                return Ok(Session { id, expires_at });
            }
        }
        let id = random_hex(self.entropy.as_ref(), 16);
        let expires_at = now + ttl;
        tx.execute(
            "INSERT INTO sessions (session_id, account, request_id, expected_bytes, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, account, request_id, expected_bytes as i64, now, expires_at],
        )?;
        tx.commit()?;
        tracing::debug!(account, session = %id, expected_bytes, "session begun");
        Ok(Session { id, expires_at })
    }

    pub(super) fn clamp_ttl(&self, ttl_ms: i64) -> i64 {
        ttl_ms.clamp(
            self.config.min_session_ttl_ms,
            self.config.max_session_ttl_ms,
        )
    }

    /// Extends a live session's lease.
    pub fn renew_session(
        &self,
        account: &str,
        session_id: &str,
        ttl_ms: i64,
    ) -> Result<Session, StoreError> {
        let now = self.clock.now_ms();
        let expires_at = now + self.clamp_ttl(ttl_ms);
        let mut db = self.db();
        let tx = db.transaction()?;
        check_live_session(&tx, account, session_id, now)?;
        tx.execute(
            "UPDATE sessions SET expires_at = greatest(expires_at, ?2) WHERE session_id = ?1",
            params![session_id, expires_at],
        )?;
        let expires_at: i64 = tx.query_row(
            "SELECT expires_at FROM sessions WHERE session_id = ?1",
            [session_id],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(Session {
            id: session_id.to_string(),
            expires_at,
        })
    }

    /// Ends a session; its pins lapse after the grace period. Ending twice is fine.
    pub fn end_session(&self, account: &str, session_id: &str) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let changed = self.db().execute(
            "UPDATE sessions SET ended_at = COALESCE(ended_at, ?3)
             WHERE session_id = ?1 AND account = ?2",
            params![session_id, account, now],
        )?;
        if changed == 0 {
            return Err(StoreError::SessionNotFound(session_id.to_string()));
        }
        Ok(())
    }
}
