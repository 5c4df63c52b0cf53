//! A real PostgreSQL server for the tests, started from Debian's packages in
//! a temporary directory, reachable only on a Unix socket there. Stopped
//! (fast shutdown) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub struct PgServer {
    dir: TempDir,
    child: Child,
}

const PORT: u16 = 5432;

/// The newest installed PostgreSQL's binaries.
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("postgres").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres): run scripts/install-deps")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the `postgres` user when we are root (the server refuses root).
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the PostgreSQL directory failed");
        }
        let init = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "rewind",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .stdout(Stdio::null())
            .output()
            .expect("running initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log file");
        let child = as_server_user(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args([
                "-p",
                &PORT.to_string(),
                "-c",
                "listen_addresses=",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        let server = PgServer { dir, child };
        server.wait_ready(&bin);
        let create = Command::new(bin.join("psql"))
            .args(["-h"])
            .arg(server.dir.path())
            .args([
                "-p",
                &PORT.to_string(),
                "-U",
                "rewind",
                "-d",
                "postgres",
                "-qc",
                "CREATE DATABASE rewind",
            ])
            .output()
            .expect("running psql");
        assert!(
            create.status.success(),
            "CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&create.stderr)
        );
        server
    }

    fn wait_ready(&self, bin: &Path) {
        crate::wait::eventually("PostgreSQL is ready", Duration::from_secs(30), || {
            let ready = Command::new(bin.join("pg_isready"))
                .arg("-h")
                .arg(self.dir.path())
                .args([
                    "-p",
                    &PORT.to_string(),
                    "-U",
                    "rewind",
                    "-d",
                    "postgres",
                    "-q",
                ])
                .status()
                .is_ok_and(|s| s.success());
            let log = || {
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
            };
            crate::wait::holds(ready, ()).map_err(|()| log())
        });
    }

    /// The directory of the server's Unix socket (its `host`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Run SQL with psql as the `rewind` superuser; the rows, `|`-separated.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = self.try_psql(database, sql);
        output.unwrap_or_else(|e| panic!("psql on {database}: {e}\n{sql}"))
    }

    /// Run SQL with psql; the rows, or psql's error.
    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let output = Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &PORT.to_string(),
                "-U",
                "rewind",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }

    /// A sqlx URL of the `rewind` database, over the Unix socket.
    /// The server's Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(format!(".s.PGSQL.{PORT}"))
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://rewind@localhost/rewind?host={}&port={PORT}",
            self.dir.path().display()
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT to the postmaster (not to `runuser`) is a fast shutdown.
        let pid_file = self.dir.path().join("data/postmaster.pid");
        let pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<libc::pid_t>().ok());
        match pid {
            // SAFETY: signalling the server this test started.
            Some(pid) => unsafe { libc::kill(pid, libc::SIGINT) },
            None => unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) },
        };
        let _ = self.child.wait();
    }
}

/// A pg-restore target of `database` on this server, as agent
/// configuration: (settings, grant), each program granted only with the
/// arguments the plugin uses.
pub fn pg_restore_target(pg: &PgServer, database: &str) -> (String, String) {
    let bin = bin_dir();
    let (pg_dump, pg_restore) = (bin.join("pg_dump"), bin.join("pg_restore"));
    let host = pg.socket_dir().display().to_string();
    let connection =
        |db: &str| format!(r#""-h", "{host}", "-p", "{PORT}", "-U", "rewind", "-d", "{db}""#);
    let settings = format!(
        r#"{{ database = "{database}", host = "{host}", user = "rewind", migration_table = "schema_migrations", jobs = 2, pg_dump = "{pg_dump}", pg_restore = "{pg_restore}" }}"#,
        pg_dump = pg_dump.display(),
        pg_restore = pg_restore.display(),
    );
    let grant = format!(
        r#"{{ process = [{{ program = "{pg_dump}", args = [["-Fc", "-f", "snapshot-*", {live}], ["-Fc", "-f", "emergency-*", {live}]] }}, {{ program = "{pg_restore}", args = [["--list", "snapshot-*"], ["--list", "emergency-*"], ["--exit-on-error", "--jobs", "2", {staged}, "snapshot-*"]] }}], process_timeout = "2h", postgres = {{ host = "{host}", user = "rewind", databases = ["{database}", "{database}_rewind_*"], admin = true, timeout = "2h" }} }}"#,
        pg_dump = pg_dump.display(),
        pg_restore = pg_restore.display(),
        live = connection(database),
        staged = connection(&format!("{database}_rewind_*")),
    );
    (settings, grant)
}
