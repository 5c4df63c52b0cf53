//! Notifications end to end: a real coordinator delivers the events of
//! rollbacks and drills to a local receiver standing in for a generic
//! webhook, Slack and PagerDuty, which checks what it receives: the events
//! in order with valid HMAC-SHA256 signatures; a webhook that fails twice
//! getting the event on the third try, exactly once, across a coordinator
//! SIGKILL; Slack's and PagerDuty's bodies with every field their public
//! documentation requires; no secret in the coordinator's log.

use hmac::{Hmac, Mac};
use rewind_proto::v1::DrillRef;
use rewind_tests::drills::{self, drill_table};
use rewind_tests::fleet::{TestFleet, host};
use rewind_tests::providers::{ProviderApi, Received};
use rewind_tests::wait::eventually_async;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SIGNING_KEY: &str = "whsec-5f2a9c1e7b";
const ROUTING_KEY: &str = "R0UTINGKEYa1b2c3d4e5f6a7b8c9d0e1f2";
const SLACK_TOKEN: &str = "T0001/B0001/XXXXslacktokenXXXX";

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers.get(name).map(String::as_str).unwrap_or_default()
}

fn json(r: &Received) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&r.body)))
}

/// The requests with their first idempotency key, in order; a request
/// repeating a key must repeat its body too.
fn once_each(requests: Vec<Received>) -> Vec<Received> {
    let mut seen: Vec<Received> = Vec::new();
    for r in requests {
        match seen
            .iter()
            .find(|s| header(s, "idempotency-key") == header(&r, "idempotency-key"))
        {
            Some(first) => assert_eq!(first.body, r.body, "a repeat differs from the first"),
            None => seen.push(r),
        }
    }
    seen
}

/// Wait until `count` notifications (by idempotency key) reached `path`;
/// them, once each.
async fn wait_unique(api: &ProviderApi, path: &str, count: usize) -> Vec<Received> {
    eventually_async(
        &format!("{count} notifications on {path}"),
        Duration::from_secs(60),
        async || {
            let got = once_each(
                api.requests()
                    .into_iter()
                    .filter(|r| r.path == path)
                    .collect(),
            );
            if got.len() >= count {
                Ok(got)
            } else {
                Err(got.len())
            }
        },
    )
    .await
}

