//! Shared helpers for the end-to-end tests: building the plugins once, and
//! writing agent configurations into temporary directories.

use rewind_agent::config::{self, AgentConfig, TargetConfig};
use rewind_agent::host::bindings::SnapshotRecord;
use rewind_agent::host::{Action, ActionOutput, CallError, CallOutput, LoadedPlugin, PluginHost};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tempfile::TempDir;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Build the plugins and fixtures (once per test process) with the same
/// script users run, and return the directory holding the components.
pub fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = std::process::Command::new(root().join("plugins/build"))
            .status()
            .expect("running plugins/build");
        assert!(status.success(), "plugins/build failed: {status}");
        root().join("target/plugins")
    })
}

/// The path of a built plugin or fixture, e.g. `files` or `fixture_noop`.
pub fn plugin(name: &str) -> PathBuf {
    let path = plugins_dir().join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A program of this workspace: `rewind` or `rewind-agent`. The test
/// package builds them (`src/bin/*-under-test.rs`, the same `main` as the
/// shipped programs) with every test run, so they are never stale.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>-under-test,
    // or beside a program of this package (target/<profile>/<program>).
    let file = format!("{name}-under-test");
    let dir = exe.parent().expect("the executable's directory");
    let path = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(&file))
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join(&file));
    assert!(
        path.exists(),
        "{} is missing: cargo builds it for this package's tests",
        path.display()
    );
    path
}

/// A process's resident set size in KiB (VmRSS), while it runs.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A free loopback TCP port, for a server that starts later: taken
/// outside the range the system hands out for outgoing connections (32768
/// and up), so that no client connection takes it in between.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let port = 20_000 + (hasher.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An agent configuration in a temporary directory, with a plugin host.
pub struct Agent {
    pub dir: TempDir,
    pub config: AgentConfig,
    pub host: PluginHost,
}

impl Agent {
    /// An agent whose configuration is `[agent]` (state in the temporary
    /// directory) followed by `rest` (plugins and targets). `{dir}` in `rest`
    /// stands for the temporary directory, `{plugins}` for the built plugins.
    pub fn new(rest: &str) -> Agent {
        let dir = tempfile::tempdir().expect("temporary directory");
        let text = format!(
            "[agent]\nname = \"test-agent\"\nstate_dir = \"{}/state\"\n\n{}",
            dir.path().display(),
            rest.replace("{dir}", &dir.path().display().to_string())
                .replace("{plugins}", &plugins_dir().display().to_string())
        );
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, &text).expect("writing agent.toml");
        let config = config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let host =
            PluginHost::new(&config.cache_dir, config.trusted_keys.clone()).expect("plugin host");
        Agent { dir, config, host }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn target(&self, name: &str) -> Arc<TargetConfig> {
        self.config
            .targets
            .get(name)
            .unwrap_or_else(|| panic!("no target {name}"))
            .clone()
    }

    /// Load the plugin that a target uses, under the agent's policy.
    pub fn load(&self, target: &str) -> Arc<LoadedPlugin> {
        let target = self.target(target);
        self.host
            .load(&self.config.plugins[&target.plugin])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Call an action of a target's plugin.
    pub async fn call(&self, target: &str, action: Action) -> Result<CallOutput, CallError> {
        let plugin = self.load(target);
        self.host
            .call(&plugin, &self.target(target), action, None)
            .await
    }

    /// Snapshot a target, as the record a restore takes; panics on failure.
    pub async fn snapshot(&self, target: &str) -> SnapshotRecord {
        let output = self
            .call(target, Action::Snapshot)
            .await
            .unwrap_or_else(|e| panic!("snapshot of {target}: {e}"));
        let ActionOutput::Captured(captured) = output.output else {
            panic!("not a snapshot: {:?}", output.output)
        };
        SnapshotRecord {
            data: captured.data,
            summary: captured.summary,
            taken_at: 0,
        }
    }
}

/// A plugin table for `Agent::new` that runs a built plugin unsigned.
pub fn unsigned_plugin(name: &str, file: &str) -> String {
    format!("[plugins.{name}]\npath = \"{{plugins}}/{file}.wasm\"\nallow_unsigned = true\n\n")
}

/// Peak resident memory of this process, in KiB (VmHWM).
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

pub use rewind_agent::host;

pub mod alembic;
pub mod cdn;
pub mod disk;
pub mod docker;
pub mod drills;
pub mod etcd;
pub mod fleet;
pub mod ha;
pub mod images;
pub mod platform;
pub mod postgres;
pub mod providers;
pub mod s3;
pub mod scenarios;
pub mod sowknow;
pub mod sweep;
pub mod wait;
pub mod web;

/// The file name the plugin SDK's `step_file_name` gives a step id (its
/// readable part, then 12 hex digits of the id's SHA-256), to find what a
/// plugin kept for a step.
pub fn step_file_name(step_id: &str) -> String {
    use sha2::Digest;
    let readable: String = step_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let digest = hex::encode(sha2::Sha256::digest(step_id.as_bytes()));
    format!("{readable}-{}", &digest[..12])
}
