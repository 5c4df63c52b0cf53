//! Stand-ins for the CDN providers' public APIs (Cloudflare, Fastly,
//! CloudFront): a local HTTP server that records every request so a test
//! can assert it is exactly what the providers' documentation requires,
//! and a SigV4 verifier written from AWS's documentation.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// A provider API on a loopback port; `answer` decides each response.
pub struct ProviderApi {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl ProviderApi {
    pub fn start(answer: impl Fn(&Received) -> (u16, String) + Send + 'static) -> ProviderApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let mut headers = BTreeMap::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let length: usize = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let request = Received {
                    method,
                    path,
                    headers,
                    body,
                };
                let (status, text) = answer(&request);
                log.lock().unwrap().push(request);
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        ProviderApi { port, received }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The SigV4 signature of a request, per AWS's documentation: `signed` are
/// the signed headers' names (lowercase, sorted), looked up in `headers`.
#[allow(clippy::too_many_arguments)]
pub fn sigv4_signature(
    secret_key: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &BTreeMap<String, String>,
    signed: &[&str],
    payload: &[u8],
    amz_date: &str,
    region: &str,
    service: &str,
) -> String {
    let canonical_headers: String = signed
        .iter()
        .map(|name| format!("{name}:{}\n", headers[*name].trim()))
        .collect();
    let canonical = format!(
        "{method}\n{path}\n{query}\n{canonical_headers}\n{}\n{}",
        signed.join(";"),
        hex::encode(Sha256::digest(payload))
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = hmac(format!("AWS4{secret_key}").as_bytes(), date);
    let key = hmac(&key, region);
    let key = hmac(&key, service);
    let key = hmac(&key, "aws4_request");
    hex::encode(hmac(&key, &to_sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of AWS's "Create a signed request" documentation (IAM
    /// ListUsers, 2015-08-30).
    #[test]
    fn the_verifier_matches_aws_published_example() {
        let headers = BTreeMap::from([
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
            ("host".to_string(), "iam.amazonaws.com".to_string()),
            ("x-amz-date".to_string(), "20150830T123600Z".to_string()),
        ]);
        let signature = sigv4_signature(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "GET",
            "/",
            "Action=ListUsers&Version=2010-05-08",
            &headers,
            &["content-type", "host", "x-amz-date"],
            b"",
            "20150830T123600Z",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            signature,
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }
}
