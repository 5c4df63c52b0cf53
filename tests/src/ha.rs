//! Several coordinators on one journal: a second coordinator process beside
//! a test fleet's own, on the same configuration but for its name and port.

use crate::binary;
use crate::fleet::TestFleet;
use rewind_coordinator::cli::client::{self, Client};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Another coordinator of `fleet`: its configuration with `name` and `port`.
pub struct OtherCoordinator {
    child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
}

impl OtherCoordinator {
    pub fn start(fleet: &TestFleet, from: &str, name: &str, port: u16) -> OtherCoordinator {
        OtherCoordinator::start_on(fleet, from, name, port, None)
    }

    /// `start`, with its journal at `database` instead of the fleet's.
    pub fn start_on(
        fleet: &TestFleet,
        from: &str,
        name: &str,
        port: u16,
        database: Option<&str>,
    ) -> OtherCoordinator {
        OtherCoordinator::start_beside(&fleet.fleet.dir, from, name, port, database)
    }

    /// Another coordinator of the local fleet laid out in `dir`.
    pub fn start_beside(
        dir: &Path,
        from: &str,
        name: &str,
        port: u16,
        database: Option<&str>,
    ) -> OtherCoordinator {
        let text = std::fs::read_to_string(dir.join("coordinator.toml")).unwrap();
        // One metrics address cannot serve both: this one serves none.
        let text: Vec<String> = text
            .lines()
            .filter(|line| !line.starts_with("metrics = "))
            .map(|line| {
                if line.starts_with("listen = ") {
                    format!("listen = \"127.0.0.1:{port}\"")
                } else if let (true, Some(database)) = (line.starts_with("database = "), database) {
                    format!("database = \"{database}\"")
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

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until its log says `what`.
    pub async fn wait_log(&self, what: &str, within: Duration) {
        crate::wait::eventually_async(
            &format!("the coordinator logs {what:?}"),
            within,
            async || {
                let log = self.log_text();
                crate::wait::holds(log.contains(what), log)
            },
        )
        .await
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

/// A TCP proxy to a Unix socket (a PostgreSQL server's) that the test can
/// cut: from then on nothing passes either way and the connections hang, as
/// across a network partition.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(socket: PathBuf) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (socket, cut) = (socket.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(unix) = tokio::net::UnixStream::connect(&socket).await else {
                        return;
                    };
                    let (tcp_read, tcp_write) = tcp.into_split();
                    let (unix_read, unix_write) = unix.into_split();
                    async fn pump(
                        mut from: impl tokio::io::AsyncRead + Unpin,
                        mut to: impl tokio::io::AsyncWrite + Unpin,
                        cut: std::sync::Arc<AtomicBool>,
                    ) {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buffer = vec![0u8; 64 << 10];
                        loop {
                            let Ok(read) = from.read(&mut buffer).await else {
                                return;
                            };
                            // Cut: the bytes never arrive.
                            while cut.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            if read == 0 || to.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    }
                    tokio::join!(
                        pump(tcp_read, unix_write, cut.clone()),
                        pump(unix_read, tcp_write, cut)
                    );
                });
            }
        });
        Proxy { port, cut, task }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
