//! The sandbox contains hostile plugins: for each fixture the call fails with
//! a clear typed error, the agent carries on, and a good plugin still works.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, CallError};
use rewind_tests::{Agent, unsigned_plugin};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn restore() -> Action {
    Action::Restore {
        to: SnapshotRecord {
            data: "{}".into(),
            summary: String::new(),
            taken_at: 0,
        },
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: "test".into(),
        },
    }
}

/// An agent with one target per hostile fixture plus a good `noop` target.
fn agent(extra: &str) -> Agent {
    let mut config = String::new();
    for fixture in [
        "noop",
        "spin",
        "memory_hog",
        "recurse",
        "panic",
        "ungranted",
        "read_file",
        "http_get",
        "run_program",
    ] {
        config += &unsigned_plugin(fixture, &format!("fixture_{fixture}"));
    }
    config += r#"
[targets.good]
plugin = "noop"

[targets.spin]
plugin = "spin"
deadline = "1s"

[targets.hog]
plugin = "memory_hog"
memory_limit = "32MiB"

[targets.recurse]
plugin = "recurse"

[targets.panic]
plugin = "panic"

[targets.ungranted]
plugin = "ungranted"
"#;
    Agent::new(&(config + extra))
}

async fn good_plugin_still_works(agent: &Agent) {
    let output = agent
        .call("good", restore())
        .await
        .expect("the good plugin must still work");
    assert!(
        serde_json::to_string(&output.output)
            .unwrap()
            .contains("nothing to do")
    );
}

#[tokio::test]
async fn a_plugin_that_loops_forever_is_stopped_at_its_deadline() {
    let agent = agent("");
    let started = Instant::now();
    let error = agent.call("spin", restore()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, CallError::Deadline { .. }), "{error}");
    // Stopped at its deadline, not when it ends (it never does). The call's
    // time includes loading the plugin, which takes longer on a machine
    // busy with other tests: the bound leaves room for that.
    assert!(
        elapsed < Duration::from_secs(5),
        "stopped after {elapsed:?}, deadline 1s"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "stopped too early: {elapsed:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("plugin spin on target spin: restore was stopped at its deadline of 1s"),
        "{message}"
    );
    assert_eq!(
        error.logs()[0].message,
        "spinning on spin",
        "logs before the deadline are kept"
    );
    good_plugin_still_works(&agent).await;
}

#[tokio::test]
async fn a_plugin_that_grows_memory_without_end_is_stopped_at_its_limit() {
    let agent = agent("");
    let error = agent.call("hog", restore()).await.unwrap_err();
    assert!(matches!(error, CallError::MemoryLimit { .. }), "{error}");
    assert!(
        error.to_string().contains("over its limit of 32MiB"),
        "{error}"
    );
    good_plugin_still_works(&agent).await;
}

#[tokio::test]
async fn a_plugin_that_recurses_without_end_is_stopped() {
    let agent = agent("");
    let error = agent.call("recurse", restore()).await.unwrap_err();
    assert!(matches!(error, CallError::StackOverflow { .. }), "{error}");
    assert!(error.to_string().contains("ran out of stack"), "{error}");
    good_plugin_still_works(&agent).await;
}

#[tokio::test]
async fn a_plugin_that_panics_is_reported_with_its_message() {
    let agent = agent("");
    let error = agent.call("panic", restore()).await.unwrap_err();
    assert!(matches!(error, CallError::Crashed { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("the plugin panicked"), "{message}");
    assert!(
        message.contains("panics on purpose for target panic"),
        "{message}"
    );
    good_plugin_still_works(&agent).await;
}

/// A panic's text is shown masked like the call's logs: a secret the
/// plugin was handed does not leave the agent in it.
#[tokio::test]
async fn a_panic_that_quotes_a_secret_is_reported_masked() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("leaky.env");
    std::fs::write(&secrets, "PANIC_WITH=hunter2-in-a-panic\n").unwrap();
    let agent = agent(&format!(
        "\n[targets.leaky]\nplugin = \"panic\"\nsecrets = \"{}\"\n",
        secrets.display()
    ));
    let error = agent.call("leaky", restore()).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("panics on purpose for target leaky (holding "),
        "{message}"
    );
    assert!(!message.contains("hunter2-in-a-panic"), "{message}");
}

