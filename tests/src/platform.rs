//! Runbook 004's platform in miniature, built from real components: the
//! 12-layer compose project (L01 data layer, L02–L07 core layers, L09 API
//! gateway with the admin API that switches maintenance mode, L10 human
//! interface, L11/L12), PostgreSQL, etcd, the `.env.production` file and a
//! UI build behind Varnish, with a status page standing in for the SaaS
//! one. Four agents (db-1, config-1, app-1, ui-1) under a real coordinator
//! manage it; the plan is deploy/examples/v2-platform/plan.toml.
//!
//! Shared by the runbook tests, the `runbook_004` bench and the platform
//! demo. [`Platform::state`] reads everything the rollback must bring back
//! from the components themselves.

use crate::cdn::{Origin, VCL_PURGE_ALLOWED, Varnish};
use crate::docker::{self, PLATFORM_REPO, Project, inspect};
use crate::etcd::EtcdServer;
use crate::fleet::{CommandOutput, TestFleet};
use crate::free_port;
use crate::postgres::{PgServer, pg_restore_target};
use crate::providers::{ProviderApi, Received};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tempfile::TempDir;

/// The release the platform is checkpointed at, and the bad one.
pub const GOOD: &str = "v1.4.2";
pub const BAD: &str = "v1.5.0";

/// The compose services in dependency order, each with what it depends on.
pub const LAYERS: &[(&str, &[&str])] = &[
    ("l01-data-layer", &[]),
    ("l02-runtime", &["l01-data-layer"]),
    ("l03-tool-execution", &["l01-data-layer"]),
    ("l04-model-gateway", &["l01-data-layer"]),
    ("l05-planning", &["l01-data-layer"]),
    ("l06-evaluation", &["l01-data-layer"]),
    ("l07-learning", &["l01-data-layer"]),
    ("l09-api-gateway", CORE),
    ("l10-human-interface", &["l09-api-gateway"]),
    ("l11-integration", &["l10-human-interface"]),
    ("l12-nl-interface", &["l10-human-interface"]),
];

/// The core layers, L02–L07.
const CORE: &[&str] = &[
    "l02-runtime",
    "l03-tool-execution",
    "l04-model-gateway",
    "l05-planning",
    "l06-evaluation",
    "l07-learning",
];

/// Services with a port on the host, as the runbook's health checks use.
const PUBLISHED: &[(&str, &str)] = &[
    ("l01-data-layer", "L01_PORT"),
    ("l09-api-gateway", "L09_PORT"),
    ("l10-human-interface", "L10_PORT"),
    ("l12-nl-interface", "L12_PORT"),
];

const ADMIN_TOKEN: &str = "admin-token-for-the-miniature";
const STATUS_TOKEN: &str = "statuspage-token-for-the-miniature";

/// The platform images of the two releases: v1 needs its planner model at
/// /models/planner.bin, v2 at /models/v2/planner.bin.
pub fn images() -> &'static (String, String) {
    static IMAGES: OnceLock<(String, String)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        (
            docker::build_platform_image("v1", "/models/planner.bin"),
            docker::build_platform_image("v2", "/models/v2/planner.bin"),
        )
    })
}

/// The compose file: every layer on `rewind-test/platform:${TAG}`, L05 with
/// the host's models directory, L09 with the admin token and its state
/// volume (maintenance mode survives a recreate).
fn compose_file() -> String {
    let mut yaml = String::from("version: \"2.4\"\nservices:\n");
    for (service, after) in LAYERS {
        yaml += &format!(
            "  {service}:\n    image: {PLATFORM_REPO}:${{TAG}}\n    init: true\n    stop_grace_period: 2s\n"
        );
        if !after.is_empty() {
            yaml += &format!("    depends_on: [{}]\n", after.join(", "));
        }
        if let Some((_, port)) = PUBLISHED.iter().find(|(s, _)| s == service) {
            yaml += &format!("    ports: [\"127.0.0.1:${{{port}}}:8080\"]\n");
        }
        match *service {
            "l05-planning" => yaml += "    volumes: [\"${MODELS}:/models:ro\"]\n",
            "l09-api-gateway" => {
                yaml += "    environment: { ADMIN_TOKEN: \"${ADMIN_TOKEN}\" }\n    volumes: [\"gateway-state:/state\"]\n"
            }
            _ => {}
        }
    }
    yaml + "volumes:\n  gateway-state: {}\n"
}

/// The host ports of the published services.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub l01: u16,
    pub l09: u16,
    pub l10: u16,
    pub l12: u16,
}

