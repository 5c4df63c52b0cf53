//! The web view as operators use it: `rewind ui` with their own
//! certificate, a real headless Chromium, a real coordinator and agents
//! over mTLS. A run started from the CLI is followed on the page without a
//! reload; approving on the page resumes it (checked on the plugins' own
//! records and on the CLI that waited for it); a viewer's page has no
//! actions and the coordinator refuses a forged one.

use rewind_tests::drills::{RECORDER_PLAN, drill_table};
use rewind_tests::fleet::{TestFleet, host};
use rewind_tests::web::{Browser, WebView};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

const PAUSING_PLAN: &str = r#"name = "platform"

[[stage]]
name = "data"
select = { tier = "data" }
target = "app"

[[stage]]
name = "core"
after = ["data"]
select = { tier = "core" }
target = "app"
on_failure = "pause"

[[stage]]
name = "gateway"
after = ["core"]
select = { tier = "gateway" }
target = "app"
health = [{ verify = true }]
"#;

const LONG: Duration = Duration::from_secs(60);

/// The status the run's live part shows.
const RUN_STATUS: &str =
    "const s = document.querySelector('#live .status'); return s && s.dataset.status;";

#[tokio::test(flavor = "multi_thread")]
async fn a_run_from_the_cli_progresses_on_the_page_and_approve_there_resumes_it() {
    let fleet = TestFleet::start(
        vec![
            host("db-1", "data").with("delay_ms = 2500"),
            host("api-1", "core").with("delay_ms = 2500, fail_while = \"{records}/api-1.hold\""),
            host("gw-1", "gateway").with("delay_ms = 300"),
        ],
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    let plans = tempfile::tempdir().unwrap();
    std::fs::write(plans.path().join("platform.toml"), PAUSING_PLAN).unwrap();
    let hold = fleet.records.join("api-1.hold");
    std::fs::write(&hold, "hold").unwrap();

    let web = WebView::start(&fleet, "ops", plans.path());
    let browser = Browser::start().await;

    // The fleet: every agent, connected, with its plugin and digest.
    browser.goto(&format!("{}/fleet", web.url)).await;
    let rows = browser
        .eval("return [...document.querySelectorAll('#agents tbody tr')].map(r => r.dataset.agent + ' ' + r.innerText.includes('connected') + ' ' + r.innerText.includes('recorder'))")
        .await;
    assert_eq!(
        rows,
        serde_json::json!(["api-1 true true", "db-1 true true", "gw-1 true true"])
    );
    browser.screenshot("fleet").await;

    // The preview of the plan against v1, from the releases page.
    browser.goto(&format!("{}/releases", web.url)).await;
    browser
        .eval("document.querySelector('form.preview').submit(); return true")
        .await;
    let preview = browser
        .until(
            "the preview",
            LONG,
            "return document.querySelector('section.stage') && document.body.innerText",
        )
        .await;
    let preview = preview.as_str().unwrap();
    assert!(preview.contains("Stage core"), "{preview}");
    assert!(preview.contains("would record a restore"), "{preview}");

    // A rollback started from the CLI, which follows it to its end.
    let plan_path = plans.path().join("platform.toml").display().to_string();
    let mut cli = fleet
        .command("ops", &["rollback", &plan_path, "--to", "v1", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    let run = loop {
        let line = lines
            .next()
            .expect("rewind rollback ended before starting a run")
            .unwrap();
        if let Some(id) = line
            .strip_prefix("run ")
            .and_then(|l| l.strip_suffix(" started"))
        {
            break id.to_string();
        }
    };
    // The rest of its output is read so that it never blocks on a full pipe.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    browser.goto(&format!("{}/runs/{run}", web.url)).await;
    // A mark in the page: still there later means the page never reloaded.
    browser
        .eval("window.rewindMark = 'kept'; return true")
        .await;
    let first = browser.until("the run's status", LONG, RUN_STATUS).await;
    assert_eq!(first, "running", "the page opened while the data stage ran");
    browser
        .until(
            "the data stage done and the core stage running",
            LONG,
            "return document.querySelector('svg.timeline rect.bar.succeeded[data-stage=\"data\"]') && document.querySelector('svg.timeline rect.bar.running[data-stage=\"core\"]')",
        )
        .await;
    browser.screenshot("run-in-progress").await;
    browser
        .until(
            "the run paused",
            LONG,
            "const s = document.querySelector('#live .status'); return s && s.dataset.status === 'paused'",
        )
        .await;
    let step = browser
        .eval("const r = document.querySelector('tr[data-step][data-status=\"failed\"]'); return r && r.innerText")
        .await;
    assert!(
        step.as_str().unwrap_or("").contains("api-1")
            && step.as_str().unwrap_or("").contains("fails on purpose"),
        "the failed step with its error: {step}"
    );
    let events = browser
        .eval("return [...document.querySelectorAll('#events li')].map(e => e.dataset.kind)")
        .await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    for kind in [
        "run-started",
        "stage-succeeded",
        "step-failed",
        "run-paused",
    ] {
        assert!(kinds.contains(&kind), "{kind} in the event log: {kinds:?}");
    }
    assert_eq!(browser.eval("return window.rewindMark").await, "kept");
    browser.screenshot("run-paused").await;

    // Approve on the page: the confirmation, then the run resumes.
    std::fs::remove_file(&hold).unwrap();
    let approve = browser
        .client
        .find(fantoccini::Locator::Css("button[data-action=approve]"))
        .await
        .expect("an Approve button on a paused run for an operator");
    approve.click().await.unwrap();
    let question = browser.client.get_alert_text().await.unwrap();
    assert!(
        question.contains(&format!("Resume run {run}")),
        "{question}"
    );
    browser.client.accept_alert().await.unwrap();
    browser
        .until(
            "the run succeeded",
            LONG,
            "const s = document.querySelector('#live .status'); return s && s.dataset.status === 'succeeded' && document.querySelector('#live').dataset.ended === 'true'",
        )
        .await;
    assert_eq!(browser.eval("return window.rewindMark").await, "kept");
    let notice = browser
        .eval("return document.querySelector('#notice').innerText")
        .await;
    assert!(
        notice
            .as_str()
            .unwrap()
            .contains("failed steps are retried"),
        "{notice}"
    );
    let gates = browser
        .eval("return document.querySelector('#gates').innerText")
        .await;
    assert!(gates.as_str().unwrap().contains("stage gateway"), "{gates}");

    // On the components: api-1 failed once, then restored; gw-1 restored
    // after it; and the CLI that waited saw the run succeed.
    let api = fleet.records("api-1");
    let marks: Vec<&str> = api.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(marks, ["start", "fail", "start", "end"], "{api:?}");
    let gw = fleet.records("gw-1");
    assert_eq!(gw.iter().filter(|(k, _)| k == "end").count(), 1);
    assert!(gw[0].1 > api[3].1, "the gateway restored after the core");
    let status = cli.wait().unwrap();
    let printed = rest.join().unwrap().join("\n");
    assert!(status.success(), "the CLI's rollback: {status}\n{printed}");

    // The report, printable, with what `rewind status` prints.
    browser
        .goto(&format!("{}/runs/{run}/report", web.url))
        .await;
    let report = browser
        .eval("return document.querySelector('pre.report').innerText")
        .await;
    let cli_report = fleet.rewind("ops", &["status", &run]);
    assert_eq!(
        report.as_str().unwrap().trim_end(),
        cli_report.stdout.trim_end(),
        "the report page holds what rewind status prints"
    );
    browser.screenshot("run-report").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewers_page_has_no_actions_and_the_coordinator_refuses_a_forged_one() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, RECORDER_PLAN).unwrap();
    let tables = drill_table("nightly", &plan, "schedule = \"0 0 3 1 1 *\"\nrto = \"3s\"");
    let fleet = TestFleet::start_in(
        vec![
            host("stg-db-1", "data").with("delay_ms = 600"),
            host("stg-api-1", "core").with("fail_while = \"{records}/stg-api-1.hold\""),
        ],
        None,
        Some(&tables),
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    // Three drills, so that the chart has a line.
    for _ in 0..3 {
        let drilled = fleet.rewind("ops", &["drill", "run", "nightly"]);
        assert!(drilled.success, "{drilled}");
    }

    let web = WebView::start(&fleet, "viewer", dir.path());
    let browser = Browser::start().await;
    browser.goto(&format!("{}/drills", web.url)).await;
    let row = browser
        .eval("return document.querySelector('#drills tbody tr').innerText")
        .await;
    let row = row.as_str().unwrap();
    assert!(
        row.contains("nightly") && row.contains("passed") && row.contains("fresh"),
        "{row}"
    );
    browser.goto(&format!("{}/drills/nightly", web.url)).await;
    let points = browser
        .eval("return [...document.querySelectorAll('#rto-chart circle.point.passed')].length")
        .await;
    assert_eq!(points, 3, "one point per drill run that rolled back");
    assert_eq!(
        browser
            .eval("return !!document.querySelector('#rto-chart line.target')")
            .await,
        true,
        "the RTO target is drawn"
    );
    browser.screenshot("drill-history").await;

    // A run that pauses: the viewer sees it, with no way to act on it.
    std::fs::write(fleet.records.join("stg-api-1.hold"), "hold").unwrap();
    let pausing = RECORDER_PLAN.replace("health = [{ verify = true }]", "on_failure = \"pause\"");
    let run = fleet.start_run(&pausing, "v1").await;
    fleet.events_until(&run, |e| e.kind == "run-paused").await;
    browser.goto(&format!("{}/runs/{run}", web.url)).await;
    browser
        .until(
            "the paused run",
            LONG,
            "const s = document.querySelector('#live .status'); return s && s.dataset.status === 'paused'",
        )
        .await;
    assert_eq!(
        browser.eval("return document.querySelectorAll('button[data-action=approve], button[data-action=cancel]').length").await,
        0,
        "a viewer's page offers no approve or cancel"
    );
    assert_eq!(
        browser
            .eval("return document.querySelector('.who .role').innerText")
            .await,
        "viewer"
    );

    // Forged from the viewer's own page, with its token: the coordinator
    // refuses, and says why.
    let forged = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const token = document.querySelector('meta[name=\"rewind-token\"]').content;
             fetch(location.pathname + '/approve', { method: 'POST', headers: { 'X-Rewind-Token': token } })
               .then(async r => done([r.status, await r.text()]));",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(forged[0], 403, "{forged}");
    let message = forged[1].as_str().unwrap();
    assert!(
        message.contains("operator viewer has role viewer")
            && message.contains("needs the operator role"),
        "{message}"
    );
    // Without the page's token, from another origin, or for another host:
    // refused by the web view itself.
    let approve = format!(
        "POST /runs/{run}/approve HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        web.port
    );
    let (code, body) = web.raw(&approve);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("token is missing or wrong"), "{body}");
    let token = browser
        .eval("return document.querySelector('meta[name=\"rewind-token\"]').content")
        .await;
    let token = token.as_str().unwrap();
    let other_origin = format!(
        "POST /runs/{run}/cancel HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nOrigin: http://evil.example\r\nX-Rewind-Token: {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        web.port
    );
    let (code, body) = web.raw(&other_origin);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("another origin"), "{body}");
    let rebound = format!(
        "GET /fleet HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n\r\n",
        web.port
    );
    let (code, body) = web.raw(&rebound);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("answers at http://127.0.0.1:"), "{body}");
    // A preview makes the hosts run their plugins: it needs the token too
    // (a page of another site could otherwise send the form).
    let preview = format!(
        "GET /preview?plan=plan.toml&release=v1 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        web.port
    );
    let (code, body) = web.raw(&preview);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("a preview must come from this web view's own page"),
        "{body}"
    );

    // The run is still paused: nothing got through.
    let report = fleet
        .client("viewer")
        .await
        .get_run(rewind_proto::v1::RunRef {
            run_id: run.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.status, "paused");
    assert!(fleet.rewind("ops", &["cancel", &run]).success);
    fleet.finish(&run).await;
    browser.close().await;
}
