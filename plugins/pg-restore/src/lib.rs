//! rewind's pg-restore plugin: PostgreSQL rollback from verified backups.
//!
//! A snapshot is a `pg_dump` (custom format) in the target's state directory
//! with its SHA-256, its table of contents, per-table row counts and the
//! schema migration version. A restore never touches the live database
//! before it has a verified emergency backup of it and a checked restore of
//! the snapshot in a new database; it then swaps the two by rename and keeps
//! the old database (renamed, not accepting connections) until the
//! retention setting removes it.
//!
//! SQL goes through the `postgres` capability (the agent logs in; the grant
//! lists the databases: the live one, its `<name>_rewind_*` copies, and
//! `postgres` with `admin` for creating, renaming and dropping databases).
//! `pg_dump` and `pg_restore` run through the process capability; their
//! password, if any, comes from the target's secrets and is passed in the
//! programs' environment, never in arguments or logs.
//!
//! Crash safety: before the swap the plugin writes `swap.json` (which
//! database is being replaced by which); an agent that dies inside the swap
//! window leaves it, and the plugin's next call (any action) first puts the
//! live database back in service: it renames back whatever was half done and
//! lets connections in again.

use rewind_plugin_sdk::postgres;
use rewind_plugin_sdk::process::{self, Command};
use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

struct PgRestore;

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Settings {
    database: String,
    #[serde(default = "default_host")]
    host: String,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_user")]
    user: String,
    #[serde(default = "default_maintenance")]
    maintenance_database: String,
    /// `schema_migrations`, `alembic_version`, or another table.
    migration_table: Option<String>,
    /// The column holding the version (default `version_num` for
    /// alembic_version, `version` otherwise).
    migration_column: Option<String>,
    #[serde(default = "default_jobs")]
    jobs: u32,
    /// How many replaced databases are kept after a restore.
    #[serde(default = "default_retention")]
    retention: usize,
    #[serde(default = "default_password_secret")]
    password_secret: String,
    /// Restore without the dump's ownership (`--no-owner`).
    #[serde(default)]
    no_owner: bool,
    /// Program names or paths as the grant lists them.
    #[serde(default = "default_pg_dump")]
    pg_dump: String,
    #[serde(default = "default_pg_restore")]
    pg_restore: String,
    /// No longer used (SQL goes through the `postgres` capability); accepted
    /// so that older configurations still load.
    #[serde(default)]
    #[allow(dead_code)]
    psql: Option<String>,
}

fn default_host() -> String {
    "/var/run/postgresql".into()
}
fn default_port() -> u16 {
    5432
}
fn default_user() -> String {
    "postgres".into()
}
fn default_maintenance() -> String {
    "postgres".into()
}
fn default_jobs() -> u32 {
    4
}
fn default_retention() -> usize {
    1
}
fn default_password_secret() -> String {
    "PGPASSWORD".into()
}
fn default_pg_dump() -> String {
    "pg_dump".into()
}
fn default_pg_restore() -> String {
    "pg_restore".into()
}

/// What a snapshot records.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Snapshot {
    database: String,
    /// The dump, relative to the target's state directory.
    file: String,
    sha256: String,
    size: u64,
    /// SHA-256 of the dump's table of contents (its entries, without the
    /// comment header that names the time).
    toc_sha256: String,
    toc_entries: usize,
    row_counts: BTreeMap<String, i64>,
    migration: Option<String>,
    database_size: i64,
    taken_at: u64,
}

/// The database a restore put in place, to recognise it next time.
#[derive(Serialize, Deserialize)]
struct Restored {
    sha256: String,
    oid: String,
}

/// A swap in progress: `live` is being replaced by `staged`, and the old
/// one parked as `parked`.
#[derive(Serialize, Deserialize)]
struct Swap {
    live: String,
    staged: String,
    parked: String,
}

const SWAP: &str = "swap.json";

struct Pg {
    settings: Settings,
    password: Option<String>,
}

