//! `rewind:plugin/postgres`: SQL on the PostgreSQL server that the target's
//! `grant.postgres` names, logged in with credentials the plugin never sees,
//! on the granted databases only (and `postgres` with `admin`).
//!
//! Statements run with PostgreSQL's simple query protocol, so every value
//! comes back in PostgreSQL's text format whatever its type. Parameters
//! (`$1`, `$2`, ...) are sent as quoted literals of unknown type, which the
//! server types from their use, as it would a bound parameter; they are
//! never read as SQL. Literals are written as `E'...'`, whose escaping does
//! not depend on `standard_conforming_strings`; finding the `$n` outside
//! the statement's own strings does, so the server is asked for it before
//! a statement with parameters is bound.

use crate::config::PostgresGrant;
use crate::host::bindings::rewind::plugin::postgres::{Host, PgError, Rows};
use crate::host::state::CallState;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Column, Connection, Executor, Row, SqlSafeStr, ValueRef};
use std::time::{Duration, Instant};

/// The most rows one query may return.
const MAX_ROWS: usize = 100_000;
/// The most bytes of values one query may return.
const MAX_BYTES: usize = 32 << 20;

/// `E'text'`, with backslashes and quotes escaped: read the same whatever
/// `standard_conforming_strings` says. NUL cannot be sent.
fn literal(value: &str) -> Result<String, String> {
    if value.contains('\0') {
        return Err("a parameter holds a NUL character, which PostgreSQL text cannot".into());
    }
    Ok(format!(
        "E'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

fn is_identifier_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Put the parameters in place of `$1`, `$2`, ... outside strings, quoted
/// identifiers, comments and dollar-quoted bodies. `standard_conforming`
/// says whether backslashes escape in plain `'...'` strings (off) or only
/// in `E'...'` strings (on, PostgreSQL's default).
pub fn bind(
    sql: &str,
    params: &[Option<String>],
    standard_conforming: bool,
) -> Result<String, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let copy_until = |out: &mut String, i: &mut usize, end: &dyn Fn(usize) -> Option<usize>| {
        let stop = end(*i).unwrap_or(chars.len());
        out.extend(&chars[*i..stop]);
        *i = stop;
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\'' => {
                // A string; E'...' strings also escape with backslashes.
                let e_prefix = i > 0
                    && matches!(chars[i - 1], 'e' | 'E')
                    && !(i > 1 && is_identifier_char(chars[i - 2]));
                let escapes = e_prefix || !standard_conforming;
                copy_until(&mut out, &mut i, &|start| {
                    let mut j = start + 1;
                    while j < chars.len() {
                        match chars[j] {
                            '\\' if escapes => j += 2,
                            '\'' if chars.get(j + 1) == Some(&'\'') => j += 2,
                            '\'' => return Some(j + 1),
                            _ => j += 1,
                        }
                    }
                    None
                });
            }
            '"' => copy_until(&mut out, &mut i, &|start| {
                (start + 1..chars.len())
                    .find(|&j| chars[j] == '"')
                    .map(|j| j + 1)
            }),
            '-' if next == Some('-') => copy_until(&mut out, &mut i, &|start| {
                (start..chars.len())
                    .find(|&j| chars[j] == '\n' || chars[j] == '\r')
                    .map(|j| j + 1)
            }),
            '/' if next == Some('*') => copy_until(&mut out, &mut i, &|start| {
                let mut depth = 0;
                let mut j = start;
                while j + 1 < chars.len() {
                    if chars[j] == '/' && chars[j + 1] == '*' {
                        depth += 1;
                        j += 2;
                    } else if chars[j] == '*' && chars[j + 1] == '/' {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            return Some(j);
                        }
                    } else {
                        j += 1;
                    }
                }
                None
            }),
            '$' if next.is_some_and(|d| d.is_ascii_digit())
                && !(i > 0 && is_identifier_char(chars[i - 1])) =>
            {
                let digits: String = chars[i + 1..]
                    .iter()
                    .take_while(|d| d.is_ascii_digit())
                    .collect();
                let n: usize = digits
                    .parse()
                    .map_err(|_| format!("${digits}: not a parameter number"))?;
                let value = n
                    .checked_sub(1)
                    .and_then(|k| params.get(k))
                    .ok_or_else(|| format!("${n} has no parameter ({} given)", params.len()))?;
                match value {
                    None => out.push_str("NULL"),
                    Some(v) => out.push_str(&literal(v)?),
                }
                i += 1 + digits.len();
            }
            '$' if !(i > 0 && is_identifier_char(chars[i - 1])) => {
                // A dollar-quoted body: $tag$ ... $tag$.
                let tag_end = chars[i + 1..]
                    .iter()
                    .position(|c| !(c.is_alphanumeric() || *c == '_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(end) if chars[end] == '$' => {
                        let tag: String = chars[i..=end].iter().collect();
                        let tag_chars: Vec<char> = tag.chars().collect();
                        copy_until(&mut out, &mut i, &|start| {
                            let from = start + tag_chars.len();
                            (from..chars.len())
                                .find(|&j| chars[j..].starts_with(&tag_chars))
                                .map(|j| j + tag_chars.len())
                        });
                    }
                    _ => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn database_error(error: sqlx::Error, timeout: Duration) -> PgError {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
            PgError::TimedOut(timeout.as_millis().min(u128::from(u32::MAX)) as u32)
        }
        sqlx::Error::Database(db) => PgError::QueryFailed(match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        }),
        sqlx::Error::Io(e) => PgError::Unavailable(format!("the connection failed: {e}")),
        other => PgError::QueryFailed(other.to_string()),
    }
}

impl CallState {
    /// The granted server, or why not; the database must be granted.
    fn pg_grant(&self, database: &str) -> Result<PostgresGrant, PgError> {
        let grant = self.target.grant.postgres.clone().ok_or_else(|| {
            PgError::Denied(format!("target {} has no grant.postgres", self.target.name))
        })?;
        let allowed = grant.lists(database) || (database == "postgres" && grant.admin);
        if !allowed {
            return Err(PgError::Denied(format!(
                "database {database} is not granted to target {} (grant.postgres.databases = [{}]{})",
                self.target.name,
                grant.databases.join(", "),
                if database == "postgres" {
                    "; the postgres database needs admin = true"
                } else {
                    ""
                }
            )));
        }
        Ok(grant)
    }

    /// On the `postgres` database reached through `admin = true`, only
    /// the statements of [`pg_admin`](super::pg_admin) run.
    fn pg_admin_check(
        &self,
        database: &str,
        grant: &PostgresGrant,
        sql: &str,
    ) -> Result<(), PgError> {
        if grant.lists(database) {
            return Ok(());
        }
        super::pg_admin::check(sql, &|name| grant.lists(name)).map_err(|why| {
            PgError::Denied(format!(
                "target {}'s admin grant refuses {why}",
                self.target.name
            ))
        })
    }

    /// This call's connection to `database`, opened on first use. A call
    /// holds one connection at a time: turning to another database closes
    /// the previous one, so the plugin's own sessions never keep a database
    /// busy that it goes on to rename or drop.
    async fn pg_connection(
        &mut self,
        database: &str,
        grant: &PostgresGrant,
    ) -> Result<&mut PgConnection, PgError> {
        if !self.pg.contains_key(database) {
            let others: Vec<String> = self.pg.keys().cloned().collect();
            for other in others {
                if let Some(connection) = self.pg.remove(&other) {
                    let _ = connection.close().await;
                }
            }
            let mut options = PgConnectOptions::new_without_pgpass()
                .port(grant.port)
                .username(&grant.user)
                .database(database)
                .application_name(&format!("rewind-agent {}", self.plugin));
            options = if grant.host.starts_with('/') {
                options.socket(&grant.host)
            } else {
                options.host(&grant.host)
            };
            if let Some(name) = &grant.password_secret {
                let password = self
                    .target
                    .secrets
                    .as_deref()
                    .and_then(|path| super::secrets::read(path).remove(name))
                    .ok_or_else(|| {
                        PgError::Unavailable(format!(
                            "the password secret `{name}` is not in target {}'s secrets file",
                            self.target.name
                        ))
                    })?;
                options = options.password(&password);
            }
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            let wait = remaining.min(Duration::from_secs(30));
            let server = format!("{}:{} as {}", grant.host, grant.port, grant.user);
            let mut connection = tokio::time::timeout(wait, PgConnection::connect_with(&options))
                .await
                .map_err(|_| {
                    PgError::Unavailable(format!(
                        "PostgreSQL at {server} did not answer within {} s",
                        wait.as_secs()
                    ))
                })?
                .map_err(|e| {
                    PgError::Unavailable(format!(
                        "cannot log in to database {database} on PostgreSQL at {server}: {e}"
                    ))
                })?;
            let set_timeout = format!(
                "SET statement_timeout = {}",
                grant.timeout.as_millis().max(1)
            );
            sqlx::raw_sql(AssertSqlSafe(set_timeout))
                .execute(&mut connection)
                .await
                .map_err(|e| database_error(e, grant.timeout))?;
            self.pg.insert(database.to_string(), connection);
        }
        Ok(self.pg.get_mut(database).expect("inserted above"))
    }

    /// The statement with its parameters bound, as this connection reads it.
    async fn pg_bind(
        &mut self,
        database: &str,
        grant: &PostgresGrant,
        sql: &str,
        params: &[Option<String>],
    ) -> Result<String, PgError> {
        if params.is_empty() {
            return Ok(sql.to_string());
        }
        let connection = self.pg_connection(database, grant).await?;
        let setting: String =
            sqlx::query_scalar("SELECT current_setting('standard_conforming_strings')")
                .fetch_one(&mut *connection)
                .await
                .map_err(|e| database_error(e, grant.timeout))?;
        bind(sql, params, setting == "on").map_err(PgError::QueryFailed)
    }

    async fn pg_query(
        &mut self,
        database: &str,
        sql: &str,
        params: &[Option<String>],
    ) -> Result<Rows, PgError> {
        let grant = self.pg_grant(database)?;
        let sql = self.pg_bind(database, &grant, sql, params).await?;
        self.pg_admin_check(database, &grant, &sql)?;
        let limit = self.deadline.saturating_duration_since(Instant::now());
        let connection = self.pg_connection(database, &grant).await?;
        let work = async {
            let mut stream = sqlx::raw_sql(AssertSqlSafe(sql.clone())).fetch(&mut *connection);
            let mut columns = Vec::new();
            let mut rows = Vec::new();
            let mut bytes = 0usize;
            while let Some(row) = stream.try_next().await? {
                if rows.len() == MAX_ROWS {
                    return Ok(Err(PgError::QueryFailed(format!(
                        "the query returns more than {MAX_ROWS} rows; page it (LIMIT/OFFSET or a key range)"
                    ))));
                }
                if columns.is_empty() {
                    columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    let value = row.try_get_raw(i)?;
                    values.push(if value.is_null() {
                        None
                    } else {
                        let text = value.as_str().map_err(sqlx::Error::Decode)?;
                        bytes += text.len();
                        Some(text.to_string())
                    });
                }
                if bytes > MAX_BYTES {
                    return Ok(Err(PgError::QueryFailed(format!(
                        "the query returns more than {} MiB of values; page it (LIMIT/OFFSET or a key range)",
                        MAX_BYTES >> 20
                    ))));
                }
                rows.push(values);
            }
            drop(stream);
            if rows.is_empty() {
                // No row carries the column names: ask the server to
                // describe the statement (one statement only; else none).
                if let Ok(described) = connection.describe(AssertSqlSafe(sql).into_sql_str()).await
                {
                    columns = described
                        .columns()
                        .iter()
                        .map(|c| c.name().to_string())
                        .collect();
                }
            }
            Ok::<_, sqlx::Error>(Ok(Rows { columns, rows }))
        };
        match tokio::time::timeout(limit + Duration::from_secs(1), work).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(database_error(e, grant.timeout)),
            Err(_) => {
                self.pg.remove(database);
                Err(PgError::TimedOut(
                    limit.as_millis().min(u128::from(u32::MAX)) as u32,
                ))
            }
        }
    }

    async fn pg_execute(
        &mut self,
        database: &str,
        sql: &str,
        params: &[Option<String>],
    ) -> Result<u64, PgError> {
        let grant = self.pg_grant(database)?;
        let sql = self.pg_bind(database, &grant, sql, params).await?;
        self.pg_admin_check(database, &grant, &sql)?;
        let limit = self.deadline.saturating_duration_since(Instant::now());
        let connection = self.pg_connection(database, &grant).await?;
        let work = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *connection);
        match tokio::time::timeout(limit + Duration::from_secs(1), work).await {
            Ok(Ok(done)) => Ok(done.rows_affected()),
            Ok(Err(e)) => Err(database_error(e, grant.timeout)),
            Err(_) => {
                self.pg.remove(database);
                Err(PgError::TimedOut(
                    limit.as_millis().min(u128::from(u32::MAX)) as u32,
                ))
            }
        }
    }
}

