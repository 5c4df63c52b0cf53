//! PostgreSQL benchmark: `cargo bench -p rewind-tests --bench pg_restore_1gib`.
//!
//! A database of at least 1 GiB on a real PostgreSQL started here is
//! snapshotted through the pg-restore plugin, then (a) restored through the
//! plugin (verify the backup, emergency backup, restore into a new database
//! with `--jobs`, check, swap) and (b) restored by `pg_restore` run directly
//! with the same options into a new database. Reports the plugin's time
//! without its emergency backup against the direct run, as a ratio in the
//! same run, and the emergency backup's cost separately. Target: 1.05.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput};
use rewind_tests::postgres::{PgServer, bin_dir};
use rewind_tests::{Agent, unsigned_plugin};
use std::time::Instant;

const JOBS: u32 = 2;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pg = PgServer::start();
    pg.psql("rewind", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE schema_migrations (version text PRIMARY KEY); \
         INSERT INTO schema_migrations VALUES ('20260101'); \
         CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL)",
    );
    let mut rows = 0i64;
    let filled = Instant::now();
    loop {
        let size: i64 = pg
            .psql("shop", "SELECT pg_database_size('shop')")
            .parse()
            .unwrap();
        if size >= 1 << 30 {
            println!(
                "database: {:.2} GiB, {rows} rows (filled in {:.0} s)",
                size as f64 / (1u64 << 30) as f64,
                filled.elapsed().as_secs_f64()
            );
            break;
        }
        pg.psql(
            "shop",
            &format!(
                "INSERT INTO big SELECT i, repeat(md5(i::text), 8) FROM generate_series({}, {}) i",
                rows + 1,
                rows + 500_000
            ),
        );
        rows += 500_000;
    }
    pg.psql("shop", "VACUUM ANALYZE big");

    let bin = bin_dir();
    let program = |name: &str| bin.join(name).display().to_string();
    let agent = Agent::new(&format!(
        r#"{}
[targets.db]
plugin = "pg-restore"
deadline = "2h"
settings = {{ database = "shop", host = "{host}", user = "rewind", migration_table = "schema_migrations", jobs = {JOBS}, pg_dump = "{pg_dump}", pg_restore = "{pg_restore}" }}
grant = {{ process = ["{pg_dump}", "{pg_restore}"], process_timeout = "2h", postgres = {{ host = "{host}", user = "rewind", databases = ["shop", "shop_rewind_*"], admin = true, timeout = "2h" }} }}
"#,
        unsigned_plugin("pg-restore", "pg_restore"),
        host = pg.socket_dir().display(),
        pg_dump = program("pg_dump"),
        pg_restore = program("pg_restore"),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        let ActionOutput::Captured(captured) =
            agent.call("db", Action::Snapshot).await.unwrap().output
        else {
            panic!("not a snapshot")
        };
        println!(
            "snapshot (pg_dump -Fc, checksum, table of contents, row counts): {:.1} s; {}",
            started.elapsed().as_secs_f64(),
            captured.summary
        );
        let to = SnapshotRecord {
            data: captured.data,
            summary: captured.summary,
            taken_at: 0,
        };
        let data: serde_json::Value = serde_json::from_str(&to.data).unwrap();
        let dump = agent
            .target("db")
            .state_dir
            .join(data["file"].as_str().unwrap());
        pg.psql("shop", "INSERT INTO big VALUES (-1, 'after the snapshot')");

        // (b) pg_restore directly, the same options, into a new database:
        // once before the plugin and once after, so neither side alone
        // gets the cold page cache.
        let direct_run = || {
            pg.psql("rewind", "CREATE DATABASE direct_copy");
            let started = Instant::now();
            let status = std::process::Command::new(bin.join("pg_restore"))
                .args(["--exit-on-error", "--jobs", &JOBS.to_string(), "-h"])
                .arg(pg.socket_dir())
                .args(["-U", "rewind", "-d", "direct_copy"])
                .arg(&dump)
                .status()
                .unwrap();
            let elapsed = started.elapsed();
            assert!(status.success());
            pg.psql("rewind", "DROP DATABASE direct_copy");
            elapsed
        };
        let direct_before = direct_run();

        // (a) through the plugin.
        let started = Instant::now();
        let output = agent
            .call(
                "db",
                Action::Restore {
                    to: to.clone(),
                    options: RestoreOptions {
                        confirm_data_loss: true,
                        force: false,
                        step_id: "bench".into(),
                    },
                },
            )
            .await
            .unwrap_or_else(|e| panic!("restore: {e}"));
        let plugin = started.elapsed();
        let ActionOutput::Outcome(outcome) = output.output else {
            panic!("not an outcome")
        };
        assert!(outcome.changed);
        assert_eq!(
            pg.psql("shop", "SELECT count(*) FROM big WHERE id = -1"),
            "0"
        );
        let emergency_ms: f64 = outcome
            .details
            .iter()
            .find_map(|d| {
                d.strip_prefix("emergency backup: ")?
                    .rsplit_once(", ")?
                    .1
                    .strip_suffix(" ms)")?
                    .parse()
                    .ok()
            })
            .expect("the emergency backup's time in the report");
        let restore_only = plugin.as_secs_f64() - emergency_ms / 1e3;
        let direct_after = direct_run();
        let direct = (direct_before + direct_after) / 2;
        println!(
            "pg_restore --jobs {JOBS} directly: {:.1} s (mean of {:.1} s before the plugin and {:.1} s after)",
            direct.as_secs_f64(),
            direct_before.as_secs_f64(),
            direct_after.as_secs_f64()
        );
        println!(
            "through the plugin: {:.1} s in all; emergency backup {:.1} s; the rest (verify, restore, check, swap) {:.1} s",
            plugin.as_secs_f64(),
            emergency_ms / 1e3,
            restore_only
        );
        let ratio = restore_only / direct.as_secs_f64();
        println!(
            "ratio plugin (without the emergency backup) / direct: {ratio:.3}  [target <= 1.05: {}]",
            if ratio <= 1.05 { "met" } else { "MISSED" }
        );
        for detail in &outcome.details {
            println!("  {detail}");
        }
    });
}
