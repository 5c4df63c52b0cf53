//! The agent's TOML configuration: who the agent is, which plugins it trusts,
//! and which targets it manages with which capability grants. Parsed once,
//! validated into plain structs; every error names the file and line.

use crate::units::{self, ByteSize};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_MEMORY_LIMIT: ByteSize = ByteSize(64 << 20);
/// What a target's state directory may hold, unless its `state_quota` /
/// `state_files` say otherwise (the `files` capability enforces it).
pub const DEFAULT_STATE_QUOTA: ByteSize = ByteSize(20 << 30);
pub const DEFAULT_STATE_FILES: u64 = 100_000;
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_PROCESS_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const MIN_MEMORY_LIMIT: ByteSize = ByteSize(1 << 20);
pub const MAX_MEMORY_LIMIT: ByteSize = ByteSize(4 << 30);

/// Where programs named without a path in a `process` grant are looked up.
/// Fixed, so that the agent's own environment cannot widen a grant.
const PROGRAM_SEARCH_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// A configuration error, with the file and (where known) the line.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub path: PathBuf,
    pub name: String,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub trusted_keys: Vec<VerifyingKey>,
    pub plugins: BTreeMap<String, PluginConfig>,
    pub targets: BTreeMap<String, Arc<TargetConfig>>,
    /// Where and how to reach the coordinator (`rewind-agent run` needs it).
    pub coordinator: Option<CoordinatorLink>,
    /// Where Prometheus metrics are served (`[agent] metrics`).
    pub metrics: Option<std::net::SocketAddr>,
}

/// The coordinator this agent dials, and the agent's mutual-TLS files.
#[derive(Debug, Clone)]
pub struct CoordinatorLink {
    /// The coordinators to try, in turn, until one leads.
    pub urls: Vec<String>,
    pub tls: rewind_proto::tls::TlsFiles,
    /// A PEM revocation list of the fleet CA, checked against the
    /// coordinator's certificate and re-read when it changes.
    pub crl: Option<PathBuf>,
}

/// A plugin the agent may load.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub name: String,
    pub path: PathBuf,
    /// Where the configuration declares it (`/etc/rewind/agent.toml:12`), for errors.
    pub origin: String,
    /// The pinned SHA-256 (hex), if the configuration pins one.
    pub sha256: Option<String>,
    /// Whether the plugin may run without a valid signature.
    pub allow_unsigned: bool,
}

/// A target: something on this host that one plugin manages.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: String,
    pub plugin: String,
    /// The target's `settings` table, as JSON for the plugin.
    pub settings_json: String,
    pub memory_limit: ByteSize,
    pub deadline: Duration,
    /// The target's private directory, the root of the `files` capability.
    pub state_dir: PathBuf,
    /// The most bytes and files the plugin may keep in its state directory
    /// through the `files` capability.
    pub state_quota: ByteSize,
    pub state_files: u64,
    /// A file of the target's secrets (`KEY=VALUE` lines), read at each call.
    pub secrets: Option<PathBuf>,
    /// The agent's key that seals the container configurations the docker
    /// capability hands out (`<state_dir>/docker-seal.key`, out of every
    /// target's reach).
    pub seal_key: PathBuf,
    pub grant: Grant,
}

/// What a target's plugin may touch beyond its own state directory.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Directories (absolute) the `files` capability may read and write.
    pub files: Vec<PathBuf>,
    /// Whether the `process` capability is granted (`process = [...]` is
    /// present, even empty: a plugin that can reload may then be used
    /// without allowing it to run anything).
    pub process_granted: bool,
    /// Programs the `process` capability may run, by the name as granted.
    pub process: BTreeMap<String, ProgramGrant>,
    pub process_timeout: Duration,
    /// Environment variables set for every program (nothing is inherited).
    pub process_env: BTreeMap<String, String>,
    /// The environment variables a plugin may set for a program.
    pub process_env_allow: Vec<String>,
    /// The working directory of programs (default: the target's state
    /// directory), e.g. the application whose `alembic.ini` or tests they use.
    pub process_dir: Option<PathBuf>,
    /// Whether outgoing HTTP is granted (`http = [...]` present, even empty).
    pub http_granted: bool,
    /// Hosts (`host` or `host:port`) outgoing HTTP may reach.
    pub http: Vec<HostPort>,
    /// Whether the `docker` capability is granted (`docker = [...]` present).
    pub docker_granted: bool,
    /// The compose projects the `docker` capability may act on.
    pub docker: Vec<String>,
    /// The Docker daemon's socket (default /var/run/docker.sock).
    pub docker_socket: Option<PathBuf>,
    /// TLS for particular HTTPS hosts: a private CA, a client certificate.
    pub tls: Vec<crate::host::tls::HostTls>,
    /// The PostgreSQL server the `postgres` capability reaches, if granted.
    pub postgres: Option<PostgresGrant>,
}

