//! A blocking PostgreSQL connection over tokio-postgres, safe to call from any thread.
//!
//! The domain code is synchronous (it runs on blocking threads beside SQLite), so each call
//! is spawned onto the connection's own small runtime and waited for over a channel: unlike
//! `block_on`, that works from inside another runtime's worker too.

use crate::{SqlError, Value};
use keepsake_core::OwnRuntime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

/// How long a statement may take before the call fails as unavailable.
const STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// Commits on one connection between looks at whether a table outgrew its statistics.
const COMMITS_PER_STATISTICS_LOOK: u32 = 64;

/// Tables of this connection's schema changed by at least as many rows as they held when
/// last analysed (and by at least 500): their statistics describe another table. The
/// counters are PostgreSQL's own, so every connection and every node sees the same ones.
const OUTGROWN_STATISTICS: &str = "SELECT s.relname::text FROM pg_stat_user_tables s
     JOIN pg_class c ON c.oid = s.relid
     WHERE s.schemaname = current_schema()
       AND s.n_mod_since_analyze >= greatest(500, c.reltuples)";

pub(crate) struct PgConn {
    runtime: OwnRuntime,
    url: String,
    schema: String,
    client: Mutex<Option<Arc<Client>>>,
    statements: Mutex<HashMap<String, Statement>>,
    commits: AtomicU32,
}

impl PgConn {
    pub(crate) fn connect(url: &str, schema: &str) -> Result<Self, SqlError> {
        if !schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || schema.is_empty()
        {
            return Err(SqlError::Schema(format!("bad schema name {schema:?}")));
        }
        let runtime = OwnRuntime::new("keepsake-pg", 1).map_err(|e| {
            SqlError::Unavailable(format!("cannot start the database runtime: {e}"))
        })?;
        let conn = Self {
            runtime,
            url: url.to_string(),
            schema: schema.to_string(),
            client: Mutex::new(None),
            statements: Mutex::new(HashMap::new()),
            commits: AtomicU32::new(0),
        };
        conn.client()?;
        Ok(conn)
    }

    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, SqlError> {
        self.runtime
            .run(work)
            .ok_or_else(|| SqlError::Unavailable("the database task stopped".into()))
    }

    /// The live client, connecting (again) when there is none or the last one closed.
    fn client(&self) -> Result<Arc<Client>, SqlError> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = slot.as_ref()
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        self.statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let url = self.url.clone();
        let schema = self.schema.clone();
        let client = self.run(async move {
            let (client, connection) = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio_postgres::connect(&url, NoTls),
            )
            .await
            .map_err(|_| SqlError::Unavailable("the database did not answer in 10 s".into()))?
            .map_err(classify)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "database connection ended");
                }
            });
            client
                .batch_execute(&format!(
                    "SET search_path TO {schema};
                     SET statement_timeout = {STATEMENT_TIMEOUT_MS};"
                ))
                .await
                .map_err(classify)?;
            Ok::<_, SqlError>(client)
        })??;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<(), SqlError> {
        let client = self.client()?;
        let sql = sql.to_string();
        self.run(async move { client.batch_execute(&sql).await.map_err(classify) })?
    }

    /// Counts a commit; every `COMMITS_PER_STATISTICS_LOOK` analyses the tables that have
    /// outgrown their statistics.
    ///
    /// Autovacuum analyses a table only after a minute's nap and 10% growth, so a library's
    /// first sync — empty tables filling by thousands of rows a second — ran on plans made
    /// for empty tables: a 64-id lookup scanned every row of the account (10 ms, not 0.1).
    /// Doubling as the rule keeps it to a logarithm of the table's size in analyses.
    pub(crate) fn after_commit(&self) {
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(COMMITS_PER_STATISTICS_LOOK) {
            return;
        }
        if let Err(e) = self.refresh_statistics() {
            // Only plans suffer; autovacuum still comes.
            tracing::debug!(error = %e, schema = %self.schema, "statistics not refreshed");
        }
    }

    /// Analyses each table of the schema whose statistics it has outgrown; returns their names.
    pub(crate) fn refresh_statistics(&self) -> Result<Vec<String>, SqlError> {
        let tables: Vec<String> = self
            .query(OUTGROWN_STATISTICS, Vec::new())?
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Result<_, _>>()?;
        for table in &tables {
            let quoted = table.replace('"', "\"\"");
            self.batch(&format!("ANALYZE \"{}\".\"{quoted}\"", self.schema))?;
            tracing::debug!(schema = %self.schema, table, "statistics refreshed");
        }
        Ok(tables)
    }

    fn statement(&self, client: &Arc<Client>, sql: &str) -> Result<Statement, SqlError> {
        if let Some(s) = self
            .statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sql)
        {
            return Ok(s.clone());
        }
        let c = client.clone();
        let text = sql.to_string();
        let statement = self
            .run(async move { c.prepare(&text).await.map_err(classify) })?
            .map_err(|e| match e {
                // Say which statement, so a dialect slip is found from the log alone.
                SqlError::Database(why) => SqlError::Database(format!("{why} in: {}", sql.trim())),
                other => other,
            })?;
        self.statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn execute(&self, sql: &str, params: Vec<Value>) -> Result<usize, SqlError> {
        let client = self.client()?;
        let statement = self.statement(&client, sql)?;
        let n = self.run(async move {
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            client.execute(&statement, &refs).await.map_err(classify)
        })??;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub(crate) fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<crate::Row>, SqlError> {
        let client = self.client()?;
        let statement = self.statement(&client, sql)?;
        let rows = self.run(async move {
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            client.query(&statement, &refs).await.map_err(classify)
        })??;
        rows.iter().map(read_row).collect()
    }
}

