//! Notifications: what a run's or a drill's event says to the people who
//! subscribed (`[notifications.*]`), and in which shape each kind of
//! receiver wants it. Events become outbox rows in the transaction that
//! journals them (`rows`); `deliver` takes the rows to their webhooks in
//! order, retried with backoff, each with its idempotency key.
//!
//! Formats (`body`): a generic JSON document signed with HMAC-SHA256; a
//! Slack incoming-webhook message (`text`, with `blocks`); a PagerDuty
//! Events API v2 event (`trigger` for failures, `resolve` with the same
//! `dedup_key` once the plan or drill succeeds again).

pub mod deliver;

use crate::config::{WebhookConfig, WebhookKind};
use crate::store::OutboxRecord;
use crate::vocabulary::EventKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The version of the generic webhook's JSON document.
pub const SCHEMA: &str = "rewind.notification/v1";

/// What an event says, stored in the outbox and formatted per webhook kind
/// when sent (so a retry sends the same bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// e.g. `run-failed`, `drill-passed`.
    pub event: String,
    /// info, warning, error or critical (PagerDuty's words).
    pub severity: String,
    /// `run` or `drill`.
    pub subject_kind: String,
    /// The run's or drill run's id (a drill's name for `drill-stale`).
    pub subject_id: String,
    /// The plan's or drill's name.
    pub name: String,
    /// One line for a human.
    pub summary: String,
    /// Further facts: release, started_by, env, reason, rto, report, ...
    pub details: BTreeMap<String, String>,
    /// The incident this event opens or closes (PagerDuty's dedup key).
    pub dedup_key: String,
    pub unix_ms: u64,
}

impl Notice {
    /// Whether the event opens an incident (else it closes one or informs).
    pub fn is_trouble(&self) -> bool {
        EventKind::parse(&self.event).is_some_and(EventKind::is_trouble)
    }

    pub fn is_recovery(&self) -> bool {
        EventKind::parse(&self.event).is_some_and(EventKind::is_recovery)
    }
}

/// The outbox rows for one journaled event (`<subject>/<seq>`): one per
/// webhook that subscribed to it.
pub fn rows(webhooks: &[WebhookConfig], seq: u64, notice: &Notice) -> Vec<OutboxRecord> {
    let text = match serde_json::to_string(notice) {
        Ok(text) => text,
        Err(_) => return Vec::new(),
    };
    webhooks
        .iter()
        .filter(|w| w.wants(&notice.event))
        .map(|w| OutboxRecord {
            id: format!("{}/{seq}/{}", notice.subject_id, w.name),
            webhook: w.name.clone(),
            event: notice.event.clone(),
            notice: text.clone(),
            created_ms: notice.unix_ms,
            attempts: 0,
            next_ms: notice.unix_ms,
            delivered_ms: None,
            given_up_ms: None,
            last_error: String::new(),
        })
        .collect()
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms),
    )
    .to_string()
}