/// One program a target may run, and the arguments it may run it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramGrant {
    /// The absolute path that runs.
    pub path: PathBuf,
    /// The argument lists allowed, each token exact or `prefix*` (`*`: any
    /// one argument); None allows any arguments.
    pub args: Option<Vec<Vec<String>>>,
}

impl ProgramGrant {
    /// Whether `args` fits one of the allowed forms.
    pub fn allows(&self, args: &[String]) -> bool {
        let Some(forms) = &self.args else {
            return true;
        };
        forms.iter().any(|form| {
            form.len() == args.len()
                && form
                    .iter()
                    .zip(args)
                    .all(|(token, arg)| match token.strip_suffix('*') {
                        // What `*` matches never climbs with a `..` segment
                        // (`snapshot-*` is not `snapshot-/../../etc/x`), and
                        // never starts an option the form does not write
                        // out (`*` is not `--checkpoint-action=exec=sh`).
                        Some(prefix) => {
                            arg.starts_with(prefix)
                                && !arg.split('/').any(|segment| segment == "..")
                                && (prefix.starts_with('-') || !arg.starts_with('-'))
                        }
                        None => token == arg,
                    })
        })
    }
}

/// What a plugin may put in a program's environment unless the grant says
/// otherwise (`process_env_allow`): PostgreSQL's client credentials and
/// timeouts, and the locale. Loader and interpreter variables are never
/// allowed (see `NEVER_IN_ENV`).
pub const DEFAULT_ENV_ALLOW: &[&str] = &[
    "PGPASSWORD",
    "PGCONNECT_TIMEOUT",
    "PGSSLMODE",
    "PGAPPNAME",
    "LANG",
    "LC_ALL",
];

/// Variables that change how the loader, libc or an interpreter behaves: not
/// even a grant may let a plugin set them.
const NEVER_IN_ENV: &[&str] = &[
    "LD_",
    "DYLD_",
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TMPDIR",
    "TZDIR",
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "PS4",
    "PYTHON",
    "PERL",
    "RUBY",
    "NODE_OPTIONS",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGPASSFILE",
    "PGSSLKEY",
    "PGSSLCERT",
];

fn never_in_env(name: &str) -> bool {
    NEVER_IN_ENV.iter().any(|p| name.starts_with(p))
}

/// Programs that run other programs or code: a grant to one of them would
/// be a way to a shell, so none may be granted, with arguments or without.
const COMMAND_RUNNERS: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "csh",
    "tcsh",
    "fish",
    "ash",
    "busybox",
    "env",
    "xargs",
    "find",
    "sudo",
    "su",
    "doas",
    "runuser",
    "nice",
    "ionice",
    "nohup",
    "timeout",
    "setsid",
    "chroot",
    "stdbuf",
    "time",
    "strace",
    "ltrace",
    "gdb",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "php",
    "lua",
    "tclsh",
    "wish",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "sed",
    "vi",
    "vim",
    "less",
    "more",
    "man",
    "script",
    "expect",
    "watch",
    "flock",
    "parallel",
    "make",
    "ssh",
    "systemd-run",
    "at",
    "crontab",
    "osascript",
    "taskset",
    "chrt",
    "unshare",
    "nsenter",
    "capsh",
    "setpriv",
    "fakeroot",
    "eval",
    "exec",
    "git",
    // Each of these runs a command or code given in its arguments or
    // input (`tar --checkpoint-action=exec`, `rsync -e`, `psql \!`,
    // `sqlite3 .shell`, `openssl -engine`), or loads any program (the
    // dynamic loader).
    "tar",
    "rsync",
    "psql",
    "sqlite3",
    "openssl",
    "ld.so",
    "ld-linux.so",
    "ld-linux-x86-64.so",
    "ld-linux-aarch64.so",
];

/// Programs that control other programs (containers, services): granted
/// only with argument forms written out in full, no `*`, so that a plugin
/// runs exactly the commands the grant lists.
const LITERAL_ONLY: &[&str] = &["docker", "podman", "systemctl", "kubectl", "service"];

/// Why a program may not be granted, if it is a command runner.
fn command_runner(path: &Path) -> Option<String> {
    let names = [Some(path.to_path_buf()), std::fs::canonicalize(path).ok()];
    for candidate in names.into_iter().flatten() {
        let name = candidate.file_name()?.to_string_lossy().to_string();
        let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        let runner = COMMAND_RUNNERS.contains(&base)
            || base.starts_with("python")
            || base.starts_with("pypy");
        if runner {
            return Some(format!(
                "{} ({}) runs other programs or code, which would be a way to a shell; grant the program it would run instead",
                path.display(),
                candidate.display()
            ));
        }
    }
    None
}

