//! Outgoing HTTP through `wasi:http`. The agent sends the request, and only to
//! the hosts the target's grant allow-lists; any other host is refused with
//! [`HttpError::Denied`] before a connection is made.

use crate::PluginError;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL cannot be used (scheme, authority).
    InvalidUrl(String),
    /// The host refused the request: the destination is not on the target's allow-list.
    Denied(String),
    /// The request failed (connection refused, timeout, protocol error).
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::InvalidUrl(t) => write!(f, "invalid URL: {t}"),
            HttpError::Denied(t) => write!(f, "denied: {t}"),
            HttpError::Failed(t) => write!(f, "{t}"),
        }
    }
}

impl From<HttpError> for PluginError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::InvalidUrl(t) => PluginError::InvalidSettings(t),
            HttpError::Denied(t) => PluginError::Denied(t),
            HttpError::Failed(t) => PluginError::Unavailable(t),
        }
    }
}

struct Url<'a> {
    scheme: Scheme,
    authority: &'a str,
    path_and_query: &'a str,
}

fn parse_url(url: &str) -> Result<Url<'_>, HttpError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(HttpError::InvalidUrl(format!(
            "{url}: only http:// and https:// URLs"
        )));
    };
    let (authority, path_and_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::InvalidUrl(format!("{url}: no host")));
    }
    Ok(Url {
        scheme,
        authority,
        path_and_query,
    })
}

fn method(name: &str) -> Method {
    match name.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    }
}

fn failed(url: &str, what: &str) -> HttpError {
    HttpError::Failed(format!("{url}: {what}"))
}

fn error_code(url: &str, code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied(format!(
            "{url}: the agent refused the request (host not on the target's http allow-list)"
        )),
        ErrorCode::TlsCertificateError => HttpError::Failed(format!(
            "{url}: the server's TLS certificate is not trusted (unknown CA, another host name, \
             or expired); a private CA goes in the target's grant.tls"
        )),
        ErrorCode::TlsAlertReceived(alert) => {
            let message = alert
                .alert_message
                .unwrap_or_else(|| "no reason given".into());
            let hint = if message.contains("Certificate") {
                "; a client certificate goes in the target's grant.tls (cert, key)"
            } else {
                ""
            };
            HttpError::Failed(format!("{url}: the server ended TLS: {message}{hint}"))
        }
        ErrorCode::TlsProtocolError => {
            HttpError::Failed(format!("{url}: TLS failed (is the server speaking TLS?)"))
        }
        ErrorCode::ConnectionRefused => HttpError::Failed(format!("{url}: connection refused")),
        ErrorCode::ConnectionTimeout => HttpError::Failed(format!("{url}: connection timed out")),
        ErrorCode::ConnectionReadTimeout => HttpError::Failed(format!(
            "{url}: the server stopped answering (read timed out)"
        )),
        ErrorCode::DnsError(dns) => HttpError::Failed(format!(
            "{url}: the host name cannot be resolved ({})",
            dns.rcode.unwrap_or_default()
        )),
        other => HttpError::Failed(format!("{url}: {other:?}")),
    }
}

/// Send a request and read the whole response.
pub fn send(
    method_name: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let parsed = parse_url(url)?;
    let fields = Fields::new();
    // A known length rather than a chunked body: some APIs refuse chunked
    // requests.
    let has_length = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
    // PUT, POST and PATCH say their length even when the body is empty
    // (S3 refuses a copy without `content-length: 0`).
    let sends_body = matches!(
        method_name.to_ascii_uppercase().as_str(),
        "PUT" | "POST" | "PATCH"
    );
    if (sends_body || !body.is_empty()) && !has_length {
        fields
            .append("content-length", body.len().to_string().as_bytes())
            .map_err(|e| HttpError::InvalidUrl(format!("{url}: content-length: {e:?}")))?;
    }
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| HttpError::InvalidUrl(format!("{url}: header {name}: {e:?}")))?;
    }
    let request = OutgoingRequest::new(fields);
    let invalid = |what: &str| HttpError::InvalidUrl(format!("{url}: {what}"));
    request
        .set_method(&method(method_name))
        .map_err(|_| invalid("method"))?;
    request
        .set_scheme(Some(&parsed.scheme))
        .map_err(|_| invalid("scheme"))?;
    request
        .set_authority(Some(parsed.authority))
        .map_err(|_| invalid("authority"))?;
    request
        .set_path_with_query(Some(parsed.path_and_query))
        .map_err(|_| invalid("path"))?;

    let outgoing_body = request
        .body()
        .map_err(|_| failed(url, "request body unavailable"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| error_code(url, e))?;
    let written = (|| {
        let stream = outgoing_body
            .write()
            .map_err(|_| failed(url, "request body stream"))?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| failed(url, &format!("writing the request body: {e:?}")))?;
        }
        Ok(())
    })();
    if let Err(write_error) = written {
        // The connection ended while the body was written (e.g. the server
        // refused the TLS session after the handshake): its reason is in
        // the response's error, which says more than "closed".
        pending.subscribe().block();
        return Err(match pending.get() {
            Some(Ok(Err(code))) => error_code(url, code),
            _ => write_error,
        });
    }
    OutgoingBody::finish(outgoing_body, None).map_err(|e| error_code(url, e))?;

    pending.subscribe().block();
    let incoming = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(error_code(url, code)),
        Some(Err(())) | None => return Err(failed(url, "no response")),
    };
    let status = incoming.status();
    let headers = incoming.headers().entries();
    let incoming_body = incoming
        .consume()
        .map_err(|_| failed(url, "response body unavailable"))?;
    let mut bytes = Vec::new();
    {
        let stream = incoming_body
            .stream()
            .map_err(|_| failed(url, "response body stream"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(failed(
                        url,
                        &format!("reading the response: {}", e.to_debug_string()),
                    ));
                }
            }
        }
    }
    let _trailers = IncomingBody::finish(incoming_body);
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}

/// `send` with GET and no body.
pub fn get(url: &str) -> Result<Response, HttpError> {
    send("GET", url, &[], &[])
}
