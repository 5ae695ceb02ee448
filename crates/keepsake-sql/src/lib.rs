//! One SQL seam: the same statements and transactions on SQLite (the embedded default) or
//! PostgreSQL (past one machine), so the domain logic above is written once.
//!
//! Statements are written in the dialect both engines share — `?N` parameters, `ON CONFLICT`,
//! `RETURNING`, `greatest(…)`, `hex(…)`, `group_concat(…)`, `instr(…)` — and this crate bridges the rest:
//! on PostgreSQL it renumbers parameters, binds each by the type the server inferred, reads
//! `NUMERIC` sums back as integers, and defines the SQLite functions the statements use; on
//! SQLite it defines `greatest`. Schemas are written once in SQLite's words and translated
//! (`INTEGER` → `BIGINT`, `BLOB` → `BYTEA`, text in byte order). Each component keeps its
//! tables in a schema of its own on PostgreSQL, so the library and the store share a
//! database without sharing a namespace.
//!
//! ```
//! use keepsake_sql::{Db, params};
//!
//! let mut db = Db::open_sqlite(None)?;
//! db.migrate("example", &["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"])?;
//! let tx = db.transaction()?;
//! tx.execute("INSERT INTO notes (id, body) VALUES (?1, ?2)", params![1, "hello"])?;
//! tx.commit()?;
//! let body: String = db.query_row("SELECT body FROM notes WHERE id = ?1", [1], |r| r.get(0))?;
//! assert_eq!(body, "hello");
//! # Ok::<(), keepsake_sql::SqlError>(())
//! ```

mod postgres;
mod value;

pub use value::{FromValue, Params, Row, RowIndex, ToValue, Value};

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::path::Path;

/// What went wrong in the database, sorted by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// A query for one row found none.
    #[error("no rows returned")]
    NoRows,
    /// A column could not be read as asked.
    #[error("column {0}: {1}")]
    Column(usize, String),
    /// The database cannot be reached now; retrying later may work.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database refused the credentials.
    #[error("the database refused the credentials: {0}")]
    Credentials(String),
    /// The database's disk (or memory) is full; nothing was written.
    #[error("the database is full: {0}")]
    Full(String),
    /// A uniqueness constraint refused the write.
    #[error("constraint: {0}")]
    Constraint(String),
    /// The schema is missing, unknown or newer than this binary.
    #[error("{0}")]
    Schema(String),
    /// Any other PostgreSQL error.
    #[error("database error: {0}")]
    Database(String),
    /// Any SQLite error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl SqlError {
    /// Whether the failure may pass by itself (the database unreachable or restarting).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
            || matches!(self, Self::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy
                    || f.code == rusqlite::ErrorCode::DatabaseLocked)
    }

    /// Whether the database's storage is full.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
            || matches!(self, Self::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DiskFull)
    }
}

impl From<rusqlite_migration::Error> for SqlError {
    fn from(e: rusqlite_migration::Error) -> Self {
        match e {
            rusqlite_migration::Error::RusqliteError { err, .. } => Self::Sqlite(err),
            other => Self::Schema(other.to_string()),
        }
    }
}

/// Which engine a connection speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite, embedded.
    Sqlite,
    /// PostgreSQL, over the network.
    Postgres,
}

enum Engine {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::PgConn>),
}

/// One connection to either engine.
pub struct Db {
    engine: Engine,
    savepoints: u32,
    /// Inside a transaction: [`Db::notify`]'s notices wait here, each once, to be sent just
    /// before COMMIT (a thousand edits of one account were a thousand round trips).
    notices: Option<std::sync::Mutex<BTreeSet<(String, String)>>>,
}

/// `Ok(None)` for `NoRows`, as a query for an optional row wants it.
pub trait OptionalExtension<T> {
    /// The row, or `None` when there was none.
    fn optional(self) -> Result<Option<T>, SqlError>;
}

