//! Outgoing HTTP (`wasi:http/outgoing-handler`): only to the hosts the
//! target's grant allow-lists, with connect and read timeouts bounded by the
//! agent whatever the plugin asks for.

use crate::config::{HostPort, TargetConfig};
use std::time::{Duration, Instant};
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
    deadline: Instant,
}

impl HttpGate {
    pub fn new(plugin: &str, target: &TargetConfig, deadline: Instant) -> HttpGate {
        HttpGate {
            plugin: plugin.to_string(),
            target: target.name.clone(),
            allow: target.grant.http.clone(),
            deadline,
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

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        let _ = fut;
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
