//! The cdn plugin's Cloudflare, Fastly and CloudFront adapters, against a
//! local server standing in for the providers' APIs, which checks each
//! request against what the providers' public documentation requires:
//! paths, headers, bodies, and CloudFront's SigV4 signature.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput};
use rewind_tests::providers::{ProviderApi, Received, sigv4_signature};
use rewind_tests::{Agent, unsigned_plugin};
use sha2::{Digest, Sha256};
use std::path::Path;

const CF_TOKEN: &str = "cf-token-4f9a2c";
const FASTLY_TOKEN: &str = "fastly-token-77b1";
const AWS_KEY_ID: &str = "AKIAREWINDTEST000001";
const AWS_SECRET: &str = "rewind/test/SECRETkey+0123456789abcdefghij";

fn site(root: &Path) {
    for (id, text) in [("1", "old"), ("2", "new")] {
        let dir = root.join("builds").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), text).unwrap();
        std::fs::write(dir.join("app.js"), text).unwrap();
    }
}

fn point(root: &Path, id: &str) {
    let _ = std::fs::remove_file(root.join("current"));
    std::os::unix::fs::symlink(root.join("builds").join(id), root.join("current")).unwrap();
}

fn accept(request: &Received) -> (u16, String) {
    if request.path.contains("/purge_cache") {
        (
            200,
            r#"{"success":true,"errors":[],"messages":[],"result":{"id":"zone"}}"#.into(),
        )
    } else if request.path.starts_with("/service/") {
        (200, r#"{"status":"ok","id":"purge-1"}"#.into())
    } else if request.path.ends_with("/invalidation") {
        (
            201,
            "<Invalidation><Id>I1</Id><Status>InProgress</Status></Invalidation>".into(),
        )
    } else {
        (404, "{}".into())
    }
}

fn refuse(_: &Received) -> (u16, String) {
    (
        403,
        r#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}]}"#.into(),
    )
}

fn agent(root: &Path, api: &ProviderApi, secrets: &Path) -> Agent {
    let base = format!("http://127.0.0.1:{}", api.port);
    Agent::new(&format!(
        r#"{}
[targets.ui]
plugin = "cdn"
secrets = "{secrets}"
settings = {{ builds = "{root}/builds", current = "{root}/current", purge = [
  {{ kind = "cloudflare", zone_id = "023e105f4ecef8ad9ca31a8372d0c353", api_url = "{base}/client/v4" }},
  {{ kind = "fastly", service_id = "SU1Z0isxPaozGVKXdv0eY", surrogate_keys = ["ui", "ui-assets"], api_url = "{base}" }},
  {{ kind = "cloudfront", distribution_id = "EDFDVBD6EXAMPLE", paths = ["/*"], api_url = "{base}" }},
] }}
grant = {{ files = ["{root}"], http = ["127.0.0.1:{port}"] }}
"#,
        unsigned_plugin("cdn", "cdn"),
        secrets = secrets.display(),
        root = root.display(),
        port = api.port,
    ))
}

fn secrets_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cdn.env");
    std::fs::write(
        &path,
        format!(
            "CLOUDFLARE_API_TOKEN={CF_TOKEN}\nFASTLY_API_TOKEN={FASTLY_TOKEN}\n\
             AWS_ACCESS_KEY_ID={AWS_KEY_ID}\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n"
        ),
    )
    .unwrap();
    path
}

async fn snapshot_and_deploy(agent: &Agent, root: &Path) -> SnapshotRecord {
    let ActionOutput::Captured(captured) = agent
        .call("ui", Action::Snapshot)
        .await
        .unwrap_or_else(|e| panic!("snapshot: {e}"))
        .output
    else {
        panic!("not a snapshot")
    };
    point(root, "2");
    SnapshotRecord {
        data: captured.data,
        summary: captured.summary,
        taken_at: 0,
    }
}

