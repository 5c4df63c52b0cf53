//! rewind's migrations plugin: a database schema back to the revision of a
//! snapshot by running the application's own Alembic downgrades, so no data
//! is restored over (and none written since the release is lost, except
//! what the downgrade itself drops). Plain SQL folders with rollback
//! scripts are the `sql-migrations` plugin's.
//!
//! The snapshot is `alembic current`; the plan lists the revisions to go
//! down with each one's SQL (`alembic downgrade --sql`), `data-loss` when it
//! drops a column, a table or rows; restore runs `alembic downgrade <rev>`
//! (or `upgrade`, to go forward again); verify compares `alembic current`.
//! A downgrade that fails stops at a known revision: the error says which,
//! read back from the database.

mod alembic;
mod common;

use rewind_plugin_sdk::*;

struct Migrations;

impl Plugin for Migrations {
    fn describe() -> PluginInfo {
        info!(
            "migrations",
            "schema rollback without restoring data: Alembic downgrades",
            &[
                Action::Snapshot,
                Action::Plan,
                Action::Restore,
                Action::Verify,
            ],
        )
    }

    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        alembic::snapshot(&target)
    }

    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        alembic::plan(&target, &to)
    }

    fn restore(
        target: Target,
        to: SnapshotRecord,
        options: RestoreOptions,
    ) -> Result<Outcome, PluginError> {
        alembic::restore(&target, &to, &options)
    }

    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        alembic::verify(&target, &to)
    }
}

export_plugin!(Migrations);
