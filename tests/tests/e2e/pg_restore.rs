//! The pg-restore plugin through the agent, against a real PostgreSQL
//! started by the test: verified backups, a confirmed restore swapped in by
//! rename after an emergency backup, damaged backups refused, and clients
//! never seeing a partial database.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput, CallError};
use rewind_tests::postgres::{PgServer, bin_dir, pg_restore_target};
use rewind_tests::{Agent, unsigned_plugin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn grant(pg: &PgServer) -> String {
    pg_restore_target(pg, "shop").1
}

fn settings(pg: &PgServer) -> String {
    pg_restore_target(pg, "shop").0
}

fn agent(pg: &PgServer) -> Agent {
    Agent::new(&format!(
        "{}\n[targets.db]\nplugin = \"pg-restore\"\nsettings = {}\ngrant = {}\n",
        unsigned_plugin("pg-restore", "pg_restore"),
        settings(pg),
        grant(pg),
    ))
}

/// shop v1: 1,000 items, 300 orders, migration 20260101.
fn create_shop(pg: &PgServer) {
    pg.psql("rewind", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE schema_migrations (version text PRIMARY KEY); \
         INSERT INTO schema_migrations VALUES ('20251201'), ('20260101'); \
         CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price int NOT NULL); \
         INSERT INTO items (name, price) SELECT 'item ' || i, i * 3 FROM generate_series(1, 1000) i; \
         CREATE TABLE orders (id serial PRIMARY KEY, item int REFERENCES items, qty int); \
         INSERT INTO orders (item, qty) SELECT (i % 1000) + 1, i FROM generate_series(1, 300) i; \
         CREATE INDEX items_name ON items (name);",
    );
}

/// A bad deploy: a migration that adds a column and a table, and new data.
fn deploy_v2(pg: &PgServer) {
    pg.psql(
        "shop",
        "INSERT INTO schema_migrations VALUES ('20260201'); \
         ALTER TABLE items ADD COLUMN discount int DEFAULT 0; \
         CREATE TABLE coupons (code text); INSERT INTO coupons VALUES ('X'), ('Y'); \
         INSERT INTO items (name, price) SELECT 'new ' || i, i FROM generate_series(1, 500) i; \
         DELETE FROM orders WHERE id <= 100; UPDATE items SET price = 0 WHERE id <= 10;",
    );
}

/// What the tests compare: migration, and a digest of every table's rows.
fn state(pg: &PgServer, database: &str) -> String {
    pg.psql(
        database,
        "SELECT (SELECT max(version) FROM schema_migrations) || ' ' || \
         (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM items t) || ' ' || \
         (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM orders t) || ' ' || \
         (SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public')",
    )
}

fn restore(to: &SnapshotRecord, step: &str, confirm: bool) -> Action {
    Action::Restore {
        to: to.clone(),
        options: RestoreOptions {
            confirm_data_loss: confirm,
            force: false,
            step_id: step.into(),
        },
    }
}

