//! The release-dir plugin through the real path, on runbook 003's platform
//! in miniature: `releases/<version>/` with a `current` link, an
//! application (a real HTTP server started from `current`) and a restart
//! script. What is served is checked by fetching it.

use rewind_tests::fleet::TestFleet;
use rewind_tests::free_port;
use std::path::Path;
use std::time::Duration;

pub(crate) fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

pub(crate) fn wait_serving(port: u16, version: &str) {
    rewind_tests::wait::eventually(
        &format!("the app serves {version}"),
        Duration::from_secs(20),
        || match get(port, "/version.txt") {
            Some(served) if served == version => Ok(()),
            other => Err(other),
        },
    );
}

/// releases/v1 and v2 (v2 live), and a restart script that (re)starts the
/// application from `current`.
pub(crate) fn platform(root: &Path, port: u16, v1_health: bool) {
    for (version, health) in [("v1", v1_health), ("v2", true)] {
        let dir = root.join("releases").join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("version.txt"), version).unwrap();
        if health {
            std::fs::write(dir.join("healthz"), "ok").unwrap();
        }
    }
    std::os::unix::fs::symlink("releases/v2", root.join("current")).unwrap();
    let script = root.join("restart.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -f {root}/app.pid ] && kill $(cat {root}/app.pid) 2>/dev/null\nsleep 0.2\n\
             cd {root}/current && setsid python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 < /dev/null &\n\
             echo $! > {root}/app.pid\n",
            root = root.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let started = std::process::Command::new(&script).status().unwrap();
    assert!(started.success());
    wait_serving(port, "v2");
}

pub(crate) fn stop(root: &Path) {
    if let Ok(pid) = std::fs::read_to_string(root.join("app.pid")) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
}

async fn fleet(root: &Path, port: u16) -> TestFleet {
    let targets = format!(
        "[plugins.release-dir]\npath = \"{{plugins}}/release_dir.wasm\"\nallow_unsigned = true\n\n\
         [targets.app]\nplugin = \"release-dir\"\n\
         settings = {{ root = \"{root}\", restart = [\"{root}/restart.sh\"], health_url = \"http://127.0.0.1:{port}/healthz\", health_timeout_secs = 5 }}\n\
         grant = {{ files = [\"{root}\"], process = [{{ program = \"{root}/restart.sh\", args = [[]] }}], http = [\"127.0.0.1:{port}\"] }}\n",
        root = root.display()
    );
    TestFleet::start_agents(vec![("app-1".into(), "core".into(), targets)], None).await
}

/// Point `current` at `releases/<release>`, as a deploy does.
pub(crate) fn point(root: &Path, release: &str) {
    std::fs::remove_file(root.join("current")).unwrap();
    std::os::unix::fs::symlink(format!("releases/{release}"), root.join("current")).unwrap();
}

/// The fleet, with release v1 checkpointed, then v2 deployed (not restarted).
async fn checkpointed(root: &Path, port: u16) -> TestFleet {
    point(root, "v1");
    let fleet = fleet(root, port).await;
    fleet.checkpoint("v1").await;
    point(root, "v2");
    fleet
}

const PLAN: &str = "name = \"app\"\n\n[[stage]]\nname = \"core\"\nselect = { tier = \"core\" }\ntarget = \"app\"\nhealth = [{ verify = true }]\n";

#[tokio::test(flavor = "multi_thread")]
async fn current_goes_back_to_the_release_and_the_app_serves_it() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    // Checkpoint with v1 live, then deploy v2.
    platform(root.path(), port, true);
    let fleet = checkpointed(root.path(), port).await;

    let out = fleet.rollback_cli(PLAN, "v1", &[]);
    if !out.success {
        stop(root.path());
    }
    assert!(out.success, "{out}");
    assert_eq!(
        std::fs::read_link(root.path().join("current")).unwrap(),
        Path::new("releases/v1")
    );
    assert_eq!(
        get(port, "/version.txt").as_deref(),
        Some("v1"),
        "the app serves v1"
    );
    assert!(out.stdout.contains("release v2 -> v1"), "{out}");
    stop(root.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_release_is_switched_back_and_the_old_one_restarted() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    // v1 has no health endpoint: switching to it fails its health check.
    platform(root.path(), port, false);
    let fleet = checkpointed(root.path(), port).await;

    let out = fleet.rollback_cli(PLAN, "v1", &[]);
    assert!(!out.success, "{out}");
    assert!(
        out.stdout.contains("not healthy within 5 s")
            && out
                .stdout
                .contains("current is back on release v2, restarted and healthy"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_link(root.path().join("current")).unwrap(),
        Path::new("releases/v2")
    );
    wait_serving(port, "v2");
    stop(root.path());
}