impl<T> OptionalExtension<T> for Result<T, SqlError> {
    fn optional(self) -> Result<Option<T>, SqlError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Db {
    /// Wraps an open SQLite connection.
    pub fn sqlite(conn: rusqlite::Connection) -> Result<Self, SqlError> {
        extreme(&conn, "greatest", true)?;
        extreme(&conn, "least", false)?;
        Ok(Self {
            engine: Engine::Sqlite(conn),
            savepoints: 0,
            notices: None,
        })
    }

    /// Opens a SQLite file (`None`: in memory).
    pub fn open_sqlite(path: Option<&Path>) -> Result<Self, SqlError> {
        let conn = match path {
            Some(p) => rusqlite::Connection::open(p)?,
            None => rusqlite::Connection::open_in_memory()?,
        };
        Self::sqlite(conn)
    }

    /// Connects to PostgreSQL at `url` and keeps this connection's tables in `schema`.
    pub fn postgres(url: &str, schema: &str) -> Result<Self, SqlError> {
        let conn = postgres::PgConn::connect(url, schema)?;
        Ok(Self {
            engine: Engine::Postgres(Box::new(conn)),
            savepoints: 0,
            notices: None,
        })
    }

    /// Analyses the tables whose planner statistics no longer describe them (PostgreSQL;
    /// SQLite plans by its indexes alone, so nothing there). Returns the tables analysed.
    /// Commits already call this now and then; a bulk load may call it when done.
    pub fn refresh_statistics(&self) -> Result<Vec<String>, SqlError> {
        match &self.engine {
            Engine::Sqlite(_) => Ok(Vec::new()),
            Engine::Postgres(c) => c.refresh_statistics(),
        }
    }

    /// Tells every process that [`listen`]s on `channel` (an identifier), once this
    /// transaction commits — PostgreSQL's NOTIFY, so one node's commit wakes another's
    /// waiters. Inside a transaction the same notice is sent once however often it is
    /// asked for (a savepoint rolled back does not take its notices back: a listener may
    /// wake for nothing, never miss a change). SQLite is one process: nothing to tell.
    pub fn notify(&self, channel: &str, payload: &str) -> Result<(), SqlError> {
        match &self.engine {
            Engine::Sqlite(_) => Ok(()),
            Engine::Postgres(_) => {
                check_channel(channel)?;
                match &self.notices {
                    Some(held) => {
                        held.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert((channel.to_string(), payload.to_string()));
                        Ok(())
                    }
                    None => self.send_notices([(channel.to_string(), payload.to_string())]),
                }
            }
        }
    }

    fn send_notices(
        &self,
        notices: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), SqlError> {
        let Engine::Postgres(c) = &self.engine else {
            return Ok(());
        };
        for (channel, payload) in notices {
            c.execute(
                "SELECT pg_notify($1, $2)",
                vec![Value::Text(channel), Value::Text(payload)],
            )?;
        }
        Ok(())
    }

    /// The engine's dialect.
    pub fn dialect(&self) -> Dialect {
        match self.engine {
            Engine::Sqlite(_) => Dialect::Sqlite,
            Engine::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection underneath, for what only SQLite has (pragmas, backups).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Sqlite(c) => Some(c),
            Engine::Postgres(_) => None,
        }
    }

    /// Runs `sql` (one statement) and says how many rows it changed.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize, SqlError> {
        match &self.engine {
            Engine::Sqlite(c) => {
                let values = params.values();
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(values.iter().map(to_sqlite)))?)
            }
            Engine::Postgres(c) => c.execute(&numbered(sql), params.values()),
        }
    }

    /// Runs several statements with no parameters.
    pub fn execute_batch(&self, sql: &str) -> Result<(), SqlError> {
        match &self.engine {
            Engine::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Engine::Postgres(c) => c.batch(sql),
        }
    }

    /// Every row `sql` returns.
    pub fn query(&self, sql: &str, params: impl Params) -> Result<Vec<Row>, SqlError> {
        match &self.engine {
            Engine::Sqlite(c) => {
                let values = params.values();
                let mut stmt = c.prepare_cached(sql)?;
                let width = stmt.column_count();
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(values.iter().map(to_sqlite)))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut values = Vec::with_capacity(width);
                    for i in 0..width {
                        values.push(from_sqlite(r.get_ref(i)?));
                    }
                    out.push(Row { values });
                }
                Ok(out)
            }
            Engine::Postgres(c) => c.query(&numbered(sql), params.values()),
        }
    }

    /// The first row `sql` returns, read by `read`; `NoRows` when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        read: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let rows = self.query(sql, params)?;
        read(rows.first().ok_or(SqlError::NoRows)?)
    }

    /// Every row `sql` returns, each read by `read`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        read: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        self.query(sql, params)?.iter().map(read).collect()
    }

    /// Inserts many rows with few statements: `head` is `INSERT INTO t (a, b)`, each row
    /// has `width` values, `tail` follows the `VALUES` list (`ON CONFLICT …`, `RETURNING …`).
    /// Rows go in groups of 256, 64, 16, 4 and 1, so each engine prepares at most five
    /// shapes of the statement; returns what the statements returned.
    pub fn insert_rows(
        &self,
        head: &str,
        width: usize,
        rows: &[Vec<Value>],
        tail: &str,
    ) -> Result<Vec<Row>, SqlError> {
        self.insert_groups(head, width, rows, tail, false)
    }

    /// [`Db::insert_rows`] for an insert that a repeated row leaves unchanged (`ON CONFLICT
    /// DO NOTHING`): the last group is filled up with its last row, so up to 256 rows
    /// always take one statement (35 rows took five).
    pub fn insert_rows_padded(
        &self,
        head: &str,
        width: usize,
        rows: &[Vec<Value>],
        tail: &str,
    ) -> Result<Vec<Row>, SqlError> {
        self.insert_groups(head, width, rows, tail, true)
    }

    fn insert_groups(
        &self,
        head: &str,
        width: usize,
        rows: &[Vec<Value>],
        tail: &str,
        pad: bool,
    ) -> Result<Vec<Row>, SqlError> {
        const GROUPS: [usize; 5] = [256, 64, 16, 4, 1];
        let mut out = Vec::new();
        let mut rest = rows;
        let mut padded: Vec<Vec<Value>>;
        while !rest.is_empty() {
            let fits = GROUPS.into_iter().find(|g| *g <= rest.len()).unwrap_or(1);
            let group = if pad {
                GROUPS
                    .into_iter()
                    .rev()
                    .find(|g| *g >= rest.len())
                    .unwrap_or(fits)
            } else {
                fits
            };
            let (now, later) = if group > rest.len() {
                padded = rest.to_vec();
                padded.resize(group, rest[rest.len() - 1].clone());
                (&padded[..], &[][..])
            } else {
                rest.split_at(group)
            };
            let mut sql = String::with_capacity(head.len() + tail.len() + group * width * 6);
            sql.push_str(head);
            sql.push_str(" VALUES ");
            let mut values = Vec::with_capacity(group * width);
            for (r, row) in now.iter().enumerate() {
                if row.len() != width {
                    return Err(SqlError::Column(
                        row.len(),
                        format!("expected {width} values"),
                    ));
                }
                sql.push_str(if r == 0 { "(" } else { ", (" });
                for (c, value) in row.iter().enumerate() {
                    if c > 0 {
                        sql.push_str(", ");
                    }
                    values.push(value.clone());
                    sql.push('?');
                    sql.push_str(&values.len().to_string());
                }
                sql.push(')');
            }
            sql.push(' ');
            sql.push_str(tail);
            out.extend(self.query(&sql, values)?);
            rest = later;
        }
        Ok(out)
    }

    /// A statement to run several times (prepared once per connection either way).
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>, SqlError> {
        Ok(Statement {
            db: self,
            sql: sql.to_string(),
        })
    }

    /// Same as `prepare`: both engines cache what they prepared.
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>, SqlError> {
        self.prepare(sql)
    }

    /// Begins a transaction; it rolls back unless committed.
    pub fn transaction(&mut self) -> Result<Tx<'_>, SqlError> {
        self.execute_batch("BEGIN")?;
        self.notices = Some(Default::default());
        Ok(Tx {
            db: self,
            savepoint: None,
            done: false,
        })
    }

    /// Applies the migrations `component` has not seen, in order, each in its own
    /// transaction; refuses a database that has seen more than this binary knows.
    pub fn migrate(&mut self, component: &str, steps: &[&str]) -> Result<(), SqlError> {
        match &mut self.engine {
            Engine::Sqlite(c) => {
                let ms = rusqlite_migration::Migrations::new(
                    steps.iter().map(|s| rusqlite_migration::M::up(s)).collect(),
                );
                ms.to_latest(c).map_err(|e| match e {
                    rusqlite_migration::Error::MigrationDefinition(
                        rusqlite_migration::MigrationDefinitionError::DatabaseTooFarAhead,
                    ) => newer(component, steps.len()),
                    other => other.into(),
                })
            }
            Engine::Postgres(c) => {
                let schema = c.schema().to_string();
                self.execute_batch(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
                self.execute_batch(POSTGRES_PRELUDE)?;
                self.execute_batch(
                    "CREATE TABLE IF NOT EXISTS keepsake_schema (
                         component TEXT PRIMARY KEY, version BIGINT NOT NULL)",
                )?;
                let seen: i64 = self
                    .query_row(
                        "SELECT version FROM keepsake_schema WHERE component = ?1",
                        [component],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                let known = i64::try_from(steps.len()).unwrap_or(i64::MAX);
                if seen > known {
                    return Err(newer(component, steps.len()));
                }
                for (i, step) in steps
                    .iter()
                    .enumerate()
                    .skip(usize::try_from(seen).unwrap_or(0))
                {
                    let tx = self.transaction()?;
                    tx.execute_batch(&postgres_schema(step))?;
                    tx.execute(
                        "INSERT INTO keepsake_schema (component, version) VALUES (?1, ?2)
                         ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                        params![component, i + 1],
                    )?;
                    tx.commit()?;
                }
                Ok(())
            }
        }
    }
}

