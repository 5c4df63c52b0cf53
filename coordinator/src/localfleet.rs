//! A whole fleet on one machine: a CA and certificates, a coordinator and
//! agents as separate processes on loopback with real mutual TLS, each agent
//! with its own state directory. The demo runs on it, and so do the
//! end-to-end tests (which also kill and restart its processes).

use crate::certs;
use rewind_proto::identity::Kind;
use rewind_proto::tls::TlsFiles;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One agent of the local fleet: its name, labels, and the TOML of its
/// plugins and targets (`{host}` stands for its own directory, `{plugins}`
/// for the built plugins).
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub plugins_and_targets: String,
}

pub struct LocalFleet {
    pub dir: PathBuf,
    pub certs: PathBuf,
    rewind_bin: PathBuf,
    agent_bin: PathBuf,
    plugins: PathBuf,
    pub database: String,
    /// The `[environments.*]` tables of the coordinator's configuration.
    pub environments: String,
    /// Its `[plans]` table: what plans may reach (loopback, by default)
    /// and name.
    pub plans: String,
    /// More settings of the `[coordinator]` table (e.g. `metrics = ...`).
    pub coordinator_settings: String,
    /// More settings of each agent's `[agent]` table, by agent.
    pub agent_settings: BTreeMap<String, String>,
    /// Other coordinators (on the same journal) that agents also try.
    pub other_coordinators: Vec<String>,
    coordinator: Option<Child>,
    /// The coordinator's address once it listens (kept across restarts).
    pub address: Option<String>,
    agents: BTreeMap<String, (AgentSpec, Option<Child>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FleetError {
    let what = what.into();
    move |error| FleetError::Io { what, error }
}

impl LocalFleet {
    /// Lay out a fleet in `dir` (which should be empty): CA, coordinator and
    /// operator certificates (`admin`, `operator`, `viewer` roles).
    pub fn create(
        dir: &Path,
        rewind_bin: &Path,
        agent_bin: &Path,
        plugins: &Path,
    ) -> Result<LocalFleet, FleetError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let certs_dir = dir.join("certs");
        certs::init(&certs_dir, "rewind.local")?;
        certs::issue_for_days(&certs_dir, Kind::Coordinator, "main", &[], 30)?;
        for operator in ["admin", "ops", "viewer"] {
            certs::issue_for_days(&certs_dir, Kind::Operator, operator, &[], 30)?;
        }
        Ok(LocalFleet {
            dir: dir.to_path_buf(),
            certs: certs_dir,
            rewind_bin: rewind_bin.to_path_buf(),
            agent_bin: agent_bin.to_path_buf(),
            plugins: plugins.to_path_buf(),
            database: format!("sqlite://{}", dir.join("rewind.db").display()),
            environments: "[environments.production]\nprotected = true\n".into(),
            plans: "[plans]\ndestinations = [\"127.0.0.1\", \"localhost\", \"[::1]\"]\n".into(),
            coordinator_settings: String::new(),
            agent_settings: BTreeMap::new(),
            other_coordinators: Vec::new(),
            coordinator: None,
            address: None,
            agents: BTreeMap::new(),
        })
    }

    /// Use PostgreSQL (a URL) instead of the embedded SQLite journal.
    pub fn with_database(mut self, url: &str) -> LocalFleet {
        self.database = url.to_string();
        self
    }

    /// The TLS files of an operator (`admin`, `ops` or `viewer`).
    pub fn operator(&self, name: &str) -> TlsFiles {
        let stem = certs::stem(Kind::Operator, name);
        TlsFiles {
            ca: self.certs.join("ca.pem"),
            cert: self.certs.join(format!("{stem}.pem")),
            key: self.certs.join(format!("{stem}.key")),
        }
    }

    pub fn url(&self) -> Result<String, FleetError> {
        self.address
            .as_ref()
            .map(|a| format!("https://{a}"))
            .ok_or_else(|| FleetError::Setup("the coordinator has not started yet".into()))
    }

    fn write_coordinator_config(&self, listen: &str) -> Result<PathBuf, FleetError> {
        let path = self.dir.join("coordinator.toml");
        let text = format!(
            r#"[coordinator]
listen = "{listen}"
database = "{}"
{}

[coordinator.tls]
ca = "certs/ca.pem"
cert = "certs/coordinator-main.pem"
key = "certs/coordinator-main.key"
crl = "certs/crl.pem"

[operators]
admin = "admin"
ops = "operator"
viewer = "viewer"

{}

{}"#,
            self.database, self.coordinator_settings, self.plans, self.environments
        );
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
        Ok(path)
    }

    /// Start the coordinator process (on a port of its choosing the first
    /// time, on the same address after a restart) and wait until it listens.
    pub fn start_coordinator(&mut self) -> Result<String, FleetError> {
        let listen = self.address.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let config = self.write_coordinator_config(&listen)?;
        let log_path = self.dir.join("coordinator.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("coordinator log"))?;
        let start_len = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(&self.rewind_bin)
            .arg("coordinator")
            .arg("--config")
            .arg(&config)
            .env("REWIND_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {}", self.rewind_bin.display())))?;
        self.coordinator = Some(child);
        // Ready when it says where it listens, and that it leads (it has
        // resumed its runs and serves agents and operators).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let fresh = text.get(start_len as usize..).unwrap_or_default();
            let leads = fresh.lines().any(|l| {
                l.starts_with("coordinator ")
                    && l.contains(" leads (term ")
                    && !l.contains("stands by")
            });
            if let Some(address) = fresh
                .lines()
                .find_map(|l| l.strip_prefix("coordinator listening on "))
                .and_then(|l| l.split(' ').next())
                .filter(|_| leads)
            {
                self.address = Some(address.to_string());
                return Ok(address.to_string());
            }
            if let Some(child) = self.coordinator.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(FleetError::Setup(format!(
                    "the coordinator exited ({status}); its log:\n{fresh}"
                )));
            }
            if Instant::now() > deadline {
                return Err(FleetError::Setup(format!(
                    "the coordinator did not start leading within 30s; its log:\n{fresh}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The coordinator's process id, while it runs.
    pub fn coordinator_pid(&self) -> Option<u32> {
        self.coordinator.as_ref().map(Child::id)
    }

    /// How the coordinator exited, if it has.
    pub fn coordinator_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.coordinator
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// SIGKILL the coordinator: no shutdown, no goodbye.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut child) = self.coordinator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the coordinator and wait up to `within` for it to exit;
    /// returns its exit status, or None if it was still running (then it is
    /// SIGKILLed).
    pub fn terminate_coordinator(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.coordinator.take()?;
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Add an agent: its certificate and configuration (not started yet).
    pub fn add_agent(&mut self, spec: AgentSpec) -> Result<PathBuf, FleetError> {
        certs::issue_for_days(&self.certs, Kind::Agent, &spec.name, &[], 30)?;
        let host_dir = self.host_dir(&spec.name);
        std::fs::create_dir_all(&host_dir)
            .map_err(io(format!("creating {}", host_dir.display())))?;
        self.agents.insert(spec.name.clone(), (spec, None));
        Ok(host_dir)
    }

    /// Change an agent's plugins and targets (applied when it next starts).
    pub fn set_targets(
        &mut self,
        agent: &str,
        plugins_and_targets: &str,
    ) -> Result<(), FleetError> {
        let (spec, _) = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| FleetError::Setup(format!("no agent {agent}")))?;
        spec.plugins_and_targets = plugins_and_targets.to_string();
        Ok(())
    }

    /// The directory of an agent's host (its files and state).
    pub fn host_dir(&self, agent: &str) -> PathBuf {
        self.dir.join("hosts").join(agent)
    }

    fn write_agent_config(&self, spec: &AgentSpec) -> Result<PathBuf, FleetError> {
        let host = self.host_dir(&spec.name);
        let stem = certs::stem(Kind::Agent, &spec.name);
        let labels: Vec<String> = spec
            .labels
            .iter()
            .map(|(k, v)| format!("{k} = \"{v}\""))
            .collect();
        let text = format!(
            r#"[agent]
name = "{name}"
state_dir = "{host}/state"
labels = {{ {labels} }}
{settings}

[agent.coordinator]
url = [{urls}]
ca = "{certs}/ca.pem"
cert = "{certs}/{stem}.pem"
key = "{certs}/{stem}.key"
crl = "{certs}/crl.pem"

{rest}"#,
            name = spec.name,
            host = host.display(),
            labels = labels.join(", "),
            settings = self
                .agent_settings
                .get(&spec.name)
                .map_or("", String::as_str),
            urls = std::iter::once(self.url()?)
                .chain(self.other_coordinators.iter().cloned())
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", "),
            certs = self.certs.display(),
            rest = spec
                .plugins_and_targets
                .replace("{host}", &host.display().to_string())
                .replace("{plugins}", &self.plugins.display().to_string()),
        );
        let path = host.join("agent.toml");
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
        Ok(path)
    }

    /// Start (or restart) an agent process.
    pub fn start_agent(&mut self, name: &str) -> Result<(), FleetError> {
        let spec = self
            .agents
            .get(name)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| FleetError::Setup(format!("no agent {name}")))?;
        let config = self.write_agent_config(&spec)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.host_dir(name).join("agent.log"))
            .map_err(io("agent log"))?;
        let child = Command::new(&self.agent_bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("REWIND_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {}", self.agent_bin.display())))?;
        if let Some(entry) = self.agents.get_mut(name) {
            entry.1 = Some(child);
        }
        Ok(())
    }

    pub fn start_agents(&mut self) -> Result<(), FleetError> {
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for name in names {
            self.start_agent(&name)?;
        }
        Ok(())
    }

    /// SIGKILL an agent.
    pub fn kill_agent(&mut self, name: &str) {
        if let Some((_, Some(mut child))) = self.agents.get_mut(name).map(|(s, c)| (s, c.take())) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn agent_names(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    /// Stop everything (also done on drop).
    pub fn stop(&mut self) {
        for name in self.agent_names() {
            self.kill_agent(&name);
        }
        self.kill_coordinator();
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.stop();
    }
}