#[tokio::test]
async fn a_plugin_importing_an_ungranted_capability_is_refused_before_it_runs() {
    let agent = agent("");
    let error = agent.call("ungranted", restore()).await.unwrap_err();
    let CallError::NotGranted {
        context,
        interface,
        capability,
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!(context.plugin, "ungranted");
    assert_eq!(context.target, "ungranted");
    assert_eq!(interface, "rewind:plugin/docker@0.1.0");
    assert_eq!(capability.to_string(), "docker");
    let message = error.to_string();
    assert!(
        message.contains("plugin ungranted on target ungranted: restore refused before it ran: the plugin imports rewind:plugin/docker@0.1.0, which target ungranted does not grant"),
        "{message}"
    );
    good_plugin_still_works(&agent).await;
}

#[tokio::test]
async fn files_outside_the_grant_cannot_be_read() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "top secret").unwrap();
    let agent = agent(
        r#"
[targets.inside]
plugin = "read_file"
settings = { path = "{dir}/granted/config" }
grant = { files = ["{dir}/granted"] }

[targets.passwd]
plugin = "read_file"
settings = { path = "/etc/passwd" }
grant = { files = ["{dir}/granted"] }

[targets.dotdot]
plugin = "read_file"
settings = { path = "{dir}/granted/../agent.toml" }
grant = { files = ["{dir}/granted"] }

[targets.relative-dotdot]
plugin = "read_file"
settings = { path = "../../agent.toml" }

[targets.symlink]
plugin = "read_file"
settings = { path = "{dir}/granted/link/secret" }
grant = { files = ["{dir}/granted"] }
"#,
    );
    let granted = agent.path().join("granted");
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::write(granted.join("config"), "listen 80;").unwrap();
    std::os::unix::fs::symlink(outside.path(), granted.join("link")).unwrap();

    let inside = agent
        .call("inside", restore())
        .await
        .expect("a granted file can be read");
    assert!(
        serde_json::to_string(&inside.output)
            .unwrap()
            .contains("listen 80;")
    );

    for target in ["passwd", "dotdot", "relative-dotdot", "symlink"] {
        let error = agent.call(target, restore()).await.unwrap_err();
        let CallError::Plugin { error: failure, .. } = &error else {
            panic!("{target}: {error}")
        };
        assert_eq!(failure.kind, "denied", "{target}: {error}");
        assert!(
            failure.message.contains(&format!("target {target}:")),
            "{target}: {error}"
        );
        assert!(!failure.message.contains("top secret"));
    }
    // Plain WASI file access has no preopened directory at all.
    let to = SnapshotRecord {
        data: "{}".into(),
        summary: String::new(),
        taken_at: 0,
    };
    let error = agent
        .call("passwd", Action::Verify { to })
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("std::fs::read(/etc/passwd)"),
        "{error}"
    );
    good_plugin_still_works(&agent).await;
}

/// A loopback HTTP server that answers 200 "hello" and counts connections.
fn http_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    (address, connections)
}

#[tokio::test]
async fn http_reaches_only_allow_listed_hosts() {
    let (allowed, allowed_hits) = http_server();
    let (forbidden, forbidden_hits) = http_server();
    let agent = agent(&format!(
        r#"
[targets.allowed]
plugin = "http_get"
settings = {{ url = "http://{allowed}/health" }}
grant = {{ http = ["{allowed}"] }}

[targets.forbidden]
plugin = "http_get"
settings = {{ url = "http://{forbidden}/health" }}
grant = {{ http = ["{allowed}"] }}
"#
    ));
    let ok = agent
        .call("allowed", restore())
        .await
        .expect("an allow-listed host is reachable");
    assert!(
        serde_json::to_string(&ok.output)
            .unwrap()
            .contains("answered 200")
    );
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);

    let error = agent.call("forbidden", restore()).await.unwrap_err();
    let CallError::Plugin { error: failure, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(failure.kind, "denied", "{error}");
    assert!(
        failure
            .message
            .contains("not on the target's http allow-list"),
        "{error}"
    );
    assert_eq!(
        forbidden_hits.load(Ordering::SeqCst),
        0,
        "no connection may reach a host off the allow-list"
    );
    good_plugin_still_works(&agent).await;
}