/// `greatest`/`least` for SQLite, ignoring NULLs as PostgreSQL's do.
fn extreme(conn: &rusqlite::Connection, name: &str, largest: bool) -> Result<(), SqlError> {
    conn.create_scalar_function(
        name,
        -1,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8
            | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
        move |ctx| {
            let mut best = rusqlite::types::Value::Null;
            for i in 0..ctx.len() {
                let v: rusqlite::types::Value = ctx.get(i)?;
                if matches!(best, rusqlite::types::Value::Null)
                    || (!matches!(v, rusqlite::types::Value::Null) && later(&v, &best) == largest)
                {
                    best = v;
                }
            }
            Ok(best)
        },
    )?;
    Ok(())
}

fn newer(component: &str, known: usize) -> SqlError {
    SqlError::Schema(format!(
        "the {component} database was written by a newer Keepsake (this one knows {known} \
         schema versions): upgrade this binary, or point it at another database"
    ))
}

/// Whether SQLite value `a` sorts after `b`, by SQLite's cross-type order.
fn later(a: &rusqlite::types::Value, b: &rusqlite::types::Value) -> bool {
    use rusqlite::types::Value as V;
    fn rank(v: &V) -> u8 {
        match v {
            V::Null => 0,
            V::Integer(_) | V::Real(_) => 1,
            V::Text(_) => 2,
            V::Blob(_) => 3,
        }
    }
    match (a, b) {
        (V::Integer(x), V::Integer(y)) => x > y,
        #[allow(clippy::cast_precision_loss)]
        (V::Integer(x), V::Real(y)) => (*x as f64) > *y,
        #[allow(clippy::cast_precision_loss)]
        (V::Real(x), V::Integer(y)) => *x > (*y as f64),
        (V::Real(x), V::Real(y)) => x > y,
        (V::Text(x), V::Text(y)) => x > y,
        (V::Blob(x), V::Blob(y)) => x > y,
        _ => rank(a) > rank(b),
    }
}

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Int(i) => V::Integer(*i),
        Value::Real(r) => V::Real(*r),
        Value::Text(t) => V::Text(t.clone()),
        Value::Blob(b) => V::Blob(b.clone()),
    }
}

fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef as V;
    match v {
        V::Null => Value::Null,
        V::Integer(i) => Value::Int(i),
        V::Real(r) => Value::Real(r),
        V::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        V::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// The SQLite functions the statements use, defined in each PostgreSQL schema.
const POSTGRES_PRELUDE: &str = "
CREATE OR REPLACE FUNCTION hex(bytea) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT upper(encode($1, 'hex')) $$;
CREATE OR REPLACE FUNCTION keepsake_concat(acc text, item text, sep text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
        SELECT CASE WHEN item IS NULL THEN acc WHEN acc IS NULL THEN item
                    ELSE acc || sep || item END $$;
CREATE OR REPLACE AGGREGATE group_concat(text, text) (SFUNC = keepsake_concat, STYPE = text);
CREATE OR REPLACE FUNCTION instr(text, text) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT strpos($1, $2) $$;
";

/// A statement in PostgreSQL's words: `?N` and `?` as `$N` outside quoted text, and
/// SQLite's planner hints (`INDEXED BY name`, `CROSS JOIN` to fix the join order) dropped,
/// as PostgreSQL plans for itself.
fn numbered(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') && !sql.contains("INDEXED BY") && !sql.contains("CROSS JOIN") {
        return Cow::Borrowed(sql);
    }
    let mut unhinted = String::with_capacity(sql.len());
    let mut words = sql.split(' ').peekable();
    while let Some(word) = words.next() {
        if word == "INDEXED" && words.peek() == Some(&"BY") {
            words.next();
            words.next();
            continue;
        }
        if word == "CROSS" && words.peek() == Some(&"JOIN") {
            continue;
        }
        unhinted.push_str(word);
        unhinted.push(' ');
    }
    unhinted.pop();
    let sql = unhinted.as_str();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1;
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted {
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            out.push('$');
            if digits.is_empty() {
                out.push_str(&next.to_string());
                next += 1;
            } else {
                out.push_str(&digits);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[test]
fn sqlite_planner_hints_are_dropped_for_postgres() {
    assert_eq!(
        numbered("FROM assets a INDEXED BY assets_damaged CROSS JOIN versions v ON x = ?1"),
        "FROM assets a JOIN versions v ON x = $1"
    );
}

/// A schema written in SQLite's words, in PostgreSQL's: 64-bit integers, `BYTEA`, text
/// compared byte by byte (as SQLite does), an identity column for `INTEGER PRIMARY KEY`.
pub fn postgres_schema(sqlite: &str) -> String {
    let mut out = String::with_capacity(sqlite.len() + 256);
    for line in sqlite.lines() {
        let (code, comment) = match line.find("--") {
            Some(i) => (&line[..i], &line[i..]),
            None => (line, ""),
        };
        let code = code
            .replace(
                "INTEGER PRIMARY KEY",
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            )
            .replace(" WITHOUT ROWID", "")
            .replace(" INTEGER", " BIGINT")
            .replace(" BLOB", " BYTEA")
            .replace(" REAL", " DOUBLE PRECISION")
            .replace(" TEXT", " TEXT COLLATE \"C\"")
            // A column SQLite allowed that PostgreSQL reserves.
            .replace(" offset ", " \"offset\" ");
        out.push_str(&code);
        out.push_str(comment);
        out.push('\n');
    }
    out
}

/// A statement bound to its connection.
pub struct Statement<'a> {
    db: &'a Db,
    sql: String,
}

impl Statement<'_> {
    /// Runs it; how many rows changed.
    pub fn execute(&mut self, params: impl Params) -> Result<usize, SqlError> {
        self.db.execute(&self.sql, params)
    }

    /// Every row, each read by `read`.
    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        read: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<std::vec::IntoIter<Result<T, SqlError>>, SqlError> {
        let rows = self.db.query(&self.sql, params)?;
        Ok(rows.iter().map(read).collect::<Vec<_>>().into_iter())
    }

    /// The first row, read by `read`.
    pub fn query_row<T>(
        &mut self,
        params: impl Params,
        read: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.db.query_row(&self.sql, params, read)
    }

    /// Every row.
    pub fn query(&mut self, params: impl Params) -> Result<Vec<Row>, SqlError> {
        self.db.query(&self.sql, params)
    }

    /// Whether it returns any row.
    pub fn exists(&mut self, params: impl Params) -> Result<bool, SqlError> {
        Ok(!self.db.query(&self.sql, params)?.is_empty())
    }
}

/// Channel names are identifiers: written into `LISTEN` as they are.
fn check_channel(channel: &str) -> Result<(), SqlError> {
    if channel.is_empty()
        || !channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(SqlError::Schema(format!("bad channel name {channel:?}")));
    }
    Ok(())
}

/// Calls `on` with the payload of each [`Db::notify`] on `channel` in the PostgreSQL
/// database at `url`, until the returned future is dropped; after a lost connection it
/// reconnects and calls `on(None)` (notifications sent meanwhile are lost: look again at
/// everything). Run it on a tokio runtime.
pub async fn listen(
    url: &str,
    channel: &str,
    on: impl FnMut(Option<String>) + Send,
) -> Result<(), SqlError> {
    check_channel(channel)?;
    postgres::listen(url.to_string(), channel.to_string(), on).await;
    Ok(())
}

/// A transaction, or a savepoint inside one; rolls back when dropped uncommitted.
pub struct Tx<'a> {
    db: &'a mut Db,
    savepoint: Option<String>,
    done: bool,
}

