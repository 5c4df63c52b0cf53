//! The coordinator's TOML configuration: where it listens, its database, its
//! certificates (and revocation list), operator roles, environments (which
//! are protected, and which agents may claim each), drills and
//! notifications. Parsed once; errors name the file and line.

pub mod access;
pub mod drills;
pub mod notify;

pub use access::PlanAccess;
pub use drills::DrillConfig;
pub use notify::{WebhookConfig, WebhookKind};

use rewind_proto::tls::TlsFiles;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// What an operator may do. Ordered: each role may do what the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: fleet, releases, plans (previews), runs, history.
    Viewer,
    /// Also checkpoint, start, cancel and approve runs.
    Operator,
    /// Also run data-loss steps in protected environments.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// How long a leader's lease lasts unless `[coordinator] lease` says.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub path: PathBuf,
    pub listen: String,
    /// Where Prometheus metrics are served (`[coordinator] metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// This coordinator's name in the leader lease.
    pub name: String,
    /// How long the leader's lease lasts unrenewed (a standby takes over
    /// after it lapses).
    pub lease: std::time::Duration,
    /// The URL operators and agents reach this coordinator at
    /// (`[coordinator] advertise`; by default from `listen`, see `server`).
    pub advertise: Option<String>,
    /// `sqlite://...` or `postgres://...`.
    pub database: String,
    pub tls: TlsFiles,
    /// A PEM certificate revocation list of the fleet CA, re-read when it changes.
    pub crl: Option<PathBuf>,
    pub trust_domain: String,
    pub operators: BTreeMap<String, Role>,
    pub environments: BTreeMap<String, Environment>,
    /// Rollback rehearsals, by name.
    pub drills: BTreeMap<String, DrillConfig>,
    /// Where events of runs and drills are delivered.
    pub notifications: Vec<WebhookConfig>,
    /// What plans may reach (hooks, gates) and name (secrets, CAs).
    pub plans: PlanAccess,
}

/// The configuration's text, for turning a byte offset into a line.
pub(crate) struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    pub fn line(&self, at: usize) -> usize {
        self.text[..at.min(self.text.len())].matches('\n').count() + 1
    }

    pub fn error(&self, at: usize, message: String) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: Some(self.line(at)),
            message,
        }
    }
}

/// A `postgres://user@host/db` URL with the password put in (percent-encoded).
fn with_password(url: &str, password: &str) -> Result<String, String> {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err("database_password_file goes with a postgres:// database".into());
    };
    let scheme = &url[..url.len() - rest.len()];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some((user, host)) = rest[..authority_end].split_once('@') else {
        return Err(
            "database_password_file needs a user in the database URL (postgres://user@host/db)"
                .into(),
        );
    };
    if user.contains(':') {
        return Err(
            "the database URL has a password already; keep it in database_password_file only"
                .into(),
        );
    }
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();
    Ok(format!(
        "{scheme}{user}:{encoded}@{host}{}",
        &rest[authority_end..]
    ))
}

/// An environment (an agent's `env` label).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Data-loss steps on its agents need the admin role.
    pub protected: bool,
    /// Agent names or patterns (`db-*`) that may carry this `env` label;
    /// None lets any agent carry it.
    pub agents: Option<Vec<String>>,
}

/// A name against a pattern: exact, or with `*` standing for any characters.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(mut remaining) = name.strip_prefix(head) else {
                return false;
            };
            let parts: Vec<&str> = rest.split('*').collect();
            for (i, part) in parts.iter().enumerate() {
                if i == parts.len() - 1 {
                    return remaining.ends_with(part);
                }
                match remaining.find(part) {
                    Some(at) => remaining = &remaining[at + part.len()..],
                    None => return false,
                }
            }
            true
        }
    }
}

