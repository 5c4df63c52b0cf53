//! The plugin test kit, as authors use it: `rewind-agent plugin test` with
//! a case file, and `rewind_agent::testkit::Kit` in an ordinary cargo test:
//! a temporary tree, scripted program runs (nothing is run), faults on
//! chosen capability calls, and the plugin checked on what it leaves.

use rewind_agent::host::{ActionOutput, Fault, FaultRule, ScriptedRun};
use rewind_agent::testkit::{Kit, TargetSpec, restore};
use rewind_tests::{binary, plugin, root};

fn plugin_test(case: &std::path::Path) -> (bool, String) {
    let output = std::process::Command::new(binary("rewind-agent"))
        .args(["plugin", "test"])
        .arg(plugin("files"))
        .arg("--script")
        .arg(case)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn a_case_file_runs_with_scripted_programs_and_a_torn_write() {
    let (passed, report) = plugin_test(&root().join("plugins/files/tests/nginx.toml"));
    assert!(passed, "{report}");
    assert!(report.contains("6 step(s) passed"), "{report}");
    assert!(
        report.contains("ok   step 3 (restore, its write of nginx.conf torn half-way): failed;"),
        "{report}"
    );
    assert!(
        report.contains("process run nginx -s reload"),
        "the reload was scripted: {report}"
    );
}

#[test]
fn a_step_that_does_not_hold_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let case = std::fs::read_to_string(root().join("plugins/files/tests/nginx.toml"))
        .unwrap()
        .replace("expect = \"failed\"", "expect = \"ok\"");
    let path = dir.path().join("case.toml");
    std::fs::write(&path, case).unwrap();
    let (passed, report) = plugin_test(&path);
    assert!(!passed, "{report}");
    assert!(
        report.contains(
            "FAIL step 3 (restore, its write of nginx.conf torn half-way): expected ok, got failed:"
        ),
        "{report}"
    );
    assert!(report.contains("1 of 6 step(s) failed"), "{report}");
}

/// A case file is input: its tree's paths stay in the case's tree, and a
/// case without a `[[process]]` script runs no program (a run is refused,
/// naming it), as the guide says.
#[test]
fn a_case_cannot_write_outside_its_tree_nor_run_unscripted_programs() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = std::fs::read_to_string(root().join("plugins/files/tests/nginx.toml")).unwrap();
    let outside = dir.path().join("outside");
    let escaping = nginx.replacen(
        "[tree]\n",
        &format!(
            "[tree]\n\"{}\" = \"written by a case\\n\"\n",
            outside.display()
        ),
        1,
    );
    assert_ne!(escaping, nginx, "the case has a [tree] table");
    let path = dir.path().join("case-dir/escape.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, escaping).unwrap();
    let output = std::process::Command::new(binary("rewind-agent"))
        .args(["plugin", "test"])
        .arg(plugin("files"))
        .arg("--script")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("is not a path inside the case's tree"),
        "{text}"
    );
    assert!(!outside.exists());

    // Without [[process]], the reload command is refused, not run.
    let unscripted: String = nginx.split("[[process]]").next().unwrap().to_string()
        + &nginx[nginx.find("[[step]]").unwrap()..];
    let path = dir.path().join("unscripted.toml");
    std::fs::write(&path, unscripted).unwrap();
    let (passed, report) = plugin_test(&path);
    assert!(!passed, "{report}");
    assert!(
        report.contains("the test's process script has no answer for `nginx -s reload`"),
        "{report}"
    );
}

fn settings() -> TargetSpec {
    TargetSpec {
        settings: toml::toml! {
            files = ["{tree}/app.env"]
            reload = ["systemctl", "reload", "app"]
        },
        ..TargetSpec::default()
    }
}

#[tokio::test]
async fn an_ordinary_cargo_test_injects_faults_and_checks_what_the_plugin_leaves() {
    let mut kit = Kit::new(&plugin("files"), &settings()).unwrap();
    kit.write("app.env", "VERSION=1\n").unwrap();
    kit.script(vec![ScriptedRun {
        program: "systemctl".into(),
        args: Some(vec!["reload".into(), "app".into()]),
        exit: 0,
        stdout: String::new(),
        stderr: String::new(),
    }]);
    let v1 = kit.snapshot().await.unwrap();
    kit.write("app.env", "VERSION=2\n").unwrap();

    // The reload is refused: the plugin puts the file back.
    let refused = vec![FaultRule::on("process run", Fault::Refuse)];
    let (error, tape) = kit.call(restore(&v1, "step-b"), refused).await;
    assert!(
        tape.calls
            .iter()
            .any(|c| c.subject == "systemctl reload app"),
        "{:?}",
        tape.calls
    );
    let error = error.expect_err("a refused reload fails the restore");
    assert!(error.to_string().contains("put back"), "{error}");
    assert_eq!(kit.read("app.env").as_deref(), Some("VERSION=2\n"));

    // A write torn half-way, then the same step again: it completes, and
    // the emergency copy is the one from before the step (VERSION=2).
    let torn = vec![FaultRule::on("files write", Fault::HalfWrite).subject("/app.env")];
    let (error, _) = kit.call(restore(&v1, "step-c"), torn).await;
    assert!(error.is_err());
    assert_eq!(
        kit.read("app.env").as_deref(),
        Some("VERSION=2\n"),
        "put back"
    );
    let (done, _) = kit.call(restore(&v1, "step-c"), Vec::new()).await;
    let ActionOutput::Outcome(done) = done.unwrap().output else {
        panic!("not an outcome")
    };
    assert!(done.changed);
    assert_eq!(kit.read("app.env").as_deref(), Some("VERSION=1\n"));
    let emergency = std::fs::read_dir(kit.state_dir().join("emergency"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("step-c"))
        .expect("the emergency copy of step-c");
    let record = std::fs::read_to_string(emergency).unwrap();
    let sha_v2 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"VERSION=2\n"))
    };
    assert!(
        record.contains(&sha_v2),
        "the copy holds the contents from before the step: {record}"
    );

    // A timeout of the reload: a typed failure, the file put back.
    kit.write("app.env", "VERSION=2\n").unwrap();
    let slow = vec![FaultRule::on("process run", Fault::Timeout)];
    let (error, _) = kit.call(restore(&v1, "step-d"), slow).await;
    let error = error.unwrap_err().to_string();
    assert!(error.contains("systemctl was killed after"), "{error}");
    assert_eq!(kit.read("app.env").as_deref(), Some("VERSION=2\n"));
}