/// Wait until `count` requests reached `path`.
async fn wait_requests(api: &ProviderApi, path: &str, count: usize) -> Vec<Received> {
    eventually_async(
        &format!("{count} requests on {path}"),
        Duration::from_secs(60),
        async || {
            let got: Vec<Received> = api
                .requests()
                .into_iter()
                .filter(|r| r.path == path)
                .collect();
            if got.len() >= count {
                return Ok(got);
            }
            Err(got
                .iter()
                .map(|r| {
                    (
                        header(r, "x-rewind-event").to_string(),
                        String::from_utf8_lossy(&r.body).into_owned(),
                    )
                })
                .collect::<Vec<_>>())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_slack_and_pagerduty_get_every_event_once_in_order() {
    let flaky_tries = Arc::new(AtomicUsize::new(0));
    let tries = flaky_tries.clone();
    let api = ProviderApi::start(move |r| match r.path.as_str() {
        "/flaky" if tries.fetch_add(1, Ordering::SeqCst) < 2 => (503, "{\"busy\":true}".into()),
        p if p.starts_with("/pagerduty") => (
            202,
            "{\"status\":\"success\",\"message\":\"Event processed\"}".into(),
        ),
        _ => (200, "ok".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let signing = secret("ops.key", &format!("{SIGNING_KEY}\n"));
    let slack_url = secret(
        "slack-url",
        &format!("http://127.0.0.1:{}/slack/{SLACK_TOKEN}\n", api.port),
    );
    let routing = secret("pd-key", ROUTING_KEY);
    let plan = dir.path().join("drill-plan.toml");
    std::fs::write(
        &plan,
        "name = \"staging\"\n\n[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"app\"\n\n\
         [[stage]]\nname = \"core\"\nafter = [\"data\"]\nselect = { tier = \"core\" }\ntarget = \"app\"\n",
    )
    .unwrap();
    let port = api.port;
    let config = format!(
        "{}\n[notifications.ops]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/ops\"\nsigning_secret = \"{signing}\"\n\n\
         [notifications.flaky]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/flaky\"\n\
         events = [\"run-started\", \"run-failed\", \"run-succeeded\"]\nretry_after = \"1500ms\"\nattempts = 5\n\n\
         [notifications.chat]\nkind = \"slack\"\nurl_secret = \"{slack_url}\"\nevents = [\"run-failed\", \"drill-passed\"]\n\n\
         [notifications.pager]\nkind = \"pagerduty\"\nurl = \"http://127.0.0.1:{port}/pagerduty/v2/enqueue\"\n\
         routing_key_secret = \"{routing}\"\nevents = [\"run-failed\", \"run-succeeded\"]\n",
        drill_table("nightly", &plan, "schedule = \"0 0 3 1 1 *\"\nrto = \"5m\"")
    );
    let hosts = vec![
        host("stg-db-1", "data"),
        host("stg-api-1", "core").with("fail_when = \"broken\""),
    ];
    let mut fleet = TestFleet::start_in(hosts, None, Some(&config), None).await;
    fleet.checkpoint("v1").await;

    // A rollback of plan `shop` that fails (its stage's steps fail on purpose).
    let broken = "name = \"shop\"\n\n[[stage]]\nname = \"core-broken\"\nselect = { tier = \"core\" }\ntarget = \"app\"\n";
    let failed = fleet.rollback_cli(broken, "v1", &[]);
    assert!(!failed.success, "{failed}");
    let failed_run = TestFleet::run_id_of(&failed);
    // The flaky webhook refused its first try: the coordinator dies now.
    wait_requests(&api, "/flaky", 1).await;
    fleet.fleet.kill_coordinator();
    fleet
        .fleet
        .start_coordinator()
        .expect("restarted coordinator");
    fleet.wait_connected(2).await;
    // The same plan, fixed: it succeeds.
    let fixed = "name = \"shop\"\n\n[[stage]]\nname = \"core\"\nselect = { tier = \"core\" }\ntarget = \"app\"\n";
    let succeeded = fleet.rollback_cli(fixed, "v1", &[]);
    assert!(succeeded.success, "{succeeded}");
    let fixed_run = TestFleet::run_id_of(&succeeded);
    let drill = fleet
        .client("ops")
        .await
        .run_drill(DrillRef {
            drill: "nightly".into(),
            to: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("{}", s.message()))
        .into_inner()
        .run_id;
    let done = drills::wait_for(&fleet, &drill, Duration::from_secs(60), drills::ended).await;
    assert_eq!(done.status, "passed", "{done:#?}");

    // The generic webhook: every event, in order, each signed. A delivery
    // in flight when the coordinator died may come again, with the same
    // idempotency key and body, for the receiver to drop.
    let ops = wait_unique(&api, "/ops", 6).await;
    let events: Vec<&str> = ops.iter().map(|r| header(r, "x-rewind-event")).collect();
    assert_eq!(
        events,
        [
            "run-started",
            "run-failed",
            "run-started",
            "run-succeeded",
            "drill-started",
            "drill-passed"
        ]
    );
    let mut keys = Vec::new();
    for r in &ops {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SIGNING_KEY.as_bytes()).unwrap();
        mac.update(&r.body);
        let wanted = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(header(r, "x-rewind-signature"), wanted, "{r:?}");
        let body = json(r);
        assert_eq!(body["schema"], "rewind.notification/v1");
        assert_eq!(body["id"], header(r, "idempotency-key"));
        assert_eq!(body["event"], header(r, "x-rewind-event"));
        keys.push(header(r, "idempotency-key").to_string());
    }
    let subjects: Vec<String> = ops
        .iter()
        .map(|r| json(r)["subject"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        subjects[..4],
        [
            failed_run.clone(),
            failed_run.clone(),
            fixed_run.clone(),
            fixed_run.clone()
        ]
    );
    assert_eq!(subjects[4..], [drill.clone(), drill.clone()]);
    assert_eq!(json(&ops[1])["severity"], "error");

    // The flaky webhook: the first event on the third try (the second after
    // the restart), accepted exactly once; then the rest, once each.
    let flaky = wait_requests(&api, "/flaky", 6).await;
    let first = header(&flaky[0], "idempotency-key");
    let tries: Vec<&str> = flaky
        .iter()
        .take(3)
        .map(|r| header(r, "idempotency-key"))
        .collect();
    assert_eq!(tries, [first; 3], "{flaky:#?}");
    let attempts: Vec<&str> = flaky
        .iter()
        .take(3)
        .map(|r| header(r, "x-rewind-delivery-attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let rest: Vec<&str> = flaky[3..]
        .iter()
        .map(|r| header(r, "x-rewind-event"))
        .collect();
    assert_eq!(rest, ["run-failed", "run-started", "run-succeeded"]);
    // What is checked is an absence: no delivery repeated within 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flaky = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/flaky")
        .collect::<Vec<_>>();
    assert_eq!(
        once_each(flaky[2..].to_vec()).len(),
        4,
        "each accepted once"
    );
    let ops = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/ops")
        .collect::<Vec<_>>();
    assert_eq!(once_each(ops).len(), 6, "nothing repeated under a new key");

    // Slack: an incoming webhook's body is a JSON object with `text`
    // (required; the fallback of `blocks`) and `blocks` of section blocks.
    let slack = wait_unique(&api, &format!("/slack/{SLACK_TOKEN}"), 2).await;
    for r in &slack {
        assert_eq!(header(r, "content-type"), "application/json");
        let body = json(r);
        assert!(
            body["text"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        let blocks = body["blocks"].as_array().expect("blocks");
        assert_eq!(blocks[0]["type"], "section");
        assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
    }
    assert!(
        json(&slack[0])["text"]
            .as_str()
            .unwrap()
            .contains("run-failed")
    );
    assert!(
        json(&slack[1])["text"]
            .as_str()
            .unwrap()
            .contains("drill nightly passed")
    );

    // PagerDuty Events API v2: a trigger with routing_key, event_action,
    // dedup_key and payload.summary/source/severity; then a resolve of the
    // same dedup_key.
    let pager = wait_unique(&api, "/pagerduty/v2/enqueue", 2).await;
    let (trigger, resolve) = (json(&pager[0]), json(&pager[1]));
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], "rewind/plan/shop");
    let summary = trigger["payload"]["summary"].as_str().unwrap();
    assert!(!summary.is_empty() && summary.len() <= 1024, "{summary}");
    assert!(
        trigger["payload"]["source"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(
        ["critical", "error", "warning", "info"]
            .contains(&trigger["payload"]["severity"].as_str().unwrap())
    );
    assert_eq!(resolve["routing_key"], ROUTING_KEY);
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);

    // Secrets stay secret.
    let log = std::fs::read_to_string(fleet.fleet.dir.join("coordinator.log")).unwrap();
    for secret in [SIGNING_KEY, ROUTING_KEY, SLACK_TOKEN] {
        assert!(
            !log.contains(secret),
            "the coordinator's log shows a secret"
        );
    }
    assert!(
        log.contains("notification try 1 of 5 failed"),
        "the failed try is logged"
    );
}