/// A directory of the grant is swapped, thousands of times a second, with
/// a symbolic link to a directory outside it, while the plugin reads and
/// writes through it: nothing outside is ever read or written.
#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_swapped_in_during_calls_never_leads_outside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("f"), "SECRET").unwrap();
    let agent = agent(
        r#"
[targets.race-read]
plugin = "read_file"
settings = { path = "{dir}/granted/sub/f", repeat = 3000 }
grant = { files = ["{dir}/granted"] }

[targets.race-write]
plugin = "read_file"
settings = { path = "{dir}/granted/sub/w", repeat = 3000, write = "pwned" }
grant = { files = ["{dir}/granted"] }
"#,
    );
    let granted = agent.path().join("granted");
    std::fs::create_dir_all(granted.join("sub-real")).unwrap();
    std::fs::write(granted.join("sub-real/f"), "inside").unwrap();
    std::os::unix::fs::symlink(outside.path(), granted.join("sub-link")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (granted, stop) = (granted.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for name in ["sub-real", "sub-link"] {
                    let _ = std::fs::rename(granted.join(name), granted.join("sub"));
                    let _ = std::fs::rename(granted.join("sub"), granted.join(name));
                    swaps += 1;
                }
            }
            swaps
        })
    };
    let read = agent.call("race-read", restore()).await.unwrap();
    let written = agent.call("race-write", restore()).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 1000, "the race ran ({swaps} swaps)");
    let seen = serde_json::to_value(&read.output).unwrap()["details"].clone();
    let seen: Vec<String> = serde_json::from_value(seen).unwrap();
    assert!(
        seen.iter().any(|s| s == "inside"),
        "the granted file was read: {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.contains("SECRET")),
        "read outside the grant: {seen:?}"
    );
    assert!(
        !outside.path().join("w").exists(),
        "wrote outside the grant: {:?}",
        serde_json::to_value(&written.output).unwrap()
    );
    assert!(
        std::fs::read_dir(outside.path())
            .unwrap()
            .all(|e| e.unwrap().file_name() == "f"),
        "nothing at all was created outside"
    );
}

