//! The same rollbacks with the coordinator's journal on a real PostgreSQL
//! server (the migrations and queries are shared with SQLite).

use rewind_tests::postgres::PgServer;
use rewind_tests::scenarios;

#[tokio::test(flavor = "multi_thread")]
async fn a_four_stage_rollback_on_a_postgres_journal() {
    let pg = PgServer::start();
    scenarios::four_stage_rollback(Some(&pg.url())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_restart_on_a_postgres_journal() {
    let pg = PgServer::start();
    scenarios::coordinator_killed_mid_run(Some(&pg.url())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_across_coordinator_kills_on_a_postgres_journal() {
    let pg = PgServer::start();
    scenarios::drill_with_coordinator_kills(Some(&pg.url())).await;
}
