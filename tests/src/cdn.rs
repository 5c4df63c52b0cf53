//! A UI behind a real Varnish for the cdn tests: a small static origin that
//! serves whatever build its `current` link points at, and varnishd
//! (Debian's package) in front of it, caching every answer for an hour.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// Serves `GET /path` from the directory `current` points at (resolved on
/// every request), `/` as index.html; counts requests.
pub struct Origin {
    pub port: u16,
}

impl Origin {
    pub fn start(current: PathBuf) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let current = current.clone();
                std::thread::spawn(move || serve(stream, &current));
            }
        });
        Origin { port }
    }
}

fn serve(mut stream: TcpStream, current: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let relative = if path == "/" {
        "index.html".to_string()
    } else {
        path.trim_start_matches('/').to_string()
    };
    let safe = Path::new(&relative)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    let file = std::fs::canonicalize(current)
        .ok()
        .map(|dir| dir.join(&relative));
    let (status, body) = match file.filter(|_| safe).and_then(|f| std::fs::read(f).ok()) {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", b"not found".to_vec()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(&body);
}

/// varnishd in the foreground on a free loopback port.
pub struct Varnish {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

/// Accepts BAN (banning `req.url ~ X-Ban-Url`) and PURGE; caches for an hour.
pub const VCL_PURGE_ALLOWED: &str = r#"
sub vcl_recv {
    if (req.method == "BAN") {
        ban("req.url ~ " + req.http.X-Ban-Url);
        return (synth(200, "Banned"));
    }
    if (req.method == "PURGE") {
        return (purge);
    }
}
"#;

/// Refuses purges, as a locked-down cache would.
pub const VCL_PURGE_REFUSED: &str = r#"
sub vcl_recv {
    if (req.method == "BAN" || req.method == "PURGE") {
        return (synth(405, "Purging is not allowed here"));
    }
}
"#;

impl Varnish {
    /// Start varnishd in front of `origin_port` with `recv` as its vcl_recv.
    pub fn start(origin_port: u16, recv: &str) -> Varnish {
        let dir = TempDir::new().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let vcl = dir.path().join("default.vcl");
        std::fs::write(
            &vcl,
            format!(
                "vcl 4.1;\nbackend origin {{ .host = \"127.0.0.1\"; .port = \"{origin_port}\"; }}\n{recv}\n\
                 sub vcl_backend_response {{ set beresp.ttl = 1h; }}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("varnish.log")).unwrap();
        let child = Command::new("varnishd")
            .args(["-F", "-j", "none", "-s", "malloc,16m", "-n"])
            .arg(dir.path().join("work"))
            .args(["-a", &format!("127.0.0.1:{port}"), "-f"])
            .arg(&vcl)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting varnishd (Debian's varnish; scripts/install-deps installs it)");
        let varnish = Varnish {
            child,
            port,
            _dir: dir,
        };
        crate::wait::eventually("varnishd answers", Duration::from_secs(30), || {
            get(port, "/__ready").ok_or("no answer")
        });
        varnish
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Send `BAN /` with one header (as a deploy's purge would); panics
    /// unless Varnish accepts it.
    pub fn ban(&self, header: &str, value: &str) {
        let mut ban = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            ban,
            "BAN / HTTP/1.1\r\nHost: x\r\n{header}: {value}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = ban.read_to_end(&mut answer);
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
            "BAN refused: {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

impl Drop for Varnish {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET a path on a loopback port: (status, body), or None when nothing answers.
/// The Host header is the one the plugin's `verify_url` sends, so that both
/// see the same cached objects (Varnish's cache key is Host and URL).
pub fn get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response[split + 4..].to_vec()))
}
