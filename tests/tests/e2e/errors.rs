//! Bad input and silent peers get clear errors that say what and where:
//! a coordinator that never answers, a plan too large, an agent
//! configuration whose plugin file is missing or not a component.

use rewind_coordinator::certs;
use rewind_proto::identity::Kind;
use rewind_tests::{binary, plugin};
use std::process::Command;
use std::time::{Duration, Instant};

fn operator_files(dir: &std::path::Path) -> [(String, String); 3] {
    certs::init(dir, "rewind.local").unwrap();
    let issued = certs::issue_for_days(dir, Kind::Operator, "ops", &[], 1).unwrap();
    [
        ("REWIND_CA".into(), dir.join("ca.pem").display().to_string()),
        ("REWIND_CERT".into(), issued.cert.display().to_string()),
        ("REWIND_KEY".into(), issued.key.display().to_string()),
    ]
}

#[test]
fn the_cli_gives_up_on_a_coordinator_that_never_answers_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts TCP (the kernel does) but never speaks TLS.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("https://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let output = Command::new(binary("rewind"))
        .args(["fleet", "--connect-timeout", "1s"])
        .env("REWIND_COORDINATOR", &address)
        .envs(operator_files(dir.path()))
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        stderr.contains(&format!("cannot reach the coordinator at {address}")),
        "{stderr}"
    );
    assert!(stderr.contains("within 1 s"), "{stderr}");
    drop(silent);
}

#[test]
fn a_plan_too_large_names_the_file_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("huge.toml");
    std::fs::write(&plan, "# padding\n".repeat(300_000)).unwrap();
    let output = Command::new(binary("rewind"))
        .args(["plan", plan.to_str().unwrap(), "--to", "v1"])
        .env("REWIND_COORDINATOR", "https://127.0.0.1:9")
        .envs(operator_files(dir.path()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("the plan {} is 2.9 MiB", plan.display())),
        "{stderr}"
    );
    assert!(stderr.contains("at most 1 MiB"), "{stderr}");
}

/// `rewind-agent run` with this configuration's plugins table; returns stderr.
fn agent_error(plugin_path: &std::path::Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::init(&certs_dir, "rewind.local").unwrap();
    let agent = certs::issue_for_days(&certs_dir, Kind::Agent, "web-1", &[], 1).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nname = \"web-1\"\nstate_dir = \"{state}\"\n\n\
             [agent.coordinator]\nurl = \"https://127.0.0.1:9\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
             [plugins.files]\npath = \"{plugin}\"\nallow_unsigned = true\n\n\
             [targets.app]\nplugin = \"files\"\n",
            state = dir.path().join("state").display(),
            ca = certs_dir.join("ca.pem").display(),
            cert = agent.cert.display(),
            key = agent.key.display(),
            plugin = plugin_path.display(),
        ),
    )
    .unwrap();
    let output = Command::new(binary("rewind-agent"))
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).replace(&config.display().to_string(), "agent.toml")
}

#[test]
fn an_agent_whose_plugin_is_missing_or_not_a_component_says_which_line_and_file() {
    let missing = agent_error(std::path::Path::new("/no/such/plugin.wasm"));
    assert!(
        missing.contains("agent.toml:11: plugin files: cannot read /no/such/plugin.wasm"),
        "{missing}"
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not webassembly at all").unwrap();
    let error = agent_error(&junk);
    assert!(
        error.contains(&format!(
            "agent.toml:11: plugin files: {} is not a rewind plugin component",
            junk.display()
        )),
        "{error}"
    );
    // A real component works (the error is then about the coordinator).
    let fine = agent_error(&plugin("files"));
    assert!(!fine.contains("not a rewind plugin component"), "{fine}");
}
