//! Two coordinators on one PostgreSQL journal: one leads, the other stands
//! by; a dead leader is replaced and its run completed by the other, with
//! no step applied twice (checked on the plugins' own records); a paused
//! leader cannot write once the other took over, and steps down; operators
//! given only a standby read from it and are sent to the leader to act.

use rewind_coordinator::store::lease::Fence;
use rewind_coordinator::store::{EventRecord, Store, StoreError};
use rewind_proto::v1::RunRef;
use rewind_tests::fleet::{
    Coordinators, TestFleet, connected_within, eight_hosts, four_stage_plan,
};
use rewind_tests::free_port;
use rewind_tests::ha::{OtherCoordinator, Proxy, signal};
use rewind_tests::postgres::PgServer;
use rewind_tests::scenarios::assert_ran_once_in_stage_order;
use rewind_tests::wait::{eventually, eventually_async};
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(2);

async fn two_coordinators(pg: &PgServer) -> (TestFleet, OtherCoordinator) {
    two_coordinators_on(pg, &pg.url(), LEASE).await
}

/// Coordinator a on its journal at `a_journal` (the same database, perhaps
/// through a proxy), b on `pg` directly; both with `lease`.
async fn two_coordinators_on(
    pg: &PgServer,
    a_journal: &str,
    lease: Duration,
) -> (TestFleet, OtherCoordinator) {
    let port = free_port();
    let mut hosts = eight_hosts();
    for h in hosts.iter_mut().filter(|h| h.tier == "core") {
        h.settings = "delay_ms = 1500".into();
    }
    let coordinators = Coordinators {
        settings: format!("name = \"a\"\nlease = \"{}s\"", lease.as_secs()),
        others: vec![format!("https://127.0.0.1:{port}")],
        ..Coordinators::default()
    };
    let fleet = TestFleet::start_with(hosts, Some(a_journal), &coordinators).await;
    let b = OtherCoordinator::start_on(&fleet, "a", "b", port, Some(&pg.url()));
    b.wait_log(
        "coordinator b stands by: a leads (term 1)",
        Duration::from_secs(30),
    )
    .await;
    (fleet, b)
}

