//! A new plugin author's first hour, as docs/plugin-guide.md tells it:
//! `plugin new`, the project's own tests, the build, the checks, a signed
//! plugin trusted by the agent, and a restore through `plugin run`.

use rewind_tests::binary;
use std::path::Path;
use std::process::{Command, Output};

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn agent_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(binary("rewind-agent"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_new_rust_plugin_builds_tests_signs_passes_the_checks_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let made = ok(
        "plugin new",
        &agent_cli(dir.path(), &["plugin", "new", "hello-world"]),
    );
    assert!(made.starts_with("made "), "{made}");
    let project = dir.path().join("hello-world");

    ok(
        "cargo test",
        &cargo().arg("test").current_dir(&project).output().unwrap(),
    );
    ok(
        "cargo build",
        &cargo()
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(&project)
            .output()
            .unwrap(),
    );
    let wasm = "target/wasm32-wasip2/release/hello_world.wasm";
    let case = ok(
        "plugin test",
        &agent_cli(
            &project,
            &["plugin", "test", wasm, "--script", "tests/case.toml"],
        ),
    );
    assert!(case.contains("5 step(s) passed"), "{case}");
    let inspect: serde_json::Value = serde_json::from_str(&ok(
        "inspect",
        &agent_cli(&project, &["plugin", "inspect", wasm]),
    ))
    .unwrap();
    assert_eq!(inspect["describe"]["name"], "hello-world");
    assert_eq!(inspect["describe"]["version"], "0.1.0");

    sign_trust_check_restore(&project, wasm);
}

#[test]
fn a_new_python_plugin_tests_builds_signs_passes_the_checks_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        "plugin new",
        &agent_cli(
            dir.path(),
            &["plugin", "new", "hello-py", "--lang", "python"],
        ),
    );
    let project = dir.path().join("hello-py");
    let componentize = |args: &[&str]| {
        Command::new("componentize-py")
            .args(["-d", "wit", "-w", "local:hello-py/plugin"])
            .args(args)
            .current_dir(&project)
            .output()
            .expect("componentize-py (scripts/install-deps installs it)")
    };
    ok("bindings", &componentize(&["bindings", "."]));
    let tests = Command::new("python3")
        .args(["-B", "-m", "unittest", "discover", "-s", "tests"])
        .current_dir(&project)
        .output()
        .unwrap();
    ok("python tests", &tests);
    assert!(String::from_utf8_lossy(&tests.stderr).contains("Ran 2 tests"));
    ok(
        "componentize",
        &componentize(&["componentize", "app", "-o", "hello_py.wasm"]),
    );
    let case = ok(
        "plugin test",
        &agent_cli(
            &project,
            &[
                "plugin",
                "test",
                "hello_py.wasm",
                "--script",
                "tests/case.toml",
            ],
        ),
    );
    assert!(case.contains("5 step(s) passed"), "{case}");
    sign_trust_check_restore(&project, "hello_py.wasm");
}

/// The rest of the guide, the same for every language: a key pair, the
/// plugin signed and its key trusted instead of allowing it unsigned, a
/// snapshot, the deploy, every conformance check passed, and a restore
/// through `plugin run` checked on the file.
fn sign_trust_check_restore(project: &Path, wasm: &str) {
    ok(
        "keygen",
        &agent_cli(project, &["plugin", "keygen", "--out", "release"]),
    );
    ok(
        "sign",
        &agent_cli(project, &["plugin", "sign", wasm, "--key", "release.key"]),
    );
    let public = std::fs::read_to_string(project.join("release.pub")).unwrap();
    let config = std::fs::read_to_string(project.join("agent.toml")).unwrap();
    let trusted = config
        .replace(
            "trusted_keys = []",
            &format!("trusted_keys = [\"{}\"]", public.trim()),
        )
        .replace("allow_unsigned = true\n", "");
    assert_ne!(trusted, config);
    std::fs::write(project.join("agent.toml"), trusted).unwrap();

    let with_target = |command: &str, args: &[&str]| {
        let mut all = vec![
            "plugin",
            command,
            wasm,
            "--config",
            "agent.toml",
            "--target",
            "example",
        ];
        all.extend_from_slice(args);
        agent_cli(project, &all)
    };
    let before = ok("snapshot", &with_target("run", &["snapshot"]));
    std::fs::write(project.join("before.json"), before).unwrap();
    std::fs::write(project.join("example/value.txt"), "a newer value\n").unwrap();
    let report = ok(
        "check",
        &with_target("check", &["--snapshot", "before.json"]),
    );
    assert!(report.contains("every check passed"), "{report}");
    assert!(
        report.contains("ok   interrupted-restore-completes"),
        "{report}"
    );
    let restored: serde_json::Value = serde_json::from_str(&ok(
        "restore",
        &with_target("run", &["restore", "--snapshot", "before.json"]),
    ))
    .unwrap();
    assert_eq!(restored["result"]["changed"], true, "{restored}");
    assert_eq!(
        std::fs::read_to_string(project.join("example/value.txt")).unwrap(),
        "the value at the start\n"
    );
    let signed = agent_cli(
        project,
        &["plugin", "inspect", wasm, "--config", "agent.toml"],
    );
    let signed: serde_json::Value = serde_json::from_slice(&signed.stdout).unwrap();
    assert_eq!(signed["signature"]["status"], "valid", "{signed}");
}