fn restore(to: &SnapshotRecord) -> Action {
    Action::Restore {
        to: to.clone(),
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: "run-7.ui.1".into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_provider_gets_exactly_the_documented_purge_request() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ui");
    site(&root);
    point(&root, "1");
    let api = ProviderApi::start(accept);
    let agent = agent(&root, &api, &secrets_file(dir.path()));
    let to = snapshot_and_deploy(&agent, &root).await;
    let output = agent
        .call("ui", restore(&to))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let text = format!("{output:?}");
    for secret in [CF_TOKEN, FASTLY_TOKEN, AWS_SECRET] {
        assert!(!text.contains(secret), "a secret leaked into the result");
    }
    let requests = api.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");

    // Cloudflare: POST /client/v4/zones/{zone_id}/purge_cache, bearer token,
    // JSON body {"purge_everything": true}.
    let cf = &requests[0];
    assert_eq!(cf.method, "POST");
    assert_eq!(
        cf.path,
        "/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/purge_cache"
    );
    assert_eq!(cf.headers["authorization"], format!("Bearer {CF_TOKEN}"));
    assert_eq!(cf.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&cf.body).unwrap();
    assert_eq!(body, serde_json::json!({ "purge_everything": true }));

    // Fastly: POST /service/{service_id}/purge with the keys in
    // Surrogate-Key, the token in Fastly-Key.
    let fastly = &requests[1];
    assert_eq!(fastly.method, "POST");
    assert_eq!(fastly.path, "/service/SU1Z0isxPaozGVKXdv0eY/purge");
    assert_eq!(fastly.headers["fastly-key"], FASTLY_TOKEN);
    assert_eq!(fastly.headers["surrogate-key"], "ui ui-assets");
    assert_eq!(fastly.headers["accept"], "application/json");
    assert!(!fastly.headers.contains_key("fastly-soft-purge"));

    // CloudFront: POST /2020-05-31/distribution/{id}/invalidation, an
    // InvalidationBatch, signed with SigV4 for us-east-1/cloudfront.
    let cloudfront = &requests[2];
    assert_eq!(cloudfront.method, "POST");
    assert_eq!(
        cloudfront.path,
        "/2020-05-31/distribution/EDFDVBD6EXAMPLE/invalidation"
    );
    let xml = String::from_utf8(cloudfront.body.clone()).unwrap();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
    assert!(
        xml.contains(
            "<InvalidationBatch xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\">"
        )
    );
    assert!(xml.contains("<CallerReference>rewind-run-7.ui.1</CallerReference>"));
    assert!(xml.contains("<Paths><Quantity>1</Quantity><Items><Path>/*</Path></Items></Paths>"));
    let headers = &cloudfront.headers;
    assert_eq!(
        headers["x-amz-content-sha256"],
        hex::encode(Sha256::digest(&cloudfront.body))
    );
    let date = &headers["x-amz-date"];
    assert_eq!(date.len(), 16, "{date}");
    let authorization = &headers["authorization"];
    let expected_prefix = format!(
        "AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/{}/us-east-1/cloudfront/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=",
        &date[..8]
    );
    assert!(
        authorization.starts_with(&expected_prefix),
        "{authorization}"
    );
    let signature = sigv4_signature(
        AWS_SECRET,
        "POST",
        &cloudfront.path,
        "",
        headers,
        &["host", "x-amz-content-sha256", "x-amz-date"],
        &cloudfront.body,
        date,
        "us-east-1",
        "cloudfront",
    );
    assert_eq!(&authorization[expected_prefix.len()..], signature);
    assert_eq!(headers["host"], format!("127.0.0.1:{}", api.port));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_refuses_fails_the_step_without_showing_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ui");
    site(&root);
    point(&root, "1");
    let api = ProviderApi::start(refuse);
    let agent = agent(&root, &api, &secrets_file(dir.path()));
    let to = snapshot_and_deploy(&agent, &root).await;
    let error = agent
        .call("ui", restore(&to))
        .await
        .expect_err("a refused purge fails the step");
    let text = error.to_string();
    assert!(
        text.contains("Cloudflare zone 023e105f4ecef8ad9ca31a8372d0c353 refused the purge: 403"),
        "{text}"
    );
    assert!(text.contains("Authentication error"), "{text}");
    assert!(!text.contains(CF_TOKEN), "{text}");
}
