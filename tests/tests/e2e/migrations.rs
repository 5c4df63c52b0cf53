//! The migrations and sql-migrations plugins through the real path (`rewind` CLI → coordinator →
//! agent → plugin → Debian's alembic, or SQL scripts through the `postgres`
//! capability → a real PostgreSQL). The schema, the revision and the rows
//! are checked with psql on the database itself.

use rewind_tests::alembic::AlembicProject;
use rewind_tests::fleet::TestFleet;
use rewind_tests::postgres::PgServer;

fn plan() -> &'static str {
    "name = \"schema\"\n\n[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"schema\"\n"
}

fn columns(pg: &PgServer, table: &str) -> String {
    pg.psql(
        "shop",
        &format!(
            "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = '{table}'"
        ),
    )
}

async fn alembic_fleet(pg: &PgServer, root: &std::path::Path) -> (TestFleet, AlembicProject) {
    pg.psql("rewind", "CREATE DATABASE shop");
    let project = AlembicProject::create(&root.join("app"), pg, "shop");
    project.run(&["upgrade", "a1"]);
    pg.psql(
        "shop",
        "INSERT INTO orders (item) VALUES ('first'), ('second')",
    );
    let targets = format!(
        "[plugins.migrations]\npath = \"{{plugins}}/migrations.wasm\"\nallow_unsigned = true\n\n\
         [targets.schema]\nplugin = \"migrations\"\nsettings = {{ config = \"alembic.ini\" }}\n{}\n",
        project.grant()
    );
    let fleet = TestFleet::start_agents(vec![("db-1".into(), "data".into(), targets)], None).await;
    fleet.checkpoint("v1").await;
    // The bad release: three migrations, and rows written after them.
    project.run(&["upgrade", "d4"]);
    pg.psql(
        "shop",
        "INSERT INTO orders (item, note, priority) VALUES ('third', 'after the release', 2); INSERT INTO audit (what) VALUES ('x')",
    );
    (fleet, project)
}