/// Calls `on` with each notification's payload on `channel` until the returned future is
/// dropped; reconnects after a lost connection, then calls `on(None)`: whatever was sent
/// while no one listened is unknown.
pub(crate) async fn listen(url: String, channel: String, mut on: impl FnMut(Option<String>)) {
    let mut lost = false;
    loop {
        match listen_once(&url, &channel, &mut on, lost).await {
            Ok(()) => tracing::warn!(channel, "notification connection closed; reconnecting"),
            Err(e) => {
                tracing::warn!(channel, error = %e, "cannot listen for notifications; retrying")
            }
        }
        lost = true;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn listen_once(
    url: &str,
    channel: &str,
    on: &mut impl FnMut(Option<String>),
    lost: bool,
) -> Result<(), SqlError> {
    let (client, mut connection) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_postgres::connect(url, NoTls),
    )
    .await
    .map_err(|_| SqlError::Unavailable("the database did not answer in 10 s".into()))?
    .map_err(classify)?;
    let (tx, mut payloads) = tokio::sync::mpsc::unbounded_channel();
    // The connection delivers notifications only while it is polled, which is also what
    // carries the LISTEN itself.
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "notification connection failed");
                    return;
                }
            }
        }
    });
    let listening = client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(classify);
    if let Err(e) = listening {
        driver.abort();
        return Err(e);
    }
    if lost {
        on(None);
    }
    while let Some(payload) = payloads.recv().await {
        on(Some(payload));
    }
    drop(client);
    Ok(())
}

fn read_row(row: &tokio_postgres::Row) -> Result<crate::Row, SqlError> {
    let mut values = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let cell: Option<Cell> = row
            .try_get(i)
            .map_err(|e| SqlError::Column(i, e.to_string()))?;
        values.push(cell.map_or(Value::Null, |c| c.0));
    }
    Ok(crate::Row { values })
}

/// A column of any type this crate understands, read into a `Value`.
struct Cell(Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let value = match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Value::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            Type::NUMERIC => numeric(raw)?,
            _ => Value::Text(<String>::from_sql(ty, raw)?),
        };
        Ok(Self(value))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::OID
                | Type::BOOL
                | Type::FLOAT8
                | Type::FLOAT4
                | Type::BYTEA
                | Type::NUMERIC
        ) || <String as FromSql>::accepts(ty)
    }
}

/// PostgreSQL's NUMERIC, which `SUM` of a BIGINT returns: an integer when it is one, else
/// a double. Binary form: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric(raw: &[u8]) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
    let word = |i: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
        let b = raw.get(i * 2..i * 2 + 2).ok_or("short NUMERIC")?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = usize::try_from(word(0)?).map_err(|_| "bad NUMERIC")?;
    let weight = i32::from(word(1)?);
    let sign = word(2)? as u16;
    if sign == 0xC000 {
        return Ok(Value::Null);
    }
    let mut whole: i128 = 0;
    let mut fraction = 0f64;
    for d in 0..ndigits {
        let digit = i128::from(word(4 + d)?);
        let power = weight - i32::try_from(d).map_err(|_| "bad NUMERIC")?;
        if power >= 0 {
            whole += digit * 10_000i128.pow(u32::try_from(power).map_err(|_| "bad NUMERIC")?);
        } else {
            #[allow(clippy::cast_precision_loss)]
            {
                fraction += digit as f64 * 10_000f64.powi(power);
            }
        }
    }
    let negative = sign == 0x4000;
    if fraction == 0.0 {
        let whole = if negative { -whole } else { whole };
        return Ok(Value::Int(
            i64::try_from(whole).map_err(|_| "NUMERIC too large")?,
        ));
    }
    #[allow(clippy::cast_precision_loss)]
    let real = whole as f64 + fraction;
    Ok(Value::Real(if negative { -real } else { real }))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // Bind by the type PostgreSQL inferred for the parameter, so a statement written
        // once for SQLite's loose typing binds here without casts.
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            #[allow(clippy::cast_precision_loss)]
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), _) => i.to_string().to_sql(&Type::TEXT, out),
            (Value::Real(r), &Type::FLOAT4) =>
            {
                #[allow(clippy::cast_possible_truncation)]
                (*r as f32).to_sql(ty, out)
            }
            (Value::Real(r), &Type::FLOAT8) => r.to_sql(ty, out),
            (Value::Real(r), _) => r.to_string().to_sql(&Type::TEXT, out),
            (Value::Text(t), &Type::INT8) => t.parse::<i64>()?.to_sql(ty, out),
            (Value::Text(t), &Type::BYTEA) => t.as_bytes().to_sql(ty, out),
            (Value::Text(t), _) => t.as_str().to_sql(&Type::TEXT, out),
            (Value::Blob(b), _) => b.as_slice().to_sql(&Type::BYTEA, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Sorts a driver error into what the caller can act on: unreachable, full, or other.
fn classify(e: tokio_postgres::Error) -> SqlError {
    use tokio_postgres::error::SqlState;
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let text = format!("{}: {}", db.severity(), db.message());
        return if *code == SqlState::DISK_FULL
            || *code == SqlState::OUT_OF_MEMORY
            || *code == SqlState::INSUFFICIENT_RESOURCES
        {
            SqlError::Full(text)
        } else if *code == SqlState::UNIQUE_VIOLATION {
            SqlError::Constraint(text)
        } else if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            SqlError::Credentials(text)
        } else if code.code().starts_with("08")
            || code.code().starts_with("57")
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::QUERY_CANCELED
        {
            SqlError::Unavailable(text)
        } else {
            SqlError::Database(text)
        };
    }
    if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        return SqlError::Unavailable(format!("the database is unreachable: {e}"));
    }
    SqlError::Unavailable(format!("the database failed: {e}"))
}
