//! End-to-end fleets: a real coordinator and real agents as separate
//! processes over real mutual TLS, with the recorder fixture as their plugin.

use crate::{binary, plugins_dir};
use rewind_coordinator::cli::client::{self, Client};
use rewind_coordinator::localfleet::{AgentSpec, LocalFleet};
use rewind_proto::v1::{
    CheckpointRequest, FleetRequest, RunEvent, RunRef, RunReport, RunRequest, WatchRequest,
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
}

pub fn host(name: &'static str, tier: &'static str) -> Host {
    Host {
        name,
        tier,
        settings: String::new(),
    }
}

impl Host {
    pub fn with(mut self, settings: &str) -> Host {
        self.settings = settings.to_string();
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

pub struct TestFleet {
    pub fleet: LocalFleet,
    pub records: PathBuf,
    _dir: TempDir,
}

impl TestFleet {
    /// Start a coordinator (SQLite journal, or `database`) and the hosts as
    /// agents running the recorder, and wait until all are connected.
    pub async fn start(hosts: Vec<Host>, database: Option<&str>) -> TestFleet {
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
                (h.name.to_string(), h.tier.to_string(), targets)
            })
            .collect();
        TestFleet::start_agents(specs, database).await
    }

    /// Start a coordinator and agents given as (name, tier, plugins and
    /// targets), where `{records}` stands for the fleet's records directory.
    pub async fn start_agents(
        agents: Vec<(String, String, String)>,
        database: Option<&str>,
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
        let records = dir.path().join("records");
        std::fs::create_dir_all(&records).unwrap();
        fleet.start_coordinator().expect("coordinator");
        let count = agents.len();
        for (name, tier, targets) in agents {
            fleet
                .add_agent(AgentSpec {
                    name,
                    labels: [
                        ("tier".to_string(), tier),
                        ("env".to_string(), "staging".to_string()),
                    ]
                    .into(),
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

    pub async fn client(&self, operator: &str) -> Client {
        client::connect(&self.fleet.url().unwrap(), &self.fleet.operator(operator))
            .await
            .expect("operator connection")
    }

    pub async fn wait_connected(&self, count: usize) {
        let mut client = self.client("viewer").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(reply) = client.fleet(FleetRequest {}).await {
                let connected = reply
                    .into_inner()
                    .agents
                    .iter()
                    .filter(|a| a.connected)
                    .count();
                if connected >= count {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "agents did not connect within 60s; logs in {}",
                self.fleet.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
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
