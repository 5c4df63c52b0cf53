//! `rewind-agent plugin check`, as a plugin author runs it: the shipped
//! plugins pass every conformance check on real targets, and deliberately
//! broken fixtures fail the one check they break, named in the report.

use rewind_tests::{Agent, binary, plugin, unsigned_plugin};
use std::path::Path;

/// `plugin run <plugin> ... snapshot` to a file, for `--snapshot`.
fn snapshot(agent: &Agent, plugin_file: &Path, target: &str) -> std::path::PathBuf {
    let output = std::process::Command::new(binary("rewind-agent"))
        .args(["plugin", "run"])
        .arg(plugin_file)
        .arg("--config")
        .arg(agent.path().join("agent.toml"))
        .args(["--target", target, "snapshot"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let path = agent.path().join(format!("{target}.snapshot.json"));
    std::fs::write(&path, &output.stdout).unwrap();
    path
}

/// `plugin check --json`: whether it exited 0, and each check's status and detail.
fn check(
    agent: &Agent,
    plugin_file: &Path,
    target: &str,
    snapshot: &Path,
) -> (bool, Vec<(String, String, String)>) {
    let output = std::process::Command::new(binary("rewind-agent"))
        .args(["plugin", "check"])
        .arg(plugin_file)
        .arg("--config")
        .arg(agent.path().join("agent.toml"))
        .args(["--target", target, "--json", "--snapshot"])
        .arg(snapshot)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let checks = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(report["passed"], output.status.success(), "{report}");
    (output.status.success(), checks)
}

fn status<'a>(checks: &'a [(String, String, String)], name: &str) -> (&'a str, &'a str) {
    checks
        .iter()
        .find(|c| c.0 == name)
        .map(|c| (c.1.as_str(), c.2.as_str()))
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

#[test]
fn the_files_plugin_passes_every_check_and_is_left_where_it_was() {
    let agent = Agent::new(&format!(
        "{}[targets.app]\nplugin = \"files\"\n\
         settings = {{ files = [\"{{dir}}/app/app.env\", \"{{dir}}/app/extra.conf\"] }}\n\
         grant = {{ files = [\"{{dir}}/app\"], process = [], docker = [] }}\n",
        unsigned_plugin("files", "files")
    ));
    let app = agent.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("app.env"), "VERSION=1\n").unwrap();
    let v1 = snapshot(&agent, &plugin("files"), "app");
    std::fs::write(app.join("app.env"), "VERSION=2\n").unwrap();
    std::fs::write(app.join("extra.conf"), "added\n").unwrap();
    let (passed, checks) = check(&agent, &plugin("files"), "app", &v1);
    assert!(passed, "{checks:#?}");
    for name in [
        "describe",
        "plan-makes-no-writes",
        "snapshot-restore-verify",
        "restore-is-idempotent",
        "interrupted-restore-completes",
        "typed-errors",
    ] {
        assert_eq!(status(&checks, name).0, "passed", "{name}: {checks:#?}");
    }
    let (_, interrupted) = status(&checks, "interrupted-restore-completes");
    assert!(
        interrupted.starts_with("stopped at each of "),
        "{interrupted}"
    );
    // The checks put the target back where they found it.
    assert_eq!(
        std::fs::read_to_string(app.join("app.env")).unwrap(),
        "VERSION=2\n"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("extra.conf")).unwrap(),
        "added\n"
    );
}

/// The broken fixture with `fault`, checked on a file moved from v1 to v2.
fn broken(fault: &str) -> (bool, Vec<(String, String, String)>) {
    let agent = Agent::new(&format!(
        "{}[targets.value]\nplugin = \"broken\"\nsecrets = \"{{dir}}/secrets.env\"\n\
         settings = {{ file = \"{{dir}}/data/value\", fault = \"{fault}\" }}\n\
         grant = {{ files = [\"{{dir}}/data\"] }}\n",
        unsigned_plugin("broken", "fixture_broken")
    ));
    std::fs::write(agent.path().join("secrets.env"), "token=tok-3f9a2c71\n").unwrap();
    let data = agent.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("value"), "v1").unwrap();
    let v1 = snapshot(&agent, &plugin("fixture_broken"), "value");
    std::fs::write(data.join("value"), "v2").unwrap();
    check(&agent, &plugin("fixture_broken"), "value", &v1)
}

#[test]
fn each_broken_rule_fails_the_check_named_for_it() {
    let (passed, checks) = broken("none");
    assert!(passed, "the control keeps every rule: {checks:#?}");
    assert_eq!(status(&checks, "no-secrets-in-output").0, "passed");

    for (fault, name, says) in [
        (
            "plan-writes",
            "plan-makes-no-writes",
            "plan must change nothing, and made: files write /",
        ),
        (
            "not-idempotent",
            "restore-is-idempotent",
            "a second restore to the same snapshot must change nothing; it reported changed = true",
        ),
        (
            "trap",
            "typed-errors",
            "must be a typed error, not crashed: ",
        ),
        ("leak-secret", "no-secrets-in-output", "a secret of "),
    ] {
        let (passed, checks) = broken(fault);
        assert!(!passed, "{fault}: {checks:#?}");
        let (state, detail) = status(&checks, name);
        assert_eq!(state, "failed", "{fault}: {checks:#?}");
        assert!(detail.contains(says), "{fault}: {detail}");
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| c.1 == "failed")
            .map(|c| c.0.as_str())
            .collect();
        assert_eq!(
            failed,
            [name],
            "{fault} breaks only its own rule: {checks:#?}"
        );
        if fault == "leak-secret" {
            assert!(
                !detail.contains("tok-3f9a2c71"),
                "the report itself shows no secret: {detail}"
            );
        }
    }
}

