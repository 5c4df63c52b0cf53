//! The `rewind` command line: certificates, the coordinator server, and the
//! operator commands (checkpoint, plan, rollback, status, history, ...).

pub mod app;
pub mod client;
pub mod drill;
pub mod json;
pub mod view;

use crate::certs;
use anyhow::Context as _;
use client::{CHECKPOINT, Client, Connection, PREVIEW, QUICK, refused, request, within};
use rewind_proto::identity::Kind;
use rewind_proto::v1::*;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Create a CA (ca.pem, ca.key) for a trust domain.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "rewind.local")]
        trust_domain: String,
    },
    /// Issue a certificate: `coordinator <name>`, `agent <host>` or `operator <name>`.
    Issue {
        kind: String,
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Extra DNS names or IP addresses (coordinator certificates).
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Revoke a certificate issued in `--dir`: `agent <host>`, `operator <name>`
    /// or `coordinator <name>`. Rewrites crl.pem there.
    Revoke {
        kind: String,
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

pub fn certs_command(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir, trust_domain } => {
            let ca = certs::init(&dir, &trust_domain)?;
            println!(
                "created {} for trust domain {trust_domain} (keep {} secret)",
                ca.display(),
                dir.join("ca.key").display()
            );
        }
        CertsCommand::Issue {
            kind,
            name,
            dir,
            hosts,
            days,
        } => {
            let kind = Kind::parse(&kind)
                .with_context(|| format!("`{kind}` is not coordinator, agent or operator"))?;
            let issued = certs::issue_for_days(&dir, kind, &name, &hosts, days)?;
            println!(
                "issued {} ({}) and {}",
                issued.cert.display(),
                issued.identity,
                issued.key.display()
            );
        }
        CertsCommand::Revoke { kind, name, dir } => {
            let kind = Kind::parse(&kind)
                .with_context(|| format!("`{kind}` is not coordinator, agent or operator"))?;
            let crl = certs::revoke(&dir, kind, &name)?;
            println!(
                "revoked {} {name}: {} rewritten (coordinators and agents re-read it)",
                kind.as_str(),
                crl.display()
            );
        }
    }
    Ok(())
}

/// The largest plan file (the coordinator accepts requests of up to 4 MiB).
pub const MAX_PLAN: u64 = 1 << 20;

