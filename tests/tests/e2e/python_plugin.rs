//! A plugin written in Python (plugins/python-example, built with
//! componentize-py by plugins/build): its own unit tests run natively on
//! the generated bindings, it passes every conformance check on a real
//! target, and it rolls a host's files back through the coordinator.

use rewind_tests::fleet::TestFleet;
use rewind_tests::{Agent, binary, plugin, root, unsigned_plugin};
use std::process::Command;

#[test]
fn its_unit_tests_pass_on_the_generated_bindings() {
    plugin("python_example");
    let bindings = tempfile::tempdir().unwrap();
    let wit = root().join("plugins/target/python/python-example/wit");
    let made = Command::new("componentize-py")
        .arg("-d")
        .arg(&wit)
        .args(["-w", "rewind-example:python-files/plugin", "bindings"])
        .arg(bindings.path())
        .output()
        .expect("componentize-py (scripts/install-deps installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let example = root().join("plugins/python-example");
    let path = format!(
        "{}:{}:{}",
        bindings.path().display(),
        example.display(),
        root().join("plugins/python").display()
    );
    let tests = Command::new("python3")
        .args(["-B", "-m", "unittest", "discover", "-s", "tests", "-v"])
        .current_dir(&example)
        .env("PYTHONPATH", path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&tests.stderr);
    assert!(tests.status.success(), "{report}");
    assert!(
        report.contains("Ran 2 tests") && report.contains("OK"),
        "{report}"
    );
}

#[test]
fn it_passes_every_conformance_check() {
    let agent = Agent::new(&format!(
        "{}[targets.app]\nplugin = \"python-files\"\n\
         settings = {{ files = [\"{{dir}}/app/a.conf\", \"{{dir}}/app/b.conf\"] }}\n\
         grant = {{ files = [\"{{dir}}/app\"] }}\n",
        unsigned_plugin("python-files", "python_example")
    ));
    let app = agent.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a.conf"), "a=1\n").unwrap();
    let wasm = plugin("python_example");
    let run = |args: &[&str]| {
        Command::new(binary("rewind-agent"))
            .arg("plugin")
            .arg(args[0])
            .arg(&wasm)
            .arg("--config")
            .arg(agent.path().join("agent.toml"))
            .args(["--target", "app"])
            .args(&args[1..])
            .output()
            .unwrap()
    };
    let before = run(&["run", "snapshot"]);
    assert!(
        before.status.success(),
        "{}",
        String::from_utf8_lossy(&before.stdout)
    );
    let snapshot = agent.path().join("before.json");
    std::fs::write(&snapshot, &before.stdout).unwrap();
    std::fs::write(app.join("a.conf"), "a=2\n").unwrap();
    std::fs::write(app.join("b.conf"), "new\n").unwrap();
    let check = run(&["check", "--snapshot", snapshot.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        report.contains("ok   interrupted-restore-completes"),
        "{report}"
    );
    assert!(
        report.contains("ok   describe: python-files 0.1.0"),
        "{report}"
    );
    // Put back where the checks found it.
    assert_eq!(
        std::fs::read_to_string(app.join("a.conf")).unwrap(),
        "a=2\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn it_rolls_a_hosts_files_back_through_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a.conf"), "a=1\n").unwrap();
    let targets = format!(
        "[plugins.python-files]\npath = \"{{plugins}}/python_example.wasm\"\nallow_unsigned = true\n\n\
         [targets.app-config]\nplugin = \"python-files\"\n\
         settings = {{ files = [\"{app}/a.conf\", \"{app}/b.conf\"] }}\ngrant = {{ files = [\"{app}\"] }}\n",
        app = app.display()
    );
    let fleet = TestFleet::start_agents(vec![("web-1".into(), "web".into(), targets)], None).await;
    fleet.checkpoint("v1").await;
    std::fs::write(app.join("a.conf"), "a=2\n").unwrap();
    std::fs::write(app.join("b.conf"), "added by v2\n").unwrap();
    let plan = "[[stage]]\nname = \"web\"\nselect = { tier = \"web\" }\ntarget = \"app-config\"\nhealth = [{ verify = true }]\n";
    let output = fleet.rollback_cli(plan, "v1", &[]);
    assert!(output.success, "{output}");
    assert!(output.stdout.contains("restored 2 file(s)"), "{output}");
    assert_eq!(
        std::fs::read_to_string(app.join("a.conf")).unwrap(),
        "a=1\n"
    );
    assert!(!app.join("b.conf").exists());
}
