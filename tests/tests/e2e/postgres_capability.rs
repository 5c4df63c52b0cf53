//! The `postgres` capability through the agent, against a real PostgreSQL:
//! rows in text format, parameters kept as data, only the granted
//! databases, statement timeouts, and clear errors.

use rewind_agent::host::Action;
use rewind_agent::host::ActionOutput;
use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_tests::postgres::PgServer;
use rewind_tests::{Agent, unsigned_plugin};
use serde_json::{Value, json};

fn agent(pg: &PgServer, database: &str, statements: Value, grant: &str) -> Agent {
    let settings = toml::Value::try_from(json!({ "database": database, "statements": statements }))
        .expect("settings as TOML");
    Agent::new(&format!(
        r#"{}
[targets.db]
plugin = "sql"
secrets = "{{dir}}/db.env"
settings = {settings}

[targets.db.grant]
postgres = {{ host = "{socket}", user = "rewind", {grant} }}
"#,
        unsigned_plugin("sql", "fixture_sql"),
        socket = pg.socket_dir().display(),
    ))
}

async fn run(agent: &Agent) -> Result<Vec<String>, String> {
    let action = Action::Restore {
        to: SnapshotRecord {
            data: "{}".into(),
            summary: String::new(),
            taken_at: 0,
        },
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: "sql-1".into(),
        },
    };
    match agent.call("db", action).await {
        Ok(output) => match output.output {
            ActionOutput::Outcome(outcome) => Ok(outcome.details),
            other => panic!("not an outcome: {other:?}"),
        },
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_on_granted_databases_with_text_values_and_parameters_as_data() {
    let pg = PgServer::start();
    pg.psql("rewind", "CREATE DATABASE shop");
    pg.psql("rewind", "CREATE DATABASE other");
    pg.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(6,2), tags text[], at timestamptz);
         INSERT INTO items VALUES (1, 'tea', 3.50, '{hot,drink}', '2026-11-01 10:00:00+00'),
                                  (2, 'it''s', NULL, '{}', NULL),
                                  (3, 'cake', 12.00, '{food}', NULL)",
    );
    let statements = json!([
        { "sql": "SELECT id, name, price, tags, at FROM items WHERE id > $1 AND name <> $2 ORDER BY id", "params": ["0", "cake"] },
        { "sql": "UPDATE items SET name = $1 WHERE id = $2", "params": ["'; DROP TABLE items; --", "3"], "execute": true },
        { "sql": "SELECT name, $1::text AS quoted, $2::int IS NULL AS missing FROM items WHERE id = 3", "params": ["a\\b 'q'", ""], "nulls": [2] },
        { "sql": "SELECT id, name FROM items WHERE id = $1", "params": ["99"] },
    ]);
    let details = run(&agent(&pg, "shop", statements, r#"databases = ["shop"]"#))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first: Value = serde_json::from_str(&details[0]).unwrap();
    assert_eq!(
        first["columns"],
        json!(["id", "name", "price", "tags", "at"])
    );
    assert_eq!(
        first["rows"],
        json!([
            ["1", "tea", "3.50", "{hot,drink}", "2026-11-01 10:00:00+00"],
            ["2", "it's", null, "{}", null],
        ])
    );
    assert_eq!(details[1], "1");
    let empty: Value = serde_json::from_str(&details[3]).unwrap();
    assert_eq!(
        empty,
        json!({ "columns": ["id", "name"], "rows": [] }),
        "no rows, still the columns"
    );
    let third: Value = serde_json::from_str(&details[2]).unwrap();
    assert_eq!(
        third["rows"],
        json!([["'; DROP TABLE items; --", "a\\b 'q'", "t"]]),
        "parameters are data"
    );
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM items"), "3");

    // Another database, and the postgres database without admin: denied.
    let error = run(&agent(
        &pg,
        "other",
        json!([{ "sql": "SELECT 1" }]),
        r#"databases = ["shop"]"#,
    ))
    .await
    .unwrap_err();
    assert!(
        error.contains("database other is not granted to target db"),
        "{error}"
    );
    let error = run(&agent(
        &pg,
        "postgres",
        json!([{ "sql": "SELECT 1" }]),
        r#"databases = ["shop"]"#,
    ))
    .await
    .unwrap_err();
    assert!(error.contains("needs admin = true"), "{error}");
    // With admin, the postgres database administers the granted
    // databases, and only them.
    let error = run(&agent(
        &pg,
        "postgres",
        json!([{ "sql": "ALTER DATABASE other RENAME TO other_old", "execute": true }]),
        r#"databases = ["shop"], admin = true"#,
    ))
    .await
    .unwrap_err();
    assert!(
        error.contains("target db's admin grant refuses")
            && error.contains("database other is not granted"),
        "{error}"
    );
    let details = run(&agent(
        &pg,
        "postgres",
        json!([{ "sql": "ALTER DATABASE other RENAME TO other_old", "execute": true }]),
        r#"databases = ["shop", "other*"], admin = true"#,
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(details, ["0"]);
    // Nothing but those: no roles, no server files, no programs.
    for (sql, why) in [
        (
            "CREATE ROLE boss SUPERUSER LOGIN",
            "CREATE is not among the forms",
        ),
        ("SELECT pg_read_file('/etc/passwd')", "`pg_read_file`"),
        (
            "COPY (SELECT 1) TO PROGRAM 'touch /tmp/rewind-admin-escape'",
            "COPY is not among the forms",
        ),
        (
            "SELECT 1; CREATE ROLE boss SUPERUSER LOGIN",
            "CREATE is not among the forms",
        ),
    ] {
        let error = run(&agent(
            &pg,
            "postgres",
            json!([{ "sql": sql, "execute": true }]),
            r#"databases = ["shop", "other*"], admin = true"#,
        ))
        .await
        .unwrap_err();
        assert!(error.contains(why), "{sql}: {error}");
    }
    assert_eq!(
        pg.psql(
            "rewind",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'boss'"
        ),
        "0",
        "no role was made"
    );
    assert_eq!(
        pg.psql(
            "rewind",
            "SELECT datname FROM pg_database WHERE datname LIKE 'other%'"
        ),
        "other_old"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_say_what_and_where() {
    let pg = PgServer::start();
    pg.psql("rewind", "CREATE DATABASE shop");
    let error = run(&agent(
        &pg,
        "shop",
        json!([{ "sql": "SELEC 1" }]),
        r#"databases = ["shop"]"#,
    ))
    .await
    .unwrap_err();
    assert!(error.contains("SQL failed: syntax error"), "{error}");
    assert!(error.contains("SQLSTATE 42601"), "{error}");

    let error = run(&agent(
        &pg,
        "shop",
        json!([{ "sql": "SELECT pg_sleep(5)" }]),
        r#"databases = ["shop"], timeout = "300ms""#,
    ))
    .await
    .unwrap_err();
    assert!(error.contains("SQL timed out after 300 ms"), "{error}");

    let error = run(&agent(
        &pg,
        "shop",
        json!([{ "sql": "SELECT 1" }]),
        r#"databases = ["shop"], password_secret = "SHOP_PASSWORD""#,
    ))
    .await
    .unwrap_err();
    assert!(
        error.contains("the password secret `SHOP_PASSWORD` is not in target db's secrets file"),
        "{error}"
    );

    let error = run(&agent(
        &pg,
        "shop",
        json!([{ "sql": "SELECT 1" }]),
        r#"databases = ["shop"], port = 1"#,
    ))
    .await
    .unwrap_err();
    assert!(
        error.contains("cannot log in to database shop on PostgreSQL at"),
        "{error}"
    );
}
