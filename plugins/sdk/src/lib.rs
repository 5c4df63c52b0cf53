//! The rewind plugin SDK: typed bindings to the `rewind:plugin@0.1.0` contract,
//! a [`Plugin`] trait with sensible defaults, and helpers for the host
//! capabilities (log, progress, files, process, HTTP).
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`:
//!
//! ```ignore
//! use rewind_plugin_sdk::*;
//!
//! struct Hello;
//! impl Plugin for Hello {
//!     fn describe() -> PluginInfo { info!("hello", "says hello", &[Action::Snapshot]) }
//!     fn snapshot(target: Target) -> Result<Captured, PluginError> {
//!         log::info(&format!("snapshot of {}", target.name));
//!         Ok(Captured { data: "{}".into(), summary: "nothing".into() })
//!     }
//! }
//! export_plugin!(Hello);
//! ```
//!
//! Only the capabilities a plugin calls end up among its component's imports,
//! so a plugin that never touches `process` does not need it granted.

pub mod bindings {
    //! Raw bindings generated from the WIT contract in `wit/`.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "rewind:plugin/rollback-plugin",
        pub_export_macro: true,
        default_bindings_module: "rewind_plugin_sdk::bindings",
        generate_all,
    });
}

pub mod docker;
pub mod files;
pub mod http;
pub mod postgres;
pub mod process;
pub mod s3;
pub mod sigv4;

pub use bindings::rewind::plugin::types::{
    Action, Captured, Change, Outcome, PluginError, PluginInfo, Preview, RestoreOptions, Risk,
    SnapshotRecord, Target,
};
pub use rewind_mask as mask;
pub use serde_json;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// The rollback contract with defaults: implement what your plugin supports;
/// the rest answers `unsupported`.
pub trait Plugin {
    /// Who the plugin is; see [`info!`].
    fn describe() -> PluginInfo;

    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        Err(unsupported("snapshot", &target))
    }

    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        let _ = to;
        Err(unsupported("plan", &target))
    }

    fn restore(
        target: Target,
        to: SnapshotRecord,
        options: RestoreOptions,
    ) -> Result<Outcome, PluginError> {
        let _ = (to, options);
        Err(unsupported("restore", &target))
    }

    fn restart(target: Target, parts: Vec<String>) -> Result<Outcome, PluginError> {
        let _ = parts;
        Err(unsupported("restart", &target))
    }

    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let _ = to;
        Err(unsupported("verify", &target))
    }
}

fn unsupported(action: &str, target: &Target) -> PluginError {
    PluginError::Unsupported(format!(
        "this plugin does not implement {action} (target {})",
        target.name
    ))
}

/// Export a type implementing [`Plugin`] as the component's `rollback` interface.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ident) => {
        impl $crate::bindings::exports::rewind::plugin::rollback::Guest for $ty {
            fn describe() -> $crate::PluginInfo {
                <$ty as $crate::Plugin>::describe()
            }
            fn snapshot(target: $crate::Target) -> Result<$crate::Captured, $crate::PluginError> {
                <$ty as $crate::Plugin>::snapshot(target)
            }
            fn plan(
                target: $crate::Target,
                to: $crate::SnapshotRecord,
            ) -> Result<$crate::Preview, $crate::PluginError> {
                <$ty as $crate::Plugin>::plan(target, to)
            }
            fn restore(
                target: $crate::Target,
                to: $crate::SnapshotRecord,
                options: $crate::RestoreOptions,
            ) -> Result<$crate::Outcome, $crate::PluginError> {
                <$ty as $crate::Plugin>::restore(target, to, options)
            }
            fn restart(
                target: $crate::Target,
                parts: Vec<String>,
            ) -> Result<$crate::Outcome, $crate::PluginError> {
                <$ty as $crate::Plugin>::restart(target, parts)
            }
            fn verify(
                target: $crate::Target,
                to: $crate::SnapshotRecord,
            ) -> Result<$crate::Outcome, $crate::PluginError> {
                <$ty as $crate::Plugin>::verify(target, to)
            }
        }
        $crate::bindings::export!($ty with_types_in $crate::bindings);
    };
}

/// A [`PluginInfo`] with the plugin's own version: `info!(name,
/// description, actions)` expands in the plugin's crate, so the version is
/// its Cargo.toml's, not the SDK's.
#[macro_export]
macro_rules! info {
    ($name:expr, $description:expr, $actions:expr $(,)?) => {
        $crate::PluginInfo {
            name: ::std::string::ToString::to_string($name),
            version: ::std::string::ToString::to_string(env!("CARGO_PKG_VERSION")),
            description: ::std::string::ToString::to_string($description),
            actions: <[$crate::Action]>::to_vec($actions),
        }
    };
}

/// The target's settings, deserialised; a clear `invalid-settings` error otherwise.
pub fn settings<T: DeserializeOwned>(target: &Target) -> Result<T, PluginError> {
    serde_json::from_str(&target.settings)
        .map_err(|e| PluginError::InvalidSettings(format!("target {}: settings: {e}", target.name)))
}

/// Parse a snapshot's data as this plugin wrote it.
pub fn snapshot_data<T: DeserializeOwned>(
    target: &Target,
    to: &SnapshotRecord,
) -> Result<T, PluginError> {
    serde_json::from_str(&to.data).map_err(|e| {
        PluginError::InvalidSettings(format!(
            "target {}: the snapshot was not written by this plugin or is damaged: {e}",
            target.name
        ))
    })
}

