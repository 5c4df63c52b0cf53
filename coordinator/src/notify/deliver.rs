//! Taking the outbox to the webhooks: one worker per webhook, sending its
//! notifications one at a time in the order they were journaled. A failed
//! try is journaled and tried again after a pause that doubles (from the
//! webhook's `retry_after`, at most 10 minutes) until `attempts` tries;
//! then the row is given up, journaled as such, and the next one goes.
//! A coordinator restarted mid-way picks up the same rows: a row the
//! webhook took but that was not yet marked delivered is sent again with
//! the same `Idempotency-Key`, for the receiver to recognise.

use super::{Notice, body, signature};
use crate::config::notify::{Url, read_secret};
use crate::config::{WebhookConfig, WebhookKind};
use crate::runner::{Shared, now_ms};
use std::sync::Arc;
use std::time::Duration;

/// How long one try may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest pause between tries.
const MAX_PAUSE: Duration = Duration::from_secs(600);
/// How often an idle worker looks at the outbox (it is also woken when a
/// row is written).
const IDLE: Duration = Duration::from_secs(1);

/// Start a worker for every configured webhook.
pub fn spawn_all(shared: Arc<Shared>, webhooks: &[WebhookConfig]) {
    for webhook in webhooks {
        tokio::spawn(worker(shared.clone(), webhook.clone()));
    }
}

async fn worker(shared: Arc<Shared>, webhook: WebhookConfig) {
    loop {
        if shared.is_draining() {
            return;
        }
        let head = match shared.store.outbox_head(&webhook.name).await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(webhook = webhook.name, "cannot read the outbox: {e}");
                None
            }
        };
        let Some(row) = head else {
            let _ = tokio::time::timeout(IDLE, shared.outbox_ready.notified()).await;
            continue;
        };
        let now = now_ms();
        if row.next_ms > now {
            let wait = Duration::from_millis(row.next_ms - now).min(IDLE);
            tokio::time::sleep(wait).await;
            continue;
        }
        let attempts = row.attempts + 1;
        let outcome =
            match tokio::time::timeout(TRY_TIMEOUT, send(&webhook, &row.id, &row.notice, attempts))
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(format!(
                    "no answer within {}",
                    humantime::format_duration(TRY_TIMEOUT)
                )),
            };
        let journaled = match outcome {
            Ok(()) => {
                crate::metrics::notification(&webhook.name, "delivered");
                tracing::info!(
                    webhook = webhook.name,
                    id = row.id,
                    attempts,
                    "notification delivered"
                );
                Ok(())
            }
            Err(error) if attempts >= webhook.attempts => {
                crate::metrics::notification(&webhook.name, "given-up");
                tracing::error!(
                    webhook = webhook.name,
                    id = row.id,
                    "notification given up after {attempts} tries: {error}"
                );
                Err((error, None))
            }
            Err(error) => {
                crate::metrics::notification(&webhook.name, "retry");
                let pause = webhook
                    .retry_after
                    .saturating_mul(1 << (attempts - 1).min(16))
                    .min(MAX_PAUSE);
                tracing::warn!(
                    webhook = webhook.name,
                    id = row.id,
                    "notification try {attempts} of {} failed, again in {}: {error}",
                    webhook.attempts,
                    humantime::format_duration(pause)
                );
                Err((error, Some(now_ms() + pause.as_millis() as u64)))
            }
        };
        if let Err(e) = shared
            .store
            .outbox_tried(&row.id, attempts, now_ms(), journaled)
            .await
        {
            tracing::warn!(webhook = webhook.name, "cannot journal a delivery: {e}");
            tokio::time::sleep(IDLE).await;
        }
    }
}

/// One try: format, sign, post. Errors never show a secret URL or key.
async fn send(webhook: &WebhookConfig, id: &str, notice: &str, attempt: u32) -> Result<(), String> {
    let notice: Notice =
        serde_json::from_str(notice).map_err(|e| format!("the outbox row cannot be read: {e}"))?;
    let (url, shown) = match &webhook.url {
        Url::Plain(url) => (url.clone(), url.clone()),
        Url::Secret(path) => (
            read_secret(path)?,
            format!("<the URL in {}>", path.display()),
        ),
    };
    let key = webhook.key_secret.as_deref().map(read_secret).transpose()?;
    let routing_key = (webhook.kind == WebhookKind::PagerDuty)
        .then_some(key.as_deref())
        .flatten();
    let Some(text) = body(webhook.kind, id, &notice, routing_key) else {
        return Ok(());
    };
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("idempotency-key".to_string(), id.to_string()),
        ("x-rewind-event".to_string(), notice.event.clone()),
        ("x-rewind-delivery-attempt".to_string(), attempt.to_string()),
    ];
    if webhook.kind == WebhookKind::Webhook
        && let Some(key) = &key
    {
        headers.push((
            "x-rewind-signature".to_string(),
            signature(key.as_bytes(), text.as_bytes()),
        ));
    }
    let hide = |e: String| e.replace(&url, &shown);
    let ca = webhook.ca.as_ref().map(|p| p.display().to_string());
    let (status, answer) =
        crate::hooks::send("POST", &url, ca.as_deref(), &headers, text.into_bytes())
            .await
            .map_err(hide)?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        let answer: String = String::from_utf8_lossy(&answer).chars().take(200).collect();
        Err(hide(format!("POST {url} answered HTTP {status}: {answer}")))
    }
}
