//! Prometheus metrics of a real coordinator and agent, scraped over HTTP
//! during and after runs and parsed with a text-format parser: the
//! counters move with what happened on the fleet.

use rewind_tests::drills::{RECORDER_PLAN, drill_table, webhook_table};
use rewind_tests::fleet::{TestFleet, host};
use std::io::{Read, Write};
use std::time::Duration;

use rewind_tests::free_port;
use rewind_tests::wait::{eventually, holds};

/// GET /metrics, parsed.
fn scrape(port: u16) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text(port).lines().map(|l| Ok(l.to_string())))
        .expect("the Prometheus text format")
}

/// GET /metrics, as text.
fn text(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("metrics on 127.0.0.1:{port}: {e}"));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text"), "a text format: {head}");
    // The body may come in chunks; the text format never has a line
    // that is only hexadecimal digits.
    body.lines()
        .filter(|l| !l.chars().all(|c| c.is_ascii_hexdigit()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The metric families a scrape declares (`# TYPE <name> <type>`).
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinators_and_an_agents_metrics_move_with_runs() {
    let mut fleet = TestFleet::start(
        vec![
            host("db-1", "data"),
            host("api-1", "core").with("delay_ms = 1500, fail_while = \"{records}/api-1.hold\""),
        ],
        None,
    )
    .await;
    let (coordinator_port, agent_port) = (free_port(), free_port());
    fleet.fleet.coordinator_settings = format!("metrics = \"127.0.0.1:{coordinator_port}\"");
    fleet
        .fleet
        .agent_settings
        .insert("api-1".into(), format!("metrics = \"{agent_port}\""));
    fleet.fleet.kill_agent("api-1");
    fleet.fleet.start_agent("api-1").unwrap();
    // A drill, and a webhook whose receiver is down.
    let plans = tempfile::tempdir().unwrap();
    let drill_plan = plans.path().join("drill.toml");
    std::fs::write(&drill_plan, RECORDER_PLAN).unwrap();
    let tables = drill_table(
        "nightly",
        &drill_plan,
        "schedule = \"0 0 3 1 1 *\"\nrto = \"5m\"",
    ) + &webhook_table(free_port(), &["run-failed"]);
    fleet.reconfigure(tables.clone(), 2).await;

    let before = scrape(coordinator_port);
    assert_eq!(value(&before, "rewind_agents_connected", &[]), 2.0);
    assert_eq!(value(&before, "rewind_runs_total", &[]), 0.0);
    assert_eq!(
        value(&scrape(agent_port), "rewind_agent_connected", &[]),
        1.0
    );

    // A run that fails on api-1 (its plugin reports the error).
    fleet.checkpoint("v1").await;
    std::fs::write(fleet.records.join("api-1.hold"), "hold").unwrap();
    let plan = "[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"app\"\n\n\
                [[stage]]\nname = \"core\"\nafter = [\"data\"]\nselect = { tier = \"core\" }\ntarget = \"app\"\n";
    let failed = fleet.start_run(plan, "v1").await;
    assert_eq!(fleet.finish(&failed).await.status, "failed");
    std::fs::remove_file(fleet.records.join("api-1.hold")).unwrap();

    // A run that succeeds, scraped while api-1's step is in flight.
    let run = fleet.start_run(plan, "v1").await;
    let during = eventually(
        "db-1's second step is counted",
        Duration::from_secs(30),
        || {
            let scraped = scrape(coordinator_port);
            let steps = value(&scraped, "rewind_steps_total", &[("outcome", "succeeded")]);
            if steps >= 2.0 {
                Ok(scraped)
            } else {
                Err(steps)
            }
        },
    );
    assert_eq!(
        value(&during, "rewind_runs_total", &[("outcome", "succeeded")]),
        0.0,
        "scraped while the run goes on"
    );
    assert_eq!(fleet.finish(&run).await.status, "succeeded");

    let after = scrape(coordinator_port);
    let runs = |outcome| {
        value(
            &after,
            "rewind_runs_total",
            &[("kind", "rollback"), ("outcome", outcome)],
        )
    };
    assert_eq!((runs("failed"), runs("succeeded")), (1.0, 1.0));
    assert_eq!(
        value(&after, "rewind_steps_total", &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        value(&after, "rewind_steps_total", &[("outcome", "succeeded")]),
        3.0
    );
    let writes = value(&after, "rewind_journal_write_seconds_count", &[]);
    assert!(
        writes > value(&during, "rewind_journal_write_seconds_count", &[]),
        "journal writes counted: {writes}"
    );
    assert!(value(&after, "rewind_journal_write_seconds_sum", &[]) > 0.0);

    // The agent: its restores (and the checkpoint's snapshot) by plugin and
    // action, and the plugin's failure by kind.
    let agent = scrape(agent_port);
    let calls = |action, outcome| {
        value(
            &agent,
            "rewind_agent_step_duration_seconds_count",
            &[
                ("plugin", "recorder"),
                ("action", action),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(calls("restore", "ok"), 1.0);
    assert_eq!(calls("restore", "error"), 1.0);
    assert!(calls("snapshot", "ok") >= 1.0);
    let restore_seconds = value(
        &agent,
        "rewind_agent_step_duration_seconds_sum",
        &[("action", "restore"), ("outcome", "ok")],
    );
    assert!(
        restore_seconds >= 1.5,
        "the restore's 1.5 s: {restore_seconds}"
    );
    assert_eq!(
        value(
            &agent,
            "rewind_agent_plugin_errors_total",
            &[("plugin", "recorder"), ("kind", "failed")]
        ),
        1.0
    );

    // The webhook's receiver is down: its delivery is retried, and counted.
    eventually(
        "the failed delivery is counted",
        Duration::from_secs(30),
        || {
            let retries = value(
                &scrape(coordinator_port),
                "rewind_notification_deliveries_total",
                &[("webhook", "ops"), ("result", "retry")],
            );
            holds(retries >= 1.0, retries)
        },
    );

    // A drill that passes; its last pass is read back from the journal by a
    // restarted coordinator.
    let drilled = fleet.rewind("ops", &["drill", "run", "nightly"]);
    assert!(drilled.success, "{drilled}");
    let drilled = scrape(coordinator_port);
    assert_eq!(
        value(
            &drilled,
            "rewind_drills_total",
            &[("drill", "nightly"), ("verdict", "passed")]
        ),
        1.0
    );
    let passed = value(
        &drilled,
        "rewind_drill_last_pass_timestamp_seconds",
        &[("drill", "nightly")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - 60.0..=now).contains(&passed), "{passed} vs {now}");
    assert_eq!(
        value(
            &drilled,
            "rewind_runs_total",
            &[("kind", "drill-back"), ("outcome", "succeeded")]
        ),
        1.0
    );
    fleet.reconfigure(tables, 2).await;
    assert_eq!(
        value(
            &scrape(coordinator_port),
            "rewind_drill_last_pass_timestamp_seconds",
            &[("drill", "nightly")]
        ),
        passed
    );

    // Every metric the Grafana dashboard in deploy/ queries is one the
    // coordinator or the agent declares.
    let declared: Vec<String> = [text(coordinator_port), text(agent_port)]
        .iter()
        .flat_map(|t| families(t))
        .collect();
    let dashboard =
        std::fs::read_to_string(rewind_tests::root().join("deploy/grafana/rewind-dashboard.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("rewind_") {
                    continue;
                }
                let family = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(word);
                assert!(
                    declared.iter().any(|d| d == family),
                    "the dashboard's panel {} queries {word}, which nothing declares: {declared:?}",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10, "{queried}");

    // An agent that leaves is no longer counted.
    fleet.fleet.kill_agent("db-1");
    fleet.wait_disconnected("db-1").await;
    assert_eq!(
        value(&scrape(coordinator_port), "rewind_agents_connected", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_of_a_paused_run_ends_when_its_watcher_leaves() {
    let mut fleet = TestFleet::start(vec![host("db-1", "data").with("fail = true")], None).await;
    let port = free_port();
    fleet.fleet.coordinator_settings = format!("metrics = \"127.0.0.1:{port}\"");
    fleet.reconfigure(String::new(), 1).await;
    fleet.checkpoint("v1").await;
    // A paused run waits for a person, maybe for days.
    let pausing = "[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"app\"\non_failure = \"pause\"\n";
    let run = fleet.start_run(pausing, "v1").await;
    fleet.events_until(&run, |e| e.kind == "run-paused").await;

    let streams_open = |count: f64, what: &str| {
        eventually(what, Duration::from_secs(20), || {
            let open = value(&scrape(port), "rewind_watch_streams", &[]);
            holds(open == count, open)
        })
    };
    // The test's own watch (until the pause) has ended too.
    streams_open(0.0, "no watch stream open");
    let mut watchers: Vec<std::process::Child> = (0..3)
        .map(|_| {
            fleet
                .command("viewer", &["watch", &run])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("rewind watch")
        })
        .collect();
    streams_open(3.0, "three watch streams open");
    for watcher in &mut watchers {
        watcher.kill().unwrap();
        watcher.wait().unwrap();
    }
    // The run is still paused; its watchers' streams end all the same.
    streams_open(0.0, "every watch stream closed");
    assert!(fleet.rewind("ops", &["cancel", &run]).success);
    fleet.finish(&run).await;
}