impl PluginError {
    /// The error's text, whatever its kind.
    pub fn text(&self) -> &str {
        match self {
            PluginError::InvalidSettings(t)
            | PluginError::Unsupported(t)
            | PluginError::Unavailable(t)
            | PluginError::Denied(t)
            | PluginError::NotFound(t)
            | PluginError::Conflict(t)
            | PluginError::NeedsConfirmation(t)
            | PluginError::VerificationFailed(t)
            | PluginError::Failed(t) => t,
        }
    }

    /// The same kind of error with another text (to say what it left).
    pub fn with_text(&self, text: String) -> PluginError {
        match self {
            PluginError::InvalidSettings(_) => PluginError::InvalidSettings(text),
            PluginError::Unsupported(_) => PluginError::Unsupported(text),
            PluginError::Unavailable(_) => PluginError::Unavailable(text),
            PluginError::Denied(_) => PluginError::Denied(text),
            PluginError::NotFound(_) => PluginError::NotFound(text),
            PluginError::Conflict(_) => PluginError::Conflict(text),
            PluginError::NeedsConfirmation(_) => PluginError::NeedsConfirmation(text),
            PluginError::VerificationFailed(_) => PluginError::VerificationFailed(text),
            PluginError::Failed(_) => PluginError::Failed(text),
        }
    }
}

/// A file name (or object-key segment, or name part) that stands for a step
/// id: the coordinator's ids hold `/` and other characters no file name may.
/// Characters other than ASCII letters, digits, `-` and `_` become `_`, the
/// result is cut to 64 characters, and 12 hex digits of the id's SHA-256 are
/// appended, so two different ids never share a name.
pub fn step_file_name(step_id: &str) -> String {
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
    let digest = sha256_hex(step_id.as_bytes());
    format!("{readable}-{}", &digest[..12])
}

/// A masker of secrets for previews and reports: the default key patterns
/// and `extra` ones. A masked value shows a digest keyed with a secret kept
/// in the target's state directory (`.mask-key`, made at the first masked
/// value): the same value reads alike from one preview to the next (a
/// change shows, and an approved preview still matches), and nothing off
/// the host can look a value up from it. Without a key, `[secret]`.
pub fn masker(extra: &[String]) -> mask::Masker {
    use hmac::{Hmac, Mac};
    let key: std::cell::OnceCell<Option<Vec<u8>>> = std::cell::OnceCell::new();
    mask::Masker::new(extra).with_digest(move |value| {
        let key = key.get_or_init(mask_key).as_ref()?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(value.as_bytes());
        Some(hex::encode(&mac.finalize().into_bytes()[..4]))
    })
}

/// The target's masking key, made (from wasi:random, which seeds the
/// standard library's hasher keys) when there is none.
fn mask_key() -> Option<Vec<u8>> {
    const PATH: &str = ".mask-key";
    if let Ok(Some(key)) = files::read_if_exists(PATH)
        && key.len() >= 32
    {
        return Some(key);
    }
    use std::hash::BuildHasher;
    let key: Vec<u8> = (0..4u64)
        .flat_map(|i| {
            std::collections::hash_map::RandomState::new()
                .hash_one(i)
                .to_le_bytes()
        })
        .collect();
    files::write(PATH, &key).ok()?;
    Some(key)
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The highest of some risks (`none` for none).
pub fn max_risk(risks: impl IntoIterator<Item = Risk>) -> Risk {
    risks
        .into_iter()
        .max_by_key(|r| risk_rank(*r))
        .unwrap_or(Risk::None)
}

fn risk_rank(risk: Risk) -> u8 {
    match risk {
        Risk::None => 0,
        Risk::Restart => 1,
        Risk::Downtime => 2,
        Risk::DataLoss => 3,
    }
}

/// Seconds since the Unix epoch, by the host's wall clock.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub mod log {
    //! Log lines attributed to the plugin, target and step by the agent.
    use crate::bindings::rewind::plugin::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Tell the live view what the action is doing now. Reports closer
/// together than 100 ms are dropped here, before they cost a host call
/// (the agent drops them too); a phase's first 100% always goes.
pub fn progress(detail: &str, percent: Option<u8>) {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<(Instant, Option<u8>)>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let send = LAST.with(|last| {
        let finishing = |before: Option<u8>| percent == Some(100) && before != Some(100);
        match last.get() {
            Some((at, before))
                if now.duration_since(at) < Duration::from_millis(100) && !finishing(before) =>
            {
                false
            }
            _ => {
                last.set(Some((now, percent)));
                true
            }
        }
    });
    if send {
        bindings::rewind::plugin::progress::report(detail, percent)
    }
}

/// The target's secrets (from the file its `secrets` setting names).
pub mod secrets {
    use crate::PluginError;

    /// A secret's value, or none.
    pub fn get(name: &str) -> Option<String> {
        crate::bindings::rewind::plugin::secrets::get(name)
    }

    /// A secret's value; a clear error naming the secret (never its value)
    /// when the target has none.
    pub fn require(target: &str, name: &str) -> Result<String, PluginError> {
        get(name).ok_or_else(|| {
            PluginError::InvalidSettings(format!(
                "target {target}: secret `{name}` is not in the target's secrets file \
                 (set `secrets = \"/path/to/file\"` on the target, with a {name}=... line)"
            ))
        })
    }
}
