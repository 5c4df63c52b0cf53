//! Run hooks and smoke checks through the real path: `rewind rollback` →
//! coordinator → agents → the command plugin → real programs. The HTTP
//! hooks go to a local server standing in for a status page / maintenance
//! API, which records what it received; maintenance mode is a directory the
//! `command` target creates and removes, checked on disk.

use rewind_tests::fleet::TestFleet;
use rewind_tests::providers::{ProviderApi, Received};

/// An agent with the recorder as `app`, and `command` targets for
/// maintenance mode and the smoke checks. `app_extra` is added to the
/// recorder's settings (e.g. `fail = true`).
fn agent(app_extra: &str, smoke_log: &str) -> (String, String, String) {
    let targets = format!(
        r#"[plugins.recorder]
path = "{{plugins}}/fixture_recorder.wasm"
allow_unsigned = true

[plugins.command]
path = "{{plugins}}/command.wasm"
allow_unsigned = true

[targets.app]
plugin = "recorder"
settings = {{ log = "{{records}}/app-1.log"{app_extra} }}
grant = {{ files = ["{{records}}"] }}

[targets.maintenance]
plugin = "command"
settings = {{ commands = {{ on = ["mkdir", "{{records}}/maintenance"], off = ["rm", "-rf", "{{records}}/maintenance"] }} }}
grant = {{ process = [{{ program = "mkdir", args = [["{{records}}/maintenance"]] }}, {{ program = "rm", args = [["-rf", "{{records}}/maintenance"]] }}] }}

[targets.smoke]
plugin = "command"
settings = {{ commands = {{ restored = ["grep", "-c", "end", "{{records}}/{smoke_log}"], in-maintenance = ["test", "-d", "{{records}}/maintenance"] }}, verify = ["restored", "in-maintenance"] }}
grant = {{ process = [{{ program = "grep", args = [["-c", "end", "{{records}}/*"]] }}, {{ program = "test", args = [["-d", "{{records}}/maintenance"]] }}] }}
"#
    );
    ("app-1".into(), "core".into(), targets)
}

fn plan(api: u16, token: &str, status_path: &str) -> String {
    format!(
        r#"name = "shop"

[[hook]]
name = "status-page"
when = "before"
http = {{ url = "http://127.0.0.1:{api}{status_path}", token_secret = "{token}", body = '{{"run":"{{{{run}}}}","release":"{{{{release}}}}","plan":"{{{{plan}}}}","state":"rolling back"}}' }}
retries = 1

[[hook]]
name = "maintenance-on"
when = "before"
agent = "app-1"
target = "maintenance"
parts = ["on"]

[[hook]]
name = "chat"
when = "after"
http = {{ url = "http://127.0.0.1:{api}/chat", headers = {{ "X-Channel" = "incident-response" }}, body = "rollback {{{{run}}}} to {{{{release}}}} done" }}
optional = true

[[hook]]
name = "maintenance-off"
when = "finally"
agent = "app-1"
target = "maintenance"
parts = ["off"]

[[hook]]
name = "status-page-done"
when = "finally"
http = {{ url = "http://127.0.0.1:{api}/status", token_secret = "{token}", body = '{{"run":"{{{{run}}}}","verdict":"{{{{verdict}}}}"}}' }}

[[stage]]
name = "core"
select = {{ tier = "core" }}
target = "app"
health = [{{ verify = "smoke", agent = "app-1" }}]
"#
    )
}

