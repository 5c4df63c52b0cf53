//! The web view under test: `rewind ui` as a separate process with an
//! operator's certificate, and a real headless Chromium driven through
//! chromedriver (WebDriver), from Debian's packages.

use crate::fleet::TestFleet;
use crate::free_port;
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `rewind ui` as `operator`, on a port of its choosing.
pub struct WebView {
    child: Child,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub url: String,
    pub port: u16,
}

impl WebView {
    pub fn start(fleet: &TestFleet, operator: &str, plans: &Path) -> WebView {
        let plans = plans.display().to_string();
        let mut child = fleet
            .command(
                operator,
                &["ui", "--listen", "127.0.0.1:0", "--plans", &plans],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting rewind ui");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading rewind ui's first line");
        // "rewind ui at http://127.0.0.1:PORT/ as operator ..."
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("rewind ui did not say where it listens: {line:?}"))
            .trim_end_matches('/')
            .to_string();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the URL");
        WebView { child, url, port }
    }

    /// A raw HTTP/1.1 request to the web view, as any local program (or a
    /// page of another site, through the browser) could send it: the status
    /// code and the body.
    pub fn raw(&self, request: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .expect("connecting to rewind ui");
        stream.write_all(request.as_bytes()).expect("sending");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("reading");
        let code = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (code, body)
    }
}

impl Drop for WebView {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium under chromedriver, in a process group of its own
/// so that nothing outlives the test.
pub struct Browser {
    driver: Child,
    pub client: Client,
    _profile: tempfile::TempDir,
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

impl Browser {
    pub async fn start() -> Browser {
        let chromium = on_path("chromium").expect(
            "the web view's tests need Debian's chromium and chromium-driver (scripts/install-deps installs them)",
        );
        let chromedriver = on_path("chromedriver").expect(
            "the web view's tests need chromedriver, from Debian's chromium-driver (scripts/install-deps installs it)",
        );
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting chromedriver");
        crate::wait::eventually_async(
            &format!("chromedriver listens on {port}"),
            Duration::from_secs(20),
            async || std::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await;
        let profile = tempfile::tempdir().expect("a profile directory");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,960",
                    "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("starting headless chromium through chromedriver: {e}"));
        Browser {
            driver,
            client,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Run a script in the page and return what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("running {script:?} in the page: {e}"))
    }

    /// Wait until `script` returns something truthy in the page; return it.
    pub async fn until(&self, what: &str, within: Duration, script: &str) -> Value {
        crate::wait::eventually_async(&format!("the page shows {what}"), within, async || {
            let value = self.eval(script).await;
            if !matches!(value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0)
            {
                return Ok(value);
            }
            Err(format!(
                "the page shows:\n{}",
                self.eval("return document.body.innerText").await
            ))
        })
        .await
    }

    /// A screenshot of the page, kept under target/screenshots, and in
    /// docs/images when REWIND_UPDATE_SCREENSHOTS is set.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("taking screenshot {name}: {e}"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
        let dir = crate::root().join("target/screenshots");
        std::fs::create_dir_all(&dir).expect("a screenshots directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("writing the screenshot");
        if std::env::var_os("REWIND_UPDATE_SCREENSHOTS").is_some() {
            let docs = crate::root().join("docs/images");
            std::fs::create_dir_all(&docs).expect("docs/images");
            std::fs::write(docs.join(format!("{name}.png")), &png).expect("writing docs/images");
        }
        path
    }

    /// End the browser's session; dropping it stops chromedriver and chromium.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

fn kill_group(child: &mut Child) {
    // The group holds chromedriver and the chromium it started.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}
