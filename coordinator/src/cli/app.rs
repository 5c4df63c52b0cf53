//! The `rewind` program: the coordinator server and the operator's commands.

use crate::cli::{self, CertsCommand, RollbackOptions, client::Connection};
use crate::{config, demo, server};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rewind",
    version,
    about = "Roll a whole platform back to a known-good release, stage by stage"
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// `json` for scripts: status, history, fleet, releases, drill list
    /// and history print one JSON document (docs/json.md).
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: cli::json::Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a development CA and issue certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run the coordinator server.
    Coordinator {
        #[arg(long)]
        config: PathBuf,
    },
    /// Snapshot every target of every agent of one environment as a release.
    Checkpoint {
        release: String,
        /// The environment (agents whose `env` label says so); needed when
        /// the fleet has several.
        #[arg(long)]
        env: Option<String>,
    },
    /// List the recorded releases.
    Releases,
    /// Preview what rolling back to a release with a plan would change.
    Plan {
        plan: PathBuf,
        #[arg(long)]
        to: String,
        /// The environment (else the plan's `env`); needed when the fleet
        /// has several.
        #[arg(long)]
        env: Option<String>,
    },
    /// Roll back to a release with a plan: preview, confirm, run with a live view, report.
    Rollback {
        plan: PathBuf,
        #[arg(long)]
        to: String,
        /// The environment (else the plan's `env`); needed when the fleet
        /// has several.
        #[arg(long)]
        env: Option<String>,
        /// Do not ask before starting.
        #[arg(long)]
        yes: bool,
        /// Allow steps that lose data (database restores).
        #[arg(long)]
        confirm_data_loss: bool,
        /// Apply even where targets changed since the preview.
        #[arg(long)]
        force: bool,
        /// If a drill is rehearsing on the plan's agents, roll it forward
        /// first (else the rollback is refused while it goes on).
        #[arg(long)]
        preempt_drill: bool,
    },
    /// Follow a run with the live view until it ends.
    Watch { run: String },
    /// The report of a run.
    Status { run: String },
    /// The latest runs.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Stop a run: nothing new starts, steps in flight finish.
    Cancel { run: String },
    /// Resume a paused run, retrying its failed steps.
    Approve { run: String },
    /// The agents the coordinator knows, and whether they are connected;
    /// `fleet remove <agent>` retires one (admin).
    Fleet {
        #[command(subcommand)]
        command: Option<FleetCommand>,
    },
    /// Rollback rehearsals: `drill list | run <drill> | history <drill> | report <run>`.
    #[command(subcommand)]
    Drill(cli::drill::DrillCommand),
    /// A web view of the fleet, releases, runs and drills, served on
    /// loopback with this operator's certificate (docs/ui.md).
    Ui {
        /// Where to serve it (a loopback address; port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The directory of plan files (*.toml) the page can preview.
        #[arg(long, default_value = ".")]
        plans: PathBuf,
    },
    /// The main job, end to end on this machine: a coordinator and a local
    /// fleet of agents, a release, a bad deploy, and a 4-stage rollback.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Retire an agent that is no longer part of the fleet (it must be stopped).
    Remove { agent: String },
}

/// The `rewind` program.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let connection = cli.connection;
    let output = cli.output;
    let result: anyhow::Result<u8> = runtime.block_on(async move {
        match cli.command {
            Command::Certs(command) => cli::certs_command(command).map(|_| 0),
            Command::Coordinator { config } => {
                let config = config::load(&config)?;
                let listener = tokio::net::TcpListener::bind(&config.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
                eprintln!(
                    "coordinator listening on {} (journal {})",
                    listener.local_addr()?,
                    rewind_proto::masked::text(&config.database)
                );
                server::serve(config, listener, shutdown_signal()).await?;
                Ok(0)
            }
            Command::Checkpoint { release, env } => {
                cli::checkpoint(&connection, release, env).await.map(|_| 0)
            }
            Command::Releases => cli::releases(&connection, output).await.map(|_| 0),
            Command::Plan { plan, to, env } => cli::plan(&connection, &plan, to, env, output)
                .await
                .map(|_| 0),
            Command::Rollback {
                plan,
                to,
                env,
                yes,
                confirm_data_loss,
                force,
                preempt_drill,
            } => {
                let plan_toml = cli::read_plan(&plan)?;
                let mut client = connection.connect().await?;
                cli::rollback(
                    &mut client,
                    &plan,
                    plan_toml,
                    &to,
                    RollbackOptions {
                        env: env.unwrap_or_default(),
                        yes,
                        confirm_data_loss,
                        force,
                        preempt_drill,
                    },
                )
                .await
                .map(passed)
            }
            Command::Watch { run } => {
                cli::watch_run(&mut connection.connect_for_reading().await?, &run)
                    .await
                    .map(passed)
            }
            Command::Status { run } => cli::status(&connection, run, output).await,
            Command::History { limit } => cli::history(&connection, limit, output).await.map(|_| 0),
            Command::Cancel { run } => cli::cancel(&connection, run).await.map(|_| 0),
            Command::Approve { run } => cli::approve(&connection, run).await.map(|_| 0),
            Command::Fleet { command: None } => cli::fleet(&connection, output).await.map(|_| 0),
            Command::Fleet {
                command: Some(FleetCommand::Remove { agent }),
            } => cli::remove_agent(&connection, agent).await.map(|_| 0),
            Command::Drill(command) => cli::drill::command(&connection, output, command)
                .await
                .map(passed),
            Command::Ui { listen, plans } => {
                crate::ui::serve(&connection, listen, plans, shutdown_signal())
                    .await
                    .map(|_| 0)
            }
            Command::Demo(args) => demo::run(args).await.map(passed),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            // A refusal of the coordinator, told apart from a failure to run.
            if e.downcast_ref::<cli::client::Refused>().is_some() {
                ExitCode::from(cli::json::REFUSED)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

/// 0 for a run (or drill) that succeeded, 1 for one that did not.
fn passed(ok: bool) -> u8 {
    if ok { 0 } else { 1 }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
