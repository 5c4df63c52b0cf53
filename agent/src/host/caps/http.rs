//! Outgoing HTTP (`wasi:http/outgoing-handler`): only to the hosts the
//! target's grant allow-lists, with connect and read timeouts bounded by the
//! agent whatever the plugin asks for.

use crate::config::{HostPort, TargetConfig};
use crate::host::tls::{self, HostTls};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::p2::bindings::http::types as p2;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks, default_send_request};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

pub struct HttpGate {
    plugin: String,
    target: String,
    allow: Vec<HostPort>,
    tls: Vec<HostTls>,
    deadline: Instant,
    /// The call's record of capability calls, when one is kept.
    pub(crate) tape: Option<std::sync::Arc<std::sync::Mutex<crate::host::state::Tape>>>,
}

impl HttpGate {
    pub fn new(plugin: &str, target: &TargetConfig, deadline: Instant) -> HttpGate {
        HttpGate {
            plugin: plugin.to_string(),
            target: target.name.clone(),
            allow: target.grant.http.clone(),
            tls: target.grant.tls.clone(),
            deadline,
            tape: None,
        }
    }

    fn allows(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
                443
            } else {
                80
            });
        self.allow.iter().any(|entry| entry.allows(host, port))
    }
}

fn bounded(asked: Option<Duration>, cap: Duration) -> Option<Duration> {
    Some(asked.map_or(cap, |d| d.min(cap)))
}

/// The rustls error inside an error's chain, if TLS is what failed.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// What the plugin is told of a TLS failure: the certificate was refused,
/// or the server ended the session with an alert (a client certificate
/// it wanted, say). The agent's log has the whole reason.
fn tls_error_code(error: &rustls::Error) -> p2::ErrorCode {
    match error {
        rustls::Error::InvalidCertificate(_) => p2::ErrorCode::TlsCertificateError,
        rustls::Error::AlertReceived(alert) => {
            p2::ErrorCode::TlsAlertReceived(p2::TlsAlertReceivedPayload {
                alert_id: Some(u8::from(*alert)),
                alert_message: Some(format!("{alert:?}")),
            })
        }
        _ => p2::ErrorCode::TlsProtocolError,
    }
}

impl WasiHttpHooks for HttpGate {
    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> p2::ErrorCode {
        tracing::warn!(plugin = self.plugin, target = self.target, error = %err, "TLS failed");
        rustls_error(err).map_or(p2::ErrorCode::TlsProtocolError, tls_error_code)
    }

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> p2::ErrorCode {
        tracing::warn!(plugin = self.plugin, target = self.target, error = ?err, "HTTP failed");
        rustls_error(err).map_or(p2::ErrorCode::HttpProtocolError, tls_error_code)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        let _ = fut;
        // GET and HEAD read; PUT, PATCH and DELETE write; a POST may be
        // either (etcd reads with POST).
        use crate::host::state::Effect;
        let effect = match *request.method() {
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS => Effect::Reads,
            http::Method::PUT | http::Method::PATCH | http::Method::DELETE => Effect::Writes,
            _ => Effect::MayWrite,
        };
        let subject = format!("{} {}", request.method(), request.uri());
        match crate::host::state::Tape::note(&self.tape, "http", "send", &subject, effect) {
            crate::host::state::Verdict::Go => {}
            crate::host::state::Verdict::Fault(crate::host::state::Fault::Timeout) => {
                return Box::new(async { Err(Error::ConnectionTimeout) });
            }
            _ => return Box::new(async { Err(Error::HttpRequestDenied) }),
        }
        if !self.allows(request.uri()) {
            tracing::warn!(
                plugin = self.plugin,
                target = self.target,
                uri = %request.uri(),
                "refused an HTTP request to a host not on the target's grant.http allow-list"
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let options = RequestOptions {
            connect_timeout: bounded(
                options.and_then(|o| o.connect_timeout),
                CONNECT_TIMEOUT.min(remaining),
            ),
            first_byte_timeout: bounded(
                options.and_then(|o| o.first_byte_timeout),
                READ_TIMEOUT.min(remaining),
            ),
            between_bytes_timeout: bounded(
                options.and_then(|o| o.between_bytes_timeout),
                READ_TIMEOUT.min(remaining),
            ),
        };
        // HTTPS to a host with TLS settings in the grant: its CA, its
        // client certificate.
        let host_tls = (request.uri().scheme() == Some(&http::uri::Scheme::HTTPS))
            .then(|| {
                let uri = request.uri();
                let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
                let port = uri.port_u16().unwrap_or(443);
                self.tls.iter().find(|t| t.applies_to(host, port)).cloned()
            })
            .flatten();
        if let Some(host_tls) = host_tls {
            return Box::new(tls::send_request(host_tls, request, options));
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
