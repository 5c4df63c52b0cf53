//! SQL on the PostgreSQL server the target's `grant.postgres` names. The
//! agent logs in (the plugin never sees the credentials) and allows only
//! the granted databases. Values come back in PostgreSQL's text format;
//! NULL is `None`. Parameters (`$1`, `$2`, ...) are data, never SQL.

use crate::PluginError;
use crate::bindings::rewind::plugin::postgres as host;
pub use crate::bindings::rewind::plugin::postgres::{PgError, Rows};

impl From<PgError> for PluginError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Denied(t) => PluginError::Denied(t),
            PgError::Unavailable(t) => PluginError::Unavailable(t),
            PgError::QueryFailed(t) => PluginError::Failed(format!("SQL failed: {t}")),
            PgError::TimedOut(ms) => PluginError::Failed(format!(
                "SQL timed out after {ms} ms (grant.postgres.timeout)"
            )),
        }
    }
}

fn owned(params: &[Option<&str>]) -> Vec<Option<String>> {
    params.iter().map(|p| p.map(str::to_string)).collect()
}

/// Run a query and return its rows (at most 100,000).
pub fn query(database: &str, sql: &str, params: &[Option<&str>]) -> Result<Rows, PluginError> {
    Ok(host::query(database, sql, &owned(params))?)
}

/// Run a statement and return how many rows it affected.
pub fn execute(database: &str, sql: &str, params: &[Option<&str>]) -> Result<u64, PluginError> {
    Ok(host::execute(database, sql, &owned(params))?)
}
