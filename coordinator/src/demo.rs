//! `rewind demo`: rewind's main job, end to end, on this machine. A
//! coordinator and five agents (separate processes, real mutual TLS, SQLite
//! journal) manage the configuration of a small platform: a database tier, two
//! API hosts, a gateway and a UI. It checkpoints release v1.2.3, ships a bad
//! v1.3.0 to every host, then rolls the fleet back in four stages (data,
//! core, gateway, UI) with the preview, the live view and the report.

use crate::cli::{self, RollbackOptions, client};
use crate::localfleet::{AgentSpec, LocalFleet};
use anyhow::Context as _;
use rewind_proto::v1::FleetRequest;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo lays out its fleet (emptied first).
    #[arg(long, default_value = "target/rewind-demo")]
    dir: PathBuf,
    /// The built plugins (`plugins/build` puts them in target/plugins).
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// The rewind-agent binary (default: beside this one).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

/// One host of the demo platform: its tier, its managed file, and the file's
/// content at the good release and at the bad deploy.
struct Host {
    name: &'static str,
    tier: &'static str,
    target: &'static str,
    file: &'static str,
    good: &'static str,
    bad: &'static str,
}

const HOSTS: &[Host] = &[
    Host {
        name: "db-1",
        tier: "data",
        target: "db-config",
        file: "postgresql.conf",
        good: "max_connections = 200\nshared_buffers = 2GB\n",
        bad: "max_connections = 20\nshared_buffers = 128MB\n",
    },
    Host {
        name: "api-1",
        tier: "core",
        target: "api-config",
        file: ".env.production",
        good: "APP_VERSION=1.2.3\nDATABASE_PASSWORD=s3cret-v1\nFEATURE_CHECKOUT=off\n",
        bad: "APP_VERSION=1.3.0\nDATABASE_PASSWORD=s3cret-v2\nFEATURE_CHECKOUT=on\n",
    },
    Host {
        name: "api-2",
        tier: "core",
        target: "api-config",
        file: ".env.production",
        good: "APP_VERSION=1.2.3\nDATABASE_PASSWORD=s3cret-v1\nFEATURE_CHECKOUT=off\n",
        bad: "APP_VERSION=1.3.0\nDATABASE_PASSWORD=s3cret-v2\nFEATURE_CHECKOUT=on\n",
    },
    Host {
        name: "gw-1",
        tier: "gateway",
        target: "gateway-config",
        file: "nginx.conf",
        good: "upstream api { server api-1:8080; server api-2:8080; }\n",
        bad: "upstream api { server api-1:9090; }\n",
    },
    Host {
        name: "ui-1",
        tier: "ui",
        target: "ui-build",
        file: "index.html",
        good: "<html><body>shop 1.2.3</body></html>\n",
        bad: "<html><body>shop 1.3.0 (broken checkout)</body></html>\n",
    },
];

const PLAN: &str = r#"# The platform, rolled back in dependency order.
name = "shop rollback"

[[stage]]
name = "data"
select = { tier = "data" }
target = "db-config"
health = [{ verify = true }]

[[stage]]
name = "core"
after = ["data"]
select = { tier = "core" }
target = "api-config"
max_parallel = 1
canary = 1
health = [{ verify = true }]

[[stage]]
name = "gateway"
after = ["core"]
select = { tier = "gateway" }
target = "gateway-config"
health = [{ verify = true }]

[[stage]]
name = "ui"
after = ["gateway"]
select = { tier = "ui" }
target = "ui-build"
health = [{ verify = true }]
"#;

fn agent_spec(host: &Host) -> AgentSpec {
    AgentSpec {
        name: host.name.into(),
        labels: [
            ("tier".to_string(), host.tier.to_string()),
            ("env".to_string(), "demo".to_string()),
        ]
        .into(),
        plugins_and_targets: format!(
            r#"[plugins.files]
path = "{{plugins}}/files.wasm"
allow_unsigned = true

[targets.{target}]
plugin = "files"
settings = {{ files = ["{{host}}/etc/{file}"] }}
grant = {{ files = ["{{host}}/etc"], process = [], docker = [] }}
"#,
            target = host.target,
            file = host.file
        ),
    }
}

