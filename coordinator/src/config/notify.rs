//! `[notifications.<name>]` of the coordinator's configuration: where events
//! of runs and drills are delivered. Three kinds: a generic JSON `webhook`
//! (signed with HMAC-SHA256 when it has a `signing_secret`), `slack` (an
//! incoming webhook) and `pagerduty` (Events API v2). URLs that hold a
//! token and keys come from secret files, which are checked here and read
//! again for each delivery; their contents are never printed.
//!
//! ```toml
//! [notifications.chat]
//! kind = "slack"
//! url_secret = "/etc/rewind/slack-webhook-url"
//! events = ["run-failed", "drill-failed", "drill-stale"]
//! ```

use super::{ConfigError, Source};
use crate::vocabulary::EventKind;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    Webhook,
    Slack,
    PagerDuty,
}

impl WebhookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::Webhook => "webhook",
            WebhookKind::Slack => "slack",
            WebhookKind::PagerDuty => "pagerduty",
        }
    }
}

/// Where a notification's URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Url {
    Plain(String),
    /// A file holding the URL (it carries a token).
    Secret(PathBuf),
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub name: String,
    pub kind: WebhookKind,
    pub url: Url,
    /// The HMAC-SHA256 key (webhook) or the routing key (pagerduty), a file.
    pub key_secret: Option<PathBuf>,
    /// The events it is sent (all of its kind's when the configuration lists none).
    pub events: Vec<String>,
    /// A PEM CA to trust for https instead of the public roots.
    pub ca: Option<PathBuf>,
    /// The pause after the first failed try; it doubles with each try.
    pub retry_after: Duration,
    /// Tries before a delivery is given up (and journaled as such).
    pub attempts: u32,
}

impl WebhookConfig {
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    kind: Spanned<String>,
    url: Option<String>,
    url_secret: Option<PathBuf>,
    signing_secret: Option<PathBuf>,
    routing_key_secret: Option<PathBuf>,
    events: Option<Vec<Spanned<String>>>,
    ca: Option<PathBuf>,
    retry_after: Option<Spanned<String>>,
    attempts: Option<u32>,
}

/// A secret file's contents, trimmed; the error names the file, never what is in it.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("secret file {}: {e}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(text.to_string())
}

pub(super) fn parse(
    source: &Source<'_>,
    base: &Path,
    name: &str,
    spanned: &Spanned<RawWebhook>,
) -> Result<WebhookConfig, ConfigError> {
    let raw = spanned.get_ref();
    let table = spanned.span().start;
    let here =
        |at: usize, message: String| source.error(at, format!("notification {name}: {message}"));
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let kind = match raw.kind.get_ref().as_str() {
        "webhook" => WebhookKind::Webhook,
        "slack" => WebhookKind::Slack,
        "pagerduty" => WebhookKind::PagerDuty,
        other => {
            return Err(here(
                raw.kind.span().start,
                format!("kind `{other}` is not webhook, slack or pagerduty"),
            ));
        }
    };
    let url = match (&raw.url, &raw.url_secret) {
        (Some(_), Some(_)) => {
            return Err(here(table, "give url or url_secret, not both".into()));
        }
        (Some(url), None) => Url::Plain(url.clone()),
        (None, Some(path)) => Url::Secret(resolve(path)),
        (None, None) if kind == WebhookKind::PagerDuty => Url::Plain(PAGERDUTY_URL.into()),
        (None, None) => {
            return Err(here(
                table,
                "needs url, or url_secret (a file holding a URL that carries a token)".into(),
            ));
        }
    };
    let key_secret = match kind {
        WebhookKind::Webhook => {
            if raw.routing_key_secret.is_some() {
                return Err(here(
                    table,
                    "routing_key_secret is for kind = \"pagerduty\"".into(),
                ));
            }
            raw.signing_secret.as_deref().map(resolve)
        }
        WebhookKind::Slack => {
            if raw.signing_secret.is_some() || raw.routing_key_secret.is_some() {
                return Err(here(
                    table,
                    "a slack incoming webhook takes url_secret only (its URL is its secret)".into(),
                ));
            }
            None
        }
        WebhookKind::PagerDuty => {
            if raw.signing_secret.is_some() {
                return Err(here(
                    table,
                    "signing_secret is for kind = \"webhook\"".into(),
                ));
            }
            Some(resolve(raw.routing_key_secret.as_deref().ok_or_else(
                || {
                    here(
                        table,
                        "needs routing_key_secret: a file holding the service's integration key"
                            .into(),
                    )
                },
            )?))
        }
    };
    for secret in [key_secret.as_ref(), url_secret(&url)]
        .into_iter()
        .flatten()
    {
        read_secret(secret).map_err(|e| here(table, e))?;
    }
    let allowed: Vec<&str> = if kind == WebhookKind::PagerDuty {
        EventKind::PAGED
    } else {
        EventKind::NOTIFIABLE
    }
    .iter()
    .map(|k| k.as_str())
    .collect();
    let events = match &raw.events {
        None => allowed.iter().map(|e| e.to_string()).collect(),
        Some(list) => {
            let mut events = Vec::new();
            for event in list {
                if !allowed.contains(&event.get_ref().as_str()) {
                    return Err(here(
                        event.span().start,
                        format!(
                            "event `{}` is not one a {} notification is sent ({})",
                            event.get_ref(),
                            kind.as_str(),
                            allowed.join(", ")
                        ),
                    ));
                }
                events.push(event.get_ref().clone());
            }
            events
        }
    };
    let retry_after = match &raw.retry_after {
        Some(v) => {
            super::drills::duration(source, v, &format!("notification {name}: retry_after"))?
        }
        None => Duration::from_secs(5),
    };
    Ok(WebhookConfig {
        name: name.to_string(),
        kind,
        url,
        key_secret,
        events,
        ca: raw.ca.as_deref().map(resolve),
        retry_after,
        attempts: raw.attempts.unwrap_or(10).max(1),
    })
}

fn url_secret(url: &Url) -> Option<&PathBuf> {
    match url {
        Url::Secret(path) => Some(path),
        Url::Plain(_) => None,
    }
}
