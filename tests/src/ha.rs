//! Several coordinators on one journal: a second coordinator process beside
//! a test fleet's own, on the same configuration but for its name and port.

use crate::binary;
use crate::fleet::TestFleet;
use rewind_coordinator::cli::client::{self, Client};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Another coordinator of `fleet`: its configuration with `name` and `port`.
pub struct OtherCoordinator {
    child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
}

impl OtherCoordinator {
    pub fn start(fleet: &TestFleet, from: &str, name: &str, port: u16) -> OtherCoordinator {
        let dir = &fleet.fleet.dir;
        let text = std::fs::read_to_string(dir.join("coordinator.toml")).unwrap();
        let text: Vec<String> = text
            .lines()
            .map(|line| {
                if line.starts_with("listen = ") {
                    format!("listen = \"127.0.0.1:{port}\"")
                } else if line == format!("name = \"{from}\"") {
                    format!("name = \"{name}\"")
                } else {
                    line.to_string()
                }
            })
            .collect();
        let text = text.join("\n");
        let config = dir.join(format!("coordinator-{name}.toml"));
        std::fs::write(&config, text).unwrap();
        let log = dir.join(format!("coordinator-{name}.log"));
        let child = Command::new(binary("rewind"))
            .args(["coordinator", "--config"])
            .arg(&config)
            .env("REWIND_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting another coordinator");
        OtherCoordinator {
            child: Some(child),
            url: format!("https://127.0.0.1:{port}"),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until its log says `what`.
    pub async fn wait_log(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log_text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "coordinator never logged {what:?} within {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self, fleet: &TestFleet, operator: &str) -> Client {
        client::connect(&self.url, &fleet.fleet.operator(operator))
            .await
            .expect("operator connection")
    }
}

impl Drop for OtherCoordinator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Send a signal to a process.
pub fn signal(pid: u32, signal: i32) {
    // A plain kill(2) on a child of this test.
    let done = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(done, 0, "kill({pid}, {signal})");
}
