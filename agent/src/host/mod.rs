//! The plugin host: loads, verifies and compiles plugins, and runs one action
//! of one plugin for one target in a fresh, limited sandbox.
//!
//! Sandbox by construction: one store per call, holding only the target's
//! grant; memory, tables and instances limited; an epoch deadline stops
//! runaway code and an outer timeout stops a call stuck in a host function; a
//! component that imports a capability its target does not grant is refused
//! before it runs.

pub mod bindings;
mod cache;
pub mod caps;
mod errors;
mod imports;
pub mod state;

pub use state::{CapCall, Effect, Fault, FaultRule, ScriptedRun, Tape};
pub mod tls;

pub use caps::log::LogLine;
pub use caps::progress::ProgressReport;
pub use errors::{CallError, LoadError};
pub use imports::{Capability, capability_of as imports_capability};

use crate::config::{PluginConfig, TargetConfig};
use crate::signing::{self, SignatureStatus};
use bindings::{
    Captured, Outcome, PluginInfo, Preview, RestoreOptions, RollbackPluginPre, SnapshotRecord,
    Target,
};
use cache::CompileCache;
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use state::CallState;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
};

/// How many plugin calls one agent runs at once (the size of the pools).
pub const MAX_CONCURRENT_CALLS: u32 = 32;

/// The most bytes one call may pass between the plugin and the agent (its
/// arguments and its result): wasmtime's hostcall fuel, set explicitly.
pub const HOSTCALL_COPY_LIMIT: usize = 128 << 20;

/// How often the engine's epoch advances: the resolution of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// How long past its deadline a call stuck in a host function may take
/// before the host gives up on it.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// Receives progress reports of running calls.
pub type ProgressSink = Arc<dyn Fn(ProgressReport) + Send + Sync>;

/// One action of the rollback contract, with its arguments.
#[derive(Debug, Clone)]
pub enum Action {
    Describe,
    Snapshot,
    Plan {
        to: SnapshotRecord,
    },
    Restore {
        to: SnapshotRecord,
        options: RestoreOptions,
    },
    Restart {
        parts: Vec<String>,
    },
    Verify {
        to: SnapshotRecord,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Describe => "describe",
            Action::Snapshot => "snapshot",
            Action::Plan { .. } => "plan",
            Action::Restore { .. } => "restore",
            Action::Restart { .. } => "restart",
            Action::Verify { .. } => "verify",
        }
    }
}

/// What an action returned.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ActionOutput {
    Info(PluginInfo),
    Captured(Captured),
    Preview(Preview),
    Outcome(Outcome),
}

impl ActionOutput {
    /// The output as JSON with the contract's own words: enum cases in the
    /// WIT's kebab-case (`restart`, `data-loss`), as error kinds are.
    pub fn to_wit_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        wit_case(&mut value);
        value
    }
}

