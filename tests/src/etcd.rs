//! A real etcd (Debian's etcd-server) started for a test on loopback ports,
//! and a small client for its v3 JSON gateway.

use crate::free_port;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub struct EtcdServer {
    child: Child,
    /// The plain-HTTP client port (the tests' own client uses it).
    pub port: u16,
    /// With TLS: the HTTPS client port, which requires a client
    /// certificate signed by the CA in `tls_dir`.
    pub tls_port: Option<u16>,
    _dir: TempDir,
}

/// Certificates for an etcd with TLS: `ca.pem`, the server's
/// `coordinator-etcd.{pem,key}` (SANs localhost and 127.0.0.1), and a client's
/// `agent-rewind.{pem,key}`.
pub fn tls_certificates(dir: &std::path::Path) {
    use rewind_coordinator::certs;
    use rewind_proto::identity::Kind;
    certs::init(dir, "etcd.test").unwrap();
    certs::issue_for_days(dir, Kind::Coordinator, "etcd", &[], 30).unwrap();
    certs::issue_for_days(dir, Kind::Agent, "rewind", &[], 30).unwrap();
}

impl EtcdServer {
    /// Start etcd; fails loudly when it is not installed.
    pub fn start() -> EtcdServer {
        EtcdServer::start_with(None)
    }

    /// Start etcd with a second, HTTPS client port using the certificates
    /// [`tls_certificates`] wrote to `tls_dir`, client certificates required.
    pub fn start_tls(tls_dir: &std::path::Path) -> EtcdServer {
        EtcdServer::start_with(Some(tls_dir))
    }

    fn start_with(tls_dir: Option<&std::path::Path>) -> EtcdServer {
        let dir = TempDir::new().unwrap();
        let (port, peer) = (free_port(), free_port());
        let tls_port = tls_dir.map(|_| free_port());
        let mut client = format!("http://127.0.0.1:{port}");
        let mut tls_args: Vec<String> = Vec::new();
        if let (Some(tls_dir), Some(tls_port)) = (tls_dir, tls_port) {
            client.push_str(&format!(",https://127.0.0.1:{tls_port}"));
            let file = |name: &str| tls_dir.join(name).display().to_string();
            tls_args = vec![
                "--cert-file".into(),
                file("coordinator-etcd.pem"),
                "--key-file".into(),
                file("coordinator-etcd.key"),
                "--trusted-ca-file".into(),
                file("ca.pem"),
                "--client-cert-auth".into(),
            ];
        }
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args([
                "--name",
                "test",
                "--data-dir",
                &dir.path().join("data").display().to_string(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("test={peer_url}"),
                "--max-txn-ops",
                "128",
            ])
            .args(&tls_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (Debian's etcd-server; scripts/install-deps installs it)");
        let server = EtcdServer {
            child,
            port,
            tls_port,
            _dir: dir,
        };
        crate::wait::eventually("etcd answers", Duration::from_secs(30), || {
            match server.try_call("kv/range", &json!({ "key": b64("x") })) {
                Ok(answer) if answer.get("header").is_some() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn try_call(&self, path: &str, body: &Value) -> std::io::Result<Value> {
        post_json(self.port, &format!("/v3/{path}"), body)
    }

    /// POST to the JSON gateway; panics on failure.
    pub fn call(&self, path: &str, body: &Value) -> Value {
        self.try_call(path, body)
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"))
    }

    pub fn put(&self, key: &str, value: &str) -> i64 {
        let answer = self.call("kv/put", &json!({ "key": b64(key), "value": b64(value) }));
        int(&answer["header"]["revision"])
    }

    pub fn delete(&self, key: &str) {
        self.call("kv/deleterange", &json!({ "key": b64(key) }));
    }

    /// Put many keys, 100 per transaction.
    pub fn put_many(&self, pairs: &[(String, String)]) {
        for chunk in pairs.chunks(100) {
            let success: Vec<Value> = chunk
                .iter()
                .map(|(k, v)| json!({ "request_put": { "key": b64(k), "value": b64(v) } }))
                .collect();
            let answer = self.call("kv/txn", &json!({ "success": success }));
            assert_eq!(answer["succeeded"], true, "{answer}");
        }
    }

    /// Every key under a prefix, with its value.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let answer = self.call(
            "kv/range",
            &json!({ "key": b64(prefix), "range_end": B64.encode(end) }),
        );
        answer["kvs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|kv| {
                (
                    unb64(kv["key"].as_str().unwrap()),
                    unb64(kv["value"].as_str().unwrap_or("")),
                )
            })
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let answer = self.call("kv/range", &json!({ "key": b64(key) }));
        answer["kvs"]
            .as_array()
            .and_then(|kvs| kvs.first())
            .map(|kv| unb64(kv["value"].as_str().unwrap_or("")))
    }

    /// Stop the server (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn b64(text: &str) -> String {
    B64.encode(text.as_bytes())
}

pub fn unb64(text: &str) -> String {
    String::from_utf8(B64.decode(text).unwrap()).unwrap()
}

pub fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// A blocking HTTP/1.1 POST of JSON, one connection per request.
pub fn post_json(port: u16, path: &str, body: &Value) -> std::io::Result<Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("{head}: {payload}")));
    }
    serde_json::from_str(&payload).map_err(std::io::Error::other)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(&after[..size.min(after.len())]);
        rest = after.get(size + 2..).unwrap_or("");
    }
    out
}