impl Host for CallState {
    async fn query(
        &mut self,
        database: String,
        sql: String,
        params: Vec<Option<String>>,
    ) -> Result<Rows, PgError> {
        self.pg_gate("query", &database, &sql, false)?;
        self.pg_query(&database, &sql, &params).await
    }

    async fn execute(
        &mut self,
        database: String,
        sql: String,
        params: Vec<Option<String>>,
    ) -> Result<u64, PgError> {
        self.pg_gate("execute", &database, &sql, true)?;
        self.pg_execute(&database, &sql, &params).await
    }
}

impl CallState {
    /// Record a postgres call (the database and the statement's first
    /// words); an interrupted call is `unavailable`.
    fn pg_gate(
        &mut self,
        op: &'static str,
        database: &str,
        sql: &str,
        writes: bool,
    ) -> Result<(), PgError> {
        let head: String = sql.split_whitespace().take(6).collect::<Vec<_>>().join(" ");
        let effect = if writes {
            crate::host::state::Effect::Writes
        } else {
            crate::host::state::Effect::Reads
        };
        use crate::host::state::{Fault, INJECTED, INTERRUPTED, Verdict};
        match self.record("postgres", op, &format!("{database}: {head}"), effect) {
            Verdict::Go => Ok(()),
            Verdict::Stop => Err(PgError::Unavailable(format!("{database}: {INTERRUPTED}"))),
            Verdict::Fault(Fault::Timeout) => Err(PgError::TimedOut(0)),
            Verdict::Fault(_) => Err(PgError::Denied(format!("{database}: {head} {INJECTED}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bind;

    fn p(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn parameters_become_quoted_literals_outside_strings_and_comments() {
        assert_eq!(
            bind(
                "SELECT $1, $2 WHERE x = $1",
                &p(&[Some("it's"), None]),
                true
            )
            .unwrap(),
            "SELECT E'it''s', NULL WHERE x = E'it''s'"
        );
        assert_eq!(
            bind(r"SELECT $1", &p(&[Some(r"a\b")]), true).unwrap(),
            r"SELECT E'a\\b'"
        );
        // Not parameters: in strings, identifiers, comments, dollar quotes.
        let untouched =
            "SELECT '$1', E'\\'$1', \"$1\", $tag$ $1 $tag$, $$ $2 $$ -- $1\n/* $1 /* $1 */ */ x$1";
        assert_eq!(bind(untouched, &[], true).unwrap(), untouched);
        assert_eq!(
            bind("SELECT $3", &p(&[Some("a")]), true).unwrap_err(),
            "$3 has no parameter (1 given)"
        );
        assert!(bind("SELECT $1", &p(&[Some("a\0b")]), true).is_err());
        // An injection attempt stays data.
        assert_eq!(
            bind("SELECT $1::text", &p(&[Some("'; DROP TABLE t; --")]), true).unwrap(),
            "SELECT E'''; DROP TABLE t; --'::text"
        );
    }

    #[test]
    fn the_lexer_reads_strings_as_the_server_does() {
        let one = p(&[Some("x")]);
        // `type'...'` is not an E-string: with standard strings the
        // backslash ends nothing, so `$1` after the string is a parameter.
        assert_eq!(
            bind(r"SELECT type'\' , $1", &one, true).unwrap(),
            r"SELECT type'\' , E'x'"
        );
        // standard_conforming_strings off: the backslash escapes the quote,
        // so the string runs on and `$1` inside it is not a parameter.
        assert_eq!(
            bind(r"SELECT '\' , $1 '", &one, false).unwrap(),
            r"SELECT '\' , $1 '"
        );
        assert_eq!(
            bind(r"SELECT '\' , $1 '", &one, true).unwrap(),
            r"SELECT '\' , E'x' '"
        );
        // A comment ends at a carriage return too.
        assert_eq!(
            bind("SELECT 1 -- note\r, $1", &one, true).unwrap(),
            "SELECT 1 -- note\r, E'x'"
        );
        // Prefixed literals: U&'', B'', X'' read as plain strings.
        assert_eq!(
            bind("SELECT U&'$1', B'01', X'ff', $1", &one, true).unwrap(),
            "SELECT U&'$1', B'01', X'ff', E'x'"
        );
    }
}
