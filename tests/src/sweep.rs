//! Fault sweeps: the coordinator SIGKILLed at chosen and random points of
//! runs (mid-run, while a stage's gates run, after a cancel, after a halt
//! with a parallel stage in flight), agents SIGKILLed after acting and
//! before reporting, and connections without a certificate by the hundred.
//! What counts is read from the plugins' own records (the recorder writes a
//! line per restore with the step id) and the coordinator's process, never
//! from the coordinator's report alone.
//!
//! The e2e suite runs each sweep small; `cargo bench -p rewind-tests --bench
//! fault_sweep` runs them at the sizes docs/RELIABILITY.md reports.

use crate::fleet::{Host, TestFleet, host};
use rewind_proto::v1::{FleetRequest, RunRef};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The eight hosts of the sweep: every restore takes 300 ms (the gateway's
/// 1 s, so it is in flight when a parallel stage fails), steps of a stage
/// named `*-failing` fail, and the UI's verify (its gate) takes 1 s.
pub fn sweep_hosts() -> Vec<Host> {
    let fails = "fail_when = \"failing\"";
    let usual = format!("delay_ms = 300, {fails}");
    let slow = format!("delay_ms = 1000, {fails}");
    let gated = format!("delay_ms = 300, verify_delay_ms = 1000, {fails}");
    vec![
        host("db-1", "data").with(&usual),
        host("api-1", "core").with(&usual),
        host("api-2", "core").with(&usual),
        host("api-3", "core").with(&usual),
        host("gw-1", "gateway").with(&slow),
        host("gw-2", "gateway").with(&slow),
        host("ui-1", "ui").with(&gated),
        host("ui-2", "ui").with(&gated),
    ]
}

/// data -> core -> gateway -> ui, the UI gated by verify.
const IN_ORDER: &str = r#"name = "in order"

[[stage]]
name = "data"
select = { tier = "data" }
target = "app"

[[stage]]
name = "core"
after = ["data"]
select = { tier = "core" }
target = "app"
max_parallel = 2

[[stage]]
name = "gateway"
after = ["core"]
select = { tier = "gateway" }
target = "app"

[[stage]]
name = "ui"
after = ["gateway"]
select = { tier = "ui" }
target = "app"
health = [{ verify = true }]
"#;

/// data -> (core-failing | gateway) -> ui: core fails while the gateway,
/// running beside it, is still in flight.
const PARALLEL_FAILING: &str = r#"name = "parallel, failing"

[[stage]]
name = "data"
select = { tier = "data" }
target = "app"

[[stage]]
name = "core-failing"
after = ["data"]
select = { tier = "core" }
target = "app"

[[stage]]
name = "gateway"
after = ["data"]
select = { tier = "gateway" }
target = "app"

[[stage]]
name = "ui"
after = ["core-failing", "gateway"]
select = { tier = "ui" }
target = "app"
"#;

/// Where a sweep run kills the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPoint {
    /// At a random moment of the run.
    Random,
    /// While the UI stage's verify gates run.
    DuringGates,
    /// Shortly after `rewind cancel`.
    AfterCancel,
    /// After a stage failed (halt) while a parallel stage is in flight.
    AfterHalt,
}

pub const KILL_POINTS: [KillPoint; 4] = [
    KillPoint::Random,
    KillPoint::DuringGates,
    KillPoint::AfterCancel,
    KillPoint::AfterHalt,
];

/// What a sweep saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub runs: usize,
    pub kills: usize,
    pub ended: usize,
    pub statuses: BTreeMap<String, usize>,
    /// Restores a plugin recorded more than once for one step.
    pub applied_twice: usize,
    /// Restores a plugin started after the run's cancel was acknowledged.
    pub applied_after_cancel: usize,
    /// Steps the journal dispatched after the cancel.
    pub sent_after_cancel: usize,
    /// Runs that ended otherwise than their kill point allows (a run the
    /// kill did not fault must succeed; the halt's must fail).
    pub unexpected: usize,
    /// Why runs did not succeed: (kill point, what failed) and how often.
    pub failures: BTreeMap<String, usize>,
    pub seconds: f64,
}

