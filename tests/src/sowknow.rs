//! Runbook 000's platform in miniature, from real components: PostgreSQL
//! in a compose container (published on loopback), a backend that reads
//! `backend/.env.production` through compose's `env_file:` and reports its
//! settings on its health page, and Debian's nginx with `nginx/nginx.conf`
//! bind-mounted as a single file. One agent manages it: the database
//! (pg-restore), the two files (files) and the containers (compose).

use crate::docker::{Project, inspect, run};
use crate::fleet::TestFleet;
use crate::images::{backend_image, nginx_image, postgres_image};
use crate::{free_port, wait::eventually};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The database's password: it is in the env file's `DATABASE_URL` too,
/// and must never leave the host in clear.
pub const PASSWORD: &str = "pw-sowknow-7f3a91";
pub const SECRET_V1: &str = "key-v1-c0ffee";
pub const SECRET_V2: &str = "key-v2-deadbeef";

fn compose_file() -> String {
    format!(
        r#"version: "2.4"
services:
  postgres:
    image: {postgres}
    environment:
      POSTGRES_USER: sowknow
      POSTGRES_PASSWORD: {PASSWORD}
      POSTGRES_DB: sowknow
    ports: ["127.0.0.1:${{PG_PORT}}:5432"]
    volumes: ["pgdata:/var/lib/postgresql/data"]
    stop_grace_period: 5s
  backend:
    image: rewind-test/backend:${{TAG}}
    env_file: ./backend/.env.production
    depends_on:
      postgres:
        condition: service_healthy
    ports: ["127.0.0.1:${{BACKEND_PORT}}:8080"]
    stop_grace_period: 1s
    init: true
  nginx:
    image: {nginx}
    volumes: ["./nginx/nginx.conf:/etc/nginx/nginx.conf:ro"]
    ports: ["127.0.0.1:${{NGINX_PORT}}:80"]
    depends_on: [backend]
    stop_grace_period: 1s
volumes:
  pgdata: {{}}
"#,
        postgres = postgres_image(),
        nginx = nginx_image(),
    )
}

/// The env file of a release: its feature flag, its secret key, and the
/// database's URL (v2 changes its options, so the preview shows the line).
pub fn env_file(release: &str) -> String {
    let (feature, secret, options) = match release {
        "v1" => ("old", SECRET_V1, ""),
        _ => ("new", SECRET_V2, "?sslmode=disable"),
    };
    format!(
        "FEATURE_X={feature}\nSECRET_KEY={secret}\nDATABASE_URL=postgresql://sowknow:{PASSWORD}@postgres:5432/sowknow{options}\n"
    )
}

/// nginx's configuration of a release: a header and a page that say which.
pub fn nginx_conf(release: &str) -> String {
    format!(
        "user root;\nerror_log stderr;\npid /tmp/nginx.pid;\nevents {{}}\nhttp {{\n  access_log off;\n  server {{\n    listen 80;\n    location / {{ add_header X-Config {release} always; return 200 \"config {release}\\n\"; }}\n  }}\n}}\n"
    )
}

pub struct Sowknow {
    pub project: Project,
    pub pg_port: u16,
    pub backend_port: u16,
    pub nginx_port: u16,
    /// The compose project's directory: the compose file, `backend/` and `nginx/`.
    pub dir: PathBuf,
}