/// Everything a rollback must bring back, read from the components.
#[derive(Debug, PartialEq, Eq)]
pub struct State {
    /// service -> (image id, health), from `docker inspect`.
    pub containers: Vec<(String, String, String)>,
    /// Schema and rows of the database, from psql.
    pub database: String,
    /// The configuration keys, from etcd.
    pub keys: Vec<(String, String)>,
    /// `.env.production`, from disk.
    pub env: String,
    /// The UI as Varnish serves it.
    pub ui: Vec<(String, Vec<u8>)>,
}

pub struct Platform {
    pub pg: PgServer,
    pub etcd: EtcdServer,
    pub project: Project,
    pub varnish: Varnish,
    pub status: ProviderApi,
    pub ports: Ports,
    pub fleet: TestFleet,
    /// app/ (the compose project's .env.production, models/), ui/, secrets/.
    pub dir: TempDir,
    /// How long `rewind checkpoint` of the platform took.
    pub checkpoint_took: std::time::Duration,
}

const UI_FILES: &[&str] = &["index.html", "app.js"];
const GOOD_BUILD: &str = "2026.11.01";
const BAD_BUILD: &str = "2026.11.20";
const DATABASE: &str = "agentic_platform";
const PREFIX: &str = "/agentic/config/";

fn status_page(_: &Received) -> (u16, String) {
    (201, "{\"id\":\"incident-1\"}".into())
}

/// How much data the database holds.
#[derive(Debug, Clone, Copy)]
pub enum Data {
    /// A few hundred rows.
    Small,
    /// At least 1 GiB (the runbook's database, for the bench).
    OneGib,
}

impl Platform {
    /// Build the platform at release [`GOOD`], start its fleet and
    /// checkpoint it. `name` keeps the compose projects of concurrent
    /// platforms apart.
    pub async fn start(name: &str, data: Data) -> Platform {
        let (_v1, _v2) = images();
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        let ui = dir.path().join("ui");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(app.join("models")).unwrap();
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(app.join("models/planner.bin"), "planner weights v1\n").unwrap();
        std::fs::write(secrets.join("admin-token"), ADMIN_TOKEN).unwrap();
        std::fs::write(secrets.join("statuspage-token"), STATUS_TOKEN).unwrap();

        // Data: PostgreSQL with the platform's database.
        let pg = PgServer::start();
        pg.psql("rewind", &format!("CREATE DATABASE {DATABASE}"));
        pg.psql(
            DATABASE,
            "CREATE TABLE schema_migrations (version text PRIMARY KEY); \
             INSERT INTO schema_migrations VALUES ('20261001'), ('20261101'); \
             CREATE TABLE agents (id serial PRIMARY KEY, name text NOT NULL); \
             INSERT INTO agents (name) SELECT 'agent ' || i FROM generate_series(1, 200) i; \
             CREATE TABLE tasks (id serial PRIMARY KEY, agent_id int NOT NULL REFERENCES agents, title text NOT NULL); \
             INSERT INTO tasks (agent_id, title) SELECT 1 + i % 200, 'task ' || i FROM generate_series(1, 1000) i",
        );
        if let Data::OneGib = data {
            fill_one_gib(&pg);
        }

        // Configuration: etcd keys and the env file.
        let etcd = EtcdServer::start();
        for (key, value) in [
            ("gateway/upstream", "http://l02-runtime:8080"),
            ("planner/model", "planner.bin"),
            ("features/nl-interface", "on"),
        ] {
            etcd.put(&format!("{PREFIX}{key}"), value);
        }
        std::fs::write(
            app.join(".env.production"),
            "APP_VERSION=1.4.2\nLLM_PROVIDER=anthropic\nMAX_AGENTS=200\n",
        )
        .unwrap();

        // Services: the 12 layers.
        let ports = Ports {
            l01: free_port(),
            l09: free_port(),
            l10: free_port(),
            l12: free_port(),
        };
        let project = Project::with_file(
            name,
            &compose_file(),
            &[
                ("L01_PORT", ports.l01.to_string()),
                ("L09_PORT", ports.l09.to_string()),
                ("L10_PORT", ports.l10.to_string()),
                ("L12_PORT", ports.l12.to_string()),
                ("ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
                ("MODELS", app.join("models").display().to_string()),
            ],
        );
        project.up("v1");

        // UI: the build behind Varnish.
        for build in [GOOD_BUILD, BAD_BUILD] {
            for file in UI_FILES {
                let path = ui.join("builds").join(build).join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, format!("{file} of UI build {build}\n").repeat(20)).unwrap();
            }
        }
        point(&ui.join("current"), &ui.join("builds").join(GOOD_BUILD));
        let origin = Origin::start(ui.join("current"));
        let varnish = Varnish::start(origin.port, VCL_PURGE_ALLOWED);

        let status = ProviderApi::start(status_page);
        let agents = vec![
            ("db-1".to_string(), "db".to_string(), db_targets(&pg)),
            ("config-1".into(), "config".into(), config_targets(&etcd)),
            (
                "app-1".into(),
                "app".into(),
                app_targets(&project, &app, ports),
            ),
            ("ui-1".into(), "ui".into(), ui_targets(&ui, &varnish)),
        ];
        // The plan's hooks call the status page and the admin API on
        // loopback, with the tokens the coordinator's [plans] names.
        let plans = format!(
            "[plans]\ndestinations = [\"127.0.0.1\"]\nsecrets = {{ admin-token = \"{}\", statuspage-token = \"{}\" }}\n",
            secrets.join("admin-token").display(),
            secrets.join("statuspage-token").display()
        );
        let fleet = TestFleet::start_agents_planned(agents, plans).await;
        let checkpointing = std::time::Instant::now();
        fleet.checkpoint(GOOD).await;
        let checkpoint_took = checkpointing.elapsed();
        Platform {
            pg,
            etcd,
            project,
            varnish,
            status,
            ports,
            fleet,
            dir,
            checkpoint_took,
        }
    }