pub fn read_plan(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading the plan {}", path.display()))?
        .len();
    if size > MAX_PLAN {
        anyhow::bail!(
            "the plan {} is {:.1} MiB; a plan may be at most {} MiB (stages select hosts by label, so a plan stays small)",
            path.display(),
            size as f64 / (1 << 20) as f64,
            MAX_PLAN >> 20
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading the plan {}", path.display()))
}

pub async fn checkpoint(
    connection: &Connection,
    release: String,
    env: Option<String>,
) -> anyhow::Result<()> {
    let mut client = connection.connect().await?;
    let reply = within(
        &connection.coordinator,
        CHECKPOINT,
        client.checkpoint(request(
            CheckpointRequest {
                release,
                env: env.unwrap_or_default(),
            },
            CHECKPOINT,
        )),
    )
    .await?;
    let release = reply
        .release
        .context("the coordinator answered without a release")?;
    println!(
        "release {} recorded: {} snapshot(s)",
        release.name,
        release.snapshots.len()
    );
    for snap in &release.snapshots {
        println!(
            "  {} {}: {} ({})",
            snap.agent, snap.target, snap.summary, snap.plugin
        );
    }
    Ok(())
}

pub async fn releases(connection: &Connection, output: json::Output) -> anyhow::Result<()> {
    let mut client = connection.connect_for_reading().await?;
    let reply = within(
        &connection.coordinator,
        QUICK,
        client.list_releases(request(ListReleasesRequest {}, QUICK)),
    )
    .await?;
    if output == json::Output::Json {
        return json::print(&json::releases(&reply));
    }
    if reply.releases.is_empty() {
        println!("no releases yet: `rewind checkpoint <release>` records one");
    }
    for release in reply.releases {
        let env = if release.env.is_empty() {
            String::new()
        } else {
            format!(" env={}", release.env)
        };
        println!(
            "{}{env}: {} snapshot(s), created {}",
            release.name,
            release.snapshots.len(),
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(release.created_ms)
            )
        );
    }
    Ok(())
}

pub async fn plan(
    connection: &Connection,
    path: &Path,
    release: String,
    env: Option<String>,
    output: json::Output,
) -> anyhow::Result<()> {
    let plan_toml = read_plan(path)?;
    let mut client = connection.connect().await?;
    let plan = PlanRequest {
        plan_toml,
        plan_path: path.display().to_string(),
        release: release.clone(),
        env: env.unwrap_or_default(),
    };
    let reply = within(
        &connection.coordinator,
        PREVIEW,
        client.preview(request(plan, PREVIEW)),
    )
    .await?;
    match output {
        json::Output::Json => json::print(&json::preview(&reply, &release))?,
        json::Output::Text => {
            view::print_preview(&reply, &release, &mut std::io::stdout())?;
        }
    }
    Ok(())
}

/// Options of `rewind rollback`.
pub struct RollbackOptions {
    /// The environment to roll back (empty: the plan's, or the fleet's only one).
    pub env: String,
    pub yes: bool,
    pub confirm_data_loss: bool,
    pub force: bool,
    /// Roll a drill on the plan's agents forward first.
    pub preempt_drill: bool,
}

/// Preview, confirm, start, watch, report. Returns whether the run succeeded.
pub async fn rollback(
    client: &mut Client,
    path: &Path,
    plan_toml: String,
    release: &str,
    options: RollbackOptions,
) -> anyhow::Result<bool> {
    let plan_path = path.display().to_string();
    let preview = within(
        "the coordinator",
        PREVIEW,
        client.preview(request(
            PlanRequest {
                plan_toml: plan_toml.clone(),
                plan_path: plan_path.clone(),
                release: release.to_string(),
                env: options.env.clone(),
            },
            PREVIEW,
        )),
    )
    .await?;
    let mut stdout = std::io::stdout();
    view::print_preview(&preview, release, &mut stdout)?;
    if !options.yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("not on a terminal: pass --yes to roll back without a question");
        }
        print!("roll back to {release}? type yes to proceed: ");
        stdout.flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            anyhow::bail!("not confirmed; nothing was started");
        }
    }
    let run = within(
        "the coordinator",
        PREVIEW,
        client.start_run(request(
            RunRequest {
                plan_toml,
                plan_path,
                release: release.to_string(),
                confirm_data_loss: options.confirm_data_loss,
                force: options.force,
                preempt_drill: options.preempt_drill,
                env: options.env.clone(),
                // The run starts only if the targets still preview as shown.
                approved: preview
                    .stages
                    .iter()
                    .flat_map(|stage| {
                        stage.steps.iter().map(|step| {
                            (
                                crate::server::operator::approval_key(
                                    &stage.stage,
                                    &step.agent,
                                    &step.target,
                                ),
                                step.fingerprint.clone(),
                            )
                        })
                    })
                    .collect(),
            },
            PREVIEW,
        )),
    )
    .await?;
    println!("run {} started", run.run_id);
    watch_run(client, &run.run_id).await
}

/// Follow a run to its end with the live view, then print its report.
pub async fn watch_run(client: &mut Client, run_id: &str) -> anyhow::Result<bool> {
    let mut events = within(
        "the coordinator",
        QUICK,
        client.watch(WatchRequest {
            run_id: run_id.to_string(),
            after_seq: 0,
        }),
    )
    .await?;
    let mut live = view::LiveView::new(std::io::stdout().is_terminal());
    let mut stdout = std::io::stdout();
    while let Some(event) = events.message().await.map_err(refused)? {
        live.event(&event, &mut stdout)?;
    }
    let report = client
        .get_run(request(
            RunRef {
                run_id: run_id.to_string(),
            },
            QUICK,
        ))
        .await;
    match report {
        Ok(report) => {
            let report = report.into_inner();
            view::print_report(&report, &mut stdout)?;
            Ok(report.status == "succeeded")
        }
        // A drill run: its phases were the events; its report follows.
        Err(status) if status.code() == tonic::Code::NotFound => {
            let report = drill::fetch_report(client, run_id).await?;
            print!("{}", report.to_markdown());
            Ok(report.status == "passed")
        }
        Err(status) => Err(refused(status)),
    }
}

