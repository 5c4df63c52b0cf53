//! rewind's sql-migrations plugin: a database schema back to the migrations
//! of a snapshot with the application's own rollback scripts
//! (`NNN_name.sql` and `NNN_name_rollback.sql`, and a `schema_migrations`
//! table), each run with its bookkeeping in one transaction through the
//! `postgres` capability. No data is restored over; a script that drops a
//! column, a table or rows is `data-loss` and needs the run's confirmation.
//! A script that fails stops the rollback there, with nothing of it
//! applied, and the error says which migrations are still applied.

#[path = "../../migrations/src/common.rs"]
mod common;
mod sql;
mod statements;

use rewind_plugin_sdk::*;

struct SqlMigrations;

impl Plugin for SqlMigrations {
    fn describe() -> PluginInfo {
        info!(
            "sql-migrations",
            "schema rollback without restoring data: SQL rollback scripts and a schema_migrations table",
            &[
                Action::Snapshot,
                Action::Plan,
                Action::Restore,
                Action::Verify,
            ],
        )
    }

    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        sql::snapshot(&target)
    }

    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        sql::plan(&target, &to)
    }

    fn restore(
        target: Target,
        to: SnapshotRecord,
        options: RestoreOptions,
    ) -> Result<Outcome, PluginError> {
        sql::restore(&target, &to, &options)
    }

    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        sql::verify(&target, &to)
    }
}

export_plugin!(SqlMigrations);
