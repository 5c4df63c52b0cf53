//! The `rewind-agent` command line: run the agent, and try, inspect and sign
//! plugins locally.

use crate::config;
use crate::host::bindings::{RestoreOptions, SnapshotRecord};
use crate::host::{Action, PluginHost};
use crate::signing;
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "rewind-agent",
    version,
    about = "rewind's agent: runs sandboxed rollback plugins on this host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the coordinator and run the steps it sends, until stopped.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Work with plugin files directly, without a coordinator.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run one action of a plugin for a target of the agent configuration and
    /// print the result as JSON (exit 1 when the action fails).
    Run {
        plugin: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        target: String,
        /// describe, snapshot, plan, restore, restart or verify.
        action: String,
        /// For plan, restore and verify: the JSON printed by a `snapshot` run.
        #[arg(long)]
        snapshot: Option<PathBuf>,
        /// For restore: allow changes that lose data.
        #[arg(long)]
        confirm_data_loss: bool,
        /// For restore: apply even where the target changed since the plan.
        #[arg(long)]
        force: bool,
        /// For restart: the parts to restart (all when none).
        #[arg(long = "part")]
        parts: Vec<String>,
        /// For restore: the step id (as the coordinator would send it; the
        /// same id again is a retry of the same step).
        #[arg(long)]
        step_id: Option<String>,
    },
    /// Run a plugin against a test case (case.toml): a temporary tree,
    /// scripted program runs, faults on chosen capability calls, and the
    /// steps with what each must give. Exit 1 when a step fails.
    Test {
        plugin: PathBuf,
        #[arg(long)]
        script: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a new plugin project that builds as it is: source with every
    /// action, its tests, an agent config for trying it, a README.
    New {
        /// The plugin's name: lowercase letters, digits and `-`.
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::scaffold::Lang,
        /// Where to make it (it goes in <dir>/<name>).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// rewind's plugins/sdk directory (default: the one this program was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Check that a plugin keeps the contract on a real target: describe,
    /// plan without writes, restore + verify, idempotence, interrupted
    /// restores, typed errors, no secrets in output. With --snapshot (taken
    /// before the target changed) the restore checks move the target to it
    /// and back. Exit 1 when a check fails.
    Check {
        plugin: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        target: String,
        /// The JSON printed by an earlier `snapshot` run of this target.
        #[arg(long)]
        snapshot: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a plugin's describe info, imports, digest and signature status.
    Inspect {
        plugin: PathBuf,
        /// Agent configuration whose trusted keys check the signature.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create an ed25519 key pair: <out>.key (secret) and <out>.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a plugin: writes <plugin>.sig beside it.
    Sign {
        plugin: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

/// The `rewind-agent` program.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run_agent(&config),
        Command::Plugin(command) => plugin_command(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_agent(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = config::load(config_path)?;
    if config
        .trusted_keys
        .iter()
        .any(|k| hex::encode(k.as_bytes()) == signing::DEVELOPMENT_KEY)
    {
        eprintln!(
            "warning: {} trusts rewind's published development key (deploy/dev-signing): anyone \
             can sign a plugin with it; trust your own key in production",
            config_path.display()
        );
    }
    let runtime = runtime()?;
    runtime.block_on(async {
        let host = Arc::new(PluginHost::new(&config.cache_dir, config.trusted_keys.clone())?);
        // Stopped when the agent stops.
        let _metrics = match config.metrics {
            Some(address) => {
                let server = rewind_proto::metrics::serve(address, crate::metrics::registry())
                    .await
                    .map_err(anyhow::Error::msg)?;
                eprintln!("metrics on http://{address}/metrics");
                Some(server)
            }
            None => None,
        };
        let agent = crate::daemon::Agent::new(config, host)?;
        let recovered = agent.recover().await?;
        if recovered > 0 {
            eprintln!("settled {recovered} step(s) interrupted by the previous stop");
        }
        eprintln!("agent {} running", agent.name());
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        agent.run(shutdown).await;
        Ok(ExitCode::SUCCESS)
    })
}

fn plugin_command(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Run {
            plugin,
            config,
            target,
            action,
            snapshot,
            confirm_data_loss,
            force,
            parts,
            step_id,
        } => {
            let step_id = step_id.unwrap_or_else(|| format!("local-{}", std::process::id()));
            let action = parse_action(
                &action,
                snapshot.as_deref(),
                confirm_data_loss,
                force,
                parts,
                step_id,
            )?;
            run(&plugin, &config, &target, action)
        }
        PluginCommand::Test {
            plugin,
            script,
            json: json_out,
        } => {
            let steps = runtime()?.block_on(crate::testkit::run_case(&plugin, &script))?;
            let failed = steps.iter().filter(|s| !s.passed).count();
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "passed": failed == 0, "steps": steps })
                    )?
                );
            } else {
                println!("{}:", script.display());
                for step in &steps {
                    let mark = if step.passed { "ok  " } else { "FAIL" };
                    println!("  {mark} {}: {}", step.step, step.detail);
                }
                println!(
                    "{}",
                    if failed == 0 {
                        format!("{} step(s) passed", steps.len())
                    } else {
                        format!("{failed} of {} step(s) failed", steps.len())
                    }
                );
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        PluginCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => {
            let made = crate::scaffold::new(&name, lang, &dir, sdk)?;
            println!(
                "made {}: its README.md has the commands to test, build, check and sign it",
                made.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Check {
            plugin,
            config,
            target,
            snapshot,
            json,
        } => check(&plugin, &config, &target, snapshot.as_deref(), json),
        PluginCommand::Inspect { plugin, config } => inspect(&plugin, config.as_deref()),
        PluginCommand::Keygen { out } => keygen(&out),
        PluginCommand::Sign { plugin, key } => sign(&plugin, &key),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn parse_action(
    name: &str,
    snapshot: Option<&Path>,
    confirm_data_loss: bool,
    force: bool,
    parts: Vec<String>,
    step_id: String,
) -> anyhow::Result<Action> {
    let to = || -> anyhow::Result<SnapshotRecord> {
        let path = snapshot.with_context(|| {
            format!("{name} needs --snapshot <file>, the output of a snapshot run")
        })?;
        read_snapshot(path)
    };
    Ok(match name {
        "describe" => Action::Describe,
        "snapshot" => Action::Snapshot,
        "plan" => Action::Plan { to: to()? },
        "restore" => Action::Restore {
            to: to()?,
            options: RestoreOptions {
                confirm_data_loss,
                force,
                step_id,
            },
        },
        "restart" => Action::Restart { parts },
        "verify" => Action::Verify { to: to()? },
        other => {
            bail!("unknown action `{other}` (describe, snapshot, plan, restore, restart, verify)")
        }
    })
}

/// Read the JSON printed by `plugin run ... snapshot`.
fn read_snapshot(path: &Path) -> anyhow::Result<SnapshotRecord> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let field = |name: &str| value.pointer(name).cloned();
    let (Some(serde_json::Value::String(data)), Some(serde_json::Value::String(summary))) =
        (field("/result/data"), field("/result/summary"))
    else {
        bail!(
            "{}: not the output of a successful snapshot run (no result.data / result.summary)",
            path.display()
        );
    };
    let taken_at = field("/taken_at").and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(SnapshotRecord {
        data,
        summary,
        taken_at,
    })
}

/// The agent configuration's target, and the plugin file loaded for it
/// (with a warning when it is not the file the configuration names).
fn load_for_target(
    plugin_path: &Path,
    config_path: &Path,
    target_name: &str,
) -> anyhow::Result<(
    PluginHost,
    Arc<crate::host::LoadedPlugin>,
    Arc<config::TargetConfig>,
)> {
    let config = config::load(config_path)?;
    let target = config.targets.get(target_name).cloned().with_context(|| {
        format!(
            "{}: no target `{target_name}` (targets: {})",
            config_path.display(),
            config
                .targets
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let mut plugin_config = config.plugins[&target.plugin].clone();
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if !same(&plugin_config.path, plugin_path) {
        eprintln!(
            "warning: running {}, not {} that plugin `{}` of {} names (its pin and signature checks apply to the file run)",
            plugin_path.display(),
            plugin_config.path.display(),
            target.plugin,
            config_path.display()
        );
    }
    plugin_config.path = plugin_path.to_path_buf();
    let host = PluginHost::new(&config.cache_dir, config.trusted_keys.clone())?;
    let plugin = host.load(&plugin_config)?;
    Ok((host, plugin, target))
}

fn check(
    plugin_path: &Path,
    config_path: &Path,
    target_name: &str,
    snapshot: Option<&Path>,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let to = snapshot.map(read_snapshot).transpose()?;
    let (host, plugin, target) = load_for_target(plugin_path, config_path, target_name)?;
    let checks = runtime()?.block_on(crate::conformance::run(&host, &plugin, &target, to));
    let failed = checks.iter().filter(|c| c.status == "failed").count();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "plugin": plugin.name,
                "digest": format!("sha256:{}", plugin.digest),
                "target": target.name,
                "passed": failed == 0,
                "checks": checks,
            }))?
        );
    } else {
        println!("conformance of {} on target {}:", plugin.name, target.name);
        for c in &checks {
            let mark = match c.status {
                "passed" => "ok  ",
                "failed" => "FAIL",
                _ => "skip",
            };
            println!("  {mark} {}: {}", c.name, c.detail);
        }
        println!(
            "{}",
            if failed == 0 {
                "every check passed".to_string()
            } else {
                format!("{failed} check(s) failed")
            }
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run(
    plugin_path: &Path,
    config_path: &Path,
    target_name: &str,
    action: Action,
) -> anyhow::Result<ExitCode> {
    let (host, plugin, target) = load_for_target(plugin_path, config_path, target_name)?;
    let action_name = action.name();
    let taken_at = crate::units::now_secs();
    let progress: crate::host::ProgressSink = Arc::new(|report| {
        eprintln!(
            "progress: {}{}",
            report.detail,
            report
                .percent
                .map(|p| format!(" ({p}%)"))
                .unwrap_or_default()
        )
    });
    let result = runtime()?.block_on(host.call(&plugin, &target, action, Some(progress)));
    let mut report = json!({
        "plugin": plugin.name,
        "digest": format!("sha256:{}", plugin.digest),
        "target": target.name,
        "action": action_name,
    });
    let code = match result {
        Ok(output) => {
            report["ok"] = json!(true);
            report["result"] = output.output.to_wit_json();
            report["logs"] = serde_json::to_value(&output.logs)?;
            report["elapsed_ms"] = json!(output.elapsed_ms);
            if action_name == "snapshot" {
                report["taken_at"] = json!(taken_at);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            report["ok"] = json!(false);
            report["error"] = json!({ "kind": error.kind(), "message": error.to_string() });
            report["logs"] = serde_json::to_value(error.logs())?;
            ExitCode::from(1)
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(code)
}

fn inspect(plugin_path: &Path, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    // Without a configuration, a private directory of this call's: no
    // directory others could have prepared is loaded from.
    let private = tempfile::Builder::new()
        .prefix("rewind-agent-inspect-")
        .tempdir()?;
    let (cache_dir, trusted) = match config_path {
        Some(path) => {
            let config = config::load(path)?;
            (config.cache_dir, config.trusted_keys)
        }
        None => (private.path().join("cache"), Vec::new()),
    };
    let host = PluginHost::new(&cache_dir, trusted)?;
    let plugin = host.inspect(plugin_path)?;
    let describe = runtime()?.block_on(host.describe(&plugin, &cache_dir.join("describe-scratch")));
    let imports: Vec<_> = plugin
        .imports
        .iter()
        .map(|i| json!({ "interface": i, "capability": crate::host::imports_capability(i) }))
        .collect();
    let report = json!({
        "path": plugin.path,
        "digest": format!("sha256:{}", plugin.digest),
        "signature": plugin.signature,
        "signature_text": plugin.signature.to_string(),
        "imports": imports,
        "describe": match describe {
            Ok(info) => crate::host::ActionOutput::Info(info).to_wit_json(),
            Err(e) => json!({ "error": e.to_string() }),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = signing::generate_key();
    let secret_path = out.with_extension("key");
    let public_path = out.with_extension("pub");
    let mut secret = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten)",
                secret_path.display()
            )
        })?;
    writeln!(secret, "{}", hex::encode(key.to_bytes()))?;
    std::fs::write(
        &public_path,
        format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
    )?;
    println!(
        "secret key: {}\npublic key: {} (add it to trusted_keys)",
        secret_path.display(),
        public_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn sign(plugin: &Path, key_path: &Path) -> anyhow::Result<ExitCode> {
    let key_text = std::fs::read_to_string(key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    let key = signing::parse_signing_key(&key_text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
    let bytes = std::fs::read(plugin).with_context(|| format!("reading {}", plugin.display()))?;
    let signature = signing::sign(&bytes, &key);
    let path = signing::signature_path(plugin);
    std::fs::write(&path, serde_json::to_string_pretty(&signature)? + "\n")?;
    println!(
        "signed {} ({}) -> {}",
        plugin.display(),
        signature.digest,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
