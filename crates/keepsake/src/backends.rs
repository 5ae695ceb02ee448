//! Where a server keeps its rows and bytes: SQLite and files under --data (the default), or
//! PostgreSQL (the library and the store index, each in a schema of its own) and an
//! S3-compatible bucket (the packs).

use crate::ServeArgs;
use anyhow::{Context, Result, bail};
use keepsake_sql::Db;
use keepsake_store::{Clock, Entropy, IndexAt, S3Backend, S3Location, Store, StoreConfig};
use std::sync::Arc;

/// The PostgreSQL schema of each component.
pub const LIBRARY_SCHEMA: &str = "library";
/// The PostgreSQL schema of the store index.
pub const STORE_SCHEMA: &str = "store";

/// Fills --database/--blobs from --config where the flags are absent, and refuses a
/// password typed on the command line (every user of the machine can read it there).
pub fn settle(args: &mut ServeArgs) -> Result<()> {
    if let Some(url) = &args.database
        && password_of(url).is_some()
        && std::env::args().any(|a| a.contains(url.as_str()))
    {
        bail!(
            "--database carries a password, which anyone on this machine can read from the \
             process list: put it in PGPASSWORD, or in a --config file as database_password"
        );
    }
    if let Some(path) = args.config.clone() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let mut password = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("{}:{}: expected KEY = VALUE", path.display(), n + 1))?;
            let value = value.trim().trim_matches('"').to_string();
            match key.trim() {
                "database" => {
                    args.database.get_or_insert(value);
                }
                "blobs" => {
                    args.blobs.get_or_insert(value);
                }
                "database_password" => password = Some(value),
                other => bail!("{}:{}: unknown setting {other:?}", path.display(), n + 1),
            }
        }
        if let (Some(url), Some(password)) = (&mut args.database, password) {
            *url = with_password(url, &password)?;
        }
    }
    if let (Some(url), Ok(password)) = (&mut args.database, std::env::var("PGPASSWORD"))
        && password_of(url).is_none()
    {
        *url = with_password(url, &password)?;
    }
    if let Some(url) = &args.database
        && !url.starts_with("postgres://")
        && !url.starts_with("postgresql://")
    {
        bail!(
            "--database {:?} is not a postgres:// address",
            redacted(url)
        );
    }
    Ok(())
}

fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    userinfo.split_once(':').map(|(_, p)| p)
}

pub fn with_password(url: &str, password: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("not a URL")?;
    let (userinfo, host) = rest
        .split_once('@')
        .context("the database address names no user (postgres://USER@HOST/DB)")?;
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    let escaped: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    Ok(format!("{scheme}://{user}:{escaped}@{host}"))
}

/// The address with any password hidden, for messages and logs.
pub fn redacted(url: &str) -> String {
    match password_of(url) {
        Some(p) => url.replacen(&format!(":{p}@"), ":***@", 1),
        None => url.to_string(),
    }
}

/// Where the data is, in one line for the person starting the server.
pub fn describe(args: &ServeArgs) -> String {
    match (&args.database, &args.blobs) {
        (None, None) => args.data.display().to_string(),
        (db, blobs) => format!(
            "{} (rows) and {} (photos); keys and certificates in {}",
            db.as_deref()
                .map_or_else(|| args.data.display().to_string(), redacted),
            blobs.as_deref().map_or_else(
                || args.data.join("store").display().to_string(),
                str::to_string
            ),
            args.data.display()
        ),
    }
}

fn connect(url: &str, schema: &str) -> Result<Db> {
    Db::postgres(url, schema).map_err(|e| {
        anyhow::anyhow!(
            "cannot use the database at {}: {e}{}",
            redacted(url),
            match &e {
                keepsake_sql::SqlError::Unavailable(_) =>
                    " — is PostgreSQL running, and is the address right?",
                keepsake_sql::SqlError::Credentials(_) => " — check the user and PGPASSWORD",
                _ => "",
            }
        )
    })
}

/// The library's connection: PostgreSQL when --database is set, else SQLite under --data.
pub fn library_db(args: &ServeArgs) -> Result<Db> {
    match &args.database {
        Some(url) => connect(url, LIBRARY_SCHEMA),
        None => Ok(Db::open_sqlite(Some(&args.data.join("library.sqlite")))?),
    }
}

/// The store on PostgreSQL and/or a bucket.
pub fn open_store(
    args: &ServeArgs,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
) -> Result<Arc<Store>> {
    let dir = args.data.join("store");
    std::fs::create_dir_all(&dir)?;
    let backend: Arc<dyn keepsake_store::Backend> = match &args.blobs {
        Some(url) => {
            let location = S3Location::parse(url).map_err(anyhow::Error::msg)?;
            let bucket = S3Backend::connect(&location)
                .map_err(|e| anyhow::anyhow!("cannot use the bucket {url}: {e}"))?;
            match args.capacity_bytes {
                Some(cap) => Arc::new(keepsake_store::CappedBackend::new(bucket, cap)?),
                None => Arc::new(bucket),
            }
        }
        None => {
            let files = keepsake_store::LocalFsBackend::open(dir.join("objects"))?;
            match args.capacity_bytes {
                Some(cap) => Arc::new(keepsake_store::CappedBackend::new(files, cap)?),
                None => Arc::new(files),
            }
        }
    };
    let index = match &args.database {
        Some(url) => {
            // Proves the address and the credentials with the message a person needs.
            drop(connect(url, STORE_SCHEMA)?);
            IndexAt::Postgres {
                url: url.clone(),
                schema: STORE_SCHEMA.into(),
            }
        }
        None => IndexAt::File(dir.join("index.sqlite")),
    };
    let config = StoreConfig {
        // A bucket answers every read with a request; the device fetching what another
        // just uploaded is the commonest read there is (docs/benchmarks.md).
        recent_pack_bytes: if args.blobs.is_some() {
            RECENT_PACK_BYTES
        } else {
            0
        },
        ..StoreConfig::default()
    };
    let store = Store::open(keepsake_store::StoreParts {
        backend,
        index,
        clock,
        entropy,
        config,
    })
    .context("opening the store")?;
    Ok(Arc::new(store))
}

/// Just-written packs a server on a bucket keeps in memory for the reads that follow.
const RECENT_PACK_BYTES: u64 = 128 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_added_escaped_and_hidden_in_messages() {
        let url = with_password("postgres://ks@db:5432/photos", "p@ss:w/rd").unwrap();
        assert_eq!(url, "postgres://ks:p%40ss%3Aw%2Frd@db:5432/photos");
        assert_eq!(redacted(&url), "postgres://ks:***@db:5432/photos");
        assert_eq!(
            redacted("postgres://ks@db/photos"),
            "postgres://ks@db/photos"
        );
    }
}