impl CoordinatorConfig {
    pub fn protected_environments(&self) -> Vec<&str> {
        self.environments
            .iter()
            .filter(|(_, e)| e.protected)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Check an agent's `env` label against the environments' allow-lists;
    /// the error says what to change.
    pub fn check_env_label(&self, agent: &str, env: Option<&str>) -> Result<(), String> {
        let Some(env) = env else { return Ok(()) };
        match self.environments.get(env).and_then(|e| e.agents.as_ref()) {
            Some(allowed) if !allowed.iter().any(|p| matches(p, agent)) => Err(format!(
                "agent {agent} has the label env = \"{env}\", but [environments.{env}] agents in {} does not list it ({})",
                self.path.display(),
                allowed.join(", ")
            )),
            _ => Ok(()),
        }
    }

    /// Whether data-loss steps on this agent need the admin role: its `env`
    /// label names a protected environment, or a protected environment's
    /// allow-list names the agent (whatever its label says).
    pub fn is_protected(&self, agent: &str, env: Option<&str>) -> Option<String> {
        for (name, environment) in &self.environments {
            if !environment.protected {
                continue;
            }
            let by_label = env == Some(name.as_str());
            let by_list = environment
                .agents
                .as_ref()
                .is_some_and(|list| list.iter().any(|p| matches(p, agent)));
            if by_label || by_list {
                return Some(name.clone());
            }
        }
        None
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    coordinator: RawCoordinator,
    #[serde(default)]
    operators: BTreeMap<String, Role>,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    drills: BTreeMap<String, Spanned<drills::RawDrill>>,
    #[serde(default)]
    notifications: BTreeMap<String, Spanned<notify::RawWebhook>>,
    #[serde(default)]
    plans: access::RawAccess,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinator {
    listen: String,
    /// Where to serve Prometheus metrics (off when absent).
    metrics: Option<Spanned<String>>,
    /// This coordinator's name in the leader lease (the host's name).
    name: Option<String>,
    /// How long a leader's lease lasts unrenewed.
    lease: Option<Spanned<String>>,
    /// The URL operators and agents reach this coordinator at.
    advertise: Option<Spanned<String>>,
    database: String,
    /// A file holding the journal's password, put into `database` (so the
    /// configuration, and what is printed, carries none).
    database_password_file: Option<Spanned<PathBuf>>,
    tls: RawTls,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    crl: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    #[serde(default)]
    protected: bool,
    agents: Option<Vec<String>>,
}

pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
    let error = |line, message| ConfigError {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| error(None, format!("cannot read: {e}")))?;
    let source = Source { path, text: &text };
    let mut raw: Raw = toml::from_str(&text).map_err(|e| {
        error(
            e.span().map(|s| source.line(s.start)),
            e.message().to_string(),
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let tls = TlsFiles {
        ca: resolve(&raw.coordinator.tls.ca),
        cert: resolve(&raw.coordinator.tls.cert),
        key: resolve(&raw.coordinator.tls.key),
    };
    let crl = raw.coordinator.tls.crl.as_deref().map(resolve);
    if let Some(crl) = &crl {
        rewind_proto::crl::read(crl, &tls.ca).map_err(|e| error(None, format!("tls.crl: {e}")))?;
    }
    let ca_pem = std::fs::read(&tls.ca)
        .map_err(|e| error(None, format!("tls.ca {}: {e}", tls.ca.display())))?;
    let trust_domain = rewind_proto::identity::trust_domain_of_ca_pem(&ca_pem)
        .map_err(|e| error(None, format!("tls.ca {}: {e}", tls.ca.display())))?;
    let mut database = match raw.coordinator.database.strip_prefix("sqlite://") {
        Some(file) if !file.starts_with('/') && !file.starts_with(':') => {
            format!("sqlite://{}", base.join(file).display())
        }
        _ => raw.coordinator.database.clone(),
    };
    if let Some(file) = &raw.coordinator.database_password_file {
        let at = file.span().start;
        let path = resolve(file.get_ref());
        let password = std::fs::read_to_string(&path).map_err(|e| {
            source.error(
                at,
                format!("database_password_file {}: {e}", path.display()),
            )
        })?;
        database = with_password(&database, password.trim()).map_err(|e| source.error(at, e))?;
    }
    let protected: Vec<&str> = raw
        .environments
        .iter()
        .filter(|(_, e)| e.protected)
        .map(|(n, _)| n.as_str())
        .collect();
    let plans = access::parse(&source, base, std::mem::take(&mut raw.plans))?;
    let mut drills = BTreeMap::new();
    for (name, drill) in &raw.drills {
        drills.insert(
            name.clone(),
            drills::parse(&source, base, name, drill, &protected, &plans)?,
        );
    }
    let metrics = match &raw.coordinator.metrics {
        Some(text) => Some(
            rewind_proto::metrics::parse_address(text.get_ref())
                .map_err(|e| source.error(text.span().start, e))?,
        ),
        None => None,
    };
    let lease = match &raw.coordinator.lease {
        Some(text) => {
            let lease = drills::duration(&source, text, "lease")?;
            if lease < std::time::Duration::from_secs(1) {
                return Err(source.error(
                    text.span().start,
                    "lease must be at least 1s (it is renewed every third of it)".into(),
                ));
            }
            lease
        }
        None => DEFAULT_LEASE,
    };
    let advertise = match &raw.coordinator.advertise {
        Some(text) => {
            let url = text.get_ref().trim();
            let host = url.strip_prefix("https://").unwrap_or_default();
            if host.is_empty() || host.contains(['/', ' ']) {
                return Err(source.error(
                    text.span().start,
                    format!("advertise must be an https:// URL with a host and port, such as https://coord-1.internal:7443, not {url:?}"),
                ));
            }
            Some(url.to_string())
        }
        None => None,
    };
    let name = raw.coordinator.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "coordinator".into())
    });
    let mut notifications = Vec::new();
    for (name, webhook) in &raw.notifications {
        notifications.push(notify::parse(&source, base, name, webhook)?);
    }
    Ok(CoordinatorConfig {
        path: path.to_path_buf(),
        listen: raw.coordinator.listen,
        metrics,
        name,
        lease,
        advertise,
        database,
        tls,
        crl,
        trust_domain,
        operators: raw.operators,
        environments: raw
            .environments
            .into_iter()
            .map(|(name, e)| {
                (
                    name,
                    Environment {
                        protected: e.protected,
                        agents: e.agents,
                    },
                )
            })
            .collect(),
        drills,
        notifications,
        plans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names() {
        assert!(matches("db-1", "db-1"));
        assert!(!matches("db-1", "db-10"));
        assert!(matches("db-*", "db-10"));
        assert!(matches("*-prod", "api-prod"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "a-x-b-y-c"));
        assert!(!matches("a*b*c", "a-x-c"));
        assert!(!matches("db-*", "web-1"));
    }

    fn config(environments: &[(&str, bool, Option<&[&str]>)]) -> CoordinatorConfig {
        CoordinatorConfig {
            path: PathBuf::from("/etc/rewind/coordinator.toml"),
            listen: String::new(),
            metrics: None,
            name: "main".into(),
            lease: DEFAULT_LEASE,
            advertise: None,
            database: String::new(),
            tls: TlsFiles {
                ca: PathBuf::new(),
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            crl: None,
            trust_domain: "rewind.local".into(),
            operators: BTreeMap::new(),
            drills: BTreeMap::new(),
            notifications: Vec::new(),
            plans: PlanAccess::default(),
            environments: environments
                .iter()
                .map(|(name, protected, agents)| {
                    (
                        name.to_string(),
                        Environment {
                            protected: *protected,
                            agents: agents.map(|a| a.iter().map(|s| s.to_string()).collect()),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn an_env_label_counts_only_where_the_config_allows_it() {
        let config = config(&[
            ("production", true, Some(&["db-*", "web-1"])),
            ("staging", false, Some(&["stg-*"])),
            ("dev", false, None),
        ]);
        assert!(config.check_env_label("db-1", Some("production")).is_ok());
        assert!(config.check_env_label("anyone", Some("dev")).is_ok());
        assert!(config.check_env_label("anyone", None).is_ok());
        let refused = config.check_env_label("db-1", Some("staging")).unwrap_err();
        assert!(
            refused.contains("[environments.staging] agents in /etc/rewind/coordinator.toml"),
            "{refused}"
        );
        assert!(
            config
                .check_env_label("laptop", Some("production"))
                .is_err()
        );
        // A production host is protected whatever its label says.
        assert_eq!(
            config.is_protected("db-1", Some("dev")).as_deref(),
            Some("production")
        );
        assert_eq!(
            config.is_protected("db-1", None).as_deref(),
            Some("production")
        );
        assert_eq!(config.is_protected("stg-1", Some("staging")), None);
    }

    /// A directory with a development CA and a coordinator certificate, and
    /// secret files, for configurations that name them.
    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        crate::certs::init(&certs, "rewind.local").unwrap();
        crate::certs::issue_for_days(
            &certs,
            rewind_proto::identity::Kind::Coordinator,
            "main",
            &[],
            1,
        )
        .unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        for name in [
            "webhook-signing-key",
            "slack-webhook-url",
            "pagerduty-routing-key",
        ] {
            std::fs::write(secrets.join(name), "s3cret\n").unwrap();
        }
        let path = dir.path().join("coordinator.toml");
        (dir, path)
    }

    fn with_paths(text: &str, dir: &Path) -> String {
        let plan = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples/v2-platform/plan.toml")
            .display()
            .to_string();
        text.replace(
            "/etc/rewind/certs",
            &dir.join("certs").display().to_string(),
        )
        .replace(
            "/etc/rewind/secrets",
            &dir.join("secrets").display().to_string(),
        )
        .replace("/etc/rewind/plans/v2-platform.toml", &plan)
    }

    #[test]
    fn the_example_configuration_parses_with_its_drill_and_notifications() {
        let (dir, path) = setup();
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.example.toml"),
        )
        .unwrap();
        std::fs::write(&path, with_paths(&example, dir.path())).unwrap();
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        let drill = &config.drills["staging-monthly"];
        assert_eq!(drill.env, "staging");
        assert_eq!(drill.plan.name, "v2-platform");
        assert_eq!(drill.rto, std::time::Duration::from_secs(15 * 60));
        assert!(drill.confirm_data_loss);
        let kinds: Vec<&str> = config
            .notifications
            .iter()
            .map(|n| n.kind.as_str())
            .collect();
        assert_eq!(kinds, ["slack", "webhook", "pagerduty"]);
        assert_eq!(
            config.notifications[2].url,
            notify::Url::Plain(notify::PAGERDUTY_URL.into())
        );
    }

    #[test]
    fn leadership_and_metrics_settings_are_read_with_their_lines() {
        let (dir, path) = setup();
        let config = |settings: &str| {
            with_paths(
                &format!(
                    "[coordinator]\nlisten = \"127.0.0.1:0\"\ndatabase = \"sqlite://j.db\"\n{settings}\n\
                     [coordinator.tls]\nca = \"/etc/rewind/certs/ca.pem\"\ncert = \"/etc/rewind/certs/coordinator-main.pem\"\n\
                     key = \"/etc/rewind/certs/coordinator-main.key\"\n"
                ),
                dir.path(),
            )
        };
        let load_text = |text: String| {
            std::fs::write(&path, text).unwrap();
            load(&path)
        };
        let defaults = load_text(config("")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(defaults.lease, DEFAULT_LEASE);
        assert!(!defaults.name.is_empty());
        assert_eq!(defaults.metrics, None);
        let set = load_text(config(
            "name = \"coord-2\"\nlease = \"4s\"\nmetrics = \"127.0.0.1:9464\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.name, "coord-2");
        assert_eq!(set.lease, std::time::Duration::from_secs(4));
        assert_eq!(set.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        let e = load_text(config("lease = \"200ms\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("coordinator.toml:4: lease must be at least 1s"),
            "{e}"
        );
        assert_eq!(defaults.advertise, None);
        let advertised = load_text(config("advertise = \"https://coord-2.internal:7443\""))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            advertised.advertise.as_deref(),
            Some("https://coord-2.internal:7443")
        );
        let e = load_text(config("advertise = \"coord-2:7443\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("coordinator.toml:4: advertise must be an https:// URL"),
            "{e}"
        );
        let e = load_text(config("metrics = \"public\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("coordinator.toml:4: metrics: `public` is not an address"),
            "{e}"
        );
    }

    #[test]
    fn the_journals_password_comes_from_its_file_encoded() {
        assert_eq!(
            with_password("postgres://rewind@db.internal:5432/rewind", "p@ss/w:rd").unwrap(),
            "postgres://rewind:p%40ss%2Fw%3Ard@db.internal:5432/rewind"
        );
        assert!(with_password("postgres://rewind:old@db/rewind", "x").is_err());
        assert!(with_password("sqlite:///var/lib/rewind/j.db", "x").is_err());
        assert_eq!(
            rewind_proto::masked::text("journal postgres://rewind:p%40ss@db/rewind"),
            "journal postgres://rewind:[secret]@db/rewind"
        );
    }

    #[test]
    fn a_drill_whose_plan_is_for_another_environment_is_refused_naming_its_line() {
        let (dir, path) = setup();
        let plan = dir.path().join("prod.toml");
        std::fs::write(
            &plan,
            "name = \"p\"\n\n[[stage]]\nname = \"db\"\nselect = { env = \"production\", tier = \"db\" }\ntarget = \"db\"\n",
        )
        .unwrap();
        let text = with_paths(
            &format!(
                "[coordinator]\nlisten = \"127.0.0.1:0\"\ndatabase = \"sqlite://j.db\"\n\
                 [coordinator.tls]\nca = \"/etc/rewind/certs/ca.pem\"\ncert = \"/etc/rewind/certs/coordinator-main.pem\"\n\
                 key = \"/etc/rewind/certs/coordinator-main.key\"\n\
                 [drills.d]\nplan = \"{}\"\nenv = \"staging\"\nrto = \"1m\"\nschedule = \"0 0 3 * * *\"\n",
                plan.display()
            ),
            dir.path(),
        );
        std::fs::write(&path, text).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("prod.toml:5: stage db selects agents of environment production, not the drill's environment staging"),
            "{e}"
        );
    }

    /// What the example plan reaches and names.
    const PLANS: &str = "\n[plans]\ndestinations = [\"https://status.example.com/api/\", \"https://api.example.com/admin/\", \"10.0.1.10\"]\nsecrets = { statuspage-token = \"/s\", admin-token = \"/a\" }\n";

    #[test]
    fn drill_and_notification_mistakes_name_their_line() {
        let (dir, path) = setup();
        let head = with_paths(
            "[coordinator]\nlisten = \"127.0.0.1:0\"\ndatabase = \"sqlite://j.db\"\n\
             [coordinator.tls]\nca = \"/etc/rewind/certs/ca.pem\"\ncert = \"/etc/rewind/certs/coordinator-main.pem\"\n\
             key = \"/etc/rewind/certs/coordinator-main.key\"\n[environments.production]\nprotected = true\n",
            dir.path(),
        );
        let drill = |body: &str| {
            with_paths(
                &format!(
                    "{head}[drills.d]\nplan = \"/etc/rewind/plans/v2-platform.toml\"\nenv = \"staging\"\nrto = \"1m\"\n{body}\n{PLANS}"
                ),
                dir.path(),
            )
        };
        let error = |text: String| {
            std::fs::write(&path, text).unwrap();
            load(&path).unwrap_err().to_string()
        };
        let e = error(drill("schedule = \"0 3 * *\""));
        assert!(
            e.contains("coordinator.toml:14: drill d: `0 3 * *` is not a cron pattern"),
            "{e}"
        );
        let e = error(drill(
            "schedule = \"0 0 3 * * *\"\ntime_zone = \"Moon/Base\"",
        ));
        assert!(
            e.contains("coordinator.toml:15: drill d: `Moon/Base` is not a time zone"),
            "{e}"
        );
        let e = error(drill("schedule = \"0 0 3 * * *\"\nfresh_for = \"a month\""));
        assert!(
            e.contains(":15: drill d: fresh_for = \"a month\" is not a duration"),
            "{e}"
        );
        let e = error(format!(
            "{head}[notifications.n]\nkind = \"webhook\"\nurl = \"http://x/\"\nevents = [\"run-exploded\"]\n"
        ));
        assert!(
            e.contains(":13: notification n: event `run-exploded` is not one"),
            "{e}"
        );
        let e = error(format!(
            "{head}[notifications.n]\nkind = \"pagerduty\"\nrouting_key_secret = \"/nonexistent/key\"\n"
        ));
        assert!(
            e.contains(":10: notification n: secret file /nonexistent/key"),
            "{e}"
        );
        let e = error(format!(
            "{head}[notifications.n]\nkind = \"pagerduty\"\nrouting_key_secret = \"{}\"\nevents = [\"run-started\"]\n",
            dir.path().join("secrets/pagerduty-routing-key").display()
        ));
        assert!(
            e.contains("event `run-started` is not one a pagerduty notification is sent"),
            "{e}"
        );
    }
}
