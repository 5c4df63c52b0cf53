//! Run hooks: the calls a runbook makes around a rollback (maintenance mode
//! on and off, the status page, a chat message). An HTTP hook is made by the
//! coordinator; an agent hook is an action (`restart` with parts, or
//! `verify`) of a target on a named agent, e.g. a `command` target that runs
//! `./scripts/maintenance.sh on`.
//!
//! Each try has the hook's timeout; failed tries are retried with a growing
//! pause. A hook may run again after a coordinator restart, so receivers
//! should treat it as idempotent: HTTP hooks carry `Idempotency-Key:
//! <run>/<hook>` for that.

use crate::config::PlanAccess;
use crate::fleet::Fleet;
use crate::plan::{Hook, HookCall, HttpCall};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rewind_proto::v1::{StepRequest, step_result};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::time::Duration;

/// How long a one-off action waits for its agent to be connected.
const AGENT_PATIENCE: Duration = Duration::from_secs(60);
/// The most of an answer kept for the report.
const ANSWER_CHARS: usize = 300;

/// What a hook's body template may use.
#[derive(Debug, Clone)]
pub struct Facts {
    pub run: String,
    pub release: String,
    pub plan: String,
    pub started_by: String,
    /// `running` for `before` hooks; then the run's verdict so far.
    pub verdict: String,
}

impl Facts {
    /// Replace `{{run}}`, `{{release}}`, `{{plan}}`, `{{verdict}}` and
    /// `{{started_by}}`, each escaped for a JSON string.
    pub fn render(&self, template: &str) -> String {
        let escape = |value: &str| {
            let quoted = serde_json::to_string(value).unwrap_or_default();
            quoted[1..quoted.len() - 1].to_string()
        };
        template
            .replace("{{run}}", &escape(&self.run))
            .replace("{{release}}", &escape(&self.release))
            .replace("{{plan}}", &escape(&self.plan))
            .replace("{{verdict}}", &escape(&self.verdict))
            .replace("{{started_by}}", &escape(&self.started_by))
    }
}

/// Make the hook's call, with its retries. `request` is the agent step an
/// agent hook sends (its target, action, parts and snapshot).
pub async fn run(
    fleet: &Fleet,
    access: &PlanAccess,
    hook: &Hook,
    facts: &Facts,
    request: Option<StepRequest>,
) -> Result<String, String> {
    let tries = hook.retries + 1;
    let mut last = String::new();
    for attempt in 1..=tries {
        let once = async {
            match (&hook.call, &request) {
                (HookCall::Http(call), _) => http(access, call, hook, facts).await,
                (HookCall::Agent { agent, .. }, Some(request)) => {
                    one_off(fleet, agent, request.clone(), hook.timeout)
                        .await
                        .map_err(|e| format!("on {agent}: {e}"))
                }
                (HookCall::Agent { .. }, None) => Err("no request was built for this hook".into()),
            }
        };
        match tokio::time::timeout(hook.timeout, once).await {
            Ok(Ok(answer)) => {
                let again = if attempt > 1 {
                    format!(" (try {attempt} of {tries})")
                } else {
                    String::new()
                };
                return Ok(format!("{answer}{again}"));
            }
            Ok(Err(why)) => last = why,
            Err(_) => {
                last = format!(
                    "no answer within {}",
                    humantime::format_duration(hook.timeout)
                )
            }
        }
        if attempt < tries {
            tracing::warn!(hook = hook.name, "try {attempt} of {tries} failed: {last}");
            let pause = Duration::from_secs(1 << (attempt - 1).min(4));
            tokio::time::sleep(pause).await;
        }
    }
    Err(if tries > 1 {
        format!("{last} (after {tries} tries)")
    } else {
        last
    })
}

fn cut(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() > ANSWER_CHARS {
        format!("{}...", text.chars().take(ANSWER_CHARS).collect::<String>())
    } else {
        text.to_string()
    }
}

fn tls_config(ca: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca {path}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("ca {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("ca {path}: no PEM certificate in the file"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("ca {path}: {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An HTTP hook: only to a destination `[plans]` allows (checked again
/// here, for a run resumed after the configuration changed), with the
/// secret and CA it names from there. The answer of a call that carried a
/// secret is not kept (it may echo it); others are kept masked.
async fn http(
    access: &PlanAccess,
    call: &HttpCall,
    hook: &Hook,
    facts: &Facts,
) -> Result<String, String> {
    access.check_url(&call.url)?;
    let body = call
        .body
        .as_deref()
        .map(|b| facts.render(b))
        .unwrap_or_default();
    let mut headers = vec![(
        "idempotency-key".to_string(),
        format!("{}/{}", facts.run, hook.name),
    )];
    let has_type = call
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !has_type && !body.is_empty() {
        let json = body.trim_start().starts_with(['{', '[']);
        headers.push((
            "content-type".into(),
            if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            }
            .into(),
        ));
    }
    headers.extend(call.headers.iter().cloned());
    let mut secret = None;
    if let Some(name) = &call.token_secret {
        let path = access.named("secret", name)?;
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("the secret {name} ({}): {e}", path.display()))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(format!("the secret {name} ({}) is empty", path.display()));
        }
        headers.push(("authorization".into(), format!("Bearer {token}")));
        secret = Some(token);
    }
    let ca = match &call.ca {
        Some(name) => Some(access.named("ca", name)?.display().to_string()),
        None => None,
    };
    let (status, bytes) = send(
        &call.method,
        &call.url,
        ca.as_deref(),
        &headers,
        body.into_bytes(),
    )
    .await?;
    let answer = if secret.is_some() {
        format!("HTTP {status} (the answer is not kept: the request carried a secret)")
    } else {
        let text = rewind_proto::masked::text(&cut(&String::from_utf8_lossy(&bytes)));
        if text.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {text}")
        }
    };
    if (200..300).contains(&status) {
        Ok(answer)
    } else {
        Err(format!("{} {} answered {answer}", call.method, call.url))
    }
}

/// An HTTP request made by the coordinator (hooks, notifications), over
/// TLS for https:// URLs (trusting `ca` instead of the public roots when
/// given): the status and the body of the answer.
pub async fn send(
    method: &str,
    url: &str,
    ca: Option<&str>,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<(u16, Bytes), String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca)?)
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("user-agent", concat!("rewind/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{method} {url}: {}", rewind_proto::tls::chain(&e)))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}

/// Send a one-off action (a hook's, a smoke check's) to `agent` once it is
/// connected: its summary and detail lines, or `kind: message`.
pub async fn one_off(
    fleet: &Fleet,
    agent: &str,
    mut request: StepRequest,
    timeout: Duration,
) -> Result<String, String> {
    if !fleet.wait_for(agent, AGENT_PATIENCE).await {
        return Err(format!("agent {agent} is not connected"));
    }
    request.step_id = format!("{}/{}", request.step_id, crate::runner::nonce());
    let result = fleet.request(agent, request, timeout).await?;
    match result.outcome {
        Some(step_result::Outcome::Done(done)) => {
            let mut answer = done.summary;
            for line in done.details {
                answer.push_str("\n  ");
                answer.push_str(&line);
            }
            Ok(answer)
        }
        Some(step_result::Outcome::Error(error)) => {
            Err(format!("{}: {}", error.kind, error.message))
        }
        _ => Err(format!("agent {agent} answered without an outcome")),
    }
}