/// Every check passed, and what it said of the interrupted restores.
fn assert_all_passed(checks: &[(String, String, String)], passed: bool) -> String {
    assert!(passed, "{checks:#?}");
    for (name, state, detail) in checks {
        assert!(
            state == "passed" || name == "no-secrets-in-output",
            "{name}: {state}: {detail}"
        );
    }
    status(checks, "interrupted-restore-completes")
        .1
        .to_string()
}

#[test]
fn the_etcd_plugin_passes_every_check() {
    use rewind_tests::etcd::EtcdServer;
    let etcd = EtcdServer::start();
    etcd.put("/shop/db/host", "db-v1");
    etcd.put("/shop/feature", "off");
    let agent = Agent::new(&format!(
        "{}[targets.config]\nplugin = \"etcd\"\n\
         settings = {{ endpoint = \"{}\", prefixes = [\"/shop/\"] }}\n\
         grant = {{ http = [\"127.0.0.1:{}\"] }}\n",
        unsigned_plugin("etcd", "etcd"),
        etcd.endpoint(),
        etcd.port
    ));
    let v1 = snapshot(&agent, &plugin("etcd"), "config");
    etcd.put("/shop/db/host", "db-v2");
    etcd.delete("/shop/feature");
    etcd.put("/shop/new", "v2");
    let (passed, checks) = check(&agent, &plugin("etcd"), "config", &v1);
    assert_all_passed(&checks, passed);
    assert_eq!(
        etcd.get("/shop/db/host").as_deref(),
        Some("db-v2"),
        "put back"
    );
    assert_eq!(etcd.get("/shop/feature"), None);
}

#[test]
fn the_pg_restore_plugin_passes_every_check() {
    use rewind_tests::postgres::{PgServer, pg_restore_target};
    let pg = PgServer::start();
    pg.psql("rewind", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE schema_migrations (version text PRIMARY KEY); INSERT INTO schema_migrations VALUES ('1'); \
         CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 50) i",
    );
    let (settings, grant) = pg_restore_target(&pg, "shop");
    let agent = Agent::new(&format!(
        "{}[targets.db]\nplugin = \"pg-restore\"\nsettings = {settings}\ngrant = {grant}\n",
        unsigned_plugin("pg-restore", "pg_restore")
    ));
    let v1 = snapshot(&agent, &plugin("pg_restore"), "db");
    pg.psql(
        "shop",
        "INSERT INTO items SELECT i, 'new ' || i FROM generate_series(51, 60) i",
    );
    let (passed, checks) = check(&agent, &plugin("pg_restore"), "db", &v1);
    assert_all_passed(&checks, passed);
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM items").trim(),
        "60",
        "put back"
    );
}

#[test]
fn the_cdn_plugin_passes_every_check() {
    use rewind_tests::cdn::{Origin, VCL_PURGE_ALLOWED, Varnish};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ui");
    for build in ["2026.11.01", "2026.11.20"] {
        for file in ["index.html", "app.js"] {
            let path = root.join("builds").join(build).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("{file} of {build}\n")).unwrap();
        }
    }
    let point = |build: &str| {
        let link = root.join("current");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(root.join("builds").join(build), &link).unwrap();
    };
    point("2026.11.01");
    let origin = Origin::start(root.join("current"));
    let varnish = Varnish::start(origin.port, VCL_PURGE_ALLOWED);
    let agent = Agent::new(&format!(
        "{}[targets.ui]\nplugin = \"cdn\"\n\
         settings = {{ builds = \"{root}/builds\", current = \"{root}/current\", verify_url = \"{url}\", purge = [{{ kind = \"varnish\", url = \"{url}\" }}] }}\n\
         grant = {{ files = [\"{root}\"], http = [\"127.0.0.1:{port}\"] }}\n",
        unsigned_plugin("cdn", "cdn"),
        root = root.display(),
        url = varnish.url(),
        port = varnish.port
    ));
    let v1 = snapshot(&agent, &plugin("cdn"), "ui");
    point("2026.11.20");
    let (passed, checks) = check(&agent, &plugin("cdn"), "ui", &v1);
    assert_all_passed(&checks, passed);
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap(),
        root.join("builds/2026.11.20"),
        "put back"
    );
}

/// A one-service compose project (each interrupted restore recreates it).
const ONE_SERVICE: &str = r#"version: "2.4"
services:
  api:
    image: rewind-test/app:${TAG}
    environment:
      ROLE: api
    init: true
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/version"]
      interval: 1s
      timeout: 2s
      retries: 3
"#;

#[test]
fn the_compose_plugin_passes_every_check() {
    use rewind_tests::docker::{self, Project, inspect};
    let (_v1, v2) = docker::v1_v2().clone();
    let project = Project::with_file("conform", ONE_SERVICE, &[]);
    project.up("v1");
    let agent = Agent::new(&format!(
        "{}[targets.shop]\nplugin = \"compose\"\n\
         settings = {{ project = \"{name}\", health_timeout_secs = 60 }}\ngrant = {{ docker = [\"{name}\"] }}\n",
        unsigned_plugin("compose", "compose"),
        name = project.name
    ));
    let v1 = snapshot(&agent, &plugin("compose"), "shop");
    project.up("v2");
    let (passed, checks) = check(&agent, &plugin("compose"), "shop", &v1);
    assert_all_passed(&checks, passed);
    assert_eq!(
        inspect(&project.container("api"))["Image"],
        v2.as_str(),
        "put back"
    );
}