impl Tx<'_> {
    /// Makes it durable (or releases the savepoint into its transaction).
    pub fn commit(mut self) -> Result<(), SqlError> {
        self.done = true;
        match &self.savepoint {
            None => {
                let notices = self
                    .db
                    .notices
                    .take()
                    .map(|held| held.into_inner().unwrap_or_else(|p| p.into_inner()))
                    .unwrap_or_default();
                self.db.send_notices(notices)?;
                self.db.execute_batch("COMMIT")?;
                if let Engine::Postgres(c) = &self.db.engine {
                    c.after_commit();
                }
                Ok(())
            }
            Some(name) => self.db.execute_batch(&format!("RELEASE SAVEPOINT {name}")),
        }
    }

    /// Holds the lock `key` until this transaction ends: shared with its other shared
    /// holders, or alone when `exclusive`. On PostgreSQL an advisory lock, so it binds
    /// every process on the database; on SQLite nothing, as its one writer already runs
    /// transactions one at a time.
    pub fn hold(&self, key: i64, exclusive: bool) -> Result<(), SqlError> {
        if self.db.dialect() == Dialect::Sqlite {
            return Ok(());
        }
        let sql = if exclusive {
            "SELECT pg_advisory_xact_lock(?1)"
        } else {
            "SELECT pg_advisory_xact_lock_shared(?1)"
        };
        self.db.execute(sql, [key]).map(|_| ())
    }

    /// A savepoint inside this transaction: its changes go back alone when dropped.
    pub fn savepoint(&mut self) -> Result<Tx<'_>, SqlError> {
        self.db.savepoints += 1;
        let name = format!("sp{}", self.db.savepoints);
        self.db.execute_batch(&format!("SAVEPOINT {name}"))?;
        Ok(Tx {
            db: self.db,
            savepoint: Some(name),
            done: false,
        })
    }
}