/// Rust's names of WIT enum cases (`DataLoss`) as the WIT spells them
/// (`data-loss`), wherever a string is a whole case name. Field names and
/// free text are left alone: only the values of `actions`, `risk` and
/// `level` are case names.
fn wit_case(value: &mut serde_json::Value) {
    fn kebab(name: &str) -> String {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('-');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }
    match value {
        serde_json::Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match (key.as_str(), &mut *field) {
                    ("risk" | "level", serde_json::Value::String(s)) => *s = kebab(s),
                    ("actions", serde_json::Value::Array(items)) => {
                        for item in items {
                            if let serde_json::Value::String(s) = item {
                                *s = kebab(s);
                            }
                        }
                    }
                    _ => wit_case(field),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(wit_case),
        _ => {}
    }
}

/// A successful call: the action's output and what the plugin logged.
#[derive(Debug, Clone, Serialize)]
pub struct CallOutput {
    pub output: ActionOutput,
    pub logs: Vec<LogLine>,
    pub elapsed_ms: u64,
}

/// A plugin loaded, verified and compiled, ready to instantiate.
pub struct LoadedPlugin {
    pub name: String,
    pub path: PathBuf,
    pub digest: String,
    pub signature: SignatureStatus,
    /// The interfaces the component imports, e.g. `rewind:plugin/files@0.1.0`.
    pub imports: Vec<String>,
    pub from_cache: bool,
    pre: Result<RollbackPluginPre<CallState>, String>,
}

impl LoadedPlugin {
    /// The capabilities this plugin needs that `target` does not grant.
    pub fn ungranted(&self, target: &TargetConfig) -> Vec<(String, Capability)> {
        imports::ungranted(&self.imports, target)
    }
}

pub struct PluginHost {
    engine: Engine,
    linker: Linker<CallState>,
    cache: CompileCache,
    trusted_keys: Vec<VerifyingKey>,
    loaded: Mutex<HashMap<String, Arc<LoadedPlugin>>>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    /// A host whose compiled plugins are cached in `cache_dir`, accepting
    /// plugins signed by `trusted_keys`.
    pub fn new(cache_dir: &Path, trusted_keys: Vec<VerifyingKey>) -> Result<PluginHost, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(512 * 1024);
        // Instances, memories, tables and fiber stacks come from pools of
        // reserved slots that are reused: a call then costs no mmap/munmap.
        // The pools bound how many calls run at once; each call's memory is
        // still limited by its target (the limiter), the pool's slot size
        // only caps the largest limit a target may set.
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(MAX_CONCURRENT_CALLS)
            .total_core_instances(MAX_CONCURRENT_CALLS * 16)
            .max_core_instances_per_component(16)
            .total_memories(MAX_CONCURRENT_CALLS * 2)
            .max_memories_per_component(2)
            .total_tables(MAX_CONCURRENT_CALLS * 4)
            .max_tables_per_component(4)
            .total_stacks(MAX_CONCURRENT_CALLS)
            .max_memory_size(crate::config::MAX_MEMORY_LIMIT.0 as usize)
            // Where the kernel can tell which pages a call dirtied (Linux
            // 6.7+), only those are reset and the first MiBs stay resident,
            // so the next call takes no page faults on its stack and data.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;

        let mut linker: Linker<CallState> = Linker::new(&engine);
        let link = |r: wasmtime::Result<()>| r.map_err(|e| LoadError::Engine(e.to_string()));
        link(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        link(wasmtime_wasi_http::p2::add_only_http_to_linker_async(
            &mut linker,
        ))?;
        use bindings::rewind::plugin::{
            docker, files, log, postgres, process, progress, secrets, types,
        };
        link(types::add_to_linker::<_, HasSelf<CallState>>(
            &mut linker,
            |s| s,
        ))?;
        link(log::add_to_linker::<_, HasSelf<CallState>>(
            &mut linker,
            |s| s,
        ))?;
        link(progress::add_to_linker::<_, HasSelf<CallState>>(
            &mut linker,
            |s| s,
        ))?;
        link(files::add_to_linker::<_, HasSelf<CallState>>(
            &mut linker,
            |s| s,
        ))?;
        link(process::add_to_linker::<_, HasSelf<CallState>>(
            &mut linker,
            |s| s,
        ))?;
        link(secrets::add_to_linker::<_, HasSelf<CallState>>(
            &mut linker,
            |s| s,
        ))?;
        link(docker::add_to_linker::<_, HasSelf<CallState>>(
            &mut linker,
            |s| s,
        ))?;
        link(postgres::add_to_linker::<_, HasSelf<CallState>>(
            &mut linker,
            |s| s,
        ))?;

        let cache = CompileCache::new(&engine, cache_dir)
            .map_err(|e| LoadError::Cache(format!("{}: {e}", cache_dir.display())))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(PluginHost {
            engine,
            linker,
            cache,
            trusted_keys,
            loaded: Mutex::new(HashMap::new()),
            ticker_stop,
        })
    }

    /// Load a configured plugin: check its pinned digest and its signature
    /// under the agent's policy, then compile it (or take it from the cache).
    pub fn load(&self, plugin: &PluginConfig) -> Result<Arc<LoadedPlugin>, LoadError> {
        let bytes = std::fs::read(&plugin.path).map_err(|e| LoadError::Read {
            origin: plugin.origin.clone(),
            plugin: plugin.name.clone(),
            path: plugin.path.clone(),
            error: e.to_string(),
        })?;
        let digest = signing::digest(&bytes);
        if let Some(pin) = &plugin.sha256
            && *pin != digest
        {
            return Err(LoadError::PinMismatch {
                plugin: plugin.name.clone(),
                expected: pin.clone(),
                actual: digest,
            });
        }
        let signature = self.signature_of(&plugin.path, &bytes);
        let accepted = signature.is_valid()
            || (signature == SignatureStatus::Unsigned && plugin.allow_unsigned);
        if !accepted {
            return Err(LoadError::Signature {
                origin: plugin.origin.clone(),
                plugin: plugin.name.clone(),
                path: plugin.path.clone(),
                status: signature,
                allow_unsigned: plugin.allow_unsigned,
            });
        }
        if !signature.is_valid() {
            tracing::warn!(
                plugin = plugin.name,
                "running an unsigned plugin (allow_unsigned = true)"
            );
        }
        self.compile(
            &plugin.origin,
            &plugin.name,
            &plugin.path,
            bytes,
            digest,
            signature,
        )
    }

    /// Load a plugin file for inspection only: its signature is reported, not enforced.
    pub fn inspect(&self, path: &Path) -> Result<Arc<LoadedPlugin>, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read {
            origin: path.display().to_string(),
            plugin: path.display().to_string(),
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
        let digest = signing::digest(&bytes);
        let signature = self.signature_of(path, &bytes);
        let name = path
            .file_stem()
            .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
        self.compile(
            &path.display().to_string(),
            &name,
            path,
            bytes,
            digest,
            signature,
        )
    }

    fn signature_of(&self, path: &Path, bytes: &[u8]) -> SignatureStatus {
        match std::fs::read(signing::signature_path(path)) {
            Ok(sig) => signing::verify(bytes, Some(&sig), &self.trusted_keys),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SignatureStatus::Unsigned,
            Err(e) => SignatureStatus::Malformed {
                reason: e.to_string(),
            },
        }
    }

    fn compile(
        &self,
        origin: &str,
        name: &str,
        path: &Path,
        bytes: Vec<u8>,
        digest: String,
        signature: SignatureStatus,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let key = format!("{name}@{digest}");
        if let Some(loaded) = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(loaded.clone());
        }
        let (component, from_cache) =
            self.cache
                .load(&self.engine, &digest, &bytes)
                .map_err(|e| LoadError::Compile {
                    origin: origin.to_string(),
                    plugin: name.to_string(),
                    path: path.to_path_buf(),
                    error: format!("{e:#}"),
                })?;
        let imports = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        // A component importing a capability this agent does not provide
        // cannot be pre-instantiated; that is reported when a target uses it,
        // after the grant check has had its say.
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("{e:#}"))
            .and_then(|pre| RollbackPluginPre::new(pre).map_err(|e| format!("{e:#}")));
        let loaded = Arc::new(LoadedPlugin {
            name: name.to_string(),
            path: path.to_path_buf(),
            digest,
            signature,
            imports,
            from_cache,
            pre,
        });
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Run one action of a plugin for a target, in a fresh sandbox.
    pub async fn call(
        &self,
        plugin: &LoadedPlugin,
        target: &Arc<TargetConfig>,
        action: Action,
        progress: Option<ProgressSink>,
    ) -> Result<CallOutput, CallError> {
        if let Some((interface, capability)) = plugin.ungranted(target).into_iter().next() {
            let context = errors::Context::new(plugin, target, &action);
            return Err(CallError::NotGranted {
                context,
                interface,
                capability,
            });
        }
        self.call_unchecked(plugin, target, action, progress).await
    }

    /// A plugin's `describe`, under an empty grant: describe must touch
    /// nothing, and every capability refuses what an empty grant does not allow.
    pub async fn describe(
        &self,
        plugin: &LoadedPlugin,
        scratch_dir: &Path,
    ) -> Result<PluginInfo, CallError> {
        let probe = Arc::new(TargetConfig {
            name: "describe".into(),
            plugin: plugin.name.clone(),
            settings_json: "{}".into(),
            memory_limit: crate::config::DEFAULT_MEMORY_LIMIT,
            deadline: Duration::from_secs(10),
            state_dir: scratch_dir.to_path_buf(),
            state_quota: crate::config::DEFAULT_STATE_QUOTA,
            state_files: crate::config::DEFAULT_STATE_FILES,
            secrets: None,
            seal_key: scratch_dir.join("docker-seal.key"),
            grant: crate::config::Grant::default(),
        });
        match self
            .call_unchecked(plugin, &probe, Action::Describe, None)
            .await?
            .output
        {
            ActionOutput::Info(info) => Ok(info),
            other => unreachable!("describe returned {other:?}"),
        }
    }

    async fn call_unchecked(
        &self,
        plugin: &LoadedPlugin,
        target: &Arc<TargetConfig>,
        action: Action,
        progress: Option<ProgressSink>,
    ) -> Result<CallOutput, CallError> {
        self.call_taped(plugin, target, action, progress, None)
            .await
            .0
    }

    /// Run one action recording its capability calls (and, with
    /// `tape.stop_at`, interrupting it there): the outcome and the tape.
    pub async fn call_recorded(
        &self,
        plugin: &LoadedPlugin,
        target: &Arc<TargetConfig>,
        action: Action,
        stop_at: Option<usize>,
    ) -> (Result<CallOutput, CallError>, Tape) {
        let tape = Tape {
            stop_at,
            ..Tape::default()
        };
        self.call_with_tape(plugin, target, action, tape).await
    }

    /// Run one action on a tape: its calls recorded, its faults injected,
    /// its process runs scripted. The outcome and the tape.
    pub async fn call_with_tape(
        &self,
        plugin: &LoadedPlugin,
        target: &Arc<TargetConfig>,
        action: Action,
        tape: Tape,
    ) -> (Result<CallOutput, CallError>, Tape) {
        if let Some((interface, capability)) = plugin.ungranted(target).into_iter().next() {
            let context = errors::Context::new(plugin, target, &action);
            let refused = CallError::NotGranted {
                context,
                interface,
                capability,
            };
            return (Err(refused), tape);
        }
        let (result, tape) = self
            .call_taped(plugin, target, action, None, Some(tape))
            .await;
        (result, tape.unwrap_or_default())
    }

    async fn call_taped(
        &self,
        plugin: &LoadedPlugin,
        target: &Arc<TargetConfig>,
        action: Action,
        progress: Option<ProgressSink>,
        tape: Option<Tape>,
    ) -> (Result<CallOutput, CallError>, Option<Tape>) {
        let context = errors::Context::new(plugin, target, &action);
        let pre = match plugin.pre.as_ref() {
            Ok(pre) => pre,
            Err(e) => {
                let error = CallError::Instantiate {
                    context: context.clone(),
                    error: e.clone(),
                };
                return (Err(error), tape);
            }
        };

        let started = Instant::now();
        let deadline = started + target.deadline;
        let mut state = CallState::new(&plugin.name, target.clone(), progress, deadline);
        state.set_tape(tape);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(HOSTCALL_COPY_LIMIT);
        store.set_epoch_deadline(ticks(target.deadline));
        store.epoch_deadline_trap();

        let wit_target = Target {
            name: target.name.clone(),
            settings: target.settings_json.clone(),
        };
        let run = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let rollback = instance.rewind_plugin_rollback();
            Ok::<_, wasmtime::Error>(match action {
                Action::Describe => Ok(ActionOutput::Info(
                    rollback.call_describe(&mut store).await?,
                )),
                Action::Snapshot => rollback
                    .call_snapshot(&mut store, &wit_target)
                    .await?
                    .map(ActionOutput::Captured),
                Action::Plan { to } => rollback
                    .call_plan(&mut store, &wit_target, &to)
                    .await?
                    .map(ActionOutput::Preview),
                Action::Restore { to, options } => rollback
                    .call_restore(&mut store, &wit_target, &to, &options)
                    .await?
                    .map(ActionOutput::Outcome),
                Action::Restart { parts } => rollback
                    .call_restart(&mut store, &wit_target, &parts)
                    .await?
                    .map(ActionOutput::Outcome),
                Action::Verify { to } => rollback
                    .call_verify(&mut store, &wit_target, &to)
                    .await?
                    .map(ActionOutput::Outcome),
            })
        };
        let result = tokio::time::timeout(target.deadline + DEADLINE_GRACE, run).await;
        let elapsed = started.elapsed();
        let mut state = store.into_data();
        let tape = state.take_tape();
        let mut logs: Vec<LogLine> = if state.revealed.is_empty() {
            state.log.finish()
        } else {
            state
                .log
                .finish()
                .iter()
                .map(|l| LogLine {
                    level: l.level,
                    message: state.mask(&l.message),
                })
                .collect()
        };
        if state.progress_dropped > 0 {
            logs.push(LogLine {
                level: "warn",
                message: format!(
                    "{} progress reports dropped: reports closer together than {} ms are (the progress limit)",
                    state.progress_dropped,
                    caps::progress::MIN_INTERVAL.as_millis()
                ),
            });
        }
        let outcome = match result {
            Ok(Ok(Ok(output))) => Ok(CallOutput {
                output,
                logs,
                elapsed_ms: elapsed.as_millis() as u64,
            }),
            Ok(Ok(Err(error))) => {
                let mut error = errors::PluginFailure::from(error);
                error.message = state.mask(&error.message);
                Err(CallError::Plugin {
                    context,
                    error,
                    logs,
                })
            }
            Ok(Err(trap)) => Err(classify(
                trap,
                context,
                target,
                state.limiter.memory_refused,
                // A panic's text may quote a secret handed out in the call.
                &state.mask(&state.stderr.contents()),
                logs,
            )),
            Err(_) => Err(CallError::Deadline {
                context,
                deadline: target.deadline,
                logs,
            }),
        };
        (outcome, tape)
    }
}