/// `grant.postgres`: one server, the databases a plugin may use, and the
/// credentials the agent logs in with (the plugin never sees them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresGrant {
    /// A host name, or a socket directory (starting with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Database names; one ending in `*` allows every name it begins
    /// (e.g. `shop_rewind_*` for pg-restore's copies).
    pub databases: Vec<String>,
    /// Whether the `postgres` database may be used (create, rename and
    /// drop databases, end sessions).
    pub admin: bool,
    /// The secret (in the target's secrets file) holding the password.
    pub password_secret: Option<String>,
    /// The longest one statement may run.
    pub timeout: Duration,
}

impl PostgresGrant {
    /// Whether `databases` lists `database` (by name or by prefix).
    pub fn lists(&self, database: &str) -> bool {
        self.databases.iter().any(|d| match d.strip_suffix('*') {
            Some(prefix) => database.starts_with(prefix),
            None => d == database,
        })
    }
}

/// How long a statement may run unless `grant.postgres.timeout` says.
pub const DEFAULT_SQL_TIMEOUT: Duration = Duration::from_secs(60);

/// An entry of an HTTP allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    /// None allows any port on the host.
    pub port: Option<u16>,
}

impl HostPort {
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.is_none_or(|p| p == port)
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: RawAgent,
    #[serde(default)]
    plugins: BTreeMap<String, Spanned<RawPlugin>>,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<RawTarget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Spanned<String>,
    state_dir: PathBuf,
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    trusted_keys: Vec<Spanned<String>>,
    coordinator: Option<Spanned<RawCoordinator>>,
    /// Where to serve Prometheus metrics (off when absent).
    metrics: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinator {
    /// One coordinator's URL, or several (coordinators sharing a journal:
    /// the agent tries them in turn until one leads).
    url: OneOrMany,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    crl: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: PathBuf,
    sha256: Option<Spanned<String>>,
    #[serde(default)]
    allow_unsigned: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    plugin: Spanned<String>,
    #[serde(default)]
    settings: toml::Table,
    memory_limit: Option<Spanned<ByteSize>>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    deadline: Option<Duration>,
    state_quota: Option<ByteSize>,
    state_files: Option<u64>,
    #[serde(default)]
    grant: RawGrant,
    secrets: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    files: Vec<Spanned<PathBuf>>,
    process: Option<Vec<Spanned<RawProgram>>>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    process_timeout: Option<Duration>,
    #[serde(default)]
    process_env: BTreeMap<String, String>,
    process_env_allow: Option<Vec<Spanned<String>>>,
    process_dir: Option<Spanned<PathBuf>>,
    http: Option<Vec<Spanned<String>>>,
    docker: Option<Vec<Spanned<String>>>,
    docker_socket: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tls: Vec<Spanned<RawTls>>,
    postgres: Option<Spanned<RawPostgres>>,
}

/// `"name"` (any arguments), or `{ program = "name", args = [[...], ...] }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawProgram {
    Name(String),
    Patterns {
        program: String,
        args: Vec<Vec<String>>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    host: String,
    #[serde(default = "default_pg_port")]
    port: u16,
    user: String,
    #[serde(default)]
    databases: Vec<String>,
    #[serde(default)]
    admin: bool,
    password_secret: Option<String>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    timeout: Option<Duration>,
}

fn default_pg_port() -> u16 {
    5432
}

/// TLS to one HTTPS host of the allow-list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// `host:port`, as in `http`.
    host: String,
    /// PEM CA certificate(s) the server's certificate must chain to (else
    /// the public web roots).
    ca: Option<PathBuf>,
    /// PEM client certificate (chain) and its key, for servers that ask.
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// Read and validate an agent configuration file.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        message: format!("cannot read the agent configuration: {e}"),
    })?;
    parse(&text, path)
}

