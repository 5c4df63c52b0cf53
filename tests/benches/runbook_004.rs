//! Runbook 004's full platform rolled back in one run:
//! `cargo bench -p rewind-tests --bench runbook_004`.
//!
//! The 12-layer compose project (11 services), PostgreSQL with a database of
//! at least 1 GiB, etcd, the env file and a UI behind Varnish, with
//! maintenance mode and the status page, are checkpointed, get a bad
//! release, and are rolled back by deploy/examples/v2-platform/plan.toml
//! through a real coordinator and four agents. Reports the run's time and
//! each stage's, checked against the components afterwards. The runbook
//! itself estimates 15–30 minutes, and 15–45 for the database.

use rewind_tests::fleet::TestFleet;
use rewind_tests::platform::{Data, Platform};
use std::time::Instant;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let built = Instant::now();
        let platform = Platform::start("bench004", Data::OneGib).await;
        let size = platform.pg.psql(
            "agentic_platform",
            "SELECT pg_size_pretty(pg_database_size('agentic_platform'))",
        );
        println!(
            "platform built and checkpointed in {:.0} s (database {size}; checkpoint {:.1} s)",
            built.elapsed().as_secs_f64(),
            platform.checkpoint_took.as_secs_f64()
        );
        let good = platform.state();
        platform.deploy_bad_release(true);
        let started = Instant::now();
        let out = platform.roll_back();
        let took = started.elapsed();
        assert!(out.success, "{out}");
        assert_eq!(platform.state(), good, "the platform is as it was");
        assert_eq!(platform.maintenance().0, "off");
        let report = platform.fleet.report(&TestFleet::run_id_of(&out)).await;
        println!(
            "rewind rollback (preview, run, report): {:.1} s",
            took.as_secs_f64()
        );
        println!(
            "run, first hook to last: {:.1} s",
            report.finished_ms.saturating_sub(report.started_ms) as f64 / 1000.0
        );
        for stage in &report.stages {
            println!(
                "  stage {:<10} {:>6.1} s",
                stage.name,
                stage.finished_ms.saturating_sub(stage.started_ms) as f64 / 1000.0
            );
        }
        for hook in &report.hooks {
            println!("  hook {:<18} {}", hook.name, hook.status);
        }
    });
}