fn answer(request: &Received) -> (u16, String) {
    if request.path == "/down" {
        (503, r#"{"error":"status page unavailable"}"#.into())
    } else {
        (200, r#"{"ok":true}"#.into())
    }
}

fn body(request: &Received) -> String {
    String::from_utf8_lossy(&request.body).into_owned()
}

struct Setup {
    fleet: TestFleet,
    api: ProviderApi,
    token: String,
    _secrets: tempfile::TempDir,
}

/// A fleet whose plans may call the stand-in on loopback and name the
/// status page's token (a file of the coordinator's) as `status-token`.
async fn setup(app_extra: &str, smoke_log: &str) -> Setup {
    let api = ProviderApi::start(answer);
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("status-token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let fleet = TestFleet::start_agents_planned(
        vec![agent(app_extra, smoke_log)],
        format!(
            "[plans]\ndestinations = [\"127.0.0.1\"]\nsecrets = {{ status-token = \"{}\" }}\n",
            token.display()
        ),
    )
    .await;
    fleet.checkpoint("v1").await;
    Setup {
        fleet,
        token: "status-token".into(),
        api,
        _secrets: secrets,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_wrap_a_rollback_and_a_smoke_check_gates_it() {
    let Setup {
        fleet,
        api,
        token,
        _secrets,
    } = setup("", "app-1.log").await;
    let out = fleet.rollback_cli(&plan(api.port, &token, "/status"), "v1", &[]);
    assert!(out.success, "{out}");
    let run = TestFleet::run_id_of(&out);

    // The component: the rollback happened, maintenance mode is off again.
    assert!(fleet.records("app-1").iter().any(|(k, _)| k == "end"));
    assert!(
        !fleet.records.join("maintenance").exists(),
        "maintenance mode left on"
    );

    // The status page and chat stand-in got what the plan says, in order.
    let received = api.requests();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/status", "/chat", "/status"], "{received:?}");
    assert_eq!(received[0].method, "POST");
    assert_eq!(
        received[0].headers.get("authorization").map(String::as_str),
        Some("Bearer s3cret-token")
    );
    assert_eq!(
        received[0].headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        received[0].headers.get("idempotency-key"),
        Some(&format!("{run}/status-page"))
    );
    let first: serde_json::Value = serde_json::from_str(&body(&received[0])).unwrap();
    assert_eq!(first["run"], run.as_str());
    assert_eq!(first["release"], "v1");
    assert_eq!(first["plan"], "shop");
    assert_eq!(body(&received[1]), format!("rollback {run} to v1 done"));
    assert_eq!(
        received[1].headers.get("x-channel").map(String::as_str),
        Some("incident-response")
    );
    let last: serde_json::Value = serde_json::from_str(&body(&received[2])).unwrap();
    assert_eq!(last["verdict"], "succeeded");

    // The smoke check ran while maintenance mode was on (its second command
    // checks that), and the report has the hooks' answers and the check.
    let report = fleet.report(&run).await;
    let hooks: Vec<(&str, &str)> = report
        .hooks
        .iter()
        .map(|h| (h.name.as_str(), h.status.as_str()))
        .collect();
    assert_eq!(
        hooks,
        [
            ("status-page", "succeeded"),
            ("maintenance-on", "succeeded"),
            ("chat", "succeeded"),
            ("maintenance-off", "succeeded"),
            ("status-page-done", "succeeded"),
        ]
    );
    // The status page's answer is not kept: its request carried a secret,
    // which an answer may echo. The chat's is.
    assert_eq!(
        report.hooks[0].answer,
        "HTTP 200 (the answer is not kept: the request carried a secret)"
    );
    assert_eq!(report.hooks[2].answer, r#"HTTP 200: {"ok":true}"#);
    assert!(
        report.hooks[1].answer.contains("on (mkdir "),
        "{}",
        report.hooks[1].answer
    );
    assert!(out.stdout.contains("hook  maintenance-off"), "{out}");
    let events = fleet
        .events_until(&run, |e| e.kind == "run-succeeded")
        .await;
    let gate = events
        .iter()
        .find(|e| e.kind == "health-passed")
        .expect("the smoke check passed");
    assert!(
        gate.message
            .contains("smoke check smoke on app-1: restored (grep -c end")
            && gate.message.contains("exit 0 in"),
        "{}",
        gate.message
    );
    let order: Vec<&str> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind.as_str(),
                "hook-succeeded" | "step-sent" | "health-passed" | "run-succeeded"
            )
        })
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "hook-succeeded",
            "hook-succeeded",
            "step-sent",
            "health-passed",
            "hook-succeeded",
            "hook-succeeded",
            "hook-succeeded",
            "run-succeeded"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_that_fails_still_turns_maintenance_off_and_reports_each_host() {
    let Setup {
        fleet,
        api,
        token,
        _secrets,
    } = setup(", fail = true", "app-1.log").await;
    let out = fleet.rollback_cli(&plan(api.port, &token, "/status"), "v1", &[]);
    assert!(!out.success, "{out}");
    assert!(
        !fleet.records.join("maintenance").exists(),
        "maintenance mode left on"
    );
    let received = api.requests();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/status", "/status"], "no chat after a failure");
    let last: serde_json::Value = serde_json::from_str(&body(&received[1])).unwrap();
    assert_eq!(last["verdict"], "failed");
    assert!(out.stdout.contains("hosts:"), "{out}");
    assert!(
        out.stdout
            .contains("app-1 (staging): core/app failed (failed)"),
        "{out}"
    );
    let run = TestFleet::run_id_of(&out);
    let report = fleet.report(&run).await;
    let chat = report.hooks.iter().find(|h| h.name == "chat").unwrap();
    assert_eq!(chat.status, "skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_before_hook_stops_the_run_before_anything_changes() {
    let Setup {
        fleet,
        api,
        token,
        _secrets,
    } = setup("", "app-1.log").await;
    let out = fleet.rollback_cli(&plan(api.port, &token, "/down"), "v1", &[]);
    assert!(!out.success, "{out}");
    assert!(
        fleet.records("app-1").is_empty(),
        "a step ran after the before hook failed"
    );
    assert!(!fleet.records.join("maintenance").exists());
    let received = api.requests();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/down", "/down", "/status"],
        "one retry, then finally"
    );
    assert!(
        out.stdout
            .contains("hook status-page (before): POST http://127.0.0.1:")
            && out.stdout.contains("answered HTTP 503"),
        "{out}"
    );
    let run = TestFleet::run_id_of(&out);
    let report = fleet.report(&run).await;
    let statuses: Vec<&str> = report.hooks.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["failed", "skipped", "skipped", "succeeded", "succeeded"]
    );
    assert!(report.steps.iter().all(|s| s.status == "skipped"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_smoke_check_fails_its_stage_with_the_commands_output() {
    // The smoke check greps a log the rollback does not write.
    let Setup {
        fleet,
        api,
        token,
        _secrets,
    } = setup("", "other.log").await;
    std::fs::write(fleet.records.join("other.log"), "").unwrap();
    let out = fleet.rollback_cli(&plan(api.port, &token, "/status"), "v1", &[]);
    assert!(!out.success, "{out}");
    let run = TestFleet::run_id_of(&out);
    let events = fleet.events_until(&run, |e| e.kind == "run-failed").await;
    let gate = events
        .iter()
        .find(|e| e.kind == "health-failed")
        .expect("the smoke check failed");
    assert!(
        gate.message
            .contains("smoke check smoke on app-1: verification-failed: ")
            && gate.message.contains("target smoke: restored (grep -c end")
            && gate.message.contains("exit 1 in")
            && gate.message.contains("last output:\n0")
            && gate.message.contains("(1 command(s) after it did not run)"),
        "{}",
        gate.message
    );
    assert!(
        !fleet.records.join("maintenance").exists(),
        "maintenance mode left on"
    );
}

/// A plan is an operator's input, not the coordinator's trust: it cannot
/// make the coordinator read a file of its choosing nor call a host that
/// `[plans]` does not list. Both are refused at the preview, naming the
/// plan's line, and nothing is sent anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_cannot_name_a_coordinator_file_or_call_an_unlisted_destination() {
    let Setup {
        fleet,
        api,
        _secrets,
        ..
    } = setup("", "app-1.log").await;
    let key = fleet.fleet.dir.join("certs/coordinator-main.key");
    let hook = |http: &str| {
        format!(
            "name = \"shop\"\n\n[[hook]]\nname = \"leak\"\nwhen = \"before\"\nhttp = {http}\n\n\
             [[stage]]\nname = \"core\"\nselect = {{ tier = \"core\" }}\ntarget = \"app\"\n"
        )
    };
    // A path where a secret's name goes.
    let out = fleet.rollback_cli(
        &hook(&format!(
            "{{ url = \"http://127.0.0.1:{}/x\", token_secret = \"{}\" }}",
            api.port,
            key.display()
        )),
        "v1",
        &[],
    );
    assert!(!out.success, "{out}");
    assert!(
        out.stderr.contains("plan.toml:6") && out.stderr.contains("not a path"),
        "{out}"
    );
    // A name the coordinator does not know.
    let out = fleet.rollback_cli(
        &hook(&format!(
            "{{ url = \"http://127.0.0.1:{}/x\", token_secret = \"tls-key\" }}",
            api.port
        )),
        "v1",
        &[],
    );
    assert!(!out.success, "{out}");
    assert!(
        out.stderr.contains("no secret named `tls-key`") && out.stderr.contains("status-token"),
        "{out}"
    );
    // A destination that [plans] does not list: a hook and a health gate.
    let out = fleet.rollback_cli(
        &hook("{ url = \"http://169.254.169.254/latest/meta-data/\" }"),
        "v1",
        &[],
    );
    assert!(!out.success, "{out}");
    assert!(
        out.stderr.contains("plan.toml:3: hook leak")
            && out.stderr.contains("is not among the destinations")
            && out.stderr.contains("127.0.0.1"),
        "{out}"
    );
    let gate = "[[stage]]\nname = \"core\"\nselect = { tier = \"core\" }\ntarget = \"app\"\n\
                health = [{ http = \"http://10.11.12.13:8080/health\", within = \"1s\" }]\n";
    let out = fleet.rollback_cli(gate, "v1", &[]);
    assert!(!out.success, "{out}");
    assert!(
        out.stderr.contains("health gate") && out.stderr.contains("10.11.12.13"),
        "{out}"
    );
    assert!(
        api.requests().is_empty(),
        "nothing was sent: {:?}",
        api.requests()
    );
    assert!(
        !fleet.records("app-1").iter().any(|(k, _)| k == "start"),
        "nothing started"
    );
}