fn oid(pg: &PgServer) -> String {
    pg.psql(
        "rewind",
        "SELECT oid FROM pg_database WHERE datname = 'shop'",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmed_restore_brings_data_and_schema_back_after_an_emergency_backup() {
    let pg = PgServer::start();
    create_shop(&pg);
    let agent = agent(&pg);
    let v1 = state(&pg, "shop");
    let to = agent.snapshot("db").await;
    assert!(to.summary.contains("migration 20260101"), "{}", to.summary);

    deploy_v2(&pg);
    let v2 = state(&pg, "shop");
    assert_ne!(v1, v2);

    // The preview says what is lost.
    let preview = agent
        .call("db", Action::Plan { to: to.clone() })
        .await
        .unwrap_or_else(|e| panic!("plan: {e}"));
    let ActionOutput::Preview(preview) = preview.output else {
        panic!("not a preview")
    };
    assert!(preview.data_loss_window_seconds.is_some());
    let text = format!("{preview:?}");
    assert!(text.contains("20260201 -> 20260101"), "{text}");
    assert!(text.contains("public.items"), "{text}");
    assert!(text.contains("public.coupons"), "{text}");

    // Without the run's confirmation nothing happens.
    let refused = agent
        .call("db", restore(&to, "step-0", false))
        .await
        .expect_err("a data-loss restore needs confirmation");
    assert!(
        matches!(&refused, CallError::Plugin { error, .. } if error.kind == "needs-confirmation"),
        "{refused}"
    );
    assert_eq!(state(&pg, "shop"), v2);

    let output = agent
        .call("db", restore(&to, "step-1", true))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let ActionOutput::Outcome(outcome) = output.output else {
        panic!("not an outcome")
    };
    assert!(outcome.changed);
    assert_eq!(
        state(&pg, "shop"),
        v1,
        "data and migration are the snapshot's"
    );
    let details = outcome.details.join("\n");
    assert!(details.contains("data-loss window"), "{details}");
    assert!(
        details.contains("public.items: 1500 rows now, 1000 after"),
        "{details}"
    );

    // The replaced database is kept, not dropped, and takes no connections.
    let kept = pg.psql(
        "rewind",
        "SELECT datname || ' ' || datallowconn FROM pg_database WHERE datname LIKE 'shop_rewind_old_%'",
    );
    assert!(kept.ends_with(" false"), "{kept}");

    // The emergency backup restores to the pre-rollback state.
    let emergency = agent.target("db").state_dir.join(format!(
        "emergency-{}.dump",
        rewind_tests::step_file_name("step-1")
    ));
    assert!(emergency.exists());
    pg.psql("rewind", "CREATE DATABASE check_emergency");
    let restored = std::process::Command::new(bin_dir().join("pg_restore"))
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-U", "rewind", "-d", "check_emergency"])
        .arg(&emergency)
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(state(&pg, "check_emergency"), v2);

    // verify agrees; a second restore leaves the database alone.
    agent
        .call("db", Action::Verify { to: to.clone() })
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"));
    let before = oid(&pg);
    let again = agent
        .call("db", restore(&to, "step-2", true))
        .await
        .unwrap();
    let ActionOutput::Outcome(again) = again.output else {
        panic!()
    };
    assert!(!again.changed, "{again:?}");
    assert_eq!(oid(&pg), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_backups_are_refused_before_anything_is_touched() {
    let pg = PgServer::start();
    create_shop(&pg);
    let agent = agent(&pg);
    let to = agent.snapshot("db").await;
    deploy_v2(&pg);
    let v2 = state(&pg, "shop");
    let live = oid(&pg);
    let data: serde_json::Value = serde_json::from_str(&to.data).unwrap();
    let dump = agent
        .target("db")
        .state_dir
        .join(data["file"].as_str().unwrap());
    let original = std::fs::read(&dump).unwrap();

    // Flipped bytes in the middle.
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    for byte in &mut flipped[middle..middle + 16] {
        *byte ^= 0xff;
    }
    std::fs::write(&dump, &flipped).unwrap();
    let text = agent
        .call("db", restore(&to, "step-1", true))
        .await
        .expect_err("a damaged backup must be refused")
        .to_string();
    assert!(text.contains("damaged"), "{text}");
    assert!(text.contains("nothing was touched"), "{text}");
    assert_eq!(state(&pg, "shop"), v2);
    assert_eq!(oid(&pg), live);

    // Truncated.
    std::fs::write(&dump, &original[..original.len() / 3]).unwrap();
    let text = agent
        .call("db", restore(&to, "step-2", true))
        .await
        .expect_err("a truncated backup must be refused")
        .to_string();
    assert!(text.contains("damaged"), "{text}");
    assert_eq!(state(&pg, "shop"), v2);
    assert_eq!(oid(&pg), live);
    // No emergency backup was even needed.
    assert!(
        !agent
            .target("db")
            .state_dir
            .join(format!(
                "emergency-{}.dump",
                rewind_tests::step_file_name("step-2")
            ))
            .exists()
    );
    let leftovers = pg.psql(
        "rewind",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'shop_rewind%'",
    );
    assert_eq!(leftovers, "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_during_the_swap_see_the_old_or_the_new_database_never_a_partial_one() {
    let pg = Arc::new(PgServer::start());
    create_shop(&pg);
    let agent = agent(&pg);
    let to = agent.snapshot("db").await;
    deploy_v2(&pg);
    let query = "SELECT (SELECT max(version) FROM schema_migrations) || ' ' || \
                 (SELECT count(*) FROM items) || ' ' || (SELECT count(*) FROM orders)";
    let old = pg.psql("shop", query);
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (pg, stop) = (pg.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Connection errors (refused, terminated) are allowed;
                // every answer must be a whole database.
                if let Ok(answer) = pg.try_psql("shop", query) {
                    seen.push(answer);
                }
            }
            seen
        })
    };
    agent
        .call("db", restore(&to, "step-1", true))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    // Keep reading a moment after the swap: what is checked is what every
    // read in that span sees (the old or the new database, never a partial one).
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = client.join().unwrap();
    let new = pg.psql("shop", query);
    assert_eq!(new, "20260101 1000 300");
    assert!(seen.contains(&old), "the client read before the swap");
    assert!(seen.contains(&new), "the client read after the swap");
    for answer in &seen {
        assert!(
            *answer == old || *answer == new,
            "a client saw a partial database: {answer}"
        );
    }
}

/// As an operator runs it: `rewind rollback --confirm-data-loss` through a
/// real coordinator and agent (separate processes, mutual TLS), whose step
/// ids hold `/`. The database is checked on PostgreSQL itself, and the
/// report states the data-loss window. A run refused before it changed
/// anything states none.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_through_the_coordinator_restores_the_database() {
    use rewind_tests::fleet::TestFleet;
    let pg = PgServer::start();
    create_shop(&pg);
    let v1 = state(&pg, "shop");
    let targets = format!(
        "[plugins.pg-restore]\npath = \"{{plugins}}/pg_restore.wasm\"\nallow_unsigned = true\n\n\
         [targets.shop-db]\nplugin = \"pg-restore\"\nsettings = {}\ngrant = {}\n",
        settings(&pg),
        grant(&pg),
    );
    let fleet = TestFleet::start_agents(vec![("db-1".into(), "data".into(), targets)], None).await;
    fleet.checkpoint("v1").await;
    deploy_v2(&pg);
    let v2 = state(&pg, "shop");
    let plan = "name = \"shop\"\n\n[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"shop-db\"\n";

    // Without confirmation: refused, nothing touched, no window claimed.
    let refused = fleet.rollback_cli(plan, "v1", &[]);
    assert!(!refused.success, "{refused}");
    assert!(refused.stderr.contains("--confirm-data-loss"), "{refused}");
    assert_eq!(state(&pg, "shop"), v2);

    let output = fleet.rollback_cli(plan, "v1", &["--confirm-data-loss"]);
    assert!(output.success, "{output}");
    assert_eq!(state(&pg, "shop"), v1, "data and schema are v1's again");
    assert!(
        output.stdout.contains("data-loss window"),
        "the report states the window: {output}"
    );
    let run = TestFleet::run_id_of(&output);
    let report = fleet.report(&run).await;
    assert!(report.data_loss_window_seconds.is_some(), "{report:?}");
    let step = &report.steps[0];
    assert!(step.step_id.contains('/'), "{}", step.step_id);
    assert!(step.changed);

    // Again: the database already is the snapshot's; nothing changes, so
    // the report states no window.
    let before = oid(&pg);
    let again = fleet.rollback_cli(plan, "v1", &["--confirm-data-loss"]);
    assert!(again.success, "{again}");
    assert_eq!(oid(&pg), before);
    let report = fleet.report(&TestFleet::run_id_of(&again)).await;
    assert!(!report.steps[0].changed, "{report:?}");
    assert_eq!(report.data_loss_window_seconds, None, "{report:?}");
    assert!(!again.stdout.contains("data-loss window"), "{again}");
}

/// The agent dies inside the swap window (the live database already
/// refuses new connections): the plugin's next call, whatever it is, puts
/// the live database back in service.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_the_swap_window_leaves_the_database_accepting_connections() {
    let pg = PgServer::start();
    create_shop(&pg);
    let agent = agent(&pg);
    let v1 = state(&pg, "shop");
    // What the agent had done when it died: the swap recorded, and the live
    // database closed to new connections.
    let state_dir = agent.target("db").state_dir.clone();
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(
        state_dir.join("swap.json"),
        r#"{"live":"shop","staged":"shop_rewind_1","parked":"shop_rewind_old_1"}"#,
    )
    .unwrap();
    pg.psql("rewind", "ALTER DATABASE shop ALLOW_CONNECTIONS false");
    assert!(
        pg.try_psql("shop", "SELECT 1").is_err(),
        "shop refuses connections"
    );

    let to = agent.snapshot("db").await;
    assert!(to.summary.contains("1302 rows"), "{}", to.summary);
    assert_eq!(
        pg.psql("shop", "SELECT 1"),
        "1",
        "shop accepts connections again"
    );
    assert_eq!(state(&pg, "shop"), v1, "and it is the same database");
    assert!(!state_dir.join("swap.json").exists());
}
