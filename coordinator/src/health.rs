//! HTTP health gates: the coordinator GETs a URL until it answers the wanted
//! status (and body), or the gate's time runs out. This is the `sleep 10 &&
//! curl /health` of a runbook, with a deadline and a clear failure.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Poll `url` until it answers `status` (and contains `body`) within `within`.
pub async fn http_gate(
    url: &str,
    status: u16,
    body: Option<&str>,
    within: Duration,
) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("health URL {url}: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let started = Instant::now();
    let mut last;
    loop {
        let attempt = async {
            let response = client
                .get(uri.clone())
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let code = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?
                .to_bytes();
            Ok::<_, String>((code, String::from_utf8_lossy(&bytes).into_owned()))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(Ok((code, text))) if code == status && body.is_none_or(|b| text.contains(b)) => {
                return Ok(());
            }
            Ok(Ok((code, text))) => {
                let shown: String = text.chars().take(200).collect();
                let shown = rewind_proto::masked::text(&shown);
                last = format!("GET {url} answered {code}: {shown}");
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("GET {url}: no answer within {}s", REQUEST_TIMEOUT.as_secs()),
        }
        if started.elapsed() + POLL > within {
            let wanted = match body {
                Some(b) => format!("{status} containing {b:?}"),
                None => status.to_string(),
            };
            return Err(format!(
                "health gate not passed within {}: wanted {wanted}; last: {last}",
                humantime::format_duration(within)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
