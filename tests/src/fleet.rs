//! End-to-end fleets: a real coordinator and real agents as separate
//! processes over real mutual TLS, with the recorder fixture as their plugin.

use crate::{binary, plugins_dir};
use rewind_coordinator::cli::client::{self, Client};
use rewind_coordinator::localfleet::{AgentSpec, LocalFleet};
use rewind_proto::v1::agent_service_client::AgentServiceClient;
use rewind_proto::v1::{
    AgentMessage, CheckpointRequest, CoordinatorMessage, FleetRequest, Hello, Outcome, RunEvent,
    RunRef, RunReport, RunRequest, StepError, StepProgress, StepResult, WatchRequest,
    agent_message, step_result,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// One host of a test fleet: name, tier label, and recorder settings.
pub struct Host {
    pub name: &'static str,
    pub tier: &'static str,
    /// Extra recorder settings, e.g. `delay_ms = 500, fail = true`.
    pub settings: String,
    /// Its `env` label (`staging` unless said).
    pub env: &'static str,
}

pub fn host(name: &'static str, tier: &'static str) -> Host {
    Host {
        name,
        tier,
        settings: String::new(),
        env: "staging",
    }
}

impl Host {
    pub fn with(mut self, settings: &str) -> Host {
        self.settings = settings.to_string();
        self
    }

    pub fn in_env(mut self, env: &'static str) -> Host {
        self.env = env;
        self
    }
}

/// The eight hosts of the 4-stage fleet: data 1, core 3, gateway 2, ui 2.
pub fn eight_hosts() -> Vec<Host> {
    vec![
        host("db-1", "data"),
        host("api-1", "core"),
        host("api-2", "core"),
        host("api-3", "core"),
        host("gw-1", "gateway"),
        host("gw-2", "gateway"),
        host("ui-1", "ui"),
        host("ui-2", "ui"),
    ]
}

/// A 4-stage plan over the tiers, with `core_extra` added to the core stage.
pub fn four_stage_plan(core_extra: &str) -> String {
    format!(
        r#"name = "four stages"

[[stage]]
name = "data"
select = {{ tier = "data" }}
target = "app"

[[stage]]
name = "core"
after = ["data"]
select = {{ tier = "core" }}
target = "app"
max_parallel = 2
{core_extra}

[[stage]]
name = "gateway"
after = ["core"]
select = {{ tier = "gateway" }}
target = "app"

[[stage]]
name = "ui"
after = ["gateway"]
select = {{ tier = "ui" }}
target = "app"
health = [{{ verify = true }}]
"#
    )
}

/// How the fleet's coordinator is set up beyond the defaults.
#[derive(Default)]
pub struct Coordinators {
    /// More lines of its `[coordinator]` table.
    pub settings: String,
    /// Its `[plans]` table, instead of the local fleet's (loopback only).
    pub plans: Option<String>,
    /// URLs of other coordinators on the same journal, for the agents.
    pub others: Vec<String>,
}

pub struct TestFleet {
    pub fleet: LocalFleet,
    pub records: PathBuf,
    _dir: TempDir,
}

impl TestFleet {
    /// Start a coordinator (SQLite journal, or `database`) and the hosts as
    /// agents running the recorder, and wait until all are connected.
    pub async fn start(hosts: Vec<Host>, database: Option<&str>) -> TestFleet {
        TestFleet::start_in(hosts, database, None, None).await
    }

    /// `start` with the coordinator's `[environments.*]` tables given, and
    /// waiting for `connected` of the hosts (some may be refused).
    pub async fn start_in(
        hosts: Vec<Host>,
        database: Option<&str>,
        environments: Option<&str>,
        connected: Option<usize>,
    ) -> TestFleet {
        let count = connected.unwrap_or(hosts.len());
        let specs = hosts
            .iter()
            .map(|h| {
                let extra = if h.settings.is_empty() {
                    String::new()
                } else {
                    format!(", {}", h.settings)
                };
                let targets = format!(
                    "[plugins.recorder]\npath = \"{{plugins}}/fixture_recorder.wasm\"\nallow_unsigned = true\n\n\
                     [targets.app]\nplugin = \"recorder\"\nsettings = {{ log = \"{{records}}/{name}.log\"{extra} }}\n\
                     grant = {{ files = [\"{{records}}\"] }}\n",
                    name = h.name,
                );
                (
                    h.name.to_string(),
                    [
                        ("tier".to_string(), h.tier.to_string()),
                        ("env".to_string(), h.env.to_string()),
                    ]
                    .into(),
                    targets,
                )
            })
            .collect();
        TestFleet::launch(
            specs,
            database,
            environments,
            count,
            &Coordinators::default(),
        )
        .await
    }

    /// Start a coordinator and agents given as (name, tier, plugins and
    /// targets), where `{records}` stands for the fleet's records directory.
    pub async fn start_agents(
        agents: Vec<(String, String, String)>,
        database: Option<&str>,
    ) -> TestFleet {
        let agents = agents
            .into_iter()
            .map(|(name, tier, targets)| (name, tier, "staging", targets))
            .collect();
        TestFleet::start_agents_in(agents, database).await
    }

    /// `start_agents` with the coordinator's `[plans]` table (what plans
    /// may reach and name).
    pub async fn start_agents_planned(
        agents: Vec<(String, String, String)>,
        plans: String,
    ) -> TestFleet {
        let count = agents.len();
        let specs = agents
            .into_iter()
            .map(|(name, tier, targets)| {
                let labels = [
                    ("tier".to_string(), tier),
                    ("env".to_string(), "staging".to_string()),
                ];
                (name, labels.into(), targets)
            })
            .collect();
        let coordinators = Coordinators {
            plans: Some(plans),
            ..Coordinators::default()
        };
        TestFleet::launch(specs, None, None, count, &coordinators).await
    }

    /// `start_agents` with each agent's environment (its `env` label).
    pub async fn start_agents_in(
        agents: Vec<(String, String, &str, String)>,
        database: Option<&str>,
    ) -> TestFleet {
        let count = agents.len();
        let specs = agents
            .into_iter()
            .map(|(name, tier, env, targets)| {
                (
                    name,
                    [
                        ("tier".to_string(), tier),
                        ("env".to_string(), env.to_string()),
                    ]
                    .into(),
                    targets,
                )
            })
            .collect();
        TestFleet::launch(specs, database, None, count, &Coordinators::default()).await
    }

    /// `start` with settings for the `[coordinator]` table (e.g. its name
    /// in the leader lease) and other coordinators the agents also try.
    pub async fn start_with(
        hosts: Vec<Host>,
        database: Option<&str>,
        coordinators: &Coordinators,
    ) -> TestFleet {
        let count = hosts.len();
        let specs = hosts
            .iter()
            .map(|h| {
                let targets = format!(
                    "[plugins.recorder]\npath = \"{{plugins}}/fixture_recorder.wasm\"\nallow_unsigned = true\n\n\
                     [targets.app]\nplugin = \"recorder\"\nsettings = {{ log = \"{{records}}/{name}.log\"{extra} }}\n\
                     grant = {{ files = [\"{{records}}\"] }}\n",
                    name = h.name,
                    extra = if h.settings.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", h.settings)
                    },
                );
                let labels = [
                    ("tier".to_string(), h.tier.to_string()),
                    ("env".to_string(), h.env.to_string()),
                ]
                .into();
                (h.name.to_string(), labels, targets)
            })
            .collect();
        TestFleet::launch(specs, database, None, count, coordinators).await
    }

    async fn launch(
        agents: Vec<(String, std::collections::BTreeMap<String, String>, String)>,
        database: Option<&str>,
        environments: Option<&str>,
        count: usize,
        coordinators: &Coordinators,
    ) -> TestFleet {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut fleet = LocalFleet::create(
            dir.path(),
            &binary("rewind"),
            &binary("rewind-agent"),
            plugins_dir(),
        )
        .expect("fleet layout");
        if let Some(url) = database {
            fleet = fleet.with_database(url);
        }
        if let Some(environments) = environments {
            fleet.environments = environments.to_string();
        }
        fleet.coordinator_settings = coordinators.settings.clone();
        if let Some(plans) = &coordinators.plans {
            fleet.plans = plans.clone();
        }
        fleet.other_coordinators = coordinators.others.clone();
        let records = dir.path().join("records");
        std::fs::create_dir_all(&records).unwrap();
        fleet.start_coordinator().expect("coordinator");
        for (name, labels, targets) in agents {
            fleet
                .add_agent(AgentSpec {
                    name,
                    labels,
                    plugins_and_targets: targets
                        .replace("{records}", &records.display().to_string()),
                })
                .expect("agent layout");
        }
        fleet.start_agents().expect("agents");
        let test = TestFleet {
            fleet,
            records,
            _dir: dir,
        };
        test.wait_connected(count).await;
        test
    }

    /// Give the coordinator new `[environments.*]` (and drills,
    /// notifications) tables: it is restarted to read them, and this waits
    /// until `agents` are connected again.
    pub async fn reconfigure(&mut self, tables: String, agents: usize) {
        self.fleet.environments = tables;
        self.fleet.kill_coordinator();
        self.fleet
            .start_coordinator()
            .expect("restarted coordinator");
        self.wait_connected(agents).await;
    }

    pub async fn client(&self, operator: &str) -> Client {
        client::connect(&self.fleet.url().unwrap(), &self.fleet.operator(operator))
            .await
            .expect("operator connection")
    }

    pub async fn wait_connected(&self, count: usize) {
        let mut client = self.client("viewer").await;
        let connected = connected_within(&mut client, count, Duration::from_secs(60)).await;
        assert!(
            connected >= count,
            "agents did not connect within 60s; the ends of their logs:\n{}",
            self.agent_log_tails()
        );
    }

    /// The last lines of every agent's log, for a failure message.
    fn agent_log_tails(&self) -> String {
        let mut tails = String::new();
        let Ok(entries) = std::fs::read_dir(self.fleet.dir.join("hosts")) else {
            return tails;
        };
        for entry in entries.flatten() {
            let log = entry.path().join("agent.log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(5)..].join("\n    ");
                tails += &format!("  {}:\n    {tail}\n", log.display());
            }
        }
        tails
    }

    /// Wait until the coordinator lists `agent` as known but not connected.
    pub async fn wait_disconnected(&self, agent: &str) {
        let mut client = self.client("viewer").await;
        crate::wait::eventually_async(
            &format!("{agent} is disconnected"),
            Duration::from_secs(30),
            async || {
                let agents = client
                    .fleet(FleetRequest {})
                    .await
                    .expect("fleet")
                    .into_inner()
                    .agents;
                crate::wait::holds(
                    agents.iter().any(|a| a.name == agent && !a.connected),
                    agents,
                )
            },
        )
        .await
    }

    /// Whether the coordinator lists `agent` as connected now.
    pub async fn is_connected(&self, agent: &str) -> bool {
        self.client("viewer")
            .await
            .fleet(FleetRequest {})
            .await
            .expect("fleet")
            .into_inner()
            .agents
            .iter()
            .any(|a| a.name == agent && a.connected)
    }

    pub async fn checkpoint(&self, release: &str) {
        self.client("ops")
            .await
            .checkpoint(CheckpointRequest {
                release: release.into(),
                env: String::new(),
            })
            .await
            .unwrap_or_else(|s| panic!("checkpoint {release}: {}", s.message()));
    }

    pub async fn start_run(&self, plan: &str, release: &str) -> String {
        self.client("ops")
            .await
            .start_run(RunRequest {
                plan_toml: plan.into(),
                plan_path: "plan.toml".into(),
                release: release.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("start: {}", s.message()))
            .into_inner()
            .run_id
    }

    /// Follow a run's events until `stop` says so or the run ends; returns them.
    pub async fn events_until(
        &self,
        run_id: &str,
        stop: impl Fn(&RunEvent) -> bool,
    ) -> Vec<RunEvent> {
        let mut client = self.client("viewer").await;
        let mut stream = client
            .watch(WatchRequest {
                run_id: run_id.into(),
                after_seq: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        let mut events = Vec::new();
        while let Ok(Some(event)) = stream.message().await {
            let done = stop(&event);
            events.push(event);
            if done {
                break;
            }
        }
        events
    }

    /// Wait for a run to end and return its report.
    pub async fn finish(&self, run_id: &str) -> RunReport {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let events = tokio::time::timeout(
                Duration::from_secs(120),
                self.events_until(run_id, |_| false),
            )
            .await;
            let report = self
                .client("viewer")
                .await
                .get_run(RunRef {
                    run_id: run_id.into(),
                })
                .await
                .expect("report")
                .into_inner();
            if matches!(report.status.as_str(), "succeeded" | "failed" | "cancelled") {
                return report;
            }
            assert!(
                events.is_ok() && Instant::now() < deadline,
                "run {run_id} did not finish: {report:?}"
            );
        }
    }

    /// Connect to the coordinator with agent `name`'s own certificate and
    /// send a Hello (with `finished` results in it), as a compromised agent
    /// would; returns what it can send and what it is sent.
    pub async fn impostor(&self, name: &str, finished: Vec<StepResult>) -> Impostor {
        let stem = rewind_coordinator::certs::stem(rewind_proto::identity::Kind::Agent, name);
        let files = rewind_proto::tls::TlsFiles {
            ca: self.fleet.certs.join("ca.pem"),
            cert: self.fleet.certs.join(format!("{stem}.pem")),
            key: self.fleet.certs.join(format!("{stem}.key")),
        };
        let url = self.fleet.url().unwrap();
        let channel = rewind_proto::connect::Dialer::new(&url, &files, None)
            .unwrap()
            .channel()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = tokio::sync::mpsc::channel(16_384);
        tx.send(AgentMessage {
            body: Some(agent_message::Body::Hello(Hello {
                agent: name.to_string(),
                labels: [("tier".to_string(), "none".to_string())].into(),
                targets: vec![rewind_proto::v1::TargetInfo {
                    name: "app".into(),
                    plugin: "recorder".into(),
                    ..Default::default()
                }],
                finished,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let inbound = AgentServiceClient::new(channel)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|s| panic!("impostor session: {}", s.message()))
            .into_inner();
        Impostor { tx, inbound }
    }

    /// Run the `rewind` program as operator `operator` would, against this
    /// fleet's coordinator: e.g. `["rollback", "plan.toml", "--to", "v1",
    /// "--yes"]`. `{dir}` in an argument stands for the fleet's directory.
    pub fn rewind(&self, operator: &str, args: &[&str]) -> CommandOutput {
        let output = self
            .command(operator, args)
            .output()
            .expect("running rewind");
        CommandOutput {
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The `rewind` program as `operator`, pointed at this fleet's coordinator.
    pub fn command(&self, operator: &str, args: &[&str]) -> std::process::Command {
        let files = self.fleet.operator(operator);
        let dir = self.fleet.dir.display().to_string();
        let mut command = std::process::Command::new(binary("rewind"));
        command
            .args(args.iter().map(|a| a.replace("{dir}", &dir)))
            .env("REWIND_COORDINATOR", self.fleet.url().unwrap())
            .env("REWIND_CA", &files.ca)
            .env("REWIND_CERT", &files.cert)
            .env("REWIND_KEY", &files.key)
            .env_remove("REWIND_CRL");
        command
    }

    /// `rewind rollback <plan> --to <release> --yes <extra>` with the plan
    /// written to a file; the output says how it went.
    pub fn rollback_cli(&self, plan: &str, release: &str, extra: &[&str]) -> CommandOutput {
        let args = self.rollback_args(plan, release, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.rewind("ops", &args)
    }

    /// `rewind` as `operator` with the program's output on this terminal;
    /// whether it succeeded.
    pub fn rewind_live(&self, operator: &str, args: &[&str]) -> bool {
        self.command(operator, args)
            .status()
            .expect("running rewind")
            .success()
    }

    /// `rollback_cli` with the program's output on this terminal (the
    /// preview, the live view and the report); whether it succeeded.
    pub fn rollback_live(&self, plan: &str, release: &str, extra: &[&str]) -> bool {
        let args = self.rollback_args(plan, release, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command("ops", &args)
            .status()
            .expect("running rewind")
            .success()
    }

    fn rollback_args(&self, plan: &str, release: &str, extra: &[&str]) -> Vec<String> {
        let path = self.fleet.dir.join("plan.toml");
        std::fs::write(&path, plan).expect("writing the plan");
        let mut args: Vec<String> = [
            "rollback",
            &path.display().to_string(),
            "--to",
            release,
            "--yes",
        ]
        .map(String::from)
        .into();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// The id of the run a `rewind rollback` printed (`run <id> started`).
    pub fn run_id_of(output: &CommandOutput) -> String {
        output
            .stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("run ")
                    .and_then(|r| r.strip_suffix(" started"))
            })
            .unwrap_or_else(|| panic!("no run started: {output}"))
            .to_string()
    }

    /// Messages refused from agents so far, by kind.
    pub async fn refused(&self) -> std::collections::HashMap<String, u64> {
        self.client("viewer")
            .await
            .fleet(FleetRequest {})
            .await
            .expect("fleet")
            .into_inner()
            .refused
    }

    /// A run's report now.
    pub async fn report(&self, run_id: &str) -> RunReport {
        self.client("viewer")
            .await
            .get_run(RunRef {
                run_id: run_id.into(),
            })
            .await
            .expect("report")
            .into_inner()
    }

    /// A host's records: (kind, nanoseconds) per line.
    pub fn records(&self, host: &str) -> Vec<(String, u128)> {
        read_records(&self.records.join(format!("{host}.log")))
    }
}

pub fn read_records(path: &Path) -> Vec<(String, u128)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

/// A connection made with a real agent's certificate by someone else.
pub struct Impostor {
    pub tx: tokio::sync::mpsc::Sender<AgentMessage>,
    pub inbound: tonic::Streaming<CoordinatorMessage>,
}

/// A result claiming success for a step.
pub fn forged_success(run_id: &str, step_id: &str, attempt: u32) -> StepResult {
    StepResult {
        run_id: run_id.into(),
        step_id: step_id.into(),
        attempt,
        outcome: Some(step_result::Outcome::Done(Outcome {
            changed: true,
            summary: "forged".into(),
            details: vec![],
        })),
        ..Default::default()
    }
}

/// A result claiming failure for a step.
pub fn forged_failure(run_id: &str, step_id: &str, attempt: u32) -> StepResult {
    StepResult {
        run_id: run_id.into(),
        step_id: step_id.into(),
        attempt,
        outcome: Some(step_result::Outcome::Error(StepError {
            kind: "failed".into(),
            message: "forged failure".into(),
        })),
        ..Default::default()
    }
}

impl Impostor {
    pub async fn send_result(&self, result: StepResult) {
        self.tx
            .send(AgentMessage {
                body: Some(agent_message::Body::Result(result)),
            })
            .await
            .expect("impostor stream");
    }

    pub async fn send_progress(&self, run_id: &str, step_id: &str, attempt: u32) {
        self.tx
            .send(AgentMessage {
                body: Some(agent_message::Body::Progress(StepProgress {
                    run_id: run_id.into(),
                    step_id: step_id.into(),
                    attempt,
                    detail: "forged progress".into(),
                    percent: Some(99),
                })),
            })
            .await
            .expect("impostor stream");
    }
}

/// What a `rewind` command printed and how it exited.
pub struct CommandOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for CommandOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// How many agents the coordinator behind `client` counts connected (0
/// when it does not answer).
pub async fn connected_count(client: &mut Client) -> usize {
    match client.fleet(FleetRequest {}).await {
        Ok(reply) => reply
            .into_inner()
            .agents
            .iter()
            .filter(|a| a.connected)
            .count(),
        Err(_) => 0,
    }
}

/// Wait up to `patience` for the coordinator behind `client` to count at
/// least `count` connected agents; how many it counted last.
pub async fn connected_within(client: &mut Client, count: usize, patience: Duration) -> usize {
    let deadline = Instant::now() + patience;
    loop {
        let connected = connected_count(client).await;
        if connected >= count || Instant::now() >= deadline {
            return connected;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
