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
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

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

#[tokio::test(flavor = "multi_thread")]
async fn connections_without_a_valid_certificate_are_refused() {
    let fleet = fleet().await;
    let url = fleet.fleet.url().unwrap();

    // No client certificate at all.
    let ca = std::fs::read(fleet.fleet.certs.join("ca.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .domain_name("127.0.0.1")
        .ca_certificate(Certificate::from_pem(ca));
    let channel = Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    let error = match channel {
        Err(e) => error_chain(&e),
        Ok(channel) => {
            let status =
                rewind_proto::v1::operator_service_client::OperatorServiceClient::new(channel)
                    .fleet(FleetRequest {})
                    .await
                    .expect_err("a call without a client certificate must fail");
            format!(
                "{} {}",
                status.message(),
                std::error::Error::source(&status)
                    .map(error_chain)
                    .unwrap_or_default()
            )
        }
    };
    assert!(
        error.contains("no client certificate was presented"),
        "{error}"
    );

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    certs::init(other.path(), "rewind.local").unwrap();
    let foreign = certs::issue_for_days(other.path(), Kind::Operator, "admin", &[], 30).unwrap();
    let files = TlsFiles {
        ca: fleet.fleet.certs.join("ca.pem"),
        cert: foreign.cert,
        key: foreign.key,
    };
    let error = operator_error(&fleet, &files).await;
    assert!(error.starts_with("Unauthenticated"), "{error}");
    assert!(
        error.contains(
            "the client certificate was not issued by the CA of trust domain rewind.local"
        ),
        "{error}"
    );

    // An expired certificate.
    let now = OffsetDateTime::now_utc();
    let expired = certs::issue(
        &fleet.fleet.certs,
        Kind::Operator,
        "admin-expired",
        &[],
        now - Duration::days(10),
        now - Duration::days(1),
    )
    .unwrap();
    let files = TlsFiles {
        ca: fleet.fleet.certs.join("ca.pem"),
        cert: expired.cert,
        key: expired.key,
    };
    let error = operator_error(&fleet, &files).await;
    assert!(error.starts_with("Unauthenticated"), "{error}");
    assert!(
        error.contains("the client certificate expired at"),
        "{error}"
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