/// Each restore's (step id, start time in ns) from a host's records.
fn starts(fleet: &TestFleet, host: &str) -> Vec<(String, u128)> {
    let text =
        std::fs::read_to_string(fleet.records.join(format!("{host}.log"))).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            (parts.next()? == "start").then_some(())?;
            let ns = parts.next()?.parse().ok()?;
            Some((parts.next()?.to_string(), ns))
        })
        .collect()
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A cheap pseudo-random number (the sweep needs spread, not secrecy).
fn random_below(n: u64) -> u64 {
    let nanos = now_ns() as u64;
    (nanos ^ (nanos >> 17) ^ (nanos << 13)) % n.max(1)
}

/// `runs` runs on one 8-agent fleet, each with the coordinator SIGKILLed
/// at the kill points in turn, restarted, and the run followed to its end.
pub async fn coordinator_kills(runs: usize, database: Option<&str>) -> Tally {
    let started = Instant::now();
    let mut fleet = TestFleet::start(sweep_hosts(), database).await;
    let mut tally = Tally::default();
    fleet.checkpoint("v1").await;
    for run_index in 0..runs {
        let point = KILL_POINTS[run_index % KILL_POINTS.len()];
        let plan = if point == KillPoint::AfterHalt {
            PARALLEL_FAILING
        } else {
            IN_ORDER
        };
        let run = fleet.start_run(plan, "v1").await;
        let mut cancelled_at: Option<u128> = None;
        match point {
            KillPoint::Random => {
                tokio::time::sleep(Duration::from_millis(random_below(3000))).await;
            }
            KillPoint::DuringGates => {
                let ui_done = std::cell::Cell::new(0);
                fleet
                    .events_until(&run, |e| {
                        if e.kind == "step-succeeded" && e.stage == "ui" {
                            ui_done.set(ui_done.get() + 1);
                        }
                        ui_done.get() == 2
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(random_below(500))).await;
            }
            KillPoint::AfterCancel => {
                tokio::time::sleep(Duration::from_millis(random_below(2000))).await;
                let cancelled = fleet
                    .client("ops")
                    .await
                    .cancel(RunRef {
                        run_id: run.clone(),
                    })
                    .await;
                if cancelled.is_ok() {
                    cancelled_at = Some(now_ns());
                }
                tokio::time::sleep(Duration::from_millis(random_below(300))).await;
            }
            KillPoint::AfterHalt => {
                fleet
                    .events_until(&run, |e| {
                        e.kind == "stage-failed" && e.stage == "core-failing"
                    })
                    .await;
            }
        }
        fleet.fleet.kill_coordinator();
        tally.kills += 1;
        fleet
            .fleet
            .start_coordinator()
            .expect("restarted coordinator");
        fleet.wait_connected(8).await;
        let report = fleet.finish(&run).await;
        tally.runs += 1;
        if matches!(report.status.as_str(), "succeeded" | "failed" | "cancelled") {
            tally.ended += 1;
        }
        *tally
            .statuses
            .entry(format!("{point:?}: {}", report.status))
            .or_default() += 1;
        let expected = match point {
            KillPoint::Random | KillPoint::DuringGates => report.status == "succeeded",
            KillPoint::AfterHalt => report.status == "failed",
            // A cancel that came after the last step finds a run succeeded.
            KillPoint::AfterCancel => matches!(report.status.as_str(), "cancelled" | "succeeded"),
        };
        if !expected {
            tally.unexpected += 1;
        }
        if report.status != "succeeded" {
            let why = report
                .steps
                .iter()
                .filter_map(|s| {
                    s.error
                        .as_ref()
                        .map(|e| format!("{}: {}", e.kind, e.message))
                })
                .next()
                .unwrap_or_else(|| {
                    let stages: Vec<String> = report
                        .stages
                        .iter()
                        .map(|s| format!("{} {}", s.name, s.status))
                        .collect();
                    stages.join(", ")
                });
            let why: String = why.chars().take(120).collect();
            *tally
                .failures
                .entry(format!("{point:?}: {} ({why})", report.status))
                .or_default() += 1;
        }
        for host in fleet.fleet.agent_names() {
            let mut per_step: BTreeMap<String, usize> = BTreeMap::new();
            for (step, ns) in starts(&fleet, &host) {
                if !step.starts_with(&format!("{run}/")) {
                    continue;
                }
                *per_step.entry(step).or_default() += 1;
                // A second of grace: a step the agent had already begun
                // when the cancel reached it finishes, by design.
                if cancelled_at.is_some_and(|at| ns > at + 1_000_000_000) {
                    tally.applied_after_cancel += 1;
                }
            }
            tally.applied_twice += per_step.values().map(|n| n - 1).sum::<usize>();
        }
        if cancelled_at.is_some() {
            let events = fleet.events_until(&run, |_| false).await;
            if let Some(cancel) = events.iter().position(|e| e.kind == "run-cancelling") {
                tally.sent_after_cancel += events[cancel..]
                    .iter()
                    .filter(|e| e.kind == "step-sent")
                    .count();
            }
        }
    }
    tally.seconds = started.elapsed().as_secs_f64();
    tally
}

/// What the agent-kill sweep saw.
#[derive(Debug, Default, Clone)]
pub struct AgentTally {
    pub kills: usize,
    pub applied_twice: usize,
    pub recovered: usize,
    pub seconds: f64,
}

/// `kills` times: a run whose one step acts on api-1, which is SIGKILLed
/// after the plugin acted and before it reported; restarted, the agent must
/// settle the step from verify, not act again.
pub async fn agent_kills(kills: usize) -> AgentTally {
    let started = Instant::now();
    let mut fleet = TestFleet::start(
        vec![
            host("db-1", "data"),
            host("api-1", "core").with("after_ms = 3000"),
        ],
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    let plan = "[[stage]]\nname = \"core\"\nselect = { tier = \"core\" }\ntarget = \"app\"\n";
    let mut tally = AgentTally::default();
    for _ in 0..kills {
        let run = fleet.start_run(plan, "v1").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        // Acted: its "end" record for this run's step is written.
        loop {
            let text = std::fs::read_to_string(fleet.records.join("api-1.log")).unwrap_or_default();
            let ours = text
                .lines()
                .skip_while(|l| !(l.starts_with("start") && l.contains(&format!("{run}/"))))
                .any(|l| l.starts_with("end "));
            if ours {
                break;
            }
            assert!(Instant::now() < deadline, "api-1 never acted in {run}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fleet.fleet.kill_agent("api-1");
        tally.kills += 1;
        fleet.fleet.start_agent("api-1").expect("restarted agent");
        let report = fleet.finish(&run).await;
        if report.steps.iter().any(|s| s.summary.contains("recovered")) {
            tally.recovered += 1;
        }
        let count = starts(&fleet, "api-1")
            .iter()
            .filter(|(step, _)| step.starts_with(&format!("{run}/")))
            .count();
        tally.applied_twice += count.saturating_sub(1);
    }
    tally.seconds = started.elapsed().as_secs_f64();
    tally
}

/// What a flood of connections without a certificate did.
#[derive(Debug, Default, Clone)]
pub struct FloodTally {
    pub connections: usize,
    pub accepted: usize,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub latency_before_ms: f64,
    pub latency_during_ms: f64,
}

fn rss_kib(pid: u32) -> u64 {
    crate::rss_kib(pid).unwrap_or(0)
}

/// The median time of `n` fleet calls by an operator, in ms.
async fn operator_latency(fleet: &TestFleet, n: usize) -> f64 {
    let mut client = fleet.client("viewer").await;
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        client.fleet(FleetRequest {}).await.expect("fleet call");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// `connections` TLS clients without a certificate at once, half of them
/// sending their ClientHello and waiting for the answer, half connecting
/// and sending nothing; meanwhile an operator keeps calling.
pub async fn certificate_less_flood(connections: usize) -> FloodTally {
    use rustls_pki_types::pem::PemObject;
    let fleet = TestFleet::start(vec![host("db-1", "data")], None).await;
    let pid = fleet.fleet.coordinator_pid().expect("coordinator running");
    let mut tally = FloodTally {
        connections,
        rss_before_kib: rss_kib(pid),
        latency_before_ms: operator_latency(&fleet, 20).await,
        ..Default::default()
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_file_iter(fleet.fleet.certs.join("ca.pem")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let address = fleet.fleet.address.clone().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let (config, address) = (config.clone(), address.clone());
        tasks.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(tcp) = tokio::net::TcpStream::connect(&address).await else {
                return false;
            };
            if i % 2 == 1 {
                // Says nothing; the handshake timeout must end it.
                let mut tcp = tcp;
                let mut buffer = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buffer)).await;
                return false;
            }
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
            else {
                return false;
            };
            // An HTTP/2 preface and a request: answered only if accepted.
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buffer = [0u8; 64];
            matches!(
                tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buffer)).await,
                Ok(Ok(n)) if n > 0
            )
        });
    }
    // While they are open: the coordinator's memory, and an operator.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tally.latency_during_ms = operator_latency(&fleet, 20).await;
    tally.rss_peak_kib = rss_kib(pid);
    while let Some(accepted) = tasks.join_next().await {
        tally.rss_peak_kib = tally.rss_peak_kib.max(rss_kib(pid));
        if accepted.unwrap_or(false) {
            tally.accepted += 1;
        }
    }
    tally
}

