//! Identity comes from certificates alone. Each of these is refused with a
//! clear reason by a real coordinator over real mutual TLS.

use rewind_coordinator::certs;
use rewind_coordinator::cli::client;
use rewind_proto::identity::Kind;
use rewind_proto::tls::{TlsFiles, explain};
use rewind_proto::v1::agent_service_client::AgentServiceClient;
use rewind_proto::v1::{AgentMessage, FleetRequest, Hello, RunRequest, agent_message};
use rewind_tests::fleet::{TestFleet, host};
use time::{Duration, OffsetDateTime};
use tonic::transport::Endpoint;

async fn fleet() -> TestFleet {
    TestFleet::start(vec![host("db-1", "data"), host("api-1", "core")], None).await
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    explain(e)
}

/// Call the operator API's `fleet` with these files and return the error text.
async fn operator_error(fleet: &TestFleet, files: &TlsFiles) -> String {
    match client::connect(&fleet.fleet.url().unwrap(), files).await {
        Err(e) => format!("{e:#}"),
        Ok(mut c) => match c.fleet(FleetRequest {}).await {
            Ok(_) => panic!("the call was accepted"),
            Err(status) => format!(
                "{:?}: {} {}",
                status.code(),
                status.message(),
                std::error::Error::source(&status)
                    .map(error_chain)
                    .unwrap_or_default()
            ),
        },
    }
}

fn agent_files(fleet: &TestFleet, name: &str) -> TlsFiles {
    let stem = certs::stem(Kind::Agent, name);
    TlsFiles {
        ca: fleet.fleet.certs.join("ca.pem"),
        cert: fleet.fleet.certs.join(format!("{stem}.pem")),
        key: fleet.fleet.certs.join(format!("{stem}.key")),
    }
}

/// A TLS client with no certificate: connect, then read what the
/// coordinator answers.
async fn handshake_without_certificate(fleet: &TestFleet) -> String {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_file_iter(fleet.fleet.certs.join("ca.pem")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let address = fleet.fleet.address.clone().unwrap();
    let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let mut buffer = [0u8; 1024];
    match tls.read(&mut buffer).await {
        Ok(n) => format!("the coordinator answered {n} bytes"),
        Err(e) => e.to_string(),
    }
}

/// Certificate files signed by the fleet's CA, for `name`, valid from
/// `from` to `to` days from now.
fn operator_cert(fleet: &TestFleet, name: &str, from: i64, to: i64) -> TlsFiles {
    let now = OffsetDateTime::now_utc();
    let issued = certs::issue(
        &fleet.fleet.certs,
        Kind::Operator,
        name,
        &[],
        now + Duration::days(from),
        now + Duration::days(to),
    )
    .unwrap();
    TlsFiles {
        ca: fleet.fleet.certs.join("ca.pem"),
        cert: issued.cert,
        key: issued.key,
    }
}

/// Each bad certificate is refused in the TLS handshake, before any
/// request is read: the client sees the coordinator's alert, and the
/// coordinator logs the refusal with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn the_mtls_matrix_is_refused_at_the_handshake() {
    let fleet = fleet().await;
    let url = fleet.fleet.url().unwrap();
    let mut accepted = 0;

    // No client certificate at all: the handshake's answer is the alert.
    let error = handshake_without_certificate(&fleet).await;
    assert!(
        error.contains("received fatal alert: CertificateRequired"),
        "{error}"
    );

    // A certificate from another CA (same trust domain and names).
    let other = tempfile::tempdir().unwrap();
    certs::init(other.path(), "rewind.local").unwrap();
    let foreign = certs::issue_for_days(other.path(), Kind::Operator, "admin", &[], 30).unwrap();
    let foreign = TlsFiles {
        ca: fleet.fleet.certs.join("ca.pem"),
        cert: foreign.cert,
        key: foreign.key,
    };
    let expired = operator_cert(&fleet, "admin-expired", -10, -1);
    let not_yet = operator_cert(&fleet, "admin-not-yet", 1, 10);
    let revoked = operator_cert(&fleet, "admin-revoked", -1, 10);
    certs::revoke(&fleet.fleet.certs, Kind::Operator, "admin-revoked").unwrap();
    for (files, alert, hint) in [
        (&foreign, "UnknownCA", "not issued by the CA"),
        (&expired, "CertificateExpired", "a certificate has expired"),
        (&not_yet, "CertificateExpired", "a certificate has expired"),
        (&revoked, "CertificateRevoked", "has been revoked"),
    ] {
        let error = match client::connect(&url, files).await {
            Err(e) => format!("{e:#}"),
            Ok(mut c) => match c.fleet(FleetRequest {}).await {
                Ok(_) => {
                    accepted += 1;
                    continue;
                }
                Err(status) => format!(
                    "{} {}",
                    status.message(),
                    std::error::Error::source(&status)
                        .map(error_chain)
                        .unwrap_or_default()
                ),
            },
        };
        assert!(
            error.contains(&format!("received fatal alert: {alert}")),
            "{}: {error}",
            files.cert.display()
        );
        assert!(error.contains(hint), "{error}");
        assert!(error.contains(&url), "the error names the address: {error}");
    }
    assert_eq!(accepted, 0, "no bad certificate may get a request through");
    // The coordinator logs a refusal after sending its alert: the last one
    // may be written just after the client read the alert.
    let reasons = [
        "TLS handshake refused: peer sent no certificates",
        "TLS handshake refused: invalid peer certificate: UnknownIssuer",
        "TLS handshake refused: invalid peer certificate: certificate expired",
        "TLS handshake refused: invalid peer certificate: certificate not valid yet",
        "TLS handshake refused: invalid peer certificate: Revoked",
    ];
    rewind_tests::wait::eventually(
        "the coordinator logs each refusal's reason",
        std::time::Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(fleet.fleet.dir.join("coordinator.log")).unwrap();
            match reasons.iter().find(|reason| !log.contains(*reason)) {
                None => Ok(()),
                Some(reason) => Err(format!("the log lacks `{reason}`:\n{log}")),
            }
        },
    );
}