impl Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let undo = match &self.savepoint {
            None => {
                self.db.notices = None;
                "ROLLBACK".to_string()
            }
            Some(name) => format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
        };
        if let Err(e) = self.db.execute_batch(&undo) {
            // A lost connection has already rolled the transaction back.
            tracing::debug!(error = %e, "rollback failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_outside_quotes_only() {
        assert_eq!(numbered("a = ?1 AND b = ?2"), "a = $1 AND b = $2");
        assert_eq!(numbered("a = ? AND b = ?"), "a = $1 AND b = $2");
        assert_eq!(numbered("a = '?' AND b = ?3"), "a = '?' AND b = $3");
        assert_eq!(numbered("a = b"), "a = b");
    }

    #[test]
    fn schemas_translate_types_and_keep_comments() {
        let pg = postgres_schema(
            "CREATE TABLE t (\n id INTEGER PRIMARY KEY, -- an INTEGER here\n b BLOB, n INTEGER, s TEXT\n) WITHOUT ROWID;",
        );
        assert!(
            pg.contains("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, -- an INTEGER here")
        );
        assert!(pg.contains("b BYTEA, n BIGINT, s TEXT COLLATE \"C\""));
        assert!(!pg.contains("ROWID"));
    }

    #[test]
    fn a_dropped_transaction_rolls_back_and_a_savepoint_alone() {
        let mut db = Db::open_sqlite(None).unwrap();
        db.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        {
            let tx = db.transaction().unwrap();
            tx.execute("INSERT INTO t VALUES (?1)", [1]).unwrap();
        }
        let mut tx = db.transaction().unwrap();
        tx.execute("INSERT INTO t VALUES (?1)", [2]).unwrap();
        {
            let sp = tx.savepoint().unwrap();
            sp.execute("INSERT INTO t VALUES (?1)", [3]).unwrap();
        }
        tx.commit().unwrap();
        let xs = db
            .query_map("SELECT x FROM t", (), |r| r.get::<_, i64>(0))
            .unwrap();
        assert_eq!(xs, vec![2]);
    }

    #[test]
    fn many_rows_go_in_few_statements_and_return_what_was_inserted() {
        for padded in [false, true] {
            let db = Db::open_sqlite(None).unwrap();
            db.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
                .unwrap();
            db.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![7, "old"])
                .unwrap();
            let rows: Vec<Vec<Value>> = (0..300)
                .map(|k| vec![Value::Int(k), Value::Text(format!("v{k}"))])
                .collect();
            let (head, tail) = ("INSERT INTO t (k, v)", "ON CONFLICT DO NOTHING RETURNING k");
            let inserted = if padded {
                db.insert_rows_padded(head, 2, &rows, tail)
            } else {
                db.insert_rows(head, 2, &rows, tail)
            }
            .unwrap();
            // Padding repeats the last row; the repeat inserts and returns nothing.
            assert_eq!(inserted.len(), 299, "k = 7 was there");
            let n: i64 = db
                .query_row("SELECT COUNT(*) FROM t", (), |r| r.get(0))
                .unwrap();
            assert_eq!(n, 300);
            let kept: String = db
                .query_row("SELECT v FROM t WHERE k = 7", (), |r| r.get(0))
                .unwrap();
            assert_eq!(kept, "old");
        }
    }

    #[test]
    fn greatest_picks_the_largest_like_sqlite_max() {
        let db = Db::open_sqlite(None).unwrap();
        let g: String = db
            .query_row("SELECT greatest('a', 'c', 'b')", (), |r| r.get(0))
            .unwrap();
        assert_eq!(g, "c");
        let n: i64 = db
            .query_row("SELECT greatest(1, ?1)", [5], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5);
    }

    #[test]
    fn a_newer_database_is_refused_with_the_reason() {
        let mut db = Db::open_sqlite(None).unwrap();
        db.migrate(
            "t",
            &["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (x INTEGER);"],
        )
        .unwrap();
        let err = db
            .migrate("t", &["CREATE TABLE a (x INTEGER);"])
            .unwrap_err();
        assert!(err.to_string().contains("newer Keepsake"), "{err}");
    }
}