/// Wait until the fleet's own coordinator (a) has exited, unsuccessfully;
/// its log.
async fn stepped_down(fleet: &mut TestFleet) -> String {
    let status = eventually_async("a steps down", Duration::from_secs(30), async || {
        fleet.fleet.coordinator_exited().ok_or("running")
    })
    .await;
    assert!(!status.success(), "{status}");
    std::fs::read_to_string(fleet.fleet.dir.join("coordinator.log")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leaders_run_is_completed_by_the_standby_with_no_step_applied_twice() {
    let pg = PgServer::start();
    let (mut fleet, b) = two_coordinators(&pg).await;

    // The standby names the leader, where the CLI then lists the fleet.
    let asked = fleet.rewind("viewer", &["fleet", "--coordinator", &b.url]);
    assert!(asked.success, "{asked}");
    assert!(asked.stdout.contains("api-3"), "{asked}");

    // Given both, the CLI finds the leader.
    let a_url = fleet.fleet.url().unwrap();
    let both = format!("{},{a_url}", b.url);
    let listed = fleet.rewind("viewer", &["fleet", "--coordinator", &both]);
    assert!(listed.success, "{listed}");

    fleet.checkpoint("v1").await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    fleet
        .events_until(&run, |e| e.kind == "step-sent" && e.stage == "core")
        .await;
    fleet.fleet.kill_coordinator();
    let killed = Instant::now();

    b.wait_log("coordinator b leads (term 2)", Duration::from_secs(30))
        .await;
    let took_over = killed.elapsed();
    assert!(
        took_over < LEASE + Duration::from_secs(5),
        "b took over {took_over:?} after the kill"
    );
    // The agents find the new leader, and it completes the run.
    let mut client = b.client(&fleet, "viewer").await;
    let report = eventually_async("the run ends on b", Duration::from_secs(90), async || {
        let report = client
            .get_run(RunRef {
                run_id: run.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("{}", s.message()))
            .into_inner();
        if report.status != "running" {
            Ok(report)
        } else {
            Err(report.status)
        }
    })
    .await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    assert_ran_once_in_stage_order(&fleet);
    // The same CLI setting reaches b now that a is gone.
    let status = fleet.rewind("viewer", &["status", &run, "--coordinator", &both]);
    assert_eq!(status.code, Some(0), "{status}");
    // Every agent comes back to b (those with no step left, after their
    // backoff).
    let connected = connected_within(&mut client, 8, Duration::from_secs(30)).await;
    assert_eq!(connected, 8, "{connected} of 8 agents reconnected to b");
    eprintln!(
        "failover: b led {took_over:?} after the kill; the run ended {:?} after it",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_past_its_lease_cannot_write_and_steps_down() {
    let pg = PgServer::start();
    let (mut fleet, b) = two_coordinators(&pg).await;
    let a = fleet.fleet.coordinator_pid().unwrap();
    signal(a, libc::SIGSTOP);
    b.wait_log("coordinator b leads (term 2)", Duration::from_secs(30))
        .await;
    // The fleet follows b while a sleeps.
    let mut client = b.client(&fleet, "viewer").await;
    let connected = connected_within(&mut client, 8, Duration::from_secs(60)).await;
    assert_eq!(connected, 8, "the agents never reached b");
    signal(a, libc::SIGCONT);
    let log = stepped_down(&mut fleet).await;
    assert!(log.contains("coordinator a stepped down"), "{log}");
    // b still leads, at term 2, and serves a rollback.
    fleet.fleet.address = Some(b.url.trim_start_matches("https://").to_string());
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    assert_eq!(fleet.finish(&run).await.status, "succeeded");
    assert_ran_once_in_stage_order(&fleet);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_its_journal_steps_down_and_the_standby_completes_its_run() {
    let pg = PgServer::start();
    let proxy = Proxy::start(pg.socket()).await;
    let through_proxy = format!("postgres://rewind@127.0.0.1:{}/rewind", proxy.port);
    let (mut fleet, b) = two_coordinators_on(&pg, &through_proxy, LEASE).await;
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    fleet
        .events_until(&run, |e| e.kind == "step-sent" && e.stage == "core")
        .await;
    proxy.cut();
    let cut = Instant::now();
    // a cannot renew its lease: it steps down, and b takes over.
    let log = stepped_down(&mut fleet).await;
    assert!(
        log.contains("coordinator a stepped down: the lease could not be renewed"),
        "{log}"
    );
    b.wait_log("coordinator b leads (term 2)", Duration::from_secs(30))
        .await;
    eprintln!(
        "cut off: a stepped down and b led {:?} after the cut",
        cut.elapsed()
    );
    fleet.fleet.address = Some(b.url.trim_start_matches("https://").to_string());
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    assert_ran_once_in_stage_order(&fleet);
}

/// The fence itself, on the database: once another coordinator holds the
/// lease, the deposed one's journal writes are refused, and none lands.
#[tokio::test(flavor = "multi_thread")]
async fn the_journal_refuses_every_write_of_a_deposed_leader() {
    let pg = PgServer::start();
    let a = Store::open(&pg.url()).await.unwrap();
    let b = Store::open(&pg.url()).await.unwrap();
    let lease = Duration::from_secs(1);
    a.stand_by();
    b.stand_by();
    assert_eq!(
        a.acquire_lease("a", "https://a:7443", lease).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        b.acquire_lease("b", "https://b:7443", lease).await.unwrap(),
        None,
        "a holds it"
    );
    let event = |seq| EventRecord {
        run_id: "run-fence".into(),
        seq,
        unix_ms: 1,
        kind: "run-started".into(),
        stage: String::new(),
        agent: String::new(),
        target: String::new(),
        step_id: String::new(),
        message: String::new(),
    };
    a.append_events(&[event(1)]).await.unwrap();
    // b may not write while it stands by.
    assert!(matches!(
        b.append_events(&[event(2)]).await,
        Err(StoreError::Fenced(_))
    ));
    // a's lease lapses (a paused leader); b takes over with term 2. A
    // lease is a span of time: waiting it out is what is tested.
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    assert_eq!(
        b.acquire_lease("b", "https://b:7443", lease).await.unwrap(),
        Some(2)
    );
    let refused = a.append_events(&[event(3)]).await;
    assert!(
        matches!(&refused, Err(StoreError::Fenced(m)) if m.contains("term 1 is over")),
        "{refused:?}"
    );
    assert!(matches!(a.fence(), Fence::Deposed { .. }));
    assert!(!a.renew_lease(lease).await.unwrap());
    b.append_events(&[event(4)]).await.unwrap();
    let seqs: Vec<u64> = b
        .events_after("run-fence", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 4], "only the leaders' writes landed");
}

/// Operators given only a standby's URL: it sends them to the leader (the
/// URL the leader advertises) to act, follows a run live from the journal,
/// and answers reads itself, even while the leader is frozen.
#[tokio::test(flavor = "multi_thread")]
async fn operators_commands_work_through_a_standby() {
    let pg = PgServer::start();
    // A lease long enough that b stays a standby while a is frozen below.
    let (fleet, b) = two_coordinators_on(&pg, &pg.url(), Duration::from_secs(60)).await;
    let via_b = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--coordinator", b.url.as_str(), "--connect-timeout", "2s"]);
        all.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run_via_b = |operator: &str, args: &[&str]| {
        let args = via_b(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fleet.rewind(operator, &args)
    };

    // Acting through b: the checkpoint and the rollback reach a.
    let checkpoint = run_via_b("ops", &["checkpoint", "v1"]);
    assert!(checkpoint.success, "{checkpoint}");
    let mut a = fleet.client("viewer").await;
    let rollback = std::thread::scope(|scope| {
        let rollback = scope.spawn(|| {
            let args = via_b(&[]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            fleet.rollback_cli(&four_stage_plan(""), "v1", &args)
        });
        // The run, as a lists it, watched live through b.
        let run = eventually("a run started through b", Duration::from_secs(30), || {
            let runs = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(a.history(rewind_proto::v1::HistoryRequest { limit: 1 }))
            })
            .unwrap()
            .into_inner()
            .runs;
            runs.first().map(|run| run.run_id.clone()).ok_or("none")
        });
        let watched = run_via_b("viewer", &["watch", &run]);
        assert!(watched.success, "{watched}");
        assert!(watched.stdout.contains("succeeded"), "{watched}");
        assert!(
            watched.stdout.contains("gw-1"),
            "the watch showed the steps: {watched}"
        );
        (rollback.join().unwrap(), run)
    });
    let (rollback, run) = rollback;
    assert!(rollback.success, "{rollback}");
    assert_eq!(TestFleet::run_id_of(&rollback), run);
    assert_ran_once_in_stage_order(&fleet);
    assert!(
        !b.log_text().contains("coordinator b leads"),
        "b never led:\n{}",
        b.log_text()
    );

    // a frozen: b answers reads from the journal by itself.
    let a_pid = fleet.fleet.coordinator_pid().unwrap();
    signal(a_pid, libc::SIGSTOP);
    let status = run_via_b("viewer", &["status", &run]);
    let history = run_via_b("viewer", &["history"]);
    let releases = run_via_b("viewer", &["releases"]);
    let fleet_list = run_via_b("viewer", &["fleet"]);
    signal(a_pid, libc::SIGCONT);
    assert_eq!(status.code, Some(0), "{status}");
    assert!(status.stdout.contains("succeeded"), "{status}");
    assert!(
        history.success && history.stdout.contains(&run),
        "{history}"
    );
    assert!(
        releases.success && releases.stdout.contains("v1"),
        "{releases}"
    );
    // Which agents are connected only the leader knows: the CLI says where
    // it looked.
    assert!(!fleet_list.success, "{fleet_list}");
    assert!(
        fleet_list.stderr.contains(
            "coordinator b is a standby (the leader is coordinator a at https://127.0.0.1:"
        ),
        "{fleet_list}"
    );
}