/// Revoking a connected agent's certificate ends its stream, and it cannot
/// connect again; the others stay connected.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_cut_off_and_cannot_come_back() {
    let fleet = fleet().await;
    certs::revoke(&fleet.fleet.certs, Kind::Agent, "api-1").unwrap();
    fleet.wait_disconnected("api-1").await;
    assert!(fleet.is_connected("db-1").await, "db-1 must stay connected");
    // It keeps trying, and the handshake keeps refusing it: what is checked
    // is an absence (no reconnection within 3 s).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!fleet.is_connected("api-1").await);
    let log = std::fs::read_to_string(fleet.fleet.host_dir("api-1").join("agent.log")).unwrap();
    assert!(log.contains("its certificate was revoked"), "{log}");
    assert!(
        log.contains("received fatal alert: CertificateRevoked"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn identities_may_do_only_what_they_are_for() {
    let fleet = fleet().await;

    // An agent certificate on the operator API.
    let error = operator_error(&fleet, &agent_files(&fleet, "db-1")).await;
    assert!(error.starts_with("PermissionDenied"), "{error}");
    assert!(error.contains("spiffe://rewind.local/agent/db-1 is an agent identity; the operator API needs an operator certificate"), "{error}");

    // An operator the coordinator gives no role.
    let stranger =
        certs::issue_for_days(&fleet.fleet.certs, Kind::Operator, "stranger", &[], 30).unwrap();
    let files = TlsFiles {
        ca: fleet.fleet.certs.join("ca.pem"),
        cert: stranger.cert,
        key: stranger.key,
    };
    let error = operator_error(&fleet, &files).await;
    assert!(error.contains("operator stranger has no role"), "{error}");

    // An agent claiming another agent's name.
    let files = agent_files(&fleet, "db-1");
    let tls = files.client("127.0.0.1").unwrap();
    let channel = Endpoint::from_shared(fleet.fleet.url().unwrap())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            agent: "api-1".into(),
            ..Default::default()
        })),
    };
    let status = AgentServiceClient::new(channel)
        .session(tokio_stream_once(hello))
        .await
        .expect_err("an agent may not speak for another");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("agent db-1 may speak only for itself"),
        "{}",
        status.message()
    );

    // A viewer starting a run.
    fleet.checkpoint("v1").await;
    let plan = "[[stage]]\nname = \"all\"\ntarget = \"app\"\n";
    let status = fleet
        .client("viewer")
        .await
        .start_run(RunRequest {
            plan_toml: plan.into(),
            plan_path: "plan.toml".into(),
            release: "v1".into(),
            ..Default::default()
        })
        .await
        .expect_err("a viewer may not start a run");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("operator viewer has role viewer; starting a run needs the operator role"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn data_loss_needs_confirmation_and_bad_plans_are_refused_with_their_line() {
    let fleet = TestFleet::start(
        vec![host("db-1", "data").with("risk = \"data-loss\"")],
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    let mut ops = fleet.client("ops").await;
    let plan = "[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"app\"\n";
    let request = |confirm| RunRequest {
        plan_toml: plan.into(),
        plan_path: "plan.toml".into(),
        release: "v1".into(),
        confirm_data_loss: confirm,
        ..Default::default()
    };
    let status = ops
        .start_run(request(false))
        .await
        .expect_err("data loss without confirmation");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("this rollback loses data"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("--confirm-data-loss"),
        "{}",
        status.message()
    );
    assert!(fleet.records("db-1").is_empty(), "nothing ran");

    let run = ops
        .start_run(request(true))
        .await
        .expect("confirmed")
        .into_inner()
        .run_id;
    assert_eq!(fleet.finish(&run).await.status, "succeeded");

    let bad = "[[stage]]\nname = \"data\"\nselect = { tier = \"nope\" }\ntarget = \"app\"\n";
    let status = ops
        .start_run(RunRequest {
            plan_toml: bad.into(),
            plan_path: "bad.toml".into(),
            release: "v1".into(),
            ..Default::default()
        })
        .await
        .expect_err("a selector matching no agent");
    assert!(
        status.message().starts_with(
            "bad.toml:3: stage data: the selector { tier = \"nope\" } matches no agent"
        ),
        "{}",
        status.message()
    );
}

fn tokio_stream_once(
    message: AgentMessage,
) -> impl tokio_stream::Stream<Item = AgentMessage> + Send + 'static {
    tokio_stream::iter(vec![message])
}

/// Protected environments hold whatever labels say: db-1 is a production
/// host by the coordinator's configuration even though its label says
/// staging, so its data-loss step needs the admin role; an agent claiming
/// an environment that does not list it is refused; a stopped agent can be
/// retired, by an admin only.
#[tokio::test(flavor = "multi_thread")]
async fn protected_environments_and_retiring_agents_hold() {
    let environments = "[environments.production]\nprotected = true\nagents = [\"db-*\"]\n\n\
                        [environments.staging]\n";
    let mut fleet = TestFleet::start_in(
        vec![
            host("db-1", "data").with("risk = \"data-loss\""),
            host("api-1", "core"),
            host("web-9", "core").in_env("production"),
        ],
        None,
        Some(environments),
        Some(2),
    )
    .await;
    // web-9 claims production, which does not list it: refused and counted.
    let mut viewer = fleet.client("viewer").await;
    rewind_tests::wait::eventually_async(
        "web-9 is refused",
        std::time::Duration::from_secs(30),
        async || {
            let refused = fleet.refused().await;
            rewind_tests::wait::holds(
                refused.get("env-not-allowed").copied().unwrap_or(0) > 0,
                refused,
            )
        },
    )
    .await;
    let agents = viewer
        .fleet(FleetRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert!(!agents.iter().any(|a| a.name == "web-9" && a.connected));
    let log = std::fs::read_to_string(fleet.fleet.host_dir("web-9").join("agent.log")).unwrap();
    assert!(
        log.contains(
            "agent web-9 has the label env = \"production\", but [environments.production] agents"
        ),
        "{log}"
    );
    fleet.fleet.kill_agent("web-9");

    fleet.checkpoint("v1").await;
    let plan = "[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"app\"\n";
    let refused = fleet.rollback_cli(plan, "v1", &["--confirm-data-loss"]);
    assert!(!refused.success, "{refused}");
    assert!(
        refused
            .stderr
            .contains("data-loss steps on protected environments need the admin role")
            && refused
                .stderr
                .contains("host db-1 target app (environment production)"),
        "{refused}"
    );
    assert!(fleet.records("db-1").is_empty(), "nothing ran");
    let path = fleet.fleet.dir.join("plan.toml").display().to_string();
    let admin = fleet.rewind(
        "admin",
        &[
            "rollback",
            &path,
            "--to",
            "v1",
            "--yes",
            "--confirm-data-loss",
        ],
    );
    assert!(admin.success, "{admin}");
    assert_eq!(
        fleet
            .records("db-1")
            .iter()
            .filter(|(k, _)| k == "start")
            .count(),
        1
    );

    // A viewer may not preview (plugins do work for a preview).
    let preview = fleet.rewind("viewer", &["plan", &path, "--to", "v1"]);
    assert!(!preview.success);
    assert!(
        preview
            .stderr
            .contains("previewing a plan needs the operator role"),
        "{preview}"
    );

    // Retiring: not while connected, not by an operator, then by an admin.
    let connected = fleet.rewind("admin", &["fleet", "remove", "api-1"]);
    assert!(
        !connected.success && connected.stderr.contains("is connected"),
        "{connected}"
    );
    fleet.fleet.kill_agent("api-1");
    fleet.wait_disconnected("api-1").await;
    let by_operator = fleet.rewind("ops", &["fleet", "remove", "api-1"]);
    assert!(
        !by_operator.success
            && by_operator
                .stderr
                .contains("retiring an agent needs the admin role"),
        "{by_operator}"
    );
    let retired = fleet.rewind("admin", &["fleet", "remove", "api-1"]);
    assert!(retired.success, "{retired}");
    let agents = viewer
        .fleet(FleetRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert!(!agents.iter().any(|a| a.name == "api-1"), "{agents:?}");
}

/// A certificate that expires while its agent's stream is open ends that
/// stream; reconnecting with it is refused at the handshake.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_when_its_certificate_expires() {
    let mut fleet = fleet().await;
    fleet.fleet.kill_agent("api-1");
    let stem = certs::stem(Kind::Agent, "api-1");
    for ext in ["pem", "key"] {
        std::fs::remove_file(fleet.fleet.certs.join(format!("{stem}.{ext}"))).unwrap();
    }
    let now = OffsetDateTime::now_utc();
    certs::issue(
        &fleet.fleet.certs,
        Kind::Agent,
        "api-1",
        &[],
        now - Duration::minutes(1),
        now + Duration::seconds(6),
    )
    .unwrap();
    fleet.fleet.start_agent("api-1").unwrap();
    fleet.wait_connected(2).await;
    fleet.wait_disconnected("api-1").await;
    // It logs why the stream ended, and that its reconnection is refused.
    rewind_tests::wait::eventually("api-1 logs why", std::time::Duration::from_secs(10), || {
        let log = std::fs::read_to_string(fleet.fleet.host_dir("api-1").join("agent.log")).unwrap();
        rewind_tests::wait::holds(
            log.contains("its certificate expired")
                && log.contains("received fatal alert: CertificateExpired"),
            log,
        )
    });
}

/// A revocation list the fleet CA did not sign is refused when the
/// coordinator starts (its signature is checked when the list is read, not
/// at each handshake), naming the file; the CA's own list is accepted.
#[test]
fn a_revocation_list_from_another_ca_stops_the_coordinator() {
    use rewind_coordinator::localfleet::LocalFleet;
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = LocalFleet::create(
        dir.path(),
        &rewind_tests::binary("rewind"),
        &rewind_tests::binary("rewind-agent"),
        rewind_tests::plugins_dir(),
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    certs::init(other.path(), "rewind.local").unwrap();
    let ours = fleet.certs.join("crl.pem");
    let kept = std::fs::read(&ours).unwrap();
    std::fs::copy(other.path().join("crl.pem"), &ours).unwrap();
    let error = fleet.start_coordinator().unwrap_err().to_string();
    assert!(
        error.contains("crl.pem: revocation list 1 (issuer CN=")
            && error.contains("is not signed by the fleet CA in"),
        "{error}"
    );
    std::fs::write(&ours, kept).unwrap();
    fleet.start_coordinator().unwrap();
    fleet.stop();
}