/// Turn a trap into the error an operator can act on.
fn classify(
    error: wasmtime::Error,
    context: errors::Context,
    target: &TargetConfig,
    memory_refused: Option<usize>,
    stderr: &str,
    logs: Vec<LogLine>,
) -> CallError {
    if let Some(wanted) = memory_refused {
        return CallError::MemoryLimit {
            context,
            limit: target.memory_limit,
            wanted: wanted as u64,
            logs,
        };
    }
    if format!("{error:#}").contains("too much data is being copied between the host and the guest")
    {
        return CallError::TooLarge {
            context,
            limit: HOSTCALL_COPY_LIMIT,
            logs,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Deadline {
            context,
            deadline: target.deadline,
            logs,
        },
        Some(Trap::StackOverflow) => CallError::StackOverflow { context, logs },
        trap => {
            let panic = stderr
                .lines()
                .find(|l| l.contains("panicked at"))
                .map(|line| {
                    let rest: Vec<&str> = stderr
                        .lines()
                        .skip_while(|l| *l != line)
                        .skip(1)
                        .take(3)
                        .collect();
                    format!("{} {}", line.trim(), rest.join(" ").trim())
                        .trim()
                        .to_string()
                });
            let message = match (panic, trap) {
                (Some(panic), _) => format!("the plugin panicked: {panic}"),
                (None, Some(Trap::MemoryOutOfBounds)) => {
                    "the plugin accessed memory out of bounds (often its stack overflowing from unbounded recursion)".to_string()
                }
                (None, Some(trap)) => format!("the plugin trapped: {trap}"),
                (None, None) => format!("{error:#}"),
            };
            CallError::Crashed {
                context,
                message,
                logs,
            }
        }
    }
}

fn ticks(deadline: Duration) -> u64 {
    (deadline.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64
}

fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("rewind-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindings::rewind::plugin::types::{Action as WitAction, Change, Risk};

    #[test]
    fn json_output_speaks_the_wits_words() {
        let info = ActionOutput::Info(PluginInfo {
            name: "x".into(),
            version: "1.0.0".into(),
            description: "Restart stays as written".into(),
            actions: vec![WitAction::Snapshot, WitAction::Restart],
        })
        .to_wit_json();
        assert_eq!(info["actions"], serde_json::json!(["snapshot", "restart"]));
        assert_eq!(info["description"], "Restart stays as written");
        let preview = ActionOutput::Preview(Preview {
            changes: vec![Change {
                subject: "db".into(),
                summary: "DataLoss in words".into(),
                detail: None,
                risk: Risk::DataLoss,
            }],
            risk: Risk::DataLoss,
            data_loss_window_seconds: Some(5),
        })
        .to_wit_json();
        assert_eq!(preview["risk"], "data-loss");
        assert_eq!(preview["changes"][0]["risk"], "data-loss");
        assert_eq!(preview["changes"][0]["summary"], "DataLoss in words");
    }
}