/// The request body a webhook of `kind` is sent for `notice`, with the
/// routing key (PagerDuty's) where the kind needs it. None: this kind is
/// not sent this event.
pub fn body(
    kind: WebhookKind,
    idempotency_key: &str,
    notice: &Notice,
    routing_key: Option<&str>,
) -> Option<String> {
    let value = match kind {
        WebhookKind::Webhook => serde_json::json!({
            "schema": SCHEMA,
            "id": idempotency_key,
            "event": notice.event,
            "severity": notice.severity,
            "summary": notice.summary,
            "subject": {
                "kind": notice.subject_kind,
                "id": notice.subject_id,
                "name": notice.name,
            },
            "details": notice.details,
            "dedup_key": notice.dedup_key,
            "time": rfc3339(notice.unix_ms),
        }),
        WebhookKind::Slack => {
            let mut facts: Vec<String> = notice
                .details
                .iter()
                .map(|(k, v)| format!("*{k}*: {v}"))
                .collect();
            facts.truncate(10);
            let headline = format!(
                "{} rewind {}: {}",
                match notice.severity.as_str() {
                    "critical" | "error" => ":red_circle:",
                    "warning" => ":warning:",
                    _ => ":large_green_circle:",
                },
                notice.event,
                notice.summary
            );
            let mut blocks = vec![serde_json::json!({
                "type": "section",
                "text": { "type": "mrkdwn", "text": headline },
            })];
            if !facts.is_empty() {
                blocks.push(serde_json::json!({
                    "type": "section",
                    "text": { "type": "mrkdwn", "text": facts.join("\n") },
                }));
            }
            blocks.push(serde_json::json!({
                "type": "context",
                "elements": [{ "type": "mrkdwn", "text": format!("{} {} · {}", notice.subject_kind, notice.subject_id, rfc3339(notice.unix_ms)) }],
            }));
            serde_json::json!({ "text": headline, "blocks": blocks })
        }
        WebhookKind::PagerDuty => {
            let routing_key = routing_key?;
            if notice.is_recovery() {
                serde_json::json!({
                    "routing_key": routing_key,
                    "event_action": "resolve",
                    "dedup_key": notice.dedup_key,
                })
            } else if notice.is_trouble() {
                let summary: String = format!("rewind {}: {}", notice.event, notice.summary)
                    .chars()
                    .take(1024)
                    .collect();
                serde_json::json!({
                    "routing_key": routing_key,
                    "event_action": "trigger",
                    "dedup_key": notice.dedup_key,
                    "client": "rewind",
                    "payload": {
                        "summary": summary,
                        "source": format!("rewind/{}", notice.name),
                        "severity": notice.severity,
                        "timestamp": rfc3339(notice.unix_ms),
                        "component": notice.name,
                        "group": notice.details.get("env").cloned().unwrap_or_default(),
                        "class": notice.event,
                        "custom_details": notice.details,
                    },
                })
            } else {
                return None;
            }
        }
    };
    Some(value.to_string())
}

/// `sha256=<hex>` of the body under the webhook's signing key.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(event: EventKind) -> Notice {
        Notice {
            event: event.as_str().into(),
            severity: event.severity().into(),
            subject_kind: "drill".into(),
            subject_id: "drill-1-ab".into(),
            name: "staging-monthly".into(),
            summary: "drill staging-monthly failed".into(),
            details: [("env".to_string(), "staging".to_string())].into(),
            dedup_key: "rewind/drill/staging-monthly".into(),
            unix_ms: 1_764_000_000_000,
        }
    }

    #[test]
    fn pagerduty_triggers_on_trouble_and_resolves_with_the_same_key() {
        let trigger: serde_json::Value = serde_json::from_str(
            &body(
                WebhookKind::PagerDuty,
                "k",
                &notice(EventKind::DrillFailed),
                Some("R0UTING"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["routing_key"], "R0UTING");
        assert_eq!(trigger["payload"]["severity"], "error");
        for field in ["summary", "source", "severity"] {
            assert!(trigger["payload"][field].is_string(), "{field}");
        }
        let resolve: serde_json::Value = serde_json::from_str(
            &body(
                WebhookKind::PagerDuty,
                "k",
                &notice(EventKind::DrillPassed),
                Some("R0UTING"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
        assert!(
            body(
                WebhookKind::PagerDuty,
                "k",
                &notice(EventKind::DrillStarted),
                Some("R")
            )
            .is_none()
        );
    }

    #[test]
    fn a_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn an_event_gets_a_row_per_subscribed_webhook_keyed_for_idempotency() {
        let webhook = |name: &str, events: &[EventKind]| WebhookConfig {
            name: name.into(),
            kind: WebhookKind::Webhook,
            url: crate::config::notify::Url::Plain("http://127.0.0.1:1/".into()),
            key_secret: None,
            events: events.iter().map(|e| e.as_str().to_string()).collect(),
            ca: None,
            retry_after: std::time::Duration::from_secs(1),
            attempts: 3,
        };
        let hooks = [
            webhook("ops", &[EventKind::DrillFailed]),
            webhook("audit", &[EventKind::DrillPassed]),
        ];
        let rows = rows(&hooks, 7, &notice(EventKind::DrillFailed));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, "drill-1-ab/7/ops");
    }
}
