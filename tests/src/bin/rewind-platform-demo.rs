//! `scripts/demo` on a machine with Docker, PostgreSQL, etcd and Varnish:
//! runbook 004's platform in miniature, rolled back by rewind across its
//! stages with the preview, the live view and the report, then checked on
//! the components themselves.

use rewind_tests::platform::{BAD, Data, GOOD, LAYERS, Platform, images};
use std::process::ExitCode;
use std::time::Instant;

#[tokio::main]
async fn main() -> ExitCode {
    let started = Instant::now();
    println!(
        "== runbook 004's platform in miniature: PostgreSQL, etcd, .env.production, \
         {} compose services in 5 layers, a UI build behind Varnish, maintenance mode \
         and a status page; a coordinator and 4 agents (mutual TLS, SQLite journal)",
        LAYERS.len()
    );
    let mut platform = Platform::start("demo", Data::Small).await;
    println!(
        "== checkpointed release {GOOD} on db-1, config-1, app-1 and ui-1 in {:.1}s",
        platform.checkpoint_took.as_secs_f64()
    );
    let good = platform.state();

    println!(
        "\n== deploy {BAD} (it goes badly): a migration and new rows, changed etcd keys and \
         env file, every layer on new images, a new UI build"
    );
    platform.deploy_bad_release(true);

    println!(
        "\n== rewind rollback deploy/examples/v2-platform/plan.toml --to {GOOD} --confirm-data-loss --yes"
    );
    let succeeded = platform
        .fleet
        .rollback_live(&platform.plan(), GOOD, &["--confirm-data-loss"]);

    println!("\n== what the components hold now");
    let now = platform.state();
    let (v1, _) = images();
    let checks = [
        check(
            "Docker: every layer on the release's image, healthy",
            now.containers
                .iter()
                .all(|(_, image, health)| image == v1 && health == "healthy"),
        ),
        check(
            "PostgreSQL: schema, migrations and rows",
            now.database == good.database,
        ),
        check("etcd: the /agentic/config/ keys", now.keys == good.keys),
        check(".env.production", now.env == good.env),
        check("Varnish: the UI build it serves", now.ui == good.ui),
        check(
            "the admin API: maintenance mode off (it was on during the run)",
            platform.maintenance() == ("off".into(), vec!["on".into(), "off".into()]),
        ),
        check(
            "the status page: told before and after",
            platform.status_messages().len() == 2,
        ),
    ];
    let rolled_back = succeeded && checks.iter().all(|ok| *ok) && now == good;

    println!(
        "\n== {BAD} again, fixed (the planner model kept where {GOOD} reads it); the platform \
         team rehearses the rollback to {GOOD}: rewind drill run platform"
    );
    platform.deploy_bad_release(true);
    let deployed = platform.state();
    let reports = rewind_tests::root().join("target/rewind-demo/reports");
    let drilled = platform.drill(&reports).await;
    println!("\n== what the components hold after the drill");
    let drill_ok = check(
        "the drill passed, and every component is where it started (the fixed release)",
        drilled && platform.state() == deployed,
    );
    let all = rolled_back && drill_ok;
    println!(
        "\n{} in {:.0}s; the drill's report (Markdown, JSON, JUnit XML) is in {}; \
         the platform is taken down now.",
        if all {
            format!("the platform was rolled back to {GOOD} and the rollback rehearsed")
        } else {
            "the rollback or its rehearsal did not bring everything back".to_string()
        },
        started.elapsed().as_secs_f64(),
        reports.display()
    );
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check(what: &str, ok: bool) -> bool {
    println!("  {} {what}", if ok { "ok  " } else { "FAIL" });
    ok
}
