//! `rewind drill`: list the drills (next run, last verdict, days since the
//! last pass, stale), run one now with the live view of its two runs,
//! its history, and a run's report as Markdown, JSON or JUnit XML.

use super::client::{Client, Connection, PREVIEW, QUICK, request, within};
use super::json::{self, Output};
use super::watch_run;
use crate::drill::report::{DrillReport, seconds};
use anyhow::Context as _;
use rewind_proto::v1::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum DrillCommand {
    /// The drills of the coordinator's configuration: next run, last
    /// verdict, days since the last pass, stale or fresh.
    List,
    /// Run a drill now, with the live view; exits 0 only if it passed.
    Run {
        drill: String,
        /// Roll back to this release instead of the one before the checkpoint.
        #[arg(long)]
        to: Option<String>,
        /// Write the report there as <run>.md, <run>.json and <run>.xml.
        #[arg(long)]
        report_dir: Option<PathBuf>,
    },
    /// A drill's runs, newest first (skipped ones too).
    History {
        drill: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// A drill run's report.
    Report {
        run: String,
        #[arg(long, value_enum, default_value_t = Format::Md)]
        format: Format,
        /// Write it to this file instead of the standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Md,
    Json,
    Junit,
}

impl Format {
    fn render(self, report: &DrillReport) -> String {
        match self {
            Format::Md => report.to_markdown(),
            Format::Json => report.to_json(),
            Format::Junit => report.to_junit(),
        }
    }
}

fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Run a drill command; whether it went as an operator would want (a run passed).
pub async fn command(
    connection: &Connection,
    output: Output,
    command: DrillCommand,
) -> anyhow::Result<bool> {
    // Reading a drill's history or report needs no leader.
    let mut client = match command {
        DrillCommand::Run { .. } => connection.connect().await?,
        _ => connection.connect_for_reading().await?,
    };
    match command {
        DrillCommand::List if output == Output::Json => {
            let reply = within(
                &connection.coordinator,
                QUICK,
                client.list_drills(request(ListDrillsRequest {}, QUICK)),
            )
            .await?;
            json::print(&drills_json(&reply))?;
            Ok(true)
        }
        DrillCommand::History { drill, limit } if output == Output::Json => {
            let reply = within(
                &connection.coordinator,
                QUICK,
                client.drill_history(request(DrillHistoryRequest { drill, limit }, QUICK)),
            )
            .await?;
            json::print(&history_json(&reply))?;
            Ok(true)
        }
        DrillCommand::List => list(&mut client, &connection.coordinator).await,
        DrillCommand::Run {
            drill,
            to,
            report_dir,
        } => run(&mut client, &drill, to, report_dir.as_deref()).await,
        DrillCommand::History { drill, limit } => {
            history(&mut client, &connection.coordinator, drill, limit).await
        }
        DrillCommand::Report { run, format, out } => {
            let report = fetch_report(&mut client, &run).await?;
            let text = format.render(&report);
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("{}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(true)
        }
    }
}

async fn list(client: &mut Client, address: &str) -> anyhow::Result<bool> {
    let reply = within(
        address,
        QUICK,
        client.list_drills(request(ListDrillsRequest {}, QUICK)),
    )
    .await?;
    if reply.drills.is_empty() {
        println!(
            "no drills: add a [drills.<name>] table to the coordinator's configuration (docs/drills.md)"
        );
        return Ok(true);
    }
    println!(
        "{:<20} {:<10} {:<22} {:<10} {:<16} EVIDENCE",
        "DRILL", "ENV", "NEXT RUN", "LAST", "SINCE LAST PASS"
    );
    let now = crate::runner::now_ms();
    for d in reply.drills {
        let since = if d.last_pass_ms == 0 {
            "never passed".to_string()
        } else {
            format!(
                "{:.1} days",
                now.saturating_sub(d.last_pass_ms) as f64 / 86_400_000.0
            )
        };
        let evidence = if d.stale {
            format!(
                "STALE (fresh for {})",
                humantime::format_duration(Duration::from_secs(d.fresh_for_seconds))
            )
        } else {
            "fresh".into()
        };
        let last = if !d.active_run_id.is_empty() {
            "running".to_string()
        } else if d.last_verdict.is_empty() {
            "-".into()
        } else {
            d.last_verdict.clone()
        };
        println!(
            "{:<20} {:<10} {:<22} {:<10} {:<16} {}",
            d.name,
            d.env,
            when(d.next_run_ms),
            last,
            since,
            evidence
        );
    }
    Ok(true)
}

async fn history(
    client: &mut Client,
    address: &str,
    drill: String,
    limit: u32,
) -> anyhow::Result<bool> {
    let reply = within(
        address,
        QUICK,
        client.drill_history(request(
            DrillHistoryRequest {
                drill: drill.clone(),
                limit,
            },
            QUICK,
        )),
    )
    .await?;
    if reply.runs.is_empty() {
        println!("drill {drill} has not run yet");
    }
    for run in reply.runs {
        let rto = match run.rto_ms {
            Some(rto) => format!(
                "RTO {} / {}{}",
                seconds(rto),
                humantime::format_duration(Duration::from_millis(run.rto_target_ms)),
                if run.slower { " SLOWER" } else { "" }
            ),
            None => "RTO -".into(),
        };
        let reason = if run.reason.is_empty() {
            String::new()
        } else {
            format!("  {}", run.reason)
        };
        println!(
            "{}  {}  {:<8} {:<20} {rto}{reason}",
            run.run_id,
            when(run.started_ms),
            run.status,
            run.trigger
        );
    }
    Ok(true)
}

/// A drill run's report, from the coordinator's JSON.
pub async fn fetch_report(client: &mut Client, run_id: &str) -> anyhow::Result<DrillReport> {
    let reply = within(
        "the coordinator",
        QUICK,
        client.drill_report(request(
            DrillRunRef {
                run_id: run_id.to_string(),
            },
            QUICK,
        )),
    )
    .await?;
    serde_json::from_str(&reply.json).context("the coordinator's drill report does not parse")
}

async fn summary(client: &mut Client, run_id: &str) -> anyhow::Result<DrillRunSummary> {
    within(
        "the coordinator",
        QUICK,
        client.get_drill_run(request(
            DrillRunRef {
                run_id: run_id.to_string(),
            },
            QUICK,
        )),
    )
    .await
}

/// Whether a run of the journal exists yet (a drill's leg is created when
/// its phase starts).
async fn exists(client: &mut Client, run_id: &str) -> bool {
    !run_id.is_empty()
        && client
            .get_run(request(
                RunRef {
                    run_id: run_id.to_string(),
                },
                QUICK,
            ))
            .await
            .is_ok()
}

/// Start a drill and follow it: its phases, the live view of its roll back
/// and roll forward, then its verdict and RTO; the report is written to
/// `report_dir` when given.
async fn run(
    client: &mut Client,
    drill: &str,
    to: Option<String>,
    report_dir: Option<&Path>,
) -> anyhow::Result<bool> {
    let started = within(
        "the coordinator",
        PREVIEW,
        client.run_drill(request(
            DrillRef {
                drill: drill.to_string(),
                to: to.unwrap_or_default(),
            },
            PREVIEW,
        )),
    )
    .await?;
    let id = started.run_id;
    println!("drill {drill}: run {id} started");
    let mut phase = String::new();
    let (mut back_seen, mut forward_seen) = (false, false);
    let done = loop {
        let now = summary(client, &id).await?;
        if now.phase != phase {
            phase = now.phase.clone();
            match phase.as_str() {
                "checkpoint" => println!("== checkpoint {}", now.checkpoint),
                "roll-back" => println!("== roll back to {}", now.back_to),
                "roll-forward" => println!("== roll forward to {}", now.checkpoint),
                "verify" => println!("== verify every target against {}", now.checkpoint),
                _ => {}
            }
        }
        if !back_seen && exists(client, &now.back_run).await {
            back_seen = true;
            watch_run(client, &now.back_run).await?;
            continue;
        }
        if !forward_seen && exists(client, &now.forward_run).await {
            forward_seen = true;
            watch_run(client, &now.forward_run).await?;
            continue;
        }
        if matches!(
            now.status.as_str(),
            "passed" | "failed" | "aborted" | "skipped"
        ) {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let report = fetch_report(client, &id).await?;
    println!("== drill {drill}: {}", report.status.to_uppercase());
    if !report.reason.is_empty() {
        println!("   {}", report.reason);
    }
    println!("   RTO {}", report.rto_line());
    if let (Some(c), Some(rto)) = (&report.comparison, report.rto.measured_ms) {
        println!("   {}", c.sentence(rto));
    }
    match report_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (format, ext) in [
                (Format::Md, "md"),
                (Format::Json, "json"),
                (Format::Junit, "xml"),
            ] {
                let path = dir.join(format!("{id}.{ext}"));
                std::fs::write(&path, format.render(&report))
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("   report: {}", path.display());
            }
        }
        None => println!("   report: rewind drill report {id} --format md|json|junit"),
    }
    Ok(done.status == "passed")
}

/// `rewind drill list --output json` (schema `rewind.drills/v1`).
fn drills_json(reply: &ListDrillsReply) -> serde_json::Value {
    let ms = |v: u64| {
        if v == 0 {
            serde_json::Value::Null
        } else {
            v.into()
        }
    };
    serde_json::json!({
        "schema": "rewind.drills/v1",
        "drills": reply.drills.iter().map(|d| serde_json::json!({
            "name": d.name,
            "plan": d.plan,
            "env": d.env,
            "schedule": d.schedule,
            "time_zone": d.time_zone,
            "next_run_ms": ms(d.next_run_ms),
            "last_verdict": (!d.last_verdict.is_empty()).then(|| d.last_verdict.clone()),
            "last_run_id": (!d.last_run_id.is_empty()).then(|| d.last_run_id.clone()),
            "last_pass_ms": ms(d.last_pass_ms),
            "stale": d.stale,
            "fresh_for_seconds": d.fresh_for_seconds,
            "rto_target_ms": d.rto_target_ms,
            "active_run_id": (!d.active_run_id.is_empty()).then(|| d.active_run_id.clone()),
        })).collect::<Vec<_>>(),
    })
}

/// `rewind drill history <drill> --output json` (schema `rewind.drill-history/v1`).
fn history_json(reply: &DrillHistoryReply) -> serde_json::Value {
    let text = |v: &str| (!v.is_empty()).then(|| v.to_string());
    serde_json::json!({
        "schema": "rewind.drill-history/v1",
        "runs": reply.runs.iter().map(|r| serde_json::json!({
            "run_id": r.run_id,
            "drill": r.drill,
            "trigger": r.trigger,
            "status": r.status,
            "phase": r.phase,
            "reason": text(&r.reason),
            "started_ms": r.started_ms,
            "finished_ms": (r.finished_ms > 0).then_some(r.finished_ms),
            "rto_ms": r.rto_ms,
            "rto_target_ms": r.rto_target_ms,
            "slower": r.slower,
            "checkpoint": text(&r.checkpoint),
            "back_to": text(&r.back_to),
            "back_run": text(&r.back_run),
            "forward_run": text(&r.forward_run),
        })).collect::<Vec<_>>(),
    })
}
