//! Fleet benchmark: `cargo bench -p rewind-tests --bench fleet_1000`.
//!
//! A real coordinator process and 1,000 agents (in this one process, sharing
//! a plugin host, each with its own mutual-TLS connection and ledger) run a
//! 4-stage rollback with the no-op plugin. Measures the wall time from the
//! start request to the report, and the coordinator's RSS per connected
//! agent. Targets: at most 1 s; at most 100 KiB per agent.

use rewind_agent::config;
use rewind_agent::daemon::Agent;
use rewind_agent::host::PluginHost;
use rewind_coordinator::certs;
use rewind_coordinator::cli::client;
use rewind_coordinator::localfleet::LocalFleet;
use rewind_proto::identity::Kind;
use rewind_proto::v1::{CheckpointRequest, FleetRequest, RunRef, RunRequest, WatchRequest};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const AGENTS: usize = 1000;
const TIERS: [&str; 4] = ["data", "core", "gateway", "ui"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn coordinator_pid(fleet: &LocalFleet) -> u32 {
    // The coordinator is the only child of this process running `coordinator`.
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
        if fields.get(1) == Some(&me.as_str())
            && cmdline.contains("coordinator")
            && cmdline.contains(&fleet.dir.display().to_string())
        {
            return pid.parse().unwrap();
        }
    }
    panic!("coordinator process not found")
}

fn plan() -> String {
    TIERS
        .iter()
        .enumerate()
        .map(|(i, tier)| {
            let after = if i == 0 { String::new() } else { format!("after = [\"{}\"]\n", TIERS[i - 1]) };
            format!("[[stage]]\nname = \"{tier}\"\nselect = {{ tier = \"{tier}\" }}\ntarget = \"app\"\n{after}\n")
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let status = std::process::Command::new(root().join("plugins/build"))
        .status()
        .unwrap();
    assert!(status.success());
    let plugins = root().join("target/plugins");
    let exe_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let rewind = exe_dir.join("rewind-under-test");
    assert!(
        rewind.exists(),
        "{} missing: cargo builds it with the benches",
        rewind.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let mut fleet = LocalFleet::create(
        dir.path(),
        &rewind,
        &exe_dir.join("rewind-agent-under-test"),
        &plugins,
    )
    .unwrap();
    let address = fleet.start_coordinator().unwrap();
    let url = format!("https://{address}");
    let pid = coordinator_pid(&fleet);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut operator = client::connect(&url, &fleet.operator("admin")).await.unwrap();
        operator.fleet(FleetRequest {}).await.unwrap();
        let baseline = rss_kib(pid);

        // 1,000 agents sharing one plugin host (one compile of the plugin).
        let host = Arc::new(PluginHost::new(&dir.path().join("cache"), vec![]).unwrap());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        for i in 0..AGENTS {
            let name = format!("agent-{i:04}");
            let issued = certs::issue_for_days(&fleet.certs, Kind::Agent, &name, &[], 1).unwrap();
            let state = dir.path().join("agents").join(&name);
            std::fs::create_dir_all(&state).unwrap();
            let text = format!(
                "[agent]\nname = \"{name}\"\nstate_dir = \"{state}\"\ncache_dir = \"{cache}\"\nlabels = {{ tier = \"{tier}\" }}\n\n\
                 [agent.coordinator]\nurl = \"{url}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
                 [plugins.noop]\npath = \"{plugins}/fixture_noop.wasm\"\nallow_unsigned = true\n\n[targets.app]\nplugin = \"noop\"\n",
                state = state.display(),
                cache = dir.path().join("cache").display(),
                tier = TIERS[i * TIERS.len() / AGENTS],
                ca = fleet.certs.join("ca.pem").display(),
                cert = issued.cert.display(),
                key = issued.key.display(),
                plugins = plugins.display(),
            );
            let path = state.join("agent.toml");
            std::fs::write(&path, text).unwrap();
            let agent = Agent::new(config::load(&path).unwrap(), host.clone()).unwrap();
            let mut stop = stop_rx.clone();
            tokio::spawn(agent.run(async move {
                let _ = stop.changed().await;
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let connected = operator.fleet(FleetRequest {}).await.unwrap().into_inner().agents.iter().filter(|a| a.connected).count();
            if connected == AGENTS {
                break;
            }
            assert!(Instant::now() < deadline, "only {connected} agents connected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected_rss = rss_kib(pid);
        operator.checkpoint(CheckpointRequest { release: "r1".into(), env: String::new() }).await.unwrap();

        // Timed: from the start request to the report.
        let started = Instant::now();
        let run = operator
            .start_run(RunRequest { plan_toml: plan(), plan_path: "bench.toml".into(), release: "r1".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .run_id;
        let mut events = operator.watch(WatchRequest { run_id: run.clone(), after_seq: 0 }).await.unwrap().into_inner();
        while events.message().await.unwrap().is_some() {}
        let report = operator.get_run(RunRef { run_id: run }).await.unwrap().into_inner();
        let wall = started.elapsed();
        assert_eq!(report.status, "succeeded", "{:?}", report.stages);
        assert_eq!(report.steps.len(), AGENTS);
        let after_run_rss = rss_kib(pid);
        let _ = stop_tx.send(true);

        let per_agent = (connected_rss.saturating_sub(baseline)) as f64 / AGENTS as f64;
        println!("fleet benchmark: {AGENTS} agents (one process, {AGENTS} mutual-TLS connections), 4-stage rollback, no-op plugin");
        println!(
            "wall time, start request to report: {:.0} ms  [target <= 1000 ms: {}]",
            wall.as_secs_f64() * 1e3,
            if wall <= Duration::from_secs(1) { "met" } else { "MISSED" }
        );
        println!(
            "coordinator RSS: {:.1} MiB idle, {:.1} MiB with {AGENTS} agents connected, {:.1} MiB after the run; {per_agent:.1} KiB per connected agent  [target <= 100 KiB: {}]",
            baseline as f64 / 1024.0,
            connected_rss as f64 / 1024.0,
            after_run_rss as f64 / 1024.0,
            if per_agent <= 100.0 { "met" } else { "MISSED" }
        );
    });
    fleet.stop();
}