    fn app(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    /// Ship the bad release: a migration and new rows, changed keys and env
    /// file, every layer on v2, a new UI build (the cache purged, as the
    /// deploy does). `keep_v1_model = false` is a release that moved the
    /// planner model to its new place instead of copying it.
    pub fn deploy_bad_release(&self, keep_v1_model: bool) {
        self.pg.psql(
            DATABASE,
            "ALTER TABLE tasks ADD COLUMN priority int NOT NULL DEFAULT 0; \
             INSERT INTO schema_migrations VALUES ('20261120'); \
             UPDATE agents SET name = name || ' (migrated)' WHERE id <= 50; \
             INSERT INTO tasks (agent_id, title, priority) SELECT 1, 'new task ' || i, 5 FROM generate_series(1, 100) i",
        );
        self.etcd.put(
            &format!("{PREFIX}gateway/upstream"),
            "http://l02-runtime:9090",
        );
        self.etcd
            .put(&format!("{PREFIX}planner/model"), "v2/planner.bin");
        self.etcd.delete(&format!("{PREFIX}features/nl-interface"));
        self.etcd.put(&format!("{PREFIX}features/agents-v2"), "on");
        std::fs::write(
            self.app().join(".env.production"),
            "APP_VERSION=1.5.0\nLLM_PROVIDER=anthropic\nMAX_AGENTS=500\nAGENTS_V2=true\n",
        )
        .unwrap();
        ship_v2_model(&self.app().join("models"), keep_v1_model);
        self.project.up("v2");
        let ui = self.dir.path().join("ui");
        point(&ui.join("current"), &ui.join("builds").join(BAD_BUILD));
        self.varnish.ban("X-Ban-Url", ".");
    }

    /// deploy/examples/v2-platform/plan.toml, pointed at this platform: its
    /// hosts' labels, health URLs, admin API, status page and secrets.
    pub fn plan(&self) -> String {
        let path = crate::root().join("deploy/examples/v2-platform/plan.toml");
        let plan =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let secrets = self.dir.path().join("secrets");
        let admin = format!("http://127.0.0.1:{}/cgi-bin/maintenance", self.ports.l09);
        plan.replace("role = ", "tier = ")
            .replace(
                "https://api.example.com/admin/maintenance/enable",
                &format!("{admin}?on"),
            )
            .replace(
                "https://api.example.com/admin/maintenance/disable",
                &format!("{admin}?off"),
            )
            .replace(
                "https://status.example.com",
                &format!("http://127.0.0.1:{}", self.status.port),
            )
            .replace("/etc/rewind/secrets", &secrets.display().to_string())
            .replace("10.0.1.10:8001", &format!("127.0.0.1:{}", self.ports.l01))
            .replace("10.0.1.10:8009", &format!("127.0.0.1:{}", self.ports.l09))
            .replace("10.0.1.10:8010", &format!("127.0.0.1:{}", self.ports.l10))
    }

    /// Add a drill of the example plan on the platform's environment to the
    /// coordinator's configuration (the coordinator restarts to read it),
    /// run it with the live view and write its report to `reports`;
    /// whether it passed.
    pub async fn drill(&mut self, reports: &Path) -> bool {
        let plan = self.dir.path().join("plan.toml");
        std::fs::write(&plan, self.plan()).unwrap();
        self.fleet.fleet.environments += &format!(
            "\n[drills.platform]\nplan = \"{}\"\nenv = \"staging\"\nschedule = \"0 0 3 1 * *\"\n\
             time_zone = \"UTC\"\nrto = \"15m\"\nfresh_for = \"35d\"\nconfirm_data_loss = true\n",
            plan.display()
        );
        self.fleet
            .fleet
            .terminate_coordinator(std::time::Duration::from_secs(20));
        self.fleet.fleet.start_coordinator().expect("coordinator");
        self.fleet.wait_connected(4).await;
        let dir = reports.display().to_string();
        self.fleet
            .rewind_live("ops", &["drill", "run", "platform", "--report-dir", &dir])
    }

    /// `rewind rollback` of the example plan to [`GOOD`], output captured.
    pub fn roll_back(&self) -> CommandOutput {
        self.fleet
            .rollback_cli(&self.plan(), GOOD, &["--confirm-data-loss"])
    }

    /// What the rollback must bring back, read from the components.
    pub fn state(&self) -> State {
        let containers = LAYERS
            .iter()
            .map(|(service, _)| {
                let i = inspect(&self.project.container(service));
                (
                    service.to_string(),
                    i["Image"].as_str().unwrap_or_default().to_string(),
                    i["State"]["Health"]["Status"]
                        .as_str()
                        .unwrap_or("none")
                        .to_string(),
                )
            })
            .collect();
        let database = self.pg.psql(
            DATABASE,
            "SELECT (SELECT string_agg(table_name || '.' || column_name, ',' ORDER BY table_name, ordinal_position) \
                     FROM information_schema.columns WHERE table_schema = 'public') \
             || ' | ' || (SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations) \
             || ' | ' || (SELECT md5(string_agg(id || name, ',' ORDER BY id)) FROM agents) \
             || ' | ' || (SELECT count(*) || ' ' || md5(string_agg(id || title, ',' ORDER BY id)) FROM tasks)",
        );
        let ui = UI_FILES
            .iter()
            .map(|file| {
                let path = if *file == "index.html" {
                    "/".to_string()
                } else {
                    format!("/{file}")
                };
                let (code, body) =
                    crate::cdn::get(self.varnish.port, &path).expect("Varnish answers");
                assert_eq!(code, 200, "Varnish serves {path}");
                (file.to_string(), body)
            })
            .collect();
        State {
            containers,
            database,
            keys: self.etcd.get_prefix(PREFIX),
            env: std::fs::read_to_string(self.app().join(".env.production")).unwrap(),
            ui,
        }
    }

    /// Maintenance mode as the admin API reports it, and its history (each
    /// switch, in order) from the gateway's state volume.
    pub fn maintenance(&self) -> (String, Vec<String>) {
        let now = crate::cdn::get(self.ports.l09, "/cgi-bin/maintenance")
            .map(|(_, body)| String::from_utf8_lossy(&body).trim().to_string())
            .unwrap_or_else(|| "no answer".into());
        let history = docker::run(
            "docker",
            &[
                "exec",
                &self.project.container("l09-api-gateway"),
                "cat",
                "/state/history",
            ],
        );
        (now, history.lines().map(str::to_string).collect())
    }

    /// The status page's messages, as it received them, with the token sent.
    pub fn status_messages(&self) -> Vec<(String, String, String)> {
        self.status
            .requests()
            .iter()
            .map(|r| {
                (
                    r.path.clone(),
                    r.headers.get("authorization").cloned().unwrap_or_default(),
                    String::from_utf8_lossy(&r.body).into_owned(),
                )
            })
            .collect()
    }
}

/// The bad release's model file in `models/v2/`, where the v2 images look:
/// copied, or (`keep_v1_model = false`) moved, so that v1 no longer finds
/// its own.
pub fn ship_v2_model(models: &Path, keep_v1_model: bool) {
    std::fs::create_dir_all(models.join("v2")).unwrap();
    let (v1, v2) = (models.join("planner.bin"), models.join("v2/planner.bin"));
    if keep_v1_model {
        std::fs::copy(v1, v2).unwrap();
    } else {
        std::fs::rename(v1, v2).unwrap();
    }
}

/// Point a `current` link at a directory, atomically.
fn point(link: &Path, to: &Path) {
    let next = link.with_extension("next");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(to, &next).unwrap();
    std::fs::rename(&next, link).unwrap();
}

fn fill_one_gib(pg: &PgServer) {
    pg.psql(
        DATABASE,
        "CREATE TABLE task_events (id bigint PRIMARY KEY, task_id int NOT NULL, payload text NOT NULL)",
    );
    let mut rows = 0i64;
    loop {
        let size: i64 = pg
            .psql(DATABASE, &format!("SELECT pg_database_size('{DATABASE}')"))
            .parse()
            .unwrap();
        if size >= 1 << 30 {
            break;
        }
        pg.psql(
            DATABASE,
            &format!(
                "INSERT INTO task_events SELECT i, 1 + i % 1000, repeat(md5(i::text), 8) FROM generate_series({}, {}) i",
                rows + 1,
                rows + 500_000
            ),
        );
        rows += 500_000;
    }
    pg.psql(DATABASE, "VACUUM ANALYZE task_events");
}

const PLUGIN: &str = "path = \"{plugins}/{file}.wasm\"\nallow_unsigned = true\n";

fn plugin(name: &str, file: &str) -> String {
    format!("[plugins.{name}]\n{}\n", PLUGIN.replace("{file}", file))
}

fn db_targets(pg: &PgServer) -> String {
    let (settings, grant) = pg_restore_target(pg, DATABASE);
    format!(
        "{}[targets.postgres]\nplugin = \"pg-restore\"\ndeadline = \"2h\"\nsettings = {settings}\ngrant = {grant}\n",
        plugin("pg-restore", "pg_restore")
    )
}

fn config_targets(etcd: &EtcdServer) -> String {
    format!(
        "{}[targets.etcd-config]\nplugin = \"etcd\"\n\
         settings = {{ endpoint = \"{}\", prefixes = [\"{PREFIX}\"] }}\n\
         grant = {{ http = [\"127.0.0.1:{}\"] }}\n",
        plugin("etcd", "etcd"),
        etcd.endpoint(),
        etcd.port
    )
}

fn app_targets(project: &Project, app: &Path, ports: Ports) -> String {
    let compose = |target: &str, services: &[&str]| {
        format!(
            "[targets.{target}]\nplugin = \"compose\"\n\
             settings = {{ project = \"{name}\", services = [{}], health_timeout_secs = 30 }}\n\
             grant = {{ docker = [\"{name}\"] }}\n\n",
            services
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", "),
            name = project.name,
        )
    };
    let smoke = [
        "curl".to_string(),
        "-fsS".into(),
        format!("http://127.0.0.1:{}/health/live", ports.l12),
    ];
    let quoted = |args: &[String]| {
        args.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{}{}{}\
         [targets.env-file]\nplugin = \"files\"\n\
         settings = {{ files = [\"{app}/.env.production\"] }}\n\
         grant = {{ files = [\"{app}\"], process = [], docker = [] }}\n\n\
         {}{}{}{}\
         [targets.smoke]\nplugin = \"command\"\n\
         settings = {{ commands = {{ smoke = [{}] }}, verify = [\"smoke\"] }}\n\
         grant = {{ process = [{{ program = \"curl\", args = [[{}]] }}] }}\n",
        plugin("files", "files"),
        plugin("compose", "compose"),
        plugin("command", "command"),
        compose("l01", &["l01-data-layer"]),
        compose("core", CORE),
        compose("gateway", &["l09-api-gateway"]),
        compose(
            "interface",
            &["l10-human-interface", "l11-integration", "l12-nl-interface"]
        ),
        quoted(&smoke),
        quoted(&smoke[1..]),
        app = app.display(),
    )
}

fn ui_targets(ui: &Path, varnish: &Varnish) -> String {
    format!(
        "{}[targets.ui-build]\nplugin = \"cdn\"\n\
         settings = {{ builds = \"{ui}/builds\", current = \"{ui}/current\", verify_url = \"{url}\", purge = [{{ kind = \"varnish\", url = \"{url}\" }}] }}\n\
         grant = {{ files = [\"{ui}\"], http = [\"127.0.0.1:{port}\"] }}\n",
        plugin("cdn", "cdn"),
        ui = ui.display(),
        url = varnish.url(),
        port = varnish.port,
    )
}
