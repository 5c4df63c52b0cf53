//! An S3-compatible server for the cdn bucket tests: s3s-fs (objects are
//! files under a temporary directory, a bucket per top directory) behind
//! s3s's SigV4 authentication. Reads of objects are public, as a website
//! bucket's are; everything else needs a valid signature. Writes to one key
//! can be refused, as a bucket policy would, to make a switch fail halfway.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::path::S3Path;
use s3s::service::S3ServiceBuilder;
use s3s::{S3Result, s3_error};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

pub const ACCESS_KEY: &str = "AKIAREWINDTEST";
pub const SECRET_KEY: &str = "rewind-test-secret-key/0123456789abcdef";

pub struct S3Server {
    pub port: u16,
    dir: TempDir,
    refused_key: Arc<Mutex<Option<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Policy {
    refused_key: Arc<Mutex<Option<String>>>,
}

#[async_trait::async_trait]
impl S3Access for Policy {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_string();
        if cx.credentials().is_none() {
            // A public website bucket: anyone may read objects.
            return match op.as_str() {
                "GetObject" | "HeadObject" => Ok(()),
                _ => Err(s3_error!(AccessDenied, "{op} needs a signed request")),
            };
        }
        if let S3Path::Object { bucket, key } = cx.s3_path() {
            let refused = self.refused_key.lock().unwrap().clone();
            let writes = matches!(op.as_str(), "CopyObject" | "PutObject" | "DeleteObject");
            if writes && refused.as_deref() == Some(&format!("{bucket}/{key}")) {
                return Err(s3_error!(
                    AccessDenied,
                    "writes to {bucket}/{key} are not allowed"
                ));
            }
        }
        Ok(())
    }
}

impl S3Server {
    /// Start on a free loopback port, with `buckets` created.
    pub fn start(buckets: &[&str]) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        for bucket in buckets {
            std::fs::create_dir_all(dir.path().join(bucket)).unwrap();
        }
        let refused_key = Arc::new(Mutex::new(None));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let root = dir.path().to_path_buf();
        let policy = Policy {
            refused_key: refused_key.clone(),
        };
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
                let mut builder = S3ServiceBuilder::new(fs);
                builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                builder.set_access(policy);
                let service = builder.build();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let connection = http
                                .serve_connection(TokioIo::new(socket), service.clone())
                                .into_owned();
                            tokio::spawn(async move {
                                let _ = connection.await;
                            });
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
        });
        S3Server {
            port,
            dir,
            refused_key,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where `bucket/key` is stored on disk.
    pub fn path(&self, bucket: &str, key: &str) -> PathBuf {
        self.dir.path().join(bucket).join(key)
    }

    /// Refuse copies, puts and deletes of `bucket/key` (None: allow all).
    pub fn refuse_writes_to(&self, bucket_and_key: Option<&str>) {
        *self.refused_key.lock().unwrap() = bucket_and_key.map(str::to_string);
    }

    /// Every file under `bucket/prefix`, as (relative path, contents),
    /// sorted.
    pub fn files(&self, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let base = self.path(bucket, prefix);
        let mut found = Vec::new();
        collect(&base, &base, &mut found);
        found.sort();
        found
    }
}

fn collect(base: &Path, dir: &Path, found: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        // s3s-fs's files being written.
        if name.starts_with(".tmp.") {
            continue;
        }
        if path.is_dir() {
            collect(base, &path, found);
        } else {
            let relative = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .to_string();
            found.push((relative, std::fs::read(&path).unwrap()));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
