//! `[plans]` of the coordinator's configuration: what a plan may reach and
//! name. A plan is an operator's input, not the coordinator's trust: the
//! files it may have the coordinator read (hooks' tokens, CAs to trust) are
//! named here and referred to by name, and the hosts its hooks and health
//! gates may call are listed here. Nothing else is read or called.
//!
//! ```toml
//! [plans]
//! destinations = ["https://status.example.com/api/", "127.0.0.1:8000", "hooks.slack.com"]
//! secrets = { statuspage = "/etc/rewind/secrets/statuspage-token" }
//! cas = { internal = "/etc/rewind/internal-ca.pem" }
//! ```

use super::{ConfigError, Source};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    #[serde(default)]
    destinations: Vec<Spanned<String>>,
    #[serde(default)]
    secrets: BTreeMap<String, Spanned<PathBuf>>,
    #[serde(default)]
    cas: BTreeMap<String, Spanned<PathBuf>>,
}

/// What plans may reach and name.
#[derive(Debug, Clone, Default)]
pub struct PlanAccess {
    /// The configuration file that says so, for errors.
    pub config: PathBuf,
    /// Hosts (`host`, `host:port`) or URL prefixes (`https://host/path/`).
    pub destinations: Vec<Destination>,
    /// Files whose content a hook may send as its bearer token, by name.
    pub secrets: BTreeMap<String, PathBuf>,
    /// PEM files of CAs a hook may trust for https://, by name.
    pub cas: BTreeMap<String, PathBuf>,
}

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Any URL on this host, on any port (`port` None) or on one.
    Host { host: String, port: Option<u16> },
    /// URLs that start with this prefix (scheme, host, port and path).
    Prefix(String),
}

/// The scheme, host (lowercase, IPv6 without brackets), port and path of
/// an http(s) URL.
pub fn url_parts(url: &str) -> Option<(&str, String, u16, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    (!host.is_empty()).then(|| (scheme, host.to_ascii_lowercase(), port, path))
}

impl Destination {
    fn parse(text: &str) -> Result<Destination, String> {
        if text.contains("://") {
            let Some((scheme, host, port, _)) = url_parts(text) else {
                return Err(format!(
                    "`{text}` is not an http:// or https:// URL prefix with a host"
                ));
            };
            // The prefix as URLs are compared: with its port written out.
            let rest = &text[text.find("://").map_or(0, |i| i + 3)..];
            let path = rest.find(['/', '?', '#']).map_or("", |i| &rest[i..]);
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            return Ok(Destination::Prefix(format!(
                "{scheme}://{host}:{port}{path}"
            )));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                let port = port
                    .parse()
                    .map_err(|_| format!("`{text}`: the port is not a number"))?;
                (host.trim_matches(['[', ']']), Some(port))
            }
            _ => (text.trim_matches(['[', ']']), None),
        };
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(format!("`{text}` is not a host, host:port or URL prefix"));
        }
        Ok(Destination::Host {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn allows(&self, url: &str) -> bool {
        let Some((scheme, host, port, path)) = url_parts(url) else {
            return false;
        };
        match self {
            Destination::Host {
                host: allowed,
                port: allowed_port,
            } => *allowed == host && allowed_port.is_none_or(|p| p == port),
            Destination::Prefix(prefix) => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("{scheme}://{host}:{port}{path}").starts_with(prefix.as_str())
            }
        }
    }
}

impl PlanAccess {
    /// Whether a plan's hook or gate may call `url`; the error says why not
    /// and what the configuration allows.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let config = &self.config;
        if url_parts(url).is_none() {
            return Err(format!(
                "`{url}` is not an http:// or https:// URL with a host (and no user or password)"
            ));
        }
        if self.destinations.iter().any(|d| d.allows(url)) {
            return Ok(());
        }
        Err(format!(
            "{url} is not among the destinations that {} allows plans to call ([plans] \
             destinations: {})",
            config.display(),
            if self.destinations.is_empty() {
                "none".to_string()
            } else {
                self.destinations
                    .iter()
                    .map(|d| match d {
                        Destination::Host { host, port: None } => host.clone(),
                        Destination::Host {
                            host,
                            port: Some(p),
                        } => format!("{host}:{p}"),
                        Destination::Prefix(p) => p.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
    }

    /// The file of a named secret or CA; the error names the known ones.
    pub fn named<'a>(&'a self, kind: &str, name: &str) -> Result<&'a Path, String> {
        let config = &self.config;
        let table = if kind == "secret" {
            &self.secrets
        } else {
            &self.cas
        };
        table.get(name).map(PathBuf::as_path).ok_or_else(|| {
            format!(
                "no {kind} named `{name}` in {} ([plans] {kind}s: {})",
                config.display(),
                if table.is_empty() {
                    "none".to_string()
                } else {
                    table.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )
        })
    }
}

pub(super) fn parse(
    source: &Source,
    base: &Path,
    raw: RawAccess,
) -> Result<PlanAccess, ConfigError> {
    let mut access = PlanAccess {
        config: source.path.to_path_buf(),
        ..PlanAccess::default()
    };
    for text in &raw.destinations {
        let destination = Destination::parse(text.get_ref().trim())
            .map_err(|e| source.error(text.span().start, format!("plans.destinations: {e}")))?;
        access.destinations.push(destination);
    }
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    for (kind, raw, into) in [
        ("secrets", raw.secrets, &mut access.secrets),
        ("cas", raw.cas, &mut access.cas),
    ] {
        for (name, path) in raw {
            if name.is_empty() || name.contains(['/', ' ']) {
                return Err(source.error(
                    path.span().start,
                    format!("plans.{kind}: `{name}` is not a name (letters, digits, - and _)"),
                ));
            }
            into.insert(name, resolve(path.get_ref()));
        }
    }
    Ok(access)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(entries: &[&str]) -> PlanAccess {
        PlanAccess {
            destinations: entries
                .iter()
                .map(|e| Destination::parse(e).unwrap())
                .collect(),
            config: PathBuf::from("c.toml"),
            ..Default::default()
        }
    }

    #[test]
    fn only_listed_hosts_ports_and_prefixes_are_reachable() {
        let a = access(&[
            "127.0.0.1",
            "status.example.com:8443",
            "https://hooks.slack.com/services/",
        ]);
        let ok = |url: &str| a.check_url(url).is_ok();
        assert!(ok("http://127.0.0.1:8080/health"));
        assert!(ok("https://status.example.com:8443/api"));
        assert!(!ok("https://status.example.com/api"), "another port");
        assert!(ok("https://hooks.slack.com/services/T0/B0/X"));
        assert!(ok("https://HOOKS.slack.com:443/services/T0"));
        assert!(!ok("https://hooks.slack.com/other"));
        assert!(!ok("http://169.254.169.254/latest/meta-data/"), "metadata");
        assert!(!ok("http://127.0.0.1.evil.example/"));
        assert!(!ok("http://user:pw@127.0.0.1/"), "credentials in a URL");
        assert!(!ok("file:///etc/passwd"));
        let error = a.check_url("http://10.0.0.1/").unwrap_err();
        assert!(
            error.contains("c.toml") && error.contains("127.0.0.1"),
            "{error}"
        );
    }

    #[test]
    fn mistakes_in_the_table_are_named() {
        assert!(Destination::parse("host:port").is_err());
        assert!(Destination::parse("ftp://x/").is_err());
        assert!(Destination::parse("a b").is_err());
        assert_eq!(
            Destination::parse("[::1]:80").unwrap(),
            Destination::Host {
                host: "::1".into(),
                port: Some(80)
            }
        );
    }
}