#[tokio::test(flavor = "multi_thread")]
async fn alembic_goes_down_three_revisions_keeping_the_rows() {
    let pg = PgServer::start();
    let root = tempfile::tempdir().unwrap();
    let (fleet, _project) = alembic_fleet(&pg, root.path()).await;
    let plan_path = fleet.fleet.dir.join("schema.toml");
    std::fs::write(&plan_path, plan()).unwrap();

    // The preview lists the revisions with their SQL, and it loses data.
    let preview = fleet.rewind(
        "ops",
        &["plan", &plan_path.display().to_string(), "--to", "v1"],
    );
    assert!(preview.success, "{preview}");
    for expected in [
        "revision d4: downgrade d4 -> c3 [DATA LOSS]",
        "ALTER TABLE orders DROP COLUMN priority",
        "revision c3: downgrade c3 -> b2 [DATA LOSS]",
        "DROP TABLE audit",
        "revision b2: downgrade b2 -> a1 [DATA LOSS]",
        "ALTER TABLE orders DROP COLUMN note",
    ] {
        assert!(
            preview.stdout.contains(expected),
            "missing {expected:?}: {preview}"
        );
    }

    // Without the confirmation the run refuses and nothing changes.
    let refused = fleet.rollback_cli(plan(), "v1", &[]);
    assert!(!refused.success, "{refused}");
    assert_eq!(
        pg.psql("shop", "SELECT version_num FROM alembic_version"),
        "d4"
    );

    let out = fleet.rollback_cli(plan(), "v1", &["--confirm-data-loss"]);
    assert!(out.success, "{out}");
    assert_eq!(
        pg.psql("shop", "SELECT version_num FROM alembic_version"),
        "a1"
    );
    assert_eq!(columns(&pg, "orders"), "id,item");
    assert_eq!(pg.psql("shop", "SELECT to_regclass('audit') IS NULL"), "t");
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT string_agg(item, ',' ORDER BY id) FROM orders"
        ),
        "first,second,third",
        "rows written after the release are kept"
    );
    // Again: already there, nothing to do.
    let again = fleet.rollback_cli(plan(), "v1", &["--confirm-data-loss"]);
    assert!(again.success, "{again}");
    let run = TestFleet::run_id_of(&again);
    let report = fleet.report(&run).await;
    assert!(!report.steps[0].changed, "{report:?}");
    assert!(
        report.steps[0]
            .summary
            .contains("already at alembic revision a1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_alembic_downgrade_says_the_revision_it_stopped_at() {
    let pg = PgServer::start();
    let root = tempfile::tempdir().unwrap();
    let (fleet, _project) = alembic_fleet(&pg, root.path()).await;
    // Someone built a view on `audit`: c3's `DROP TABLE audit` fails.
    pg.psql("shop", "CREATE VIEW audit_report AS SELECT what FROM audit");
    let out = fleet.rollback_cli(plan(), "v1", &["--confirm-data-loss"]);
    assert!(!out.success, "{out}");
    assert!(
        out.stdout.contains(
            "alembic downgrade from d4 to a1 stopped at revision c3; the database is at c3"
        ),
        "{out}"
    );
    assert!(
        out.stdout.contains("depend"),
        "the database's reason is shown: {out}"
    );
    // The database is where the error says: d4 undone, c3 still there.
    assert_eq!(
        pg.psql("shop", "SELECT version_num FROM alembic_version"),
        "c3"
    );
    assert_eq!(columns(&pg, "orders"), "id,item,note");
    assert_eq!(
        pg.psql("shop", "SELECT to_regclass('audit') IS NOT NULL"),
        "t"
    );
}

fn sql_folder(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        (
            "001_orders.sql",
            "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL);",
        ),
        ("001_orders_rollback.sql", "DROP TABLE orders;"),
        ("002_note.sql", "ALTER TABLE orders ADD COLUMN note text;"),
        (
            "002_note_rollback.sql",
            "ALTER TABLE orders DROP COLUMN note;",
        ),
        (
            "003_index.sql",
            "CREATE INDEX orders_item ON orders (item);",
        ),
        ("003_index_rollback.sql", "DROP INDEX orders_item;"),
        (
            "004_status.sql",
            "CREATE TYPE order_status AS ENUM ('new', 'paid');\nALTER TABLE orders ADD COLUMN status order_status NOT NULL DEFAULT 'new';",
        ),
        (
            "004_status_rollback.sql",
            "ALTER TABLE orders DROP COLUMN status;\nDROP TYPE order_status;",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn apply(pg: &PgServer, dir: &std::path::Path, version: &str, name: &str) {
    let sql = std::fs::read_to_string(dir.join(name)).unwrap();
    pg.psql(
        "shop",
        &format!("{sql}\nINSERT INTO schema_migrations (version) VALUES ('{version}')"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_rollback_scripts_run_newest_first_each_with_its_bookkeeping() {
    let pg = PgServer::start();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("migrations");
    sql_folder(&dir);
    pg.psql("rewind", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE schema_migrations (version text PRIMARY KEY)",
    );
    apply(&pg, &dir, "001", "001_orders.sql");
    apply(&pg, &dir, "002", "002_note.sql");
    pg.psql(
        "shop",
        "INSERT INTO orders (item, note) VALUES ('first', 'kept')",
    );
    let targets = format!(
        "[plugins.sql-migrations]\npath = \"{{plugins}}/sql_migrations.wasm\"\nallow_unsigned = true\n\n\
         [targets.schema]\nplugin = \"sql-migrations\"\nsettings = {{ dir = \"{dir}\", database = \"shop\" }}\n\
         grant = {{ files = [\"{dir}\"], postgres = {{ host = \"{socket}\", user = \"rewind\", databases = [\"shop\"] }} }}\n",
        dir = dir.display(),
        socket = pg.socket_dir().display()
    );
    let fleet = TestFleet::start_agents(vec![("db-1".into(), "data".into(), targets)], None).await;
    fleet.checkpoint("v1").await;
    apply(&pg, &dir, "003", "003_index.sql");
    apply(&pg, &dir, "004", "004_status.sql");
    pg.psql(
        "shop",
        "INSERT INTO orders (item, status) VALUES ('second', 'paid')",
    );

    // A rollback script that fails stops there, with nothing of it applied.
    std::fs::write(
        dir.join("003_index_rollback.sql"),
        "DROP INDEX no_such_index;",
    )
    .unwrap();
    let out = fleet.rollback_cli(plan(), "v1", &["--confirm-data-loss"]);
    assert!(!out.success, "{out}");
    assert!(
        out.stdout
            .contains("rolling back 003 failed, and nothing of it was applied")
            && out.stdout.contains("done before it: rolled back 004")
            && out.stdout.contains("the latest migration applied is 003"),
        "{out}"
    );
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations"
        ),
        "001,002,003"
    );
    assert_eq!(columns(&pg, "orders"), "id,item,note");

    // A script that ends the transaction it runs in (written any way,
    // here after a statement on the same line) is refused before anything.
    std::fs::write(
        dir.join("003_index_rollback.sql"),
        "DROP INDEX orders_item; COMMIT WORK;",
    )
    .unwrap();
    let out = fleet.rollback_cli(plan(), "v1", &["--confirm-data-loss"]);
    assert!(!out.success, "{out}");
    assert!(
        out.to_string()
            .contains("holds its own transaction control (`COMMIT WORK`)"),
        "{out}"
    );
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations"
        ),
        "001,002,003"
    );

    // Fixed, the rollback finishes; the rows are kept.
    std::fs::write(
        dir.join("003_index_rollback.sql"),
        "DROP INDEX orders_item;",
    )
    .unwrap();
    let out = fleet.rollback_cli(plan(), "v1", &["--confirm-data-loss"]);
    assert!(out.success, "{out}");
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations"
        ),
        "001,002"
    );
    assert_eq!(
        pg.psql("shop", "SELECT to_regclass('orders_item') IS NULL"),
        "t"
    );
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT string_agg(item || ':' || coalesce(note, ''), ',' ORDER BY id) FROM orders"
        ),
        "first:kept,second:"
    );
}
