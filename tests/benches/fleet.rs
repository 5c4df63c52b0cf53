//! Fleet benchmark:
//!
//! ```sh
//! cargo bench -p rewind-tests --bench fleet -- --agents 10000
//! cargo bench -p rewind-tests --bench fleet -- --agents 1000 --failover
//! ```
//!
//! A real coordinator process and N agents (default 1,000) in this process,
//! sharing one plugin host, each with its own mutual-TLS connection, ledger
//! and target, run a 4-stage rollback with the no-op plugin (N/4 agents per
//! stage). Measures:
//! - the time for all N agents to connect, from the start of the first;
//! - the wall time of the rollback, from the start request to the report;
//! - the coordinator's RSS per connected agent, and its CPU seconds while
//!   the agents connect and while the run runs.
//!
//! Targets: 10,000 agents connected within 10 s and rolled back within 3 s;
//! at most 100 KiB per agent.
//!
//! The agents' state directories (their ledgers, fsync'd twice per step)
//! are on tmpfs (/dev/shm): in a fleet each agent writes its own disk, and
//! 10,000 agents creating and syncing files on one shared disk measure
//! that disk, not rewind. `--agents-on-disk` puts them beside the
//! coordinator's journal (which is on disk either way).
//!
//! With `--failover`, the journal is PostgreSQL and a second coordinator
//! stands by; the leader is SIGKILLed once the run's first stage succeeded,
//! and the bench measures the time from the kill until the standby leads,
//! until every agent is connected to it, and until the run's report.
//! Target: the run resumed within the lease plus 5 s.

use rewind_agent::config;
use rewind_agent::daemon::Agent;
use rewind_agent::host::PluginHost;
use rewind_coordinator::certs;
use rewind_coordinator::cli::client;
use rewind_coordinator::localfleet::LocalFleet;
use rewind_proto::identity::Kind;
use rewind_proto::v1::{CheckpointRequest, FleetRequest, RunRef, RunRequest, WatchRequest};
use rewind_tests::fleet::connected_count;
use rewind_tests::ha::OtherCoordinator;
use rewind_tests::postgres::PgServer;
use rewind_tests::{binary, free_port};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIERS: [&str; 4] = ["data", "core", "gateway", "ui"];
/// The leader lease in the failover measure.
const LEASE: Duration = Duration::from_secs(2);

struct Options {
    agents: usize,
    failover: bool,
    agents_on_disk: bool,
}

fn options() -> Options {
    let mut options = Options {
        agents: 1000,
        failover: false,
        agents_on_disk: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--agents" => {
                let value = args.next().unwrap_or_default();
                options.agents = value
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n >= TIERS.len())
                    .unwrap_or_else(|| {
                        panic!("--agents takes a number of at least 4, not {value:?}")
                    });
            }
            "--failover" => options.failover = true,
            "--agents-on-disk" => options.agents_on_disk = true,
            // cargo bench passes --bench to programs without a harness.
            "--bench" => {}
            other => panic!(
                "unknown argument {other:?}: use --agents N, --failover and --agents-on-disk"
            ),
        }
    }
    options
}

fn rss_kib(pid: u32) -> u64 {
    rewind_tests::rss_kib(pid).expect("the coordinator's resident set size")
}

/// User plus system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// With FLEET_BENCH_MARKS set, print when a phase starts or ends on
/// CLOCK_MONOTONIC, to slice a profile taken with
/// `perf record -k CLOCK_MONOTONIC` (`perf script --time start,end`).
fn mark(what: &str) {
    if std::env::var_os("FLEET_BENCH_MARKS").is_none() {
        return;
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    println!("mark {what} {}.{:09}", now.tv_sec, now.tv_nsec);
}

/// CPU seconds this process (the agents) has used.
fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id())
}

/// Each connection is a descriptor, in this process and in the coordinator's
/// (which inherits the limit).
fn raise_descriptor_limit(agents: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let needed = agents as u64 + 1024;
    // SAFETY: plain calls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        // Raising the hard limit needs root (CAP_SYS_RESOURCE); else the
        // soft limit goes as far as the hard one.
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max.max(needed),
            rlim_max: limit.rlim_max.max(needed),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    assert!(
        limit.rlim_cur >= needed,
        "{agents} agents need about {needed} file descriptors; the limit is {}",
        limit.rlim_cur
    );
}

/// A gauge from the coordinator's Prometheus endpoint.
fn gauge(metrics: u16, name: &str) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
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