fn write_files(fleet: &LocalFleet, good: bool) -> anyhow::Result<()> {
    for host in HOSTS {
        let dir = fleet.host_dir(host.name).join("etc");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(host.file), if good { host.good } else { host.bad })?;
    }
    Ok(())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let plugins = std::fs::canonicalize(&args.plugins).with_context(|| {
        format!(
            "{}: build the plugins first with plugins/build",
            args.plugins.display()
        )
    })?;
    anyhow::ensure!(
        plugins.join("files.wasm").exists(),
        "{}: no files.wasm; run plugins/build",
        plugins.display()
    );
    let rewind_bin = std::env::current_exe()?;
    let agent_bin = args
        .agent_bin
        .unwrap_or_else(|| rewind_bin.with_file_name("rewind-agent"));
    anyhow::ensure!(
        agent_bin.exists(),
        "{}: not found; build it with `cargo build -p rewind-agent`",
        agent_bin.display()
    );
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("emptying {}", args.dir.display()))?;
    }
    let dir = std::path::absolute(&args.dir)?;

    println!(
        "== a local fleet in {}: a coordinator and {} agents, mutual TLS, SQLite journal",
        dir.display(),
        HOSTS.len()
    );
    let mut fleet = LocalFleet::create(&dir, &rewind_bin, &agent_bin, &plugins)?;
    // The platform team's monthly rehearsal of the same plan.
    let plan_path = dir.join("plan.toml");
    std::fs::write(&plan_path, PLAN)?;
    fleet.environments += &format!(
        "\n[drills.monthly]\nplan = \"{}\"\nenv = \"demo\"\nschedule = \"0 0 3 1 * *\"\ntime_zone = \"UTC\"\nrto = \"2m\"\nfresh_for = \"35d\"\n",
        plan_path.display()
    );
    let address = fleet.start_coordinator()?;
    println!("coordinator listening on {address}");
    for host in HOSTS {
        fleet.add_agent(agent_spec(host))?;
    }
    write_files(&fleet, true)?;
    fleet.start_agents()?;
    let mut client = client::connect(&fleet.url()?, &fleet.operator("admin")).await?;
    wait_for_agents(&mut client, HOSTS.len()).await?;
    cli::fleet(&connection(&fleet)?, cli::json::Output::Text).await?;

    println!("\n== checkpoint: release v1.2.3, the known-good state");
    cli::checkpoint(&connection(&fleet)?, "v1.2.3".into(), Some("demo".into())).await?;

    println!("\n== deploy v1.3.0 to every host (it goes badly)");
    write_files(&fleet, false)?;
    for host in HOSTS {
        println!(
            "  {} {}: {}",
            host.name,
            host.file,
            host.bad.lines().next().unwrap_or_default()
        );
    }

    println!("\n== rewind rollback plan.toml --to v1.2.3 --yes");
    let succeeded = cli::rollback(
        &mut client,
        &plan_path,
        PLAN.to_string(),
        "v1.2.3",
        RollbackOptions {
            env: String::new(),
            preempt_drill: false,
            yes: true,
            confirm_data_loss: false,
            force: false,
        },
    )
    .await?;

    println!("\n== what the hosts hold now");
    let mut all_good = succeeded;
    for host in HOSTS {
        let path = fleet.host_dir(host.name).join("etc").join(host.file);
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        let good = now == host.good;
        all_good &= good;
        println!(
            "  {} {}: {}",
            host.name,
            host.file,
            if good {
                "back on v1.2.3"
            } else {
                "NOT restored"
            }
        );
    }

    println!("\n== deploy v1.3.1 (the fix) to every host, then rehearse the rollback:");
    println!("== rewind drill run monthly (checkpoint, roll back to v1.2.3, roll forward, verify)");
    write_files(&fleet, false)?;
    let reports = dir.join("reports");
    let drilled = cli::drill::command(
        &connection(&fleet)?,
        cli::json::Output::Text,
        cli::drill::DrillCommand::Run {
            drill: "monthly".into(),
            to: Some("v1.2.3".into()),
            report_dir: Some(reports.clone()),
        },
    )
    .await?;
    let mut where_it_started = drilled;
    for host in HOSTS {
        let path = fleet.host_dir(host.name).join("etc").join(host.file);
        where_it_started &= std::fs::read_to_string(&path).unwrap_or_default() == host.bad;
    }
    println!(
        "  the drill {}; every host {} on v1.3.1, where it started",
        if drilled { "passed" } else { "did not pass" },
        if where_it_started {
            "is back"
        } else {
            "is NOT"
        }
    );
    fleet.stop();
    println!(
        "\n{} in {:.1}s. The drill's report is in {}; the fleet, logs and journal stay in {} for a look.",
        if all_good {
            "every host was rolled back to v1.2.3"
        } else {
            "the rollback did not complete"
        },
        started.elapsed().as_secs_f64(),
        reports.display(),
        dir.display()
    );
    Ok(all_good && where_it_started)
}

fn connection(fleet: &LocalFleet) -> anyhow::Result<client::Connection> {
    let files = fleet.operator("admin");
    Ok(client::Connection {
        coordinator: fleet.url()?,
        ca: Some(files.ca),
        cert: Some(files.cert),
        key: Some(files.key),
        crl: None,
        connect_timeout: Duration::from_secs(10),
    })
}

/// Wait until `count` agents are connected (readiness, not a fixed sleep).
pub async fn wait_for_agents(client: &mut client::Client, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = client
            .fleet(FleetRequest {})
            .await
            .map_err(client::refused)?
            .into_inner();
        let connected = reply.agents.iter().filter(|a| a.connected).count();
        if connected >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {connected} of {count} agents connected within 60s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