impl Sowknow {
    /// The platform on release v1, healthy, with its documents.
    pub fn start(name: &str) -> Sowknow {
        backend_image("v1");
        backend_image("v2");
        let (pg_port, backend_port, nginx_port) = (free_port(), free_port(), free_port());
        let project = Project::with_file(
            name,
            &compose_file(),
            &[
                ("PG_PORT", pg_port.to_string()),
                ("BACKEND_PORT", backend_port.to_string()),
                ("NGINX_PORT", nginx_port.to_string()),
            ],
        );
        let dir = project.dir.path().to_path_buf();
        std::fs::create_dir_all(dir.join("backend")).unwrap();
        std::fs::create_dir_all(dir.join("nginx")).unwrap();
        std::fs::write(dir.join("backend/.env.production"), env_file("v1")).unwrap();
        std::fs::write(dir.join("nginx/nginx.conf"), nginx_conf("v1")).unwrap();
        std::fs::write(dir.join("db.env"), format!("PGPASSWORD={PASSWORD}\n")).unwrap();
        project.up("v1");
        let platform = Sowknow {
            project,
            pg_port,
            backend_port,
            nginx_port,
            dir,
        };
        platform.psql(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY); \
             INSERT INTO schema_migrations VALUES ('20260101'); \
             CREATE TABLE documents (id serial PRIMARY KEY, title text NOT NULL); \
             INSERT INTO documents (title) SELECT 'document ' || i FROM generate_series(1, 500) i",
        );
        platform
    }

    /// SQL on the platform's database, through its published port.
    pub fn psql(&self, sql: &str) -> String {
        let output = Command::new(crate::postgres::bin_dir().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
            .args([
                "-U",
                "sowknow",
                "-d",
                "sowknow",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The database's schema, migrations and documents, in one line.
    pub fn database(&self) -> String {
        self.psql(
            "SELECT (SELECT string_agg(table_name || '.' || column_name, ',' ORDER BY table_name, ordinal_position) \
                     FROM information_schema.columns WHERE table_schema = 'public') \
             || ' | ' || (SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations) \
             || ' | ' || (SELECT count(*) || ' ' || md5(string_agg(id || title, ',' ORDER BY id)) FROM documents)",
        )
    }

    /// The bad release: a migration, changed rows, v2's env file applied
    /// with `docker-compose up -d` (the backend recreated on v2's image
    /// with v2's environment), and v2's nginx.conf edited in place and
    /// reloaded.
    pub fn deploy_v2(&self) {
        self.psql(
            "ALTER TABLE documents ADD COLUMN embedding text; \
             INSERT INTO schema_migrations VALUES ('20260301'); \
             UPDATE documents SET title = upper(title) WHERE id % 7 = 0",
        );
        std::fs::write(self.dir.join("backend/.env.production"), env_file("v2")).unwrap();
        std::fs::write(self.dir.join("nginx/nginx.conf"), nginx_conf("v2")).unwrap();
        run(
            "docker",
            &["kill", "-s", "HUP", &self.project.container("nginx")],
        );
        self.project.up("v2");
        eventually("nginx serving v2", Duration::from_secs(20), || {
            let served = self.served();
            if served.contains("x-config: v2") {
                Ok(())
            } else {
                Err(served)
            }
        });
    }

    /// What nginx serves: the response's headers and body, lowercased.
    pub fn served(&self) -> String {
        get(self.nginx_port, "/")
    }

    /// The backend's health page.
    pub fn health(&self) -> String {
        get(self.backend_port, "/cgi-bin/health")
    }

    /// The environment the backend's container runs with.
    pub fn backend_env(&self) -> Vec<String> {
        inspect(&self.project.container("backend"))["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// Each container's id, by service.
    pub fn container_ids(&self) -> Vec<(String, String)> {
        self.project
            .containers()
            .into_iter()
            .map(|(service, name)| {
                let id = inspect(&name)["Id"].as_str().unwrap().to_string();
                (service, id)
            })
            .collect()
    }

    /// `docker-compose up -d` on release `tag`: its output.
    pub fn compose_up(&self, tag: &str) -> String {
        let output = Command::new("docker-compose")
            .args(["-p", &self.project.name, "-f"])
            .arg(self.project.file())
            .args(["up", "-d"])
            .env("TAG", tag)
            .env("PG_PORT", self.pg_port.to_string())
            .env("BACKEND_PORT", self.backend_port.to_string())
            .env("NGINX_PORT", self.nginx_port.to_string())
            .current_dir(&self.dir)
            .output()
            .expect("docker-compose");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// The agent's plugins and targets for this platform.
    pub fn targets(&self) -> String {
        let bin = crate::postgres::bin_dir();
        let (pg_dump, pg_restore) = (bin.join("pg_dump"), bin.join("pg_restore"));
        let port = self.pg_port;
        let connection = |db: &str| {
            format!(r#""-h", "127.0.0.1", "-p", "{port}", "-U", "sowknow", "-d", "{db}""#)
        };
        let project = &self.project.name;
        let dir = self.dir.display();
        format!(
            r#"{plugins}
[targets.db]
plugin = "pg-restore"
secrets = "{dir}/db.env"
settings = {{ database = "sowknow", host = "127.0.0.1", port = {port}, user = "sowknow", migration_table = "schema_migrations", jobs = 2, pg_dump = "{pg_dump}", pg_restore = "{pg_restore}" }}
grant = {{ process = [{{ program = "{pg_dump}", args = [["-Fc", "-f", "snapshot-*", {live}], ["-Fc", "-f", "emergency-*", {live}]] }}, {{ program = "{pg_restore}", args = [["--list", "snapshot-*"], ["--list", "emergency-*"], ["--exit-on-error", "--jobs", "2", {staged}, "snapshot-*"]] }}], process_timeout = "10m", postgres = {{ host = "127.0.0.1", port = {port}, user = "sowknow", databases = ["sowknow", "sowknow_rewind_*"], admin = true, password_secret = "PGPASSWORD", timeout = "10m" }} }}

[targets.config]
plugin = "files"
settings = {{ files = ["{dir}/backend/.env.production", "{dir}/nginx/nginx.conf"], container_reload = "SIGHUP" }}
grant = {{ files = ["{dir}/backend", "{dir}/nginx"], process = [], docker = ["{project}"] }}

[targets.app]
plugin = "compose"
settings = {{ project = "{project}", services = ["backend", "nginx"], health_timeout_secs = 60 }}
grant = {{ docker = ["{project}"] }}
"#,
            plugins = [
                ("pg-restore", "pg_restore"),
                ("files", "files"),
                ("compose", "compose"),
            ]
            .map(|(name, file)| crate::unsigned_plugin(name, file))
            .concat(),
            pg_dump = pg_dump.display(),
            pg_restore = pg_restore.display(),
            live = connection("sowknow"),
            staged = connection("sowknow_rewind_*"),
        )
    }

    /// Runbook 000's plan for this platform: the data, then the
    /// configuration, then the services, checked where users meet them.
    pub fn plan(&self) -> String {
        format!(
            r#"name = "sowknow"

[[stage]]
name = "data"
select = {{ tier = "app" }}
target = "db"
timeout = "10m"

[[stage]]
name = "config"
after = ["data"]
select = {{ tier = "app" }}
target = "config"

[[stage]]
name = "services"
after = ["config"]
select = {{ tier = "app" }}
target = "app"
health = [{{ verify = true }}, {{ http = "http://127.0.0.1:{backend}/cgi-bin/health", body = "feature_x: old", within = "30s" }}, {{ http = "http://127.0.0.1:{nginx}/", body = "config v1", within = "30s" }}]
"#,
            backend = self.backend_port,
            nginx = self.nginx_port,
        )
    }

    /// A fleet of one agent (`app-1`, tier app) managing this platform.
    pub async fn fleet(&self) -> TestFleet {
        TestFleet::start_agents(vec![("app-1".into(), "app".into(), self.targets())], None).await
    }
}

/// A GET on loopback: the status line, headers and body, lowercased.
fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return "connection refused".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.to_lowercase()
}
