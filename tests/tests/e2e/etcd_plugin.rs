//! The etcd plugin through the agent, against a real etcd started by the
//! test: key prefixes restored in guarded transactions, concurrent writers
//! detected and never overwritten, an emergency snapshot before any write.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput, CallError};
use rewind_tests::etcd::EtcdServer;
use rewind_tests::{Agent, unsigned_plugin};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn agent(etcd: &EtcdServer, extra_settings: &str, extra_target: &str) -> Agent {
    Agent::new(&format!(
        r#"{}
[targets.config]
plugin = "etcd"
settings = {{ endpoint = "{endpoint}", prefixes = ["/shop/"], secret_keys = ["*/password"]{extra_settings} }}
grant = {{ http = ["127.0.0.1:{port}"] }}
{extra_target}
"#,
        unsigned_plugin("etcd", "etcd"),
        endpoint = etcd.endpoint(),
        port = etcd.port,
    ))
}

fn restore(to: &SnapshotRecord, step: &str) -> Action {
    Action::Restore {
        to: to.clone(),
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: step.into(),
        },
    }
}

fn release(n: usize, version: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("/shop/key-{i:05}"), format!("{version}-value-{i}")))
        .collect()
}

/// v1: 1,000 keys and a password. v2: 300 changed, 100 deleted, 200 added,
/// and the password changed.
fn move_to_v2(etcd: &EtcdServer) {
    let mut changed = release(300, "v2");
    changed.extend((1000..1200).map(|i| (format!("/shop/key-{i:05}"), format!("new-{i}"))));
    changed.push(("/shop/db/password".into(), "v2-secret".into()));
    etcd.put_many(&changed);
    for i in 300..400 {
        etcd.delete(&format!("/shop/key-{i:05}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_of_a_thousand_keys_with_deletions_and_its_emergency_snapshot() {
    let etcd = EtcdServer::start();
    let mut v1 = release(1000, "v1");
    v1.push(("/shop/db/password".into(), "v1-secret".into()));
    etcd.put_many(&v1);
    etcd.put("/other/untouched", "x");
    let agent = agent(&etcd, "", "");
    let to = agent.snapshot("config").await;
    assert!(to.summary.starts_with("1001 keys"), "{}", to.summary);
    let state_v1 = etcd.get_prefix("/shop/");

    move_to_v2(&etcd);
    etcd.put("/other/untouched", "y");
    let state_v2 = etcd.get_prefix("/shop/");

    let preview = agent
        .call("config", Action::Plan { to: to.clone() })
        .await
        .unwrap_or_else(|e| panic!("plan: {e}"));
    let ActionOutput::Preview(preview) = preview.output else {
        panic!("not a preview")
    };
    assert_eq!(preview.changes.len(), 300 + 100 + 200 + 1);
    let password = preview
        .changes
        .iter()
        .find(|c| c.subject == "/shop/db/password")
        .unwrap();
    assert!(password.summary.contains("sha256:"), "{password:?}");
    assert!(!password.summary.contains("secret"), "{password:?}");
    assert!(
        preview
            .changes
            .iter()
            .any(|c| c.subject == "/shop/key-01100" && c.summary.starts_with("delete"))
    );

    let output = agent
        .call("config", restore(&to, "step-a"))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let ActionOutput::Outcome(outcome) = output.output else {
        panic!("not an outcome")
    };
    assert!(outcome.changed);
    assert_eq!(etcd.get_prefix("/shop/"), state_v1);
    assert_eq!(etcd.get("/other/untouched").as_deref(), Some("y"));
    agent
        .call("config", Action::Verify { to: to.clone() })
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"));

    // Idempotent.
    let again = agent.call("config", restore(&to, "step-b")).await.unwrap();
    let ActionOutput::Outcome(again) = again.output else {
        panic!()
    };
    assert!(!again.changed, "{again:?}");

    // The emergency snapshot taken before the first restore puts v2 back.
    let file = agent.target("config").state_dir.join(format!(
        "emergency-{}.json",
        rewind_tests::step_file_name("step-a")
    ));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("emergency snapshot")).unwrap();
    let emergency = SnapshotRecord {
        data: saved["result"]["data"].as_str().unwrap().to_string(),
        summary: saved["result"]["summary"].as_str().unwrap().to_string(),
        taken_at: 0,
    };
    agent
        .call("config", restore(&emergency, "step-c"))
        .await
        .unwrap_or_else(|e| panic!("restore of the emergency snapshot: {e}"));
    assert_eq!(etcd.get_prefix("/shop/"), state_v2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_changed_after_the_plan_fails_the_step_and_nothing_is_written() {
    let etcd = EtcdServer::start();
    etcd.put_many(&release(1000, "v1"));
    let agent = agent(&etcd, "", "");
    let to = agent.snapshot("config").await;
    move_to_v2(&etcd);
    agent
        .call("config", Action::Plan { to: to.clone() })
        .await
        .unwrap();
    // Someone changes a key after the preview was shown.
    etcd.put("/shop/key-00007", "hotfix");
    let before = etcd.get_prefix("/shop/");
    let error = agent
        .call("config", restore(&to, "step-1"))
        .await
        .expect_err("a key changed after the plan must fail the step");
    let text = error.to_string();
    assert!(matches!(&error, CallError::Plugin { error, .. } if error.kind == "conflict"));
    assert!(text.contains("/shop/key-00007"), "{text}");
    assert_eq!(etcd.get_prefix("/shop/"), before, "nothing was written");

    // With force the run overwrites it.
    let forced = Action::Restore {
        to: to.clone(),
        options: RestoreOptions {
            confirm_data_loss: false,
            force: true,
            step_id: "step-2".into(),
        },
    };
    agent.call("config", forced).await.unwrap();
    assert_eq!(etcd.get("/shop/key-00007").as_deref(), Some("v1-value-7"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_during_the_restore_is_detected_and_keeps_its_value() {
    let etcd = Arc::new(EtcdServer::start());
    etcd.put_many(&release(1000, "v1"));
    // Small transactions, so the restore takes several round trips.
    let agent = agent(&etcd, ", batch = 16", "");
    let to = agent.snapshot("config").await;
    move_to_v2(&etcd);
    let before = etcd.get_prefix("/shop/");

    // A writer keeps updating a key late in the restore's order until it ends.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (etcd, stop) = (etcd.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                etcd.put("/shop/key-00299", &format!("writer-{n}"));
            }
            n
        })
    };
    // Let the writer start.
    while etcd.get("/shop/key-00299").as_deref() == Some("v2-value-299") {
        std::thread::yield_now();
    }
    let result = agent.call("config", restore(&to, "step-1")).await;
    stop.store(true, Ordering::Relaxed);
    let last = writer.join().unwrap();
    let error = result.expect_err("the concurrent writer must be detected");
    let text = error.to_string();
    assert!(text.contains("/shop/key-00299"), "{text}");
    assert!(text.contains("put back"), "{text}");
    // Nothing the writer wrote is lost, and the batches already applied
    // were put back: the prefix is as it was, but for the writer's key.
    assert_eq!(etcd.get("/shop/key-00299"), Some(format!("writer-{last}")));
    let after = etcd.get_prefix("/shop/");
    let differing: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, _)| b.0.clone())
        .collect();
    assert_eq!(before.len(), after.len());
    assert_eq!(differing, vec!["/shop/key-00299".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_unreachable_and_authentication_from_the_agents_secrets() {
    let mut etcd = EtcdServer::start();
    etcd.put("/shop/a", "1");
    // Authentication on: a root user whose password only the secrets file holds.
    etcd.call("auth/role/add", &json!({ "name": "root" }));
    etcd.call(
        "auth/user/add",
        &json!({ "name": "root", "password": "pa55-w0rd-xyz" }),
    );
    etcd.call(
        "auth/user/grant",
        &json!({ "user": "root", "role": "root" }),
    );
    etcd.call("auth/enable", &json!({}));

    let secrets = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secrets.path(), "ETCD_PASSWORD=pa55-w0rd-xyz\n").unwrap();
    let with_auth = agent(
        &etcd,
        ", user = \"root\"",
        &format!("secrets = \"{}\"", secrets.path().display()),
    );
    let to = with_auth.snapshot("config").await;
    assert!(to.summary.starts_with("1 keys"), "{}", to.summary);
    assert!(!to.data.contains("pa55-w0rd-xyz"));

    let without = agent(&etcd, "", "");
    let text = without
        .call("config", Action::Snapshot)
        .await
        .expect_err("etcd requires authentication")
        .to_string();
    assert!(text.contains("etcd at"), "{text}");

    let missing = agent(&etcd, ", user = \"root\"", "");
    let text = missing
        .call("config", Action::Snapshot)
        .await
        .expect_err("no secrets file")
        .to_string();
    assert!(text.contains("ETCD_PASSWORD"), "{text}");

    etcd.kill();
    let text = with_auth
        .call("config", Action::Snapshot)
        .await
        .expect_err("etcd is down")
        .to_string();
    assert!(text.contains("unavailable"), "{text}");
    assert!(text.contains(&etcd.endpoint()), "{text}");
}

/// An etcd target over TLS with a private CA and a client certificate
/// (`--client-cert-auth`), all from the target's `grant.tls`.
fn tls_agent(etcd: &EtcdServer, tls_entry: &str) -> Agent {
    let port = etcd.tls_port.expect("etcd started with TLS");
    Agent::new(&format!(
        r#"{}
[targets.config]
plugin = "etcd"
settings = {{ endpoint = "https://127.0.0.1:{port}", prefixes = ["/shop/"] }}

[targets.config.grant]
http = ["127.0.0.1:{port}"]
{tls_entry}
"#,
        unsigned_plugin("etcd", "etcd"),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_with_a_private_ca_and_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    rewind_tests::etcd::tls_certificates(certs.path());
    let etcd = EtcdServer::start_tls(certs.path());
    let port = etcd.tls_port.unwrap();
    etcd.put_many(&release(50, "v1"));
    let dir = certs.path().display();

    let agent = tls_agent(
        &etcd,
        &format!(
            r#"tls = [{{ host = "127.0.0.1:{port}", ca = "{dir}/ca.pem", cert = "{dir}/agent-rewind.pem", key = "{dir}/agent-rewind.key" }}]"#
        ),
    );
    let to = agent.snapshot("config").await;
    assert!(
        to.summary.starts_with("50 keys under /shop/ at revision"),
        "{}",
        to.summary
    );
    etcd.put_many(&release(50, "v2"));
    agent
        .call("config", restore(&to, "tls-1"))
        .await
        .unwrap_or_else(|e| panic!("restore over TLS: {e}"));
    assert_eq!(etcd.get_prefix("/shop/"), {
        let mut v1 = release(50, "v1");
        v1.sort();
        v1
    });

    // The CA but no client certificate: etcd refuses the connection.
    let no_client_cert = tls_agent(
        &etcd,
        &format!(r#"tls = [{{ host = "127.0.0.1:{port}", ca = "{dir}/ca.pem" }}]"#),
    );
    let error = no_client_cert
        .call("config", Action::Snapshot)
        .await
        .expect_err("etcd requires a client certificate");
    let text = error.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("the server ended TLS"), "{text}");
    assert!(text.contains("grant.tls (cert, key)"), "{text}");

    // No TLS settings: the public web roots do not know the private CA.
    let public_roots = tls_agent(&etcd, "");
    let error = public_roots
        .call("config", Action::Snapshot)
        .await
        .expect_err("a private CA is not trusted by default");
    let text = error.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("TLS certificate is not trusted"), "{text}");
}

/// As an operator runs it: `rewind rollback` through a real coordinator and
/// agent; the keys in etcd are v1's again, other prefixes untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_through_the_coordinator_puts_the_keys_back() {
    use rewind_tests::fleet::TestFleet;
    let etcd = EtcdServer::start();
    let mut v1 = release(1000, "v1");
    v1.push(("/shop/db/password".into(), "v1-secret".into()));
    etcd.put_many(&v1);
    etcd.put("/other/untouched", "x");
    let targets = format!(
        "[plugins.etcd]\npath = \"{{plugins}}/etcd.wasm\"\nallow_unsigned = true\n\n\
         [targets.config]\nplugin = \"etcd\"\n\
         settings = {{ endpoint = \"{endpoint}\", prefixes = [\"/shop/\"], secret_keys = [\"*/password\"] }}\n\
         grant = {{ http = [\"127.0.0.1:{port}\"] }}\n",
        endpoint = etcd.endpoint(),
        port = etcd.port,
    );
    let fleet =
        TestFleet::start_agents(vec![("cfg-1".into(), "config".into(), targets)], None).await;
    fleet.checkpoint("v1").await;
    let state_v1 = etcd.get_prefix("/shop/");
    move_to_v2(&etcd);
    etcd.put("/other/untouched", "y");

    let plan =
        "[[stage]]\nname = \"config\"\nselect = { tier = \"config\" }\ntarget = \"config\"\n";
    let output = fleet.rollback_cli(plan, "v1", &[]);
    assert!(output.success, "{output}");
    assert_eq!(etcd.get_prefix("/shop/"), state_v1);
    assert_eq!(etcd.get("/other/untouched").as_deref(), Some("y"));
    assert!(
        !output.stdout.contains("v1-secret") && !output.stdout.contains("v2-secret"),
        "secret values never shown: {output}"
    );
}

/// The preview the operator approved guards the run: a key changed between
/// the approval and the start stops the run before anything is written,
/// naming the step; `force` goes ahead.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_starts_only_on_the_preview_its_operator_approved() {
    use rewind_proto::v1::{PlanRequest, RunRequest};
    use rewind_tests::fleet::TestFleet;
    let etcd = EtcdServer::start();
    etcd.put_many(&release(20, "v1"));
    let targets = format!(
        "[plugins.etcd]\npath = \"{{plugins}}/etcd.wasm\"\nallow_unsigned = true\n\n\
         [targets.config]\nplugin = \"etcd\"\n\
         settings = {{ endpoint = \"{endpoint}\", prefixes = [\"/shop/\"] }}\n\
         grant = {{ http = [\"127.0.0.1:{port}\"] }}\n",
        endpoint = etcd.endpoint(),
        port = etcd.port,
    );
    let fleet =
        TestFleet::start_agents(vec![("cfg-1".into(), "config".into(), targets)], None).await;
    fleet.checkpoint("v1").await;
    etcd.put_many(&release(20, "v2"));
    let plan =
        "[[stage]]\nname = \"config\"\nselect = { tier = \"config\" }\ntarget = \"config\"\n";
    let mut ops = fleet.client("ops").await;
    let preview = ops
        .preview(PlanRequest {
            plan_toml: plan.into(),
            plan_path: "plan.toml".into(),
            release: "v1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let approved: std::collections::HashMap<String, String> = preview
        .stages
        .iter()
        .flat_map(|s| {
            s.steps.iter().map(|step| {
                (
                    format!("{}/{}/{}", s.stage, step.agent, step.target),
                    step.fingerprint.clone(),
                )
            })
        })
        .collect();
    // Someone writes after the operator read the preview.
    etcd.put("/shop/key-00003", "written later");
    let request = |force| RunRequest {
        plan_toml: plan.into(),
        plan_path: "plan.toml".into(),
        release: "v1".into(),
        force,
        approved: approved.clone(),
        ..Default::default()
    };
    let refused = ops
        .start_run(request(false))
        .await
        .expect_err("the targets changed since the approval");
    assert!(
        refused
            .message()
            .contains("changed since the preview you approved")
            && refused
                .message()
                .contains("stage config host cfg-1 target config"),
        "{}",
        refused.message()
    );
    assert_eq!(
        etcd.get("/shop/key-00003").as_deref(),
        Some("written later")
    );
    let run = ops
        .start_run(request(true))
        .await
        .unwrap()
        .into_inner()
        .run_id;
    assert_eq!(fleet.finish(&run).await.status, "succeeded");
    assert_eq!(etcd.get("/shop/key-00003").as_deref(), Some("v1-value-3"));
}