fn fail(what: &str, output: &process::Output) -> PluginError {
    PluginError::Failed(format!(
        "{what} exited with {}: {}",
        output
            .status
            .map_or("a signal".to_string(), |s| format!("status {s}")),
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// Quote an identifier for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote a literal for SQL.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl Pg {
    fn new(target: &Target) -> Result<Pg, PluginError> {
        let settings: Settings = settings(target)?;
        if settings.database.is_empty() || settings.database.len() > 40 {
            return Err(PluginError::InvalidSettings(format!(
                "target {}: settings.database must be 1 to 40 characters (room is kept for \
                 the names of restored and replaced copies)",
                target.name
            )));
        }
        if settings.jobs == 0 {
            return Err(PluginError::InvalidSettings(format!(
                "target {}: settings.jobs must be at least 1",
                target.name
            )));
        }
        let password = secrets::get(&settings.password_secret);
        let pg = Pg { settings, password };
        pg.recover_swap()?;
        Ok(pg)
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("PGCONNECT_TIMEOUT".to_string(), "10".to_string())];
        if let Some(password) = &self.password {
            env.push(("PGPASSWORD".into(), password.clone()));
        }
        env
    }

    fn connection(&self, database: &str) -> Vec<String> {
        vec![
            "-h".into(),
            self.settings.host.clone(),
            "-p".into(),
            self.settings.port.to_string(),
            "-U".into(),
            self.settings.user.clone(),
            "-d".into(),
            database.into(),
        ]
    }

    fn run(&self, program: &str, args: Vec<String>) -> Result<process::Output, PluginError> {
        process::run_command(&Command {
            program: program.to_string(),
            args,
            stdin: None,
            timeout_ms: None,
            env: self.env(),
        })
    }

    /// Run SQL on `database` through the `postgres` capability; rows as
    /// fields (NULL as an empty field).
    fn sql(&self, database: &str, sql: &str) -> Result<Vec<Vec<String>>, PluginError> {
        let rows = postgres::query(database, sql, &[]).map_err(|e| match e {
            PluginError::Unavailable(t) => PluginError::Unavailable(format!(
                "PostgreSQL at {}:{} cannot be reached: {t}",
                self.settings.host, self.settings.port
            )),
            other => other,
        })?;
        Ok(rows
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(Option::unwrap_or_default).collect())
            .collect())
    }

    /// Run statements (several, separated by `;`, in one round trip).
    fn execute(&self, database: &str, sql: &str) -> Result<(), PluginError> {
        postgres::execute(database, sql, &[]).map(drop)
    }

    /// Put the live database back in service after a swap that an agent
    /// stop interrupted (see the module's documentation).
    fn recover_swap(&self) -> Result<Option<String>, PluginError> {
        let Some(bytes) = files::read_if_exists(SWAP)? else {
            return Ok(None);
        };
        let swap: Swap = serde_json::from_slice(&bytes).map_err(|e| {
            PluginError::Failed(format!(
                "{SWAP} in the target's state directory is damaged: {e}"
            ))
        })?;
        let maintenance = self.settings.maintenance_database.clone();
        let exists = |name: &str| -> Result<bool, PluginError> { Ok(self.oid(name)?.is_some()) };
        let mut done = Vec::new();
        if !exists(&swap.live)? && exists(&swap.parked)? {
            // The two renames are one transaction, so this is not left by
            // the swap itself; but if the live name is free and the parked
            // copy exists, the parked copy is what was live: put it back.
            self.execute(
                &maintenance,
                &format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    ident(&swap.parked),
                    ident(&swap.live)
                ),
            )?;
            done.push(format!("renamed {} back to {}", swap.parked, swap.live));
        }
        if exists(&swap.live)? {
            self.execute(
                &maintenance,
                &format!(
                    "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                    ident(&swap.live)
                ),
            )?;
            done.push(format!("{} accepts connections", swap.live));
        }
        files::remove(SWAP)?;
        let note = format!(
            "a swap interrupted by an agent stop was settled: {}",
            done.join("; ")
        );
        log::warn(&note);
        Ok(Some(note))
    }

    fn one(&self, database: &str, sql: &str) -> Result<Option<String>, PluginError> {
        Ok(self
            .sql(database, sql)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next()))
    }

    fn row_counts(&self, database: &str) -> Result<BTreeMap<String, i64>, PluginError> {
        let rows = self.sql(
            database,
            "SELECT format('%I.%I', n.nspname, c.relname), \
             (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', \
             n.nspname, c.relname), false, true, '')))[1]::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', \
             'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
        )?;
        Ok(rows
            .into_iter()
            .filter(|r| r.len() == 2)
            .map(|r| (r[0].clone(), r[1].parse().unwrap_or(-1)))
            .collect())
    }

    fn migration(&self, database: &str) -> Result<Option<String>, PluginError> {
        let Some(table) = &self.settings.migration_table else {
            return Ok(None);
        };
        let column = self.settings.migration_column.clone().unwrap_or_else(|| {
            if table == "alembic_version" {
                "version_num".into()
            } else {
                "version".into()
            }
        });
        let exists = self.one(
            database,
            &format!("SELECT to_regclass({})::text", literal(table)),
        )?;
        if exists.is_none() {
            return Ok(None);
        }
        self.one(
            database,
            &format!(
                "SELECT max({})::text FROM {}",
                ident(&column),
                table_name(table)
            ),
        )
    }

    fn database_size(&self, database: &str) -> Result<i64, PluginError> {
        Ok(self
            .one(
                &self.settings.maintenance_database,
                &format!("SELECT pg_database_size({})", literal(database)),
            )?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    fn oid(&self, database: &str) -> Result<Option<String>, PluginError> {
        self.one(
            &self.settings.maintenance_database,
            &format!(
                "SELECT oid::text FROM pg_database WHERE datname = {}",
                literal(database)
            ),
        )
    }

    /// pg_dump in custom format into `file` (relative to the state directory).
    fn dump(&self, database: &str, file: &str) -> Result<(), PluginError> {
        let mut args = vec!["-Fc".to_string(), "-f".into(), file.into()];
        args.extend(self.connection(database));
        let output = self.run(&self.settings.pg_dump, args)?;
        if output.status != Some(0) {
            let _ = files::remove(file);
            return Err(fail("pg_dump", &output));
        }
        Ok(())
    }

    /// The table of contents of a dump: (sha256 of its entries, entries),
    /// or an error when pg_restore cannot read it.
    fn toc(&self, file: &str) -> Result<(String, usize), PluginError> {
        let output = self.run(
            &self.settings.pg_restore,
            vec!["--list".into(), file.into()],
        )?;
        if output.status != Some(0) {
            return Err(PluginError::VerificationFailed(format!(
                "the backup {file} cannot be read: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let entries: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
            .collect();
        Ok((sha256_hex(entries.join("\n").as_bytes()), entries.len()))
    }

    /// Check a snapshot's dump before any use: checksum and table of contents.
    fn verify_backup(&self, snapshot: &Snapshot) -> Result<(), PluginError> {
        let Some(info) = files::stat(&snapshot.file)? else {
            return Err(PluginError::NotFound(format!(
                "the backup {} of database {} is missing from the target's state directory; \
                 nothing was touched",
                snapshot.file, snapshot.database
            )));
        };
        let digest = files::sha256(&snapshot.file)?;
        if digest != snapshot.sha256 {
            return Err(PluginError::VerificationFailed(format!(
                "the backup {} is damaged: its SHA-256 is {digest}, the snapshot recorded {} \
                 ({} bytes now, {} recorded); nothing was touched",
                snapshot.file, snapshot.sha256, info.size, snapshot.size
            )));
        }
        let (toc, entries) = self.toc(&snapshot.file).map_err(|e| match e {
            PluginError::VerificationFailed(t) => {
                PluginError::VerificationFailed(format!("{t}; nothing was touched"))
            }
            other => other,
        })?;
        if toc != snapshot.toc_sha256 || entries != snapshot.toc_entries {
            return Err(PluginError::VerificationFailed(format!(
                "the backup {}'s table of contents differs from the one recorded ({entries} \
                 entries, {} recorded); nothing was touched",
                snapshot.file, snapshot.toc_entries
            )));
        }
        Ok(())
    }

    /// Whether the live database is the one a restore of this snapshot put
    /// in place and still has its row counts and version: a restore leaves
    /// it alone, a preview has nothing to change.
    fn already_restored(
        &self,
        snapshot: &Snapshot,
        counts_now: &BTreeMap<String, i64>,
        migration_now: &Option<String>,
    ) -> Result<bool, PluginError> {
        let Some(bytes) = files::read_if_exists("restored.json")? else {
            return Ok(false);
        };
        let Ok(restored) = serde_json::from_slice::<Restored>(&bytes) else {
            return Ok(false);
        };
        Ok(restored.sha256 == snapshot.sha256
            && self.oid(&snapshot.database)?.as_deref() == Some(restored.oid.as_str())
            && *counts_now == snapshot.row_counts
            && *migration_now == snapshot.migration)
    }

    fn take(&self, database: &str, file: &str) -> Result<Snapshot, PluginError> {
        self.dump(database, file)?;
        let (toc_sha256, toc_entries) = self.toc(file)?;
        let size = files::stat(file)?.map_or(0, |i| i.size);
        Ok(Snapshot {
            database: database.to_string(),
            file: file.to_string(),
            sha256: files::sha256(file)?,
            size,
            toc_sha256,
            toc_entries,
            row_counts: self.row_counts(database)?,
            migration: self.migration(database)?,
            database_size: self.database_size(database)?,
            taken_at: now_secs(),
        })
    }
}

/// A possibly schema-qualified table name, quoted.
fn table_name(name: &str) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
}

fn count_changes(from: &BTreeMap<String, i64>, to: &BTreeMap<String, i64>) -> Vec<String> {
    let mut changes = Vec::new();
    for (table, n) in to {
        match from.get(table) {
            Some(m) if m == n => {}
            Some(m) => changes.push(format!("{table}: {m} rows now, {n} after the restore")),
            None => changes.push(format!("{table}: absent now, {n} rows after the restore")),
        }
    }
    for (table, m) in from {
        if !to.contains_key(table) {
            changes.push(format!("{table}: {m} rows now, absent after the restore"));
        }
    }
    changes
}

fn human_bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", n / 1024.0 / 1024.0 / 1024.0)
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else {
        format!("{:.0} KiB", n / 1024.0)
    }
}

fn window(snapshot: &Snapshot) -> u64 {
    now_secs().saturating_sub(snapshot.taken_at)
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}", nanos / 1_000_000)
}

impl Plugin for PgRestore {
    fn describe() -> PluginInfo {
        info!(
            "pg-restore",
            "PostgreSQL back to a verified pg_dump, swapped in by rename, with an emergency backup",
            &[
                Action::Snapshot,
                Action::Plan,
                Action::Restore,
                Action::Verify,
            ],
        )
    }

    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        let pg = Pg::new(&target)?;
        let database = pg.settings.database.clone();
        let file = format!("snapshot-{database}-{}.dump", unique_suffix());
        progress(&format!("pg_dump of {database}"), None);
        let snapshot = pg.take(&database, &file)?;
        let summary = format!(
            "{database}: {} dump, {} tables, {} rows{}",
            human_bytes(snapshot.size as i64),
            snapshot.row_counts.len(),
            snapshot.row_counts.values().sum::<i64>(),
            snapshot
                .migration
                .as_ref()
                .map(|m| format!(", migration {m}"))
                .unwrap_or_default()
        );
        Ok(Captured {
            data: serde_json::to_string(&snapshot)
                .map_err(|e| PluginError::Failed(e.to_string()))?,
            summary,
        })
    }

    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        let pg = Pg::new(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        pg.verify_backup(&snapshot)?;
        let database = &snapshot.database;
        let counts = pg.row_counts(database)?;
        let migration = pg.migration(database)?;
        if pg.already_restored(&snapshot, &counts, &migration)? {
            return Ok(Preview {
                changes: Vec::new(),
                risk: Risk::None,
                data_loss_window_seconds: None,
            });
        }
        let size = pg.database_size(database)?;
        let lost = window(&snapshot);
        let mut changes = vec![Change {
            subject: database.clone(),
            summary: format!(
                "replace the database ({} now) by the snapshot's ({} then); writes of the last \
                 {} are lost",
                human_bytes(size),
                human_bytes(snapshot.database_size),
                humanize(lost)
            ),
            detail: Some(format!(
                "an emergency backup of the current database is taken and verified first; the \
                 current database is kept, renamed, for {} restore(s)",
                pg.settings.retention
            )),
            risk: Risk::DataLoss,
        }];
        if migration != snapshot.migration {
            changes.push(Change {
                subject: format!("{database} migration"),
                summary: format!(
                    "schema migration {} -> {}",
                    migration.as_deref().unwrap_or("none"),
                    snapshot.migration.as_deref().unwrap_or("none")
                ),
                detail: None,
                risk: Risk::DataLoss,
            });
        }
        for change in count_changes(&counts, &snapshot.row_counts) {
            let (table, what) = change.split_once(": ").unwrap_or((&change, ""));
            changes.push(Change {
                subject: table.to_string(),
                summary: what.to_string(),
                detail: None,
                risk: Risk::DataLoss,
            });
        }
        Ok(Preview {
            changes,
            risk: Risk::DataLoss,
            data_loss_window_seconds: Some(lost),
        })
    }

    fn restore(
        target: Target,
        to: SnapshotRecord,
        options: RestoreOptions,
    ) -> Result<Outcome, PluginError> {
        let pg = Pg::new(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let database = snapshot.database.clone();
        let lost = window(&snapshot);
        if !options.confirm_data_loss {
            return Err(PluginError::NeedsConfirmation(format!(
                "restoring database {database} loses every write of the last {}; run with \
                 --confirm-data-loss",
                humanize(lost)
            )));
        }
        progress("verifying the backup", Some(0));
        pg.verify_backup(&snapshot)?;

        let counts_now = pg.row_counts(&database)?;
        let migration_now = pg.migration(&database)?;
        if pg.already_restored(&snapshot, &counts_now, &migration_now)? {
            return Ok(Outcome {
                changed: false,
                summary: format!("{database} already is the snapshot's restore; left alone"),
                details: Vec::new(),
            });
        }

        // 1. An emergency backup of what is there, verified.
        progress("emergency backup of the current database", Some(5));
        let emergency = format!("emergency-{}.dump", step_file_name(&options.step_id));
        let emergency_started = now_millis();
        pg.dump(&database, &emergency)?;
        pg.toc(&emergency).map_err(|e| {
            PluginError::Failed(format!(
                "the emergency backup of {database} could not be verified ({}); nothing was \
                 touched",
                e.text()
            ))
        })?;
        let emergency_ms = now_millis() - emergency_started;
        let emergency_sha = files::sha256(&emergency)?;
        log::info(&format!(
            "emergency backup {emergency} ({emergency_sha}) in {emergency_ms} ms"
        ));

        // 2. The snapshot restored into a new database, and checked.
        let suffix = unique_suffix();
        let staged = format!("{database}_rewind_{suffix}");
        let parked = format!("{database}_rewind_old_{suffix}");
        let maintenance = pg.settings.maintenance_database.clone();
        let template = pg.sql(
            &maintenance,
            &format!(
                "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, \
                 datctype FROM pg_database WHERE datname = {}",
                literal(&database)
            ),
        )?;
        let Some(row) = template.first().filter(|r| r.len() == 4) else {
            return Err(PluginError::NotFound(format!(
                "database {database} does not exist on {}:{}",
                pg.settings.host, pg.settings.port
            )));
        };
        pg.execute(
            &maintenance,
            &format!(
                "CREATE DATABASE {} TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} \
                 LC_CTYPE {}",
                ident(&staged),
                ident(&row[0]),
                literal(&row[1]),
                literal(&row[2]),
                literal(&row[3])
            ),
        )?;
        let drop_staged = |pg: &Pg| {
            let _ = pg.execute(
                &maintenance,
                &format!("DROP DATABASE IF EXISTS {}", ident(&staged)),
            );
        };
        progress(&format!("pg_restore into {staged}"), Some(30));
        let restore_started = now_millis();
        let mut args = vec![
            "--exit-on-error".to_string(),
            "--jobs".into(),
            pg.settings.jobs.to_string(),
        ];
        if pg.settings.no_owner {
            args.push("--no-owner".into());
        }
        args.extend(pg.connection(&staged));
        args.push(snapshot.file.clone());
        let output = pg.run(&pg.settings.pg_restore, args)?;
        if output.status != Some(0) {
            drop_staged(&pg);
            return Err(PluginError::Failed(format!(
                "{}; the live database was not touched",
                fail("pg_restore", &output).text()
            )));
        }
        let restore_ms = now_millis() - restore_started;
        progress("checking the restored copy", Some(80));
        let counts = pg.row_counts(&staged)?;
        let migration = pg.migration(&staged)?;
        if counts != snapshot.row_counts || migration != snapshot.migration {
            drop_staged(&pg);
            return Err(PluginError::VerificationFailed(format!(
                "the restored copy does not match the snapshot ({}{}); the live database was \
                 not touched",
                count_changes(&snapshot.row_counts, &counts).join("; "),
                if migration != snapshot.migration {
                    format!(
                        "; migration {} instead of {}",
                        migration.as_deref().unwrap_or("none"),
                        snapshot.migration.as_deref().unwrap_or("none")
                    )
                } else {
                    String::new()
                }
            )));
        }

        // 3. The swap: no new connections, the current ones ended, both
        // renames in one transaction.
        progress("swapping the databases", Some(90));
        let swap = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {live} AND \
             pid <> pg_backend_pid(); BEGIN; ALTER DATABASE {live_id} RENAME TO {parked_id}; \
             ALTER DATABASE {staged_id} RENAME TO {live_id}; COMMIT;",
            live = literal(&database),
            live_id = ident(&database),
            parked_id = ident(&parked),
            staged_id = ident(&staged),
        );
        // Recorded first: an agent that dies from here on leaves it, and the
        // next call puts the live database back in service.
        files::write(
            SWAP,
            &serde_json::to_vec(&Swap {
                live: database.clone(),
                staged: staged.clone(),
                parked: parked.clone(),
            })
            .map_err(|e| PluginError::Failed(e.to_string()))?,
        )?;
        pg.execute(
            &maintenance,
            &format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                ident(&database)
            ),
        )?;
        let mut swapped = Err(PluginError::Failed("not tried".into()));
        for _ in 0..50 {
            swapped = pg.execute(&maintenance, &swap);
            if swapped.is_ok() {
                break;
            }
            // A failed rename leaves the transaction open and aborted.
            let _ = pg.execute(&maintenance, "ROLLBACK");
            let _ = pg.sql(&maintenance, "SELECT pg_sleep(0.1)");
        }
        if let Err(e) = swapped {
            let _ = pg.execute(
                &maintenance,
                &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", ident(&database)),
            );
            let _ = files::remove(SWAP);
            drop_staged(&pg);
            return Err(PluginError::Failed(format!(
                "the databases could not be swapped ({}); {database} is unchanged and accepts \
                 connections again",
                e.text()
            )));
        }
        files::remove(SWAP)?;
        if let Some(oid) = pg.oid(&database)? {
            files::write(
                "restored.json",
                &serde_json::to_vec(&Restored {
                    sha256: snapshot.sha256.clone(),
                    oid,
                })
                .map_err(|e| PluginError::Failed(e.to_string()))?,
            )?;
        }

        // 4. Retention: the newest replaced databases are kept.
        let prefix = format!("{database}_rewind_old_");
        let mut old: Vec<String> = pg
            .sql(
                &maintenance,
                &format!(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, {}) ORDER BY \
                     datname DESC",
                    literal(&prefix)
                ),
            )?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect();
        let mut dropped = Vec::new();
        if old.len() > pg.settings.retention {
            for name in old.split_off(pg.settings.retention) {
                pg.execute(
                    &maintenance,
                    &format!("DROP DATABASE IF EXISTS {}", ident(&name)),
                )?;
                dropped.push(name);
            }
        }
        progress("done", Some(100));

        let mut details = vec![
            format!(
                "data-loss window: {} (snapshot taken {} s ago)",
                humanize(lost),
                lost
            ),
            format!(
                "emergency backup: {emergency} in the target's state directory ({emergency_sha}, {emergency_ms} ms)"
            ),
            format!(
                "pg_restore --jobs {} took {restore_ms} ms",
                pg.settings.jobs
            ),
            format!("the replaced database is kept as {parked} (not accepting connections)"),
        ];
        if migration_now != snapshot.migration {
            details.push(format!(
                "migration {} -> {}",
                migration_now.as_deref().unwrap_or("none"),
                snapshot.migration.as_deref().unwrap_or("none")
            ));
        }
        details.extend(count_changes(&counts_now, &snapshot.row_counts));
        for name in dropped {
            details.push(format!("dropped {name} (beyond retention)"));
        }
        Ok(Outcome {
            changed: true,
            summary: format!(
                "{database} restored from the snapshot; writes of the last {} were lost",
                humanize(lost)
            ),
            details,
        })
    }

    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let pg = Pg::new(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let counts = pg.row_counts(&snapshot.database)?;
        let migration = pg.migration(&snapshot.database)?;
        let mut problems = count_changes(&snapshot.row_counts, &counts);
        if migration != snapshot.migration {
            problems.push(format!(
                "migration {} instead of {}",
                migration.as_deref().unwrap_or("none"),
                snapshot.migration.as_deref().unwrap_or("none")
            ));
        }
        if !problems.is_empty() {
            return Err(PluginError::VerificationFailed(problems.join("; ")));
        }
        Ok(Outcome {
            changed: false,
            summary: format!(
                "{}: row counts and migration version equal the snapshot's",
                snapshot.database
            ),
            details: Vec::new(),
        })
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn humanize(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

export_plugin!(PgRestore);