/// The agents' configurations, certificates issued (not timed).
fn agents(
    fleet: &LocalFleet,
    count: usize,
    urls: &[String],
    plugins: &Path,
    states: &Path,
) -> Vec<PathBuf> {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    (0..count)
        .map(|i| {
            let name = format!("agent-{i:05}");
            let issued = certs::issue_for_days(&fleet.certs, Kind::Agent, &name, &[], 1).unwrap();
            let state = states.join(&name);
            std::fs::create_dir_all(&state).unwrap();
            let text = format!(
                "[agent]\nname = \"{name}\"\nstate_dir = \"{state}\"\ncache_dir = \"{cache}\"\nlabels = {{ tier = \"{tier}\" }}\n\n\
                 [agent.coordinator]\nurl = [{urls}]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
                 [plugins.noop]\npath = \"{plugins}/fixture_noop.wasm\"\nallow_unsigned = true\n\n[targets.app]\nplugin = \"noop\"\n",
                state = state.display(),
                cache = fleet.dir.join("cache").display(),
                tier = TIERS[i * TIERS.len() / count],
                urls = urls.join(", "),
                ca = fleet.certs.join("ca.pem").display(),
                cert = issued.cert.display(),
                key = issued.key.display(),
                plugins = plugins.display(),
            );
            let path = state.join("agent.toml");
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

fn main() {
    // The agents run in this process: as their own binary does.
    rewind_agent::quiet_library_backtraces();
    let options = options();
    let count = options.agents;
    raise_descriptor_limit(count);
    let plugins = rewind_tests::plugins_dir();

    let pg = options.failover.then(PgServer::start);
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = LocalFleet::create(
        dir.path(),
        &binary("rewind"),
        &binary("rewind-agent"),
        plugins,
    )
    .unwrap();
    let metrics = free_port();
    fleet.coordinator_settings = format!("metrics = \"127.0.0.1:{metrics}\"\n");
    if let Some(pg) = &pg {
        fleet.database = pg.url();
        fleet.coordinator_settings += &format!("name = \"a\"\nlease = \"{}s\"\n", LEASE.as_secs());
    }
    let address = fleet.start_coordinator().unwrap();
    let mut urls = vec![format!("https://{address}")];
    let pid = fleet.coordinator_pid().unwrap();
    let standby = pg.as_ref().map(|_| {
        let port = free_port();
        urls.push(format!("https://127.0.0.1:{port}"));
        OtherCoordinator::start_beside(&fleet.dir, "a", "b", port, None)
    });

    let states = if options.agents_on_disk || !Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in(dir.path()).unwrap()
    } else {
        tempfile::tempdir_in("/dev/shm").unwrap()
    };
    let started = Instant::now();
    let configs = agents(&fleet, count, &urls, plugins, states.path());
    println!(
        "{count} agents' certificates and configurations written in {:.1} s (not measured); their state in {}",
        started.elapsed().as_secs_f64(),
        states.path().display()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if let Some(b) = &standby {
            b.wait_log("coordinator b stands by: a leads (term 1)", Duration::from_secs(30)).await;
        }
        let mut operator = client::connect(&urls[0], &fleet.operator("admin")).await.unwrap();
        operator.fleet(FleetRequest {}).await.unwrap();
        let baseline = rss_kib(pid);

        // All agents share one plugin host (one compile of the plugin).
        let host = Arc::new(PluginHost::new(&dir.path().join("cache"), vec![]).unwrap());
        let agents: Vec<Arc<Agent>> = configs
            .iter()
            .map(|path| Agent::new(config::load(path).unwrap(), host.clone()).unwrap())
            .collect();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

        // Timed: from the first agent's start until all are connected.
        let cpu_before_connect = cpu_seconds(pid);
        mark("connect-start");
        let connecting = Instant::now();
        for agent in agents {
            let mut stop = stop_rx.clone();
            tokio::spawn(agent.run(async move {
                let _ = stop.changed().await;
            }));
        }
        let deadline = connecting + Duration::from_secs(120);
        loop {
            let now = gauge(metrics, "rewind_agents_connected").unwrap_or(0.0) as usize;
            if now == count {
                break;
            }
            assert!(Instant::now() < deadline, "only {now} of {count} agents connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let connect_time = connecting.elapsed();
        mark("connect-end");
        let connect_cpu = cpu_seconds(pid) - cpu_before_connect;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected_rss = rss_kib(pid);
        operator.checkpoint(CheckpointRequest { release: "r1".into(), env: String::new() }).await.unwrap();

        // Timed: from the start request to the report.
        let cpu_before_run = cpu_seconds(pid);
        let agents_cpu_before_run = own_cpu_seconds();
        let started = Instant::now();
        mark("run-start");
        let run = operator
            .start_run(RunRequest { plan_toml: plan(), plan_path: "bench.toml".into(), release: "r1".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .run_id;
        let mut events = operator.watch(WatchRequest { run_id: run.clone(), after_seq: 0 }).await.unwrap().into_inner();

        let Some(b) = standby else {
            while events.message().await.unwrap().is_some() {}
            let report = operator.get_run(RunRef { run_id: run }).await.unwrap().into_inner();
            let wall = started.elapsed();
            mark("run-end");
            let run_cpu = cpu_seconds(pid) - cpu_before_run;
            let agents_cpu = own_cpu_seconds() - agents_cpu_before_run;
            assert_eq!(report.status, "succeeded", "{:?}", report.stages);
            assert_eq!(report.steps.len(), count);
            let after_run_rss = rss_kib(pid);
            let _ = stop_tx.send(true);

            let per_agent = (connected_rss.saturating_sub(baseline)) as f64 / count as f64;
            let met = |ok: bool| if ok { "met" } else { "MISSED" };
            let target = |small: &'static str, large: &'static str| if count >= 10_000 { large } else { small };
            println!("fleet benchmark: {count} agents (one process, {count} mutual-TLS connections), 4-stage rollback, no-op plugin, SQLite journal");
            println!(
                "all connected: {:.2} s from the first agent's start, coordinator CPU {connect_cpu:.2} s{}",
                connect_time.as_secs_f64(),
                if count >= 10_000 { format!("  [target <= 10 s: {}]", met(connect_time <= Duration::from_secs(10))) } else { String::new() }
            );
            println!(
                "rollback wall time, start request to report: {:.0} ms; coordinator CPU {run_cpu:.2} s, agents' process CPU {agents_cpu:.2} s  [target <= {}: {}]",
                wall.as_secs_f64() * 1e3,
                target("1 s", "3 s"),
                met(wall <= Duration::from_secs(if count >= 10_000 { 3 } else { 1 }))
            );
            // Where the wall time went, from the journal's times.
            let first = report.stages.iter().map(|s| s.started_ms).min().unwrap_or(0);
            let phases: Vec<String> = report
                .stages
                .iter()
                .map(|s| format!("{} {} ms", s.name, s.finished_ms.saturating_sub(s.started_ms)))
                .collect();
            println!(
                "  start (preview of every step, journaling the run) {} ms; stages: {}; report {} ms",
                first.saturating_sub(report.started_ms),
                phases.join(", "),
                report.finished_ms.saturating_sub(report.stages.iter().map(|s| s.finished_ms).max().unwrap_or(0))
            );
            println!(
                "coordinator RSS: {:.1} MiB idle, {:.1} MiB with {count} agents connected, {:.1} MiB after the run; {per_agent:.1} KiB per connected agent  [target <= 100 KiB: {}]",
                baseline as f64 / 1024.0,
                connected_rss as f64 / 1024.0,
                after_run_rss as f64 / 1024.0,
                met(per_agent <= 100.0)
            );
            fleet.stop();
            return;
        };

        // Failover: kill the leader once the first stage succeeded.
        loop {
            let event = events.message().await.unwrap().expect("the run ended before its first stage succeeded");
            if event.kind == "stage-succeeded" {
                break;
            }
        }
        fleet.kill_coordinator();
        let killed = Instant::now();
        b.wait_log("coordinator b leads (term 2)", LEASE + Duration::from_secs(30)).await;
        let leads = killed.elapsed();
        let mut operator = client::connect(&urls[1], &fleet.operator("admin")).await.unwrap();
        let deadline = killed + Duration::from_secs(120);
        while connected_count(&mut operator).await < count {
            assert!(Instant::now() < deadline, "the agents did not all reconnect to b");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reconnected = killed.elapsed();
        let mut events = operator.watch(WatchRequest { run_id: run.clone(), after_seq: 0 }).await.unwrap().into_inner();
        while events.message().await.unwrap().is_some() {}
        let report = operator.get_run(RunRef { run_id: run }).await.unwrap().into_inner();
        let done = killed.elapsed();
        assert_eq!(report.status, "succeeded", "{:?}", report.stages);
        assert_eq!(report.steps.len(), count);
        let _ = stop_tx.send(true);
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        println!("failover benchmark: {count} agents, two coordinators on PostgreSQL, lease {} s; the leader SIGKILLed once the first stage succeeded", LEASE.as_secs());
        println!(
            "b leads (term 2) {:.2} s after the kill  [target <= lease + 5 s = {} s: {}]",
            leads.as_secs_f64(),
            LEASE.as_secs() + 5,
            met(leads <= LEASE + Duration::from_secs(5))
        );
        println!("all {count} agents connected to b {:.2} s after the kill", reconnected.as_secs_f64());
        println!("run completed by b {:.2} s after the kill ({} steps, status {})", done.as_secs_f64(), report.steps.len(), report.status);
        drop(b);
        fleet.stop();
    });
}
