//! Hostile plugins through `rewind-agent plugin run`, as an author would
//! meet them: a log flood, a progress flood, a 200 MB snapshot and 10,000
//! files written to the state directory each end with their named limit,
//! while the agent's peak memory (measured by the kernel, wait4) and its
//! output stay bounded.

use rewind_tests::{Agent, binary, plugin, unsigned_plugin};
use std::io::Read;
use std::process::{Command, Stdio};

struct Measured {
    stdout: String,
    stderr: String,
    peak_rss_mib: u64,
}

/// Run `rewind-agent plugin run` on the flood fixture and measure the
/// process's peak resident memory. The child is reaped by wait4, which
/// also gives its rusage (Child::wait would not).
#[allow(clippy::zombie_processes)]
fn run(agent: &Agent, target: &str, action: &str) -> Measured {
    let snapshot = agent.path().join("snapshot.json");
    std::fs::write(
        &snapshot,
        r#"{"result": {"data": "{}", "summary": ""}, "taken_at": 0}"#,
    )
    .unwrap();
    let mut command = Command::new(binary("rewind-agent"));
    command
        .args(["plugin", "run"])
        .arg(plugin("fixture_flood"))
        .arg("--config")
        .arg(agent.path().join("agent.toml"))
        .args(["--target", target, action]);
    if action != "snapshot" {
        command.arg("--snapshot").arg(&snapshot);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        text
    });
    let mut stderr = String::new();
    err.read_to_string(&mut stderr).unwrap();
    let stdout = reader.join().unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it in for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: waits for our own child, writing into the locals above.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    Measured {
        stdout,
        stderr,
        peak_rss_mib: usage.ru_maxrss as u64 / 1024,
    }
}

fn agent() -> Agent {
    Agent::new(&format!(
        "{}\
         [targets.logs]\nplugin = \"flood\"\nsettings = {{ log_mib = 400 }}\n\n\
         [targets.progress]\nplugin = \"flood\"\nsettings = {{ progress = 200000, raw = true }}\n\n\
         [targets.big]\nplugin = \"flood\"\nmemory_limit = \"1GiB\"\nsettings = {{ snapshot_mib = 200 }}\n\n\
         [targets.files]\nplugin = \"flood\"\nstate_files = 1000\nsettings = {{ state_files = 10000 }}\n",
        unsigned_plugin("flood", "fixture_flood")
    ))
}

fn json(m: &Measured) -> serde_json::Value {
    serde_json::from_str(&m.stdout).unwrap_or_else(|e| panic!("{e}: {}", m.stderr))
}

#[test]
fn floods_end_with_their_named_limit_in_bounded_memory_and_output() {
    let agent = agent();
    // Compiled once first: the measured runs load it from the cache, so
    // their peak is the flood's, not the compiler's (whose threads and
    // their allocator arenas vary with the machine's load).
    let warm = run(&agent, "logs", "describe");
    assert_eq!(json(&warm)["ok"], true, "{}", warm.stderr);

    // 400 MiB of log lines: the result keeps at most 1 MiB and says so.
    let logs = run(&agent, "logs", "restore");
    let report = json(&logs);
    assert_eq!(report["ok"], true, "{report}");
    let last = report["logs"].as_array().unwrap().last().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        last.contains("more log lines dropped: a call keeps at most 10000 lines and 1 MiB"),
        "{last}"
    );
    assert!(
        logs.stdout.len() < 2 << 20,
        "{} bytes of output",
        logs.stdout.len()
    );
    // Holding the flood would take 400 MiB; the agent's own peak under a
    // full suite's load has reached 131 MiB (42 MiB alone).
    assert!(logs.peak_rss_mib < 256, "{} MiB", logs.peak_rss_mib);

    // 200,000 progress reports, each at 100% and straight to the host
    // (past the SDK's own limit): at most one per 100 ms reaches the
    // output, and the result says how many were dropped.
    let started = std::time::Instant::now();
    let progress = run(&agent, "progress", "restore");
    let took = started.elapsed();
    let reports = progress
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .count();
    assert!(
        reports <= took.as_millis() as usize / 100 + 2,
        "{reports} reports in {took:?}"
    );
    let report = json(&progress);
    let warning = report["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["message"].as_str())
        .find(|m| m.contains("progress reports dropped"))
        .unwrap_or_else(|| panic!("no note of the dropped reports: {report}"))
        .to_string();
    let dropped: usize = warning.split(' ').next().unwrap().parse().unwrap();
    assert_eq!(dropped + reports, 200_000, "{warning}");
    // The same bound as the log flood's: no runaway growth (the agent's
    // own peak under a full suite's load reaches about 130 MiB).
    assert!(progress.peak_rss_mib < 256, "{} MiB", progress.peak_rss_mib);

    // A 200 MiB snapshot: refused by name; the agent holds little beyond
    // the plugin's own 200 MiB.
    let big = run(&agent, "big", "snapshot");
    let report = json(&big);
    assert_eq!(report["error"]["kind"], "snapshot-too-large", "{report}");
    assert!(big.peak_rss_mib < 512, "{} MiB", big.peak_rss_mib);

    // 10,000 files into a state directory of at most 1,000: what was
    // written before the quota stays, nothing past it does.
    let files = run(&agent, "files", "restore");
    let report = json(&files);
    assert_eq!(report["ok"], false, "{report}");
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("state-quota")
            && message.contains("over its quota of")
            && message.contains("in 1000 files")
            && message.contains("state_quota and state_files of target files"),
        "{message}"
    );
    let kept = std::fs::read_dir(agent.path().join("state/targets/files/many"))
        .unwrap()
        .count();
    assert_eq!(kept, 1000);
    assert!(files.peak_rss_mib < 256, "{} MiB", files.peak_rss_mib);
}
