//! Accounts through the cloud: sign-in, enrolment and refresh issue signed tokens.

use super::*;

/// An access token and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The bearer token.
    pub token: String,
    /// Its expiry (Unix ms).
    pub expires_at: UnixMillis,
}

/// What enrolling a device hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The device's id.
    pub device_id: String,
    /// Its long-lived secret: exchanged for access tokens, stored on the server only hashed.
    pub device_token: String,
    /// A first access token.
    pub access: IssuedToken,
}

impl Cloud {
    pub(super) fn issue(
        &self,
        account: &str,
        device: Option<&str>,
        admin: bool,
    ) -> Result<IssuedToken, LibraryError> {
        let now = self.library.clock.now_ms();
        let expires_at = now + self.library.config.access_token_ttl_ms;
        let claims = Claims {
            account: account.to_string(),
            device: device.map(str::to_string),
            admin,
            issued_at: now,
            expires_at,
        };
        let token = self
            .signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .sign(&claims);
        Ok(IssuedToken { token, expires_at })
    }

    /// Creates an account (`plan` `None` = the first configured plan).
    pub fn create_account(
        &self,
        account: &str,
        password: &str,
        plan: Option<&str>,
        admin: bool,
    ) -> Result<AccountInfo, LibraryError> {
        let plan = match plan {
            Some(p) => p.to_string(),
            None => self
                .library
                .config
                .plans
                .first()
                .map(|p| p.name.clone())
                .ok_or_else(|| LibraryError::InvalidArgument("no plans are configured".into()))?,
        };
        self.library
            .create_account(account, password, &plan, admin)?;
        self.account_info(account)
    }

    /// Signs in with a password: an access token for the account (not tied to a device).
    pub fn sign_in(&self, account: &str, password: &str) -> Result<IssuedToken, LibraryError> {
        self.sign_in_from(account, password, SignInFrom::Local)
    }

    /// [`Cloud::sign_in`] by a client at `from` (throttled per account and per address).
    pub fn sign_in_from(
        &self,
        account: &str,
        password: &str,
        from: SignInFrom,
    ) -> Result<IssuedToken, LibraryError> {
        let admin = self.library.check_credentials(account, password, from)?;
        self.issue(account, None, admin)
    }

    /// Enrols a device with the account's credentials.
    pub fn enroll_device(
        &self,
        account: &str,
        password: &str,
        name: &str,
        platform: &str,
        client_version: &str,
    ) -> Result<Enrolment, LibraryError> {
        self.enroll_device_from(
            account,
            password,
            name,
            platform,
            client_version,
            SignInFrom::Local,
        )
    }

    /// [`Cloud::enroll_device`] by a client at `from`.
    pub fn enroll_device_from(
        &self,
        account: &str,
        password: &str,
        name: &str,
        platform: &str,
        client_version: &str,
        from: SignInFrom,
    ) -> Result<Enrolment, LibraryError> {
        self.admit_client(Some(client_version))?;
        let admin = self.library.check_credentials(account, password, from)?;
        let (device_id, device_token) =
            self.library
                .add_device(account, name, platform, client_version)?;
        let access = self.issue(account, Some(&device_id), admin)?;
        Ok(Enrolment {
            device_id,
            device_token,
            access,
        })
    }

    /// Replaces the password after checking the old one (throttled like a sign-in).
    pub fn change_password_from(
        &self,
        account: &str,
        old: &str,
        new: &str,
        from: SignInFrom,
    ) -> Result<(), LibraryError> {
        crate::accounts::check_password(new)?;
        self.library.check_credentials(account, old, from)?;
        self.library.set_password(account, new)
    }

    /// Exchanges a device token for a fresh access token.
    pub fn refresh_token(
        &self,
        device_id: &str,
        device_token: &str,
        client_version: &str,
    ) -> Result<IssuedToken, LibraryError> {
        self.admit_client(Some(client_version))?;
        let account = self
            .library
            .device_by_token(device_id, device_token, client_version)?;
        let (_, admin) = self.library.account_plan(&account)?;
        self.issue(&account, Some(device_id), admin)
    }

    /// Plan, exact usage from the store, and reservations.
    pub fn account_info(&self, account: &str) -> Result<AccountInfo, LibraryError> {
        let (plan, admin) = self.library.account_plan(account)?;
        let used_bytes = self.store.used_bytes(account)?;
        let reserved_bytes = held_bytes(
            &self.library.db(),
            account,
            self.library.clock.now_ms(),
            None,
        )?;
        Ok(AccountInfo {
            account: account.to_string(),
            plan,
            used_bytes,
            reserved_bytes,
            admin,
            failed_sign_ins: self.library.failed_sign_ins(account)?,
            devices: self.library.active_devices(account)?,
            integrity: self.library.integrity(account)?,
        })
    }

    /// Deletes an account after checking its password: every asset is purged, every store
    /// reference released (the store's GC then reclaims the bytes), every device revoked.
    pub fn delete_account(&self, account: &str, password: &str) -> Result<(), LibraryError> {
        self.delete_account_from(account, password, SignInFrom::Local)
    }

    /// [`Cloud::delete_account`] asked by a client at `from`.
    pub fn delete_account_from(
        &self,
        account: &str,
        password: &str,
        from: SignInFrom,
    ) -> Result<(), LibraryError> {
        self.library.check_credentials(account, password, from)?;
        let now = self.library.clock.now_ms();
        let sessions: Vec<String> = {
            let mut db = self.library.db();
            let tx = db.transaction()?;
            let versions: Vec<(Vec<u8>, String)> = {
                let mut stmt = tx.prepare(
                    "SELECT manifest, holder FROM versions WHERE account = ?1 AND holder IS NOT NULL",
                )?;
                stmt.query_map([account], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?
            };
            for (manifest, holder) in &versions {
                queue_release(&tx, account, manifest, holder, now)?;
            }
            let sessions: Vec<String> = {
                let mut stmt =
                    tx.prepare("SELECT reservation_id FROM reservations WHERE account = ?1")?;
                stmt.query_map([account], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            for table in [
                "assets",
                "asset_grams",
                "versions",
                "requests",
                "purged_content",
                "albums",
                "album_members",
                "feed",
                "devices",
                "reservations",
                "accounts",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE account = ?1"),
                    [account],
                )?;
            }
            tx.commit()?;
            sessions
        };
        for session in sessions {
            match self.store.end_session(account, &session) {
                Ok(()) | Err(StoreError::SessionNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.drain_releases(Some(account))?;
        tracing::info!(account, "account deleted");
        Ok(())
    }
}