#[tokio::test]
async fn only_allow_listed_programs_run_without_shell_or_environment() {
    let agent = agent(
        r#"
[targets.shell]
plugin = "run_program"
settings = { program = "/bin/sh", args = ["-c", "touch {dir}/pwned"] }
grant = { process = ["printenv"] }

[targets.env]
plugin = "run_program"
settings = { program = "printenv" }
grant = { process = ["printenv"], process_env = { LANG = "C" } }

[targets.slow]
plugin = "run_program"
settings = { program = "sleep", args = ["30"], timeout_ms = 300 }
grant = { process = ["sleep"] }

[targets.escape-args]
plugin = "run_program"
settings = { program = "touch", args = ["{dir}/ok/../pwned"] }
grant = { process = [{ program = "touch", args = [["{dir}/ok/*"]] }] }

[targets.other-args]
plugin = "run_program"
settings = { program = "touch", args = ["--reference", "/etc/passwd", "{dir}/pwned"] }
grant = { process = [{ program = "touch", args = [["{dir}/ok/*"]] }] }

[targets.good-args]
plugin = "run_program"
settings = { program = "touch", args = ["{dir}/ok/fine"] }
grant = { process = [{ program = "touch", args = [["{dir}/ok/*"]] }] }

[targets.climb]
plugin = "run_program"
settings = { program = "touch", args = ["snapshot-/../../{dir}/pwned"] }
grant = { process = [{ program = "touch", args = [["snapshot-*"]] }] }

[targets.option]
plugin = "run_program"
settings = { program = "touch", args = ["--reference=/etc/passwd", "{dir}/pwned"] }
grant = { process = [{ program = "touch", args = [["*", "{dir}/*"]] }] }

[targets.preload]
plugin = "run_program"
settings = { program = "printenv", env = [["LD_PRELOAD", "/tmp/evil.so"]] }
grant = { process = ["printenv"] }

[targets.unlisted-env]
plugin = "run_program"
settings = { program = "printenv", env = [["FOO", "bar"]] }
grant = { process = ["printenv"] }

[targets.listed-env]
plugin = "run_program"
settings = { program = "printenv", env = [["PGPASSWORD", "s3cret"]] }
grant = { process = ["printenv"] }
"#,
    );
    std::fs::create_dir_all(agent.path().join("ok")).unwrap();
    let error = agent.call("shell", restore()).await.unwrap_err();
    let CallError::Plugin { error: failure, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(failure.kind, "denied", "{error}");
    assert!(
        failure
            .message
            .contains("program `/bin/sh` is not on the grant.process allow-list (printenv (/usr/bin/printenv))"),
        "{error}"
    );
    assert!(
        !agent.path().join("pwned").exists(),
        "the refused program must not have run"
    );

    // The allow-listed program runs with only the granted environment.
    let env = agent
        .call("env", restore())
        .await
        .expect("env is allow-listed");
    let printed = serde_json::to_value(&env.output).unwrap()["details"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        printed, "LANG=C\n",
        "nothing of the agent's environment is inherited"
    );

    let started = Instant::now();
    let error = agent.call("slow", restore()).await.unwrap_err();
    assert!(
        error.to_string().contains("was killed after 300 ms"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Arguments outside the granted forms, or a path prefix escaped with
    // `..`, are refused before anything runs.
    // A wildcard never stands for a `..` segment (even after a prefix
    // without `/`) nor for an option the form does not write out.
    for target in ["escape-args", "other-args", "climb", "option"] {
        let error = agent.call(target, restore()).await.unwrap_err();
        assert!(
            error.to_string().contains("may not run with the arguments"),
            "{target}: {error}"
        );
        assert!(error.to_string().contains("/usr/bin/touch"), "{error}");
    }
    assert!(!agent.path().join("pwned").exists());
    agent
        .call("good-args", restore())
        .await
        .expect("arguments in a granted form run");
    assert!(agent.path().join("ok/fine").exists());

    // The environment is an allow-list: loader variables never, others
    // only when listed (PGPASSWORD is by default).
    for (target, name) in [("preload", "LD_PRELOAD"), ("unlisted-env", "FOO")] {
        let error = agent.call(target, restore()).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("may not set the environment variable `{name}`")),
            "{error}"
        );
    }
    let listed = agent.call("listed-env", restore()).await.unwrap();
    let printed = serde_json::to_value(&listed.output).unwrap()["details"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(printed, "PGPASSWORD=s3cret\n");
    good_plugin_still_works(&agent).await;
}

#[tokio::test]
async fn the_compiled_plugin_is_cached_on_disk() {
    let agent = agent("");
    let first = agent.load("good");
    assert!(agent.config.cache_dir.read_dir().unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(&first.digest)
    }));
    // A second host (a restarted agent) finds it in the cache.
    let host = rewind_agent::host::PluginHost::new(&agent.config.cache_dir, vec![]).unwrap();
    let again = host.load(&agent.config.plugins["noop"]).unwrap();
    assert!(again.from_cache);
    assert!(!first.from_cache);
}

/// A plugin that imports `wasi:sockets` runs (toolchains such as
/// componentize-py import it whatever the plugin does), but every socket
/// call is refused: a listener on loopback never sees a connection, a
/// datagram or a lookup.
#[tokio::test]
async fn sockets_are_linked_but_refuse_every_call() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    // The same port number for UDP: the fixture sends its datagram there.
    let udp = std::net::UdpSocket::bind(addr).unwrap();
    udp.set_nonblocking(true).unwrap();
    let agent = Agent::new(&format!(
        "{}[targets.net]\nplugin = \"socket\"\nsettings = {{ addr = \"{addr}\" }}\n",
        unsigned_plugin("socket", "fixture_socket")
    ));
    let done = agent
        .call("net", restore())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rewind_agent::host::ActionOutput::Outcome(outcome) = done.output else {
        panic!("{:?}", done.output)
    };
    assert_eq!(outcome.summary, "every attempt refused");
    assert_eq!(outcome.details.len(), 3, "{:?}", outcome.details);
    for answer in &outcome.details[..2] {
        assert!(answer.to_lowercase().contains("denied"), "{answer}");
    }
    assert!(
        outcome.details[2].starts_with("name lookup: failed to lookup address"),
        "{}",
        outcome.details[2]
    );
    assert!(
        listener.accept().is_err(),
        "no connection reached the listener"
    );
    let mut buffer = [0u8; 8];
    assert!(udp.recv(&mut buffer).is_err(), "no datagram arrived");
}