/// A run's report; the exit status says how it stands (`json::exit_of`).
pub async fn status(
    connection: &Connection,
    run_id: String,
    output: json::Output,
) -> anyhow::Result<u8> {
    let mut client = connection.connect_for_reading().await?;
    let report = within(
        &connection.coordinator,
        QUICK,
        client.get_run(request(RunRef { run_id }, QUICK)),
    )
    .await?;
    match output {
        json::Output::Json => json::print(&json::run(&report))?,
        json::Output::Text => view::print_report(&report, &mut std::io::stdout())?,
    }
    Ok(json::exit_of(&report.status))
}

pub async fn history(
    connection: &Connection,
    limit: u32,
    output: json::Output,
) -> anyhow::Result<()> {
    let mut client = connection.connect_for_reading().await?;
    let reply = within(
        &connection.coordinator,
        QUICK,
        client.history(request(HistoryRequest { limit }, QUICK)),
    )
    .await?;
    if output == json::Output::Json {
        return json::print(&json::history(&reply));
    }
    if reply.runs.is_empty() {
        println!("no runs yet");
    }
    for run in reply.runs {
        let took = if run.finished_ms >= run.started_ms && run.finished_ms > 0 {
            format!("{:.1}s", (run.finished_ms - run.started_ms) as f64 / 1000.0)
        } else {
            "-".into()
        };
        println!(
            "{}  {:<10} {:>7}  plan {} -> {} by {}",
            run.run_id, run.status, took, run.plan, run.release, run.started_by
        );
    }
    Ok(())
}

pub async fn cancel(connection: &Connection, run_id: String) -> anyhow::Result<()> {
    let mut client = connection.connect().await?;
    let reply = within(
        &connection.coordinator,
        QUICK,
        client.cancel(request(RunRef { run_id }, QUICK)),
    )
    .await?;
    println!(
        "run {}: {} (steps in flight finish; nothing new starts)",
        reply.run_id, reply.status
    );
    Ok(())
}

pub async fn approve(connection: &Connection, run_id: String) -> anyhow::Result<()> {
    let mut client = connection.connect().await?;
    let reply = within(
        &connection.coordinator,
        QUICK,
        client.approve(request(RunRef { run_id }, QUICK)),
    )
    .await?;
    println!(
        "run {}: {} (failed steps are retried)",
        reply.run_id, reply.status
    );
    Ok(())
}

pub async fn fleet(connection: &Connection, output: json::Output) -> anyhow::Result<()> {
    let mut client = connection.connect().await?;
    let reply = within(
        &connection.coordinator,
        QUICK,
        client.fleet(request(FleetRequest {}, QUICK)),
    )
    .await?;
    if output == json::Output::Json {
        return json::print(&json::fleet(&reply));
    }
    if reply.agents.is_empty() {
        println!("no agent has connected yet");
    }
    for agent in reply.agents {
        let mut labels: Vec<String> = agent
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        let targets: Vec<String> = agent
            .targets
            .iter()
            .map(|t| format!("{} ({})", t.name, t.plugin))
            .collect();
        println!(
            "{:<16} {:<12} {:<30} {}",
            agent.name,
            if agent.connected {
                "connected"
            } else {
                "disconnected"
            },
            labels.join(","),
            targets.join(", ")
        );
    }
    if !reply.refused.is_empty() {
        let mut refused: Vec<String> = reply
            .refused
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        refused.sort();
        println!(
            "messages refused from agents since the coordinator started: {}",
            refused.join(", ")
        );
    }
    Ok(())
}

pub async fn remove_agent(connection: &Connection, agent: String) -> anyhow::Result<()> {
    let mut client = connection.connect().await?;
    let reply = within(
        &connection.coordinator,
        QUICK,
        client.remove_agent(request(AgentRef { agent }, QUICK)),
    )
    .await?;
    println!(
        "agent {} retired: it no longer counts in plans and checkpoints",
        reply.agent
    );
    Ok(())
}