/// Validate an agent configuration given as text; `path` is used for errors
/// and to resolve relative paths.
pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
    let at = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
        path: path.to_path_buf(),
        line: span.map(|s| line_of(text, s.start)),
        message,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let name = raw.agent.name.get_ref().clone();
    if !is_valid_name(&name) {
        return Err(at(
            Some(raw.agent.name.span()),
            format!("agent name `{name}` may only use letters, digits, `.`, `-` and `_`"),
        ));
    }
    let state_dir = resolve(&raw.agent.state_dir);
    let cache_dir = raw
        .agent
        .cache_dir
        .as_deref()
        .map_or_else(|| state_dir.join("cache"), resolve);

    let mut trusted_keys = Vec::new();
    for key in &raw.agent.trusted_keys {
        let parsed = crate::signing::parse_public_key(key.get_ref())
            .map_err(|e| at(Some(key.span()), format!("trusted_keys: {e}")))?;
        trusted_keys.push(parsed);
    }

    let mut plugins = BTreeMap::new();
    for (plugin_name, spanned) in raw.plugins {
        let span = spanned.span();
        let plugin = spanned.into_inner();
        if !is_valid_name(&plugin_name) {
            return Err(at(
                Some(span),
                format!("plugin name `{plugin_name}` is not valid"),
            ));
        }
        let sha256 = match plugin.sha256 {
            Some(pin) => {
                let hex = pin
                    .get_ref()
                    .trim_start_matches("sha256:")
                    .to_ascii_lowercase();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(at(
                        Some(pin.span()),
                        format!("plugins.{plugin_name}.sha256 must be 64 hex digits"),
                    ));
                }
                Some(hex)
            }
            None => None,
        };
        plugins.insert(
            plugin_name.clone(),
            PluginConfig {
                origin: format!("{}:{}", path.display(), line_of(text, span.start)),
                name: plugin_name,
                path: resolve(&plugin.path),
                sha256,
                allow_unsigned: plugin.allow_unsigned,
            },
        );
    }

    let mut targets = BTreeMap::new();
    for (target_name, spanned) in raw.targets {
        let span = spanned.span();
        let target = spanned.into_inner();
        let here = |message: String| {
            at(
                Some(span.clone()),
                format!("target {target_name}: {message}"),
            )
        };
        if !is_valid_name(&target_name) {
            return Err(here(
                "the name may only use letters, digits, `.`, `-` and `_`".into(),
            ));
        }
        let plugin = target.plugin.get_ref().clone();
        if !plugins.contains_key(&plugin) {
            return Err(at(
                Some(target.plugin.span()),
                format!(
                    "target {target_name}: plugin `{plugin}` is not declared (declared: {})",
                    list_or_none(plugins.keys())
                ),
            ));
        }
        let memory_limit = match &target.memory_limit {
            Some(limit) => {
                let value = *limit.get_ref();
                if value < MIN_MEMORY_LIMIT || value > MAX_MEMORY_LIMIT {
                    return Err(at(
                        Some(limit.span()),
                        format!(
                            "target {target_name}: memory_limit {value} is outside {MIN_MEMORY_LIMIT}..{MAX_MEMORY_LIMIT}"
                        ),
                    ));
                }
                value
            }
            None => DEFAULT_MEMORY_LIMIT,
        };
        let settings_json = serde_json::to_string(&target.settings)
            .map_err(|e| here(format!("settings cannot be passed to the plugin: {e}")))?;
        let grant = validate_grant(target.grant, &target_name, &at, &resolve)?;
        let secrets = target.secrets.as_deref().map(resolve);
        targets.insert(
            target_name.clone(),
            Arc::new(TargetConfig {
                state_dir: state_dir.join("targets").join(&target_name),
                seal_key: state_dir.join("docker-seal.key"),
                state_quota: target.state_quota.unwrap_or(DEFAULT_STATE_QUOTA),
                state_files: target.state_files.unwrap_or(DEFAULT_STATE_FILES),
                name: target_name,
                plugin,
                settings_json,
                memory_limit,
                deadline: target.deadline.unwrap_or(DEFAULT_DEADLINE),
                secrets,
                grant,
            }),
        );
    }

    let coordinator = match raw.agent.coordinator {
        Some(link) => {
            let span = link.span();
            let link = link.into_inner();
            let urls = match link.url {
                OneOrMany::One(url) => vec![url],
                OneOrMany::Many(urls) => urls,
            };
            if urls.is_empty() {
                return Err(at(
                    Some(span),
                    "agent.coordinator.url lists no coordinator".into(),
                ));
            }
            if let Some(url) = urls.iter().find(|u| !u.starts_with("https://")) {
                return Err(at(
                    Some(span),
                    format!("agent.coordinator.url `{url}` must be an https:// URL"),
                ));
            }
            Some(CoordinatorLink {
                urls,
                tls: rewind_proto::tls::TlsFiles {
                    ca: resolve(&link.ca),
                    cert: resolve(&link.cert),
                    key: resolve(&link.key),
                },
                crl: link.crl.as_deref().map(resolve),
            })
        }
        None => None,
    };

    let metrics = match &raw.agent.metrics {
        Some(text) => Some(
            rewind_proto::metrics::parse_address(text.get_ref())
                .map_err(|e| at(Some(text.span()), e))?,
        ),
        None => None,
    };

    Ok(AgentConfig {
        coordinator,
        metrics,
        path: path.to_path_buf(),
        name,
        state_dir,
        cache_dir,
        labels: raw.agent.labels,
        trusted_keys,
        plugins,
        targets,
    })
}

