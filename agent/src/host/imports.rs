//! Which capability each interface a component imports needs, and whether a
//! target grants it.

use crate::config::TargetConfig;
use serde::Serialize;

/// A capability a target may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Always available: log, progress, clocks, random, stdio, the state directory.
    Base,
    Process,
    Http,
    Docker,
    Postgres,
    /// Always linked, never a way out: every call refuses (`access-denied`;
    /// the sandbox allows no TCP, no UDP, no name lookup). Toolchains such
    /// as componentize-py import these whether or not a plugin uses them;
    /// plugins reach the network only through `wasi:http`.
    Sockets,
    /// An interface this agent does not know.
    Unknown,
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Capability::Base => "base",
            Capability::Process => "process",
            Capability::Http => "http",
            Capability::Docker => "docker",
            Capability::Postgres => "postgres",
            Capability::Sockets => "sockets",
            Capability::Unknown => "unknown",
        })
    }
}

/// The capability an imported interface (`ns:pkg/iface@version`) needs.
pub fn capability_of(import: &str) -> Capability {
    let unversioned = import.split('@').next().unwrap_or(import);
    match unversioned {
        "rewind:plugin/types"
        | "rewind:plugin/log"
        | "rewind:plugin/progress"
        | "rewind:plugin/files"
        | "rewind:plugin/secrets" => Capability::Base,
        "rewind:plugin/process" => Capability::Process,
        "rewind:plugin/docker" => Capability::Docker,
        "rewind:plugin/postgres" => Capability::Postgres,
        "wasi:http/outgoing-handler" | "wasi:http/types" => Capability::Http,
        other if other.starts_with("wasi:sockets/") => Capability::Sockets,
        other
            if [
                "wasi:io/",
                "wasi:clocks/",
                "wasi:random/",
                "wasi:cli/",
                "wasi:filesystem/",
            ]
            .iter()
            .any(|p| other.starts_with(p)) =>
        {
            // The filesystem interfaces are linked with no preopened
            // directory: they can reach nothing.
            Capability::Base
        }
        _ => Capability::Unknown,
    }
}

fn granted(capability: Capability, target: &TargetConfig) -> bool {
    match capability {
        Capability::Base | Capability::Sockets => true,
        Capability::Process => target.grant.process_granted,
        Capability::Http => target.grant.http_granted,
        Capability::Docker => target.grant.docker_granted,
        Capability::Postgres => target.grant.postgres.is_some(),
        Capability::Unknown => false,
    }
}

/// The imports of a component that `target` does not grant.
pub fn ungranted(imports: &[String], target: &TargetConfig) -> Vec<(String, Capability)> {
    imports
        .iter()
        .map(|import| (import.clone(), capability_of(import)))
        .filter(|(_, capability)| !granted(*capability, target))
        .collect()
}
