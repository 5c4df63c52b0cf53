//! Plugin host benchmark: `cargo bench -p rewind-agent --bench plugin_host`.
//!
//! Measures, on this machine:
//! - a no-op plugin call (instantiate from the pre-instantiated component,
//!   call, drop the store): median and p99 over many calls;
//! - the cold compile time of the `files` plugin (empty cache);
//! - the idle RSS of a process with the host loaded (plugins compiled and
//!   called once), measured in a child process so that nothing else counts.
//!
//! Targets: p99 at most 100 µs per call; idle RSS at most 20 MiB.

use rewind_agent::config::{self, TargetConfig};
use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, PluginHost};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CALLS: usize = 5_000;
const COLD_COMPILES: usize = 5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn build_plugins() -> PathBuf {
    let status = std::process::Command::new(root().join("plugins/build"))
        .status()
        .expect("plugins/build");
    assert!(status.success());
    root().join("target/plugins")
}

fn config(dir: &Path, plugins: &Path) -> config::AgentConfig {
    let text = format!(
        r#"[agent]
name = "bench"
state_dir = "{dir}/state"

[plugins.noop]
path = "{plugins}/fixture_noop.wasm"
allow_unsigned = true

[plugins.files]
path = "{plugins}/files.wasm"
allow_unsigned = true

[targets.noop]
plugin = "noop"

[targets.files]
plugin = "files"
settings = {{ files = ["{dir}/app.conf"] }}
grant = {{ files = ["{dir}"], process = [], docker = [] }}
"#,
        dir = dir.display(),
        plugins = plugins.display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    config::load(&path).unwrap()
}

fn noop_restore() -> Action {
    Action::Restore {
        to: SnapshotRecord {
            data: "{}".into(),
            summary: String::new(),
            taken_at: 0,
        },
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: "bench".into(),
        },
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The child process: load the host and both plugins, call each once, go
/// idle, and print the resident set size.
fn idle_child(dir: &Path, plugins: &Path, cache: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = config(dir, plugins);
    // The parent's cache: a restarted agent finds its plugins compiled.
    let host = PluginHost::new(cache, vec![]).unwrap();
    std::fs::write(dir.join("app.conf"), "x=1\n").unwrap();
    runtime.block_on(async {
        for (name, action) in [("noop", noop_restore()), ("files", Action::Snapshot)] {
            let target = config.targets[name].clone();
            let plugin = host.load(&config.plugins[&target.plugin]).unwrap();
            host.call(&plugin, &target, action, None).await.unwrap();
        }
    });
    let idle = std::env::var("REWIND_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    std::thread::sleep(Duration::from_secs(idle));
    println!("{}", rss_kib());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--idle-child") {
        idle_child(
            Path::new(&args[i + 1]),
            Path::new(&args[i + 2]),
            Path::new(&args[i + 3]),
        );
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let plugins = build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &plugins);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Cold compile of the files plugin, each time into an empty cache.
    let mut compiles = Vec::new();
    for round in 0..COLD_COMPILES {
        let cache = dir.path().join(format!("cold-{round}"));
        let host = PluginHost::new(&cache, vec![]).unwrap();
        let started = Instant::now();
        let loaded = host.load(&config.plugins["files"]).unwrap();
        compiles.push(started.elapsed());
        assert!(!loaded.from_cache);
    }
    compiles.sort();

    // No-op calls.
    let host = PluginHost::new(&config.cache_dir, vec![]).unwrap();
    let target: Arc<TargetConfig> = config.targets["noop"].clone();
    let plugin = host.load(&config.plugins["noop"]).unwrap();
    let mut calls = Vec::with_capacity(CALLS);
    runtime.block_on(async {
        for _ in 0..200 {
            host.call(&plugin, &target, noop_restore(), None)
                .await
                .unwrap();
        }
        for _ in 0..CALLS {
            let started = Instant::now();
            host.call(&plugin, &target, noop_restore(), None)
                .await
                .unwrap();
            calls.push(started.elapsed());
        }
    });
    calls.sort();

    // Idle RSS, in child processes: after a restart (plugins in the compile
    // cache, the steady state) and at a first start (plugins compiled now).
    host.load(&config.plugins["files"]).unwrap();
    let idle_rss = |cache: &Path| -> u64 {
        let child_dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--idle-child")
            .arg(child_dir.path())
            .arg(&plugins)
            .arg(cache)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap()
    };
    let idle_kib = idle_rss(&config.cache_dir);
    let first_start_kib = idle_rss(&dir.path().join("empty-cache"));

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p99 = percentile(&calls, 0.99);
    println!("plugin_host benchmark ({CALLS} no-op calls, {COLD_COMPILES} cold compiles)");
    println!(
        "no-op call (instantiate, call, drop): median {:.1} µs, p99 {:.1} µs, max {:.1} µs  [target p99 <= 100 µs: {}]",
        us(percentile(&calls, 0.5)),
        us(p99),
        us(*calls.last().unwrap()),
        if p99 <= Duration::from_micros(100) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "cold compile of files.wasm ({} KiB): median {:.0} ms, min {:.0} ms",
        std::fs::metadata(plugins.join("files.wasm")).unwrap().len() / 1024,
        percentile(&compiles, 0.5).as_secs_f64() * 1e3,
        compiles[0].as_secs_f64() * 1e3
    );
    println!(
        "idle RSS with the host loaded (2 plugins loaded from the compile cache and called): {:.1} MiB  [target <= 20 MiB: {}]",
        idle_kib as f64 / 1024.0,
        if idle_kib <= 20 * 1024 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "idle RSS at a first start (the same 2 plugins compiled in-process first): {:.1} MiB",
        first_start_kib as f64 / 1024.0
    );
}
