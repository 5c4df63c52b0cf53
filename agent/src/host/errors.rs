//! Errors of loading and calling plugins, each naming the plugin, the target
//! and the action, and saying what to do next.

use crate::config::TargetConfig;
use crate::host::bindings::PluginError;
use crate::host::{Action, Capability, LoadedPlugin, LogLine};
use crate::signing::SignatureStatus;
use crate::units::ByteSize;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error("plugin cache: {0}")]
    Cache(String),
    #[error("{origin}: plugin {plugin}: cannot read {}: {error}", path.display())]
    Read {
        origin: String,
        plugin: String,
        path: PathBuf,
        error: String,
    },
    #[error(
        "plugin {plugin}: refused: its SHA-256 is {actual} but the configuration pins {expected}"
    )]
    PinMismatch {
        plugin: String,
        expected: String,
        actual: String,
    },
    #[error("{origin}: plugin {plugin}: refused: {}: {status}{}", path.display(), signature_help(status, *allow_unsigned, path, plugin))]
    Signature {
        origin: String,
        plugin: String,
        path: PathBuf,
        status: SignatureStatus,
        allow_unsigned: bool,
    },
    #[error("{origin}: plugin {plugin}: {} is not a rewind plugin component: {error}{}", path.display(),
        if error.contains("component parser") || error.contains("core module") {
            " (it is a core WebAssembly module: build the plugin for wasm32-wasip2, or wrap it with `wasm-tools component new`)"
        } else { "" })]
    Compile {
        origin: String,
        plugin: String,
        path: PathBuf,
        error: String,
    },
}

/// The ways out of a refused signature.
fn signature_help(
    status: &SignatureStatus,
    allow_unsigned: bool,
    path: &std::path::Path,
    plugin: &str,
) -> String {
    match status {
        SignatureStatus::Unsigned if !allow_unsigned => format!(
            "; either sign it (`rewind-agent plugin sign {} --key <your.key>`, or \
             `plugins/build --sign-dev` for the development key the examples trust) and list \
             the signer's public key in [agent] trusted_keys, or set allow_unsigned = true \
             under [plugins.{plugin}] to run it unsigned",
            path.display()
        ),
        SignatureStatus::UnknownKey { .. } => {
            "; if you trust its signer, add that public key to [agent] trusted_keys".to_string()
        }
        _ => String::new(),
    }
}

/// Who was called for what: every call error carries it.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub plugin: String,
    pub digest: String,
    pub target: String,
    pub action: &'static str,
}

impl Context {
    pub fn new(plugin: &LoadedPlugin, target: &TargetConfig, action: &Action) -> Context {
        Context {
            plugin: plugin.name.clone(),
            digest: plugin.digest.clone(),
            target: target.name.clone(),
            action: action.name(),
        }
    }
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin {} on target {}: {}",
            self.plugin, self.target, self.action
        )
    }
}

/// A plugin's own typed error, as the contract defines it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PluginFailure {
    /// `invalid-settings`, `unsupported`, `unavailable`, `denied`, `not-found`,
    /// `conflict`, `needs-confirmation`, `verification-failed` or `failed`.
    pub kind: &'static str,
    pub message: String,
}

impl From<PluginError> for PluginFailure {
    fn from(error: PluginError) -> Self {
        let (kind, message) = match error {
            PluginError::InvalidSettings(m) => ("invalid-settings", m),
            PluginError::Unsupported(m) => ("unsupported", m),
            PluginError::Unavailable(m) => ("unavailable", m),
            PluginError::Denied(m) => ("denied", m),
            PluginError::NotFound(m) => ("not-found", m),
            PluginError::Conflict(m) => ("conflict", m),
            PluginError::NeedsConfirmation(m) => ("needs-confirmation", m),
            PluginError::VerificationFailed(m) => ("verification-failed", m),
            PluginError::Failed(m) => ("failed", m),
        };
        PluginFailure { kind, message }
    }
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{context} failed: {error}")]
    Plugin {
        context: Context,
        error: PluginFailure,
        logs: Vec<LogLine>,
    },
    #[error("{context} refused before it ran: the plugin imports {interface}, {}", not_granted_advice(*capability, &context.target))]
    NotGranted {
        context: Context,
        interface: String,
        capability: Capability,
    },
    #[error("{context}: the plugin cannot be instantiated on this agent: {error}")]
    Instantiate { context: Context, error: String },
    #[error("{context} was stopped at its deadline of {} (set `deadline` on the target to change it)", humantime::format_duration(*deadline))]
    Deadline {
        context: Context,
        deadline: Duration,
        logs: Vec<LogLine>,
    },
    #[error("{context} was stopped: it needed {} of memory, over its limit of {limit} (set `memory_limit` on the target to change it)", ByteSize(*wanted))]
    MemoryLimit {
        context: Context,
        limit: ByteSize,
        wanted: u64,
        logs: Vec<LogLine>,
    },
    #[error("{context} was stopped: it ran out of stack (unbounded recursion?)")]
    StackOverflow {
        context: Context,
        logs: Vec<LogLine>,
    },
    #[error("{context} was stopped: it passed more than {} between the plugin and the agent in one call{}", ByteSize(*limit as u64),
        if context.action == "snapshot" {
            " (snapshot data is limited to 16 MiB: keep large data in the target's state directory and record its name and checksum)"
        } else { "" })]
    TooLarge {
        context: Context,
        limit: usize,
        logs: Vec<LogLine>,
    },
    #[error("{context} crashed: {message}")]
    Crashed {
        context: Context,
        message: String,
        logs: Vec<LogLine>,
    },
}

impl CallError {
    /// A stable name for the kind of failure, for JSON and the journal.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Plugin { error, .. } => error.kind,
            CallError::NotGranted { .. } => "not-granted",
            CallError::Instantiate { .. } => "instantiate",
            CallError::Deadline { .. } => "deadline",
            CallError::MemoryLimit { .. } => "memory-limit",
            CallError::StackOverflow { .. } => "stack-overflow",
            CallError::TooLarge { context, .. } if context.action == "snapshot" => {
                "snapshot-too-large"
            }
            CallError::TooLarge { .. } => "too-large",
            CallError::Crashed { .. } => "crashed",
        }
    }

    /// What the plugin logged before it failed.
    pub fn logs(&self) -> &[LogLine] {
        match self {
            CallError::Plugin { logs, .. }
            | CallError::Deadline { logs, .. }
            | CallError::MemoryLimit { logs, .. }
            | CallError::StackOverflow { logs, .. }
            | CallError::TooLarge { logs, .. }
            | CallError::Crashed { logs, .. } => logs,
            CallError::NotGranted { .. } | CallError::Instantiate { .. } => &[],
        }
    }
}

/// What to do about an import a target cannot satisfy: grant the
/// capability, or (an interface the agent does not know) rebuild the plugin.
fn not_granted_advice(capability: Capability, target: &str) -> String {
    match capability {
        Capability::Unknown => "an interface this agent does not provide: a plugin may import the rewind:plugin@0.1.0 capabilities and WASI 0.2 (io, clocks, random, cli, filesystem, sockets, http); build it against those".to_string(),
        capability => format!(
            "which target {target} does not grant (capability `{capability}`); grant it in [targets.{target}.grant] (see docs/agent.md) or use another plugin"
        ),
    }
}