fn validate_grant(
    raw: RawGrant,
    target: &str,
    at: &impl Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
    resolve: &impl Fn(&Path) -> PathBuf,
) -> Result<Grant, ConfigError> {
    let mut grant = Grant {
        process_timeout: raw.process_timeout.unwrap_or(DEFAULT_PROCESS_TIMEOUT),
        process_env: raw.process_env,
        process_granted: raw.process.is_some(),
        http_granted: raw.http.is_some(),
        docker_granted: raw.docker.is_some(),
        ..Grant::default()
    };
    if let Some(dir) = raw.process_dir {
        if !dir.get_ref().is_absolute() {
            return Err(at(
                Some(dir.span()),
                format!(
                    "target {target}: grant.process_dir {} must be an absolute directory",
                    dir.get_ref().display()
                ),
            ));
        }
        grant.process_dir = Some(dir.into_inner());
    }
    for dir in raw.files {
        if !dir.get_ref().is_absolute() {
            return Err(at(
                Some(dir.span()),
                format!(
                    "target {target}: grant.files entry {} must be an absolute directory",
                    dir.get_ref().display()
                ),
            ));
        }
        grant.files.push(dir.into_inner());
    }
    for program in raw.process.unwrap_or_default() {
        let span = program.span();
        let (name, args) = match program.into_inner() {
            RawProgram::Name(name) => (name, None),
            RawProgram::Patterns { program, args } => (program, Some(args)),
        };
        let resolved = resolve_program(&name).ok_or_else(|| {
            at(
                Some(span.clone()),
                format!(
                    "target {target}: grant.process program `{name}` was not found{}",
                    if name.contains('/') {
                        String::new()
                    } else {
                        format!(" in {}", PROGRAM_SEARCH_PATH.join(":"))
                    }
                ),
            )
        })?;
        if let Some(why) = command_runner(&resolved) {
            return Err(at(
                Some(span),
                format!("target {target}: grant.process may not include `{name}`: {why}"),
            ));
        }
        let base = resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if LITERAL_ONLY.contains(&base.as_str())
            && args
                .as_ref()
                .is_none_or(|forms| forms.iter().flatten().any(|t| t.contains('*')))
        {
            return Err(at(
                Some(span),
                format!(
                    "target {target}: grant.process `{name}` controls other programs: grant it \
                     only with its argument forms written out in full, without `*` (e.g. \
                     {{ program = \"{name}\", args = [[\"restart\", \"myapp\"]] }})"
                ),
            ));
        }
        if args.is_none() {
            // Any argument at all: the docs say to list the forms.
            let place = at(Some(span.clone()), String::new());
            tracing::warn!(
                "{}:{}: target {target}: grant.process `{name}` allows any arguments; list \
                 its argument forms ({{ program = \"{name}\", args = [[...]] }}) so that a \
                 plugin runs only what you meant",
                place.path.display(),
                place.line.unwrap_or(0)
            );
        }
        if let Some(forms) = &args
            && forms.is_empty()
        {
            return Err(at(
                Some(span),
                format!(
                    "target {target}: grant.process `{name}`: args is empty, so nothing could run; \
                     list the argument forms (e.g. [[\"--list\", \"*\"]]) or grant the name alone"
                ),
            ));
        }
        grant.process.insert(
            name,
            ProgramGrant {
                path: resolved,
                args,
            },
        );
    }
    let env_allow: Vec<String> = match raw.process_env_allow {
        Some(names) => {
            let mut allowed = Vec::new();
            for name in names {
                if never_in_env(name.get_ref()) || name.get_ref().is_empty() {
                    return Err(at(
                        Some(name.span()),
                        format!(
                            "target {target}: grant.process_env_allow may not include `{}`: it changes how programs load or run",
                            name.get_ref()
                        ),
                    ));
                }
                allowed.push(name.into_inner());
            }
            allowed
        }
        None => DEFAULT_ENV_ALLOW.iter().map(|s| s.to_string()).collect(),
    };
    grant.process_env_allow = env_allow;
    for entry in raw.http.unwrap_or_default() {
        let parsed = parse_host_port(entry.get_ref()).map_err(|e| {
            at(
                Some(entry.span()),
                format!("target {target}: grant.http: {e}"),
            )
        })?;
        grant.http.push(parsed);
    }
    for project in raw.docker.unwrap_or_default() {
        let name = project.get_ref();
        if name.is_empty() || !is_valid_name(name) {
            return Err(at(
                Some(project.span()),
                format!(
                    "target {target}: grant.docker entry `{name}` is not a compose project name"
                ),
            ));
        }
        grant.docker.push(name.clone());
    }
    if let Some(socket) = raw.docker_socket {
        if !socket.get_ref().is_absolute() {
            return Err(at(
                Some(socket.span()),
                format!(
                    "target {target}: grant.docker_socket {} must be an absolute path",
                    socket.get_ref().display()
                ),
            ));
        }
        grant.docker_socket = Some(socket.into_inner());
    }
    for entry in raw.tls {
        let span = entry.span();
        let tls = entry.into_inner();
        let here = |message: String| {
            at(
                Some(span.clone()),
                format!("target {target}: grant.tls: {message}"),
            )
        };
        let host = parse_host_port(&tls.host).map_err(&here)?;
        if host.port.is_none() {
            return Err(here(format!(
                "host {} needs its port (e.g. {}:443)",
                tls.host, tls.host
            )));
        }
        let port = host.port.unwrap_or(443);
        if !grant.http.iter().any(|h| h.allows(&host.host, port)) {
            return Err(here(format!(
                "{} is not in grant.http; TLS settings are for hosts the target may reach",
                tls.host
            )));
        }
        let resolved = |p: &Option<PathBuf>| p.as_deref().map(resolve);
        let config = crate::host::tls::HostTls::load(
            host,
            resolved(&tls.ca).as_deref(),
            resolved(&tls.cert).as_deref(),
            resolved(&tls.key).as_deref(),
        )
        .map_err(&here)?;
        grant.tls.push(config);
    }
    if let Some(pg) = raw.postgres {
        let span = pg.span();
        let pg = pg.into_inner();
        let here = |message: String| {
            at(
                Some(span.clone()),
                format!("target {target}: grant.postgres: {message}"),
            )
        };
        if pg.host.is_empty() || pg.user.is_empty() {
            return Err(here("host and user must not be empty".into()));
        }
        if pg.databases.is_empty() && !pg.admin {
            return Err(here(
                "databases is empty: list the databases the plugin may use".into(),
            ));
        }
        if let Some(bad) = pg.databases.iter().find(|d| d.is_empty()) {
            return Err(here(format!("database name `{bad}` is empty")));
        }
        grant.postgres = Some(PostgresGrant {
            host: pg.host,
            port: pg.port,
            user: pg.user,
            databases: pg.databases,
            admin: pg.admin,
            password_secret: pg.password_secret,
            timeout: pg.timeout.unwrap_or(DEFAULT_SQL_TIMEOUT),
        });
    }
    Ok(grant)
}

