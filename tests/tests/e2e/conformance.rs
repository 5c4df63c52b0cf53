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
         grant = {{ files = [\"{{dir}}/app\"], process = [] }}\n",
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
            "plan must change nothing, and made: files write planned",
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