/// What a flood of silent connections at the handshake bound left working.
#[derive(Debug, Default)]
pub struct SilentFlood {
    pub connections: usize,
    /// Connections the flood got open (the rest were refused at connect).
    pub opened: usize,
    /// Fresh connections by an operator (each a new TCP and TLS
    /// handshake) during the flood: made, and the median time of one.
    pub operator_calls: usize,
    pub operator_ok: usize,
    pub operator_median_ms: f64,
    /// An agent killed and started again during the flood: seconds until
    /// the coordinator counted it connected again (None: not within 30 s).
    pub agent_back_s: Option<f64>,
}

/// `connections` silent TCP connections (never a byte sent) from
/// `sources` loopback addresses (127.0.1.1, 127.0.1.2, ...), held open;
/// meanwhile an operator connects afresh for each of 20 calls, and an agent
/// is restarted and must reconnect. Both come from 127.0.0.1, a source
/// that completed handshakes before the flood.
pub async fn silent_flood(connections: usize, sources: usize) -> SilentFlood {
    let mut fleet = TestFleet::start(vec![host("db-1", "data")], None).await;
    let address: std::net::SocketAddr = fleet.fleet.address.clone().unwrap().parse().unwrap();
    let mut tally = SilentFlood {
        connections,
        ..Default::default()
    };
    let mut held = Vec::with_capacity(connections);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..connections {
        let source = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i % sources) as u8);
        opening.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind((source, 0).into()).ok()?;
            socket.connect(address).await.ok()
        });
        // Keep at most a few hundred connects in flight.
        while opening.len() >= 512 {
            if let Some(Ok(Some(tcp))) = opening.join_next().await {
                held.push(tcp);
            }
        }
    }
    while let Some(joined) = opening.join_next().await {
        if let Ok(Some(tcp)) = joined {
            held.push(tcp);
        }
    }
    tally.opened = held.len();
    // The agent, restarted now.
    fleet.fleet.kill_agent("db-1");
    fleet.wait_disconnected("db-1").await;
    let restarted = Instant::now();
    fleet.fleet.start_agent("db-1").expect("agent restarted");
    // Operators, each call on a fresh connection.
    let mut times = Vec::new();
    for _ in 0..20 {
        tally.operator_calls += 1;
        let t = Instant::now();
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            let files = fleet.fleet.operator("viewer");
            let url = fleet.fleet.url().unwrap();
            match rewind_coordinator::cli::client::connect(&url, &files).await {
                Ok(mut client) => client.fleet(FleetRequest {}).await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        if matches!(answered, Ok(true)) {
            tally.operator_ok += 1;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    tally.operator_median_ms = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    // Polled every 100 ms: this measures how long the reconnection takes
    // (the shared `eventually` waits without timing, and blocks).
    let deadline = restarted + Duration::from_secs(30);
    while Instant::now() < deadline {
        if fleet.is_connected("db-1").await {
            tally.agent_back_s = Some(restarted.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    tally
}