fn resolve_program(name: &str) -> Option<PathBuf> {
    let is_executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let path = PathBuf::from(name);
        return (path.is_absolute() && is_executable(&path)).then_some(path);
    }
    PROGRAM_SEARCH_PATH
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| is_executable(p))
}

fn parse_host_port(text: &str) -> Result<HostPort, String> {
    if text.contains("://") || text.contains('/') {
        return Err(format!(
            "`{text}` must be a host or host:port, without scheme or path"
        ));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("`{text}`: bad port `{port}`"))?;
            (host, Some(port))
        }
        _ => (text, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{text}`: no host"));
    }
    Ok(HostPort {
        host: host.to_ascii_lowercase(),
        port,
    })
}

pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid() {
        // The programs it grants are the production host's (nginx,
        // PostgreSQL's); here programs found on this machine stand in.
        let text = include_str!("../../deploy/agent.example.toml")
            .replace("process = [\"nginx\"]", "process = [\"true\"]")
            .replace("/usr/lib/postgresql/15/bin/pg_dump", "/usr/bin/true")
            .replace("/usr/lib/postgresql/15/bin/pg_restore", "/usr/bin/false");
        let config = parse(&text, Path::new("/etc/rewind/agent.toml"))
            .unwrap_or_else(|e| panic!("deploy/agent.example.toml: {e}"));
        for plugin in ["files", "compose", "pg-restore", "etcd", "cdn"] {
            assert!(
                config.targets.values().any(|t| t.plugin == plugin),
                "the example has a {plugin} target"
            );
        }
    }

    #[test]
    fn every_example_agent_configuration_is_valid() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut parsed = 0;
        for platform in std::fs::read_dir(&examples).unwrap() {
            let dir = platform.unwrap().path();
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if !(name.starts_with("agent") && name.ends_with(".toml")) {
                    continue;
                }
                // The programs granted are the production host's; `true`
                // stands in for each here.
                let text = std::fs::read_to_string(&path).unwrap();
                let mut pieces = text.split("program = \"");
                let mut stood_in = pieces.next().unwrap().to_string();
                for piece in pieces {
                    let rest = piece.split_once('"').map_or(piece, |(_, rest)| rest);
                    stood_in += &format!("program = \"/usr/bin/true\"{rest}");
                }
                parse(&stood_in, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                parsed += 1;
            }
        }
        assert!(parsed >= 6, "{parsed} example agent configurations");
    }

    fn parse_str(text: &str) -> Result<AgentConfig, ConfigError> {
        parse(text, Path::new("/etc/rewind/agent.toml"))
    }

    const BASE: &str = r#"
[agent]
name = "web-1"
state_dir = "/var/lib/rewind"

[plugins.files]
path = "plugins/files.wasm"
allow_unsigned = true
"#;

    #[test]
    fn a_full_target_is_validated_and_resolved() {
        let config = parse_str(&format!(
            r#"{BASE}
[targets.nginx]
plugin = "files"
memory_limit = "32MiB"
deadline = "30s"
settings = {{ files = ["/etc/nginx/nginx.conf"] }}
[targets.nginx.grant]
files = ["/etc/nginx"]
process = ["true"]
http = ["127.0.0.1:8080", "api.example.com"]
"#
        ))
        .unwrap();
        let target = &config.targets["nginx"];
        assert_eq!(target.memory_limit, ByteSize(32 << 20));
        assert_eq!(target.deadline, Duration::from_secs(30));
        assert_eq!(target.state_dir, Path::new("/var/lib/rewind/targets/nginx"));
        assert_eq!(
            target.settings_json,
            r#"{"files":["/etc/nginx/nginx.conf"]}"#
        );
        assert!(target.grant.process["true"].path.is_absolute());
        assert!(target.grant.http[0].allows("127.0.0.1", 8080));
        assert!(!target.grant.http[0].allows("127.0.0.1", 8081));
        assert!(target.grant.http[1].allows("API.example.com", 443));
        assert_eq!(
            config.plugins["files"].path,
            Path::new("/etc/rewind/plugins/files.wasm")
        );
    }

    #[test]
    fn tls_settings_are_checked_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("not-a-cert.pem");
        std::fs::write(&pem, "hello\n").unwrap();
        let with_tls = |http: &str, tls: &str| {
            parse_str(&format!(
                "{BASE}\n[targets.t]\nplugin = \"files\"\n[targets.t.grant]\nhttp = [{http}]\ntls = [{tls}]\n"
            ))
        };
        let err = with_tls("", r#"{ host = "etcd:2379", ca = "/etc/ssl/ca.pem" }"#).unwrap_err();
        assert_eq!(err.line, Some(14), "{err}");
        assert!(
            err.message.contains("etcd:2379 is not in grant.http"),
            "{err}"
        );

        let err = with_tls(r#""etcd""#, r#"{ host = "etcd" }"#).unwrap_err();
        assert!(err.message.contains("needs its port"), "{err}");

        let err = with_tls(
            r#""etcd:2379""#,
            &format!(r#"{{ host = "etcd:2379", ca = "{}" }}"#, pem.display()),
        )
        .unwrap_err();
        assert!(err.message.contains("no PEM certificate"), "{err}");
        assert!(err.message.contains("not-a-cert.pem"), "{err}");

        let err = with_tls(
            r#""etcd:2379""#,
            &format!(r#"{{ host = "etcd:2379", cert = "{}" }}"#, pem.display()),
        )
        .unwrap_err();
        assert!(err.message.contains("cert and key go together"), "{err}");

        let err = with_tls(
            r#""etcd:2379""#,
            r#"{ host = "etcd:2379", ca = "/no/such/ca.pem" }"#,
        )
        .unwrap_err();
        assert!(err.message.contains("/no/such/ca.pem"), "{err}");

        // No CA: the public web roots; no client certificate.
        let config = with_tls(r#""etcd:2379""#, r#"{ host = "etcd:2379" }"#).unwrap();
        assert!(config.targets["t"].grant.tls[0].applies_to("etcd", 2379));
    }

    #[test]
    fn programs_take_argument_patterns_and_no_shell_is_granted() {
        let config = parse_str(&format!(
            "{BASE}\n[targets.t]\nplugin = \"files\"\ngrant = {{ process = [\"true\", {{ program = \"touch\", args = [[\"--\", \"/tmp/x*\"], [\"-c\", \"*\"]] }}] }}\n"
        ))
        .unwrap();
        let grant = &config.targets["t"].grant;
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(grant.process["true"].allows(&args(&["anything", "at all"])));
        let touch = &grant.process["touch"];
        assert!(touch.allows(&args(&["--", "/tmp/x-1"])));
        assert!(touch.allows(&args(&["-c", "whatever"])));
        assert!(!touch.allows(&args(&["--", "/etc/passwd"])));
        assert!(!touch.allows(&args(&["--", "/tmp/x/../../etc/passwd"])));
        assert!(!touch.allows(&args(&["-c"])));
        assert!(!touch.allows(&args(&["-c", "a", "b"])));
        // What `*` stands for never climbs out with `..`, with or without a
        // `/` in the form, and never starts an option the form does not say.
        let dump = ProgramGrant {
            path: PathBuf::from("/usr/bin/pg_dump"),
            args: Some(vec![args(&["-f", "snapshot-*"]), args(&["--list", "*"])]),
        };
        assert!(dump.allows(&args(&["-f", "snapshot-shop-17.dump"])));
        assert!(!dump.allows(&args(&["-f", "snapshot-/../../etc/cron.d/x"])));
        assert!(!dump.allows(&args(&["--list", "../x"])));
        assert!(!dump.allows(&args(&["--list", "--checkpoint-action=exec=sh"])));
        let options = ProgramGrant {
            path: PathBuf::from("/usr/bin/x"),
            args: Some(vec![args(&["--format=*"])]),
        };
        assert!(options.allows(&args(&["--format=custom"])));
        for (program, form) in [
            ("tar", r#"[["-xf", "*"]]"#),
            ("rsync", r#"[["-a", "*", "*"]]"#),
            ("docker", r#"[["compose", "*", "stop"]]"#),
            ("systemctl", r#"[["restart", "*"]]"#),
        ] {
            if resolve_program(program).is_none() {
                continue;
            }
            let err = parse_str(&format!(
                "{BASE}\n[targets.t]\nplugin = \"files\"\ngrant = {{ process = [{{ program = \"{program}\", args = {form} }}] }}\n"
            ))
            .unwrap_err();
            assert!(
                err.message.contains("would be a way to a shell")
                    || err.message.contains("written out in full"),
                "{program}: {err}"
            );
        }
        for runner in [
            "sh", "bash", "env", "xargs", "find", "python3", "perl", "awk",
        ] {
            if resolve_program(runner).is_none() {
                continue;
            }
            let err = parse_str(&format!(
                "{BASE}\n[targets.t]\nplugin = \"files\"\ngrant = {{ process = [{{ program = \"{runner}\", args = [[\"-c\", \"*\"]] }}] }}\n"
            ))
            .unwrap_err();
            assert!(
                err.message.contains("would be a way to a shell"),
                "{runner}: {err}"
            );
        }
        let err = parse_str(&format!(
            "{BASE}\n[targets.t]\nplugin = \"files\"\ngrant = {{ process = [\"true\"], process_env_allow = [\"LD_PRELOAD\"] }}\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("LD_PRELOAD"), "{err}");
        assert_eq!(
            config.targets["t"].grant.process_env_allow,
            DEFAULT_ENV_ALLOW.to_vec()
        );
    }

    #[test]
    fn coordinators_and_metrics_are_read_with_their_errors() {
        let link = |url: &str, metrics: &str| {
            parse_str(&format!(
                "[agent]\nname = \"web-1\"\nstate_dir = \"/var/lib/rewind\"\n{metrics}\n\n\
                 [agent.coordinator]\nurl = {url}\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n"
            ))
        };
        let one = link("\"https://c1:7443\"", "").unwrap();
        assert_eq!(one.coordinator.unwrap().urls, ["https://c1:7443"]);
        assert_eq!(one.metrics, None);
        let several = link(
            "[\"https://c1:7443\", \"https://c2:7443\"]",
            "metrics = \"9465\"",
        )
        .unwrap();
        assert_eq!(
            several.coordinator.unwrap().urls,
            ["https://c1:7443", "https://c2:7443"]
        );
        assert_eq!(several.metrics, Some("127.0.0.1:9465".parse().unwrap()));
        let err = link("[]", "").unwrap_err();
        assert!(err.message.contains("lists no coordinator"), "{err}");
        let err = link("[\"https://c1:7443\", \"http://c2:7443\"]", "").unwrap_err();
        assert!(
            err.message
                .contains("`http://c2:7443` must be an https:// URL"),
            "{err}"
        );
        let err = link("\"https://c1:7443\"", "metrics = \"everywhere\"").unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(
            err.message.contains("`everywhere` is not an address"),
            "{err}"
        );
    }

    #[test]
    fn defaults_apply() {
        let config = parse_str(&format!("{BASE}\n[targets.t]\nplugin = \"files\"\n")).unwrap();
        assert_eq!(config.targets["t"].memory_limit, DEFAULT_MEMORY_LIMIT);
        assert_eq!(config.targets["t"].deadline, DEFAULT_DEADLINE);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let err = parse_str(&format!("{BASE}\n[targets.t]\nplugin = \"filez\"\n")).unwrap_err();
        assert_eq!(err.line, Some(11), "{err}");
        assert!(
            err.to_string()
                .starts_with("/etc/rewind/agent.toml:11: target t: plugin `filez`"),
            "{err}"
        );

        let err = parse_str(&format!(
            "{BASE}\n[targets.t]\nplugin = \"files\"\nmemroy = 1\n"
        ))
        .unwrap_err();
        assert_eq!(err.line, Some(12), "{err}");
        assert!(err.message.contains("unknown field `memroy`"), "{err}");

        let err = parse_str(&format!(
            "{BASE}\n[targets.t]\nplugin = \"files\"\ndeadline = \"soon\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.line, Some(12), "{err}");
        assert!(err.message.contains("`soon` is not a duration"), "{err}");

        let err = parse_str(&format!(
            "{BASE}\n[targets.t]\nplugin = \"files\"\ngrant = {{ process = [\"no-such-program-xyz\"] }}\n"
        ))
        .unwrap_err();
        assert_eq!(err.line, Some(12), "{err}");
        assert!(
            err.message.contains("`no-such-program-xyz` was not found"),
            "{err}"
        );

        let err = parse_str(&format!(
            "{BASE}\n[targets.t]\nplugin = \"files\"\nmemory_limit = \"16GiB\"\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("outside"), "{err}");

        let err = parse_str(&format!(
            "{BASE}\n[targets.t]\nplugin = \"files\"\ngrant = {{ http = [\"http://x/\"] }}\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("without scheme"), "{err}");
    }
}
