//! The cdn plugin's bucket origin, against a local S3-compatible server
//! (s3s-fs, SigV4 checked) with a real Varnish in front serving the bucket's
//! live prefix: the stored old build is copied over the live files, the
//! cache purged, and what users get is the old build byte for byte.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput, CallError};
use rewind_tests::cdn::{Varnish, get};
use rewind_tests::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use rewind_tests::{Agent, unsigned_plugin};

const BUCKET: &str = "web";
const OLD: &str = "2026.11.01";
const NEW: &str = "2026.11.20";

/// Varnish serves `web/live/` as the site; `/` is index.html.
const VCL_BUCKET_SITE: &str = r#"
sub vcl_recv {
    if (req.method == "BAN") {
        ban("req.url ~ " + req.http.X-Ban-Url);
        return (synth(200, "Banned"));
    }
    if (req.url == "/") {
        set req.url = "/index.html";
    }
    set req.url = "/web/live" + req.url;
}
"#;

/// The files of a build: the old one has legacy.js, the new one new.js.
fn build(id: &str) -> Vec<(String, Vec<u8>)> {
    let extra = if id == OLD { "legacy.js" } else { "new.js" };
    let mut files: Vec<(String, Vec<u8>)> = ["index.html", "app.js", "assets/style.css", extra]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                format!("{f} of build {id}\n").repeat(40).into_bytes(),
            )
        })
        .collect();
    files.sort();
    files
}

fn write(s3: &S3Server, prefix: &str, files: &[(String, Vec<u8>)]) {
    let base = s3.path(BUCKET, prefix);
    let _ = std::fs::remove_dir_all(&base);
    for (file, body) in files {
        let path = base.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
}

fn url_path(file: &str) -> String {
    if file == "index.html" {
        "/".into()
    } else {
        format!("/{file}")
    }
}

/// What Varnish serves for each of `files`.
fn served(varnish: &Varnish, files: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|(f, _)| {
            let (status, body) = get(varnish.port, &url_path(f)).expect("varnish answers");
            assert_eq!(status, 200, "{f}");
            (f.clone(), body)
        })
        .collect()
}

struct Site {
    agent: Agent,
    varnish: Varnish,
    s3: S3Server,
}

/// Both builds stored under builds/, the old one live, Varnish in front.
fn site(secret_key: &str) -> Site {
    let s3 = S3Server::start(&[BUCKET]);
    write(&s3, &format!("builds/{OLD}"), &build(OLD));
    write(&s3, &format!("builds/{NEW}"), &build(NEW));
    write(&s3, "live", &build(OLD));
    let varnish = Varnish::start(s3.port, VCL_BUCKET_SITE);
    let agent = Agent::new(&format!(
        r#"{}
[targets.ui]
plugin = "cdn"
secrets = "{{dir}}/s3.env"
settings = {{ verify_url = "{url}", purge = [{{ kind = "varnish", url = "{url}" }}], s3 = {{ endpoint = "{endpoint}", bucket = "{BUCKET}", live = "live/", builds = "builds/" }} }}
grant = {{ http = ["127.0.0.1:{varnish_port}", "127.0.0.1:{s3_port}"] }}
"#,
        unsigned_plugin("cdn", "cdn"),
        url = varnish.url(),
        endpoint = s3.url(),
        varnish_port = varnish.port,
        s3_port = s3.port,
    ));
    std::fs::write(
        agent.dir.path().join("s3.env"),
        format!("AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={secret_key}\n"),
    )
    .unwrap();
    Site { agent, varnish, s3 }
}

fn restore(to: &SnapshotRecord) -> Action {
    Action::Restore {
        to: to.clone(),
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: "run-3.ui.1".into(),
        },
    }
}

/// The deploy of the new build: live/ gets its files, the cache is banned.
fn deploy(site: &Site, files: &[(String, Vec<u8>)]) {
    write(&site.s3, "live", files);
    site.varnish.ban("X-Ban-Url", ".");
    assert_eq!(served(&site.varnish, files), files);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_rollback_copies_the_old_build_over_the_live_files() {
    let site = site(SECRET_KEY);
    let old = build(OLD);
    assert_eq!(served(&site.varnish, &old), old);
    let to = site.agent.snapshot("ui").await;
    assert_eq!(to.summary, format!("build {OLD}, 4 files"));

    deploy(&site, &build(NEW));

    let ActionOutput::Preview(preview) = site
        .agent
        .call("ui", Action::Plan { to: to.clone() })
        .await
        .unwrap_or_else(|e| panic!("plan: {e}"))
        .output
    else {
        panic!("not a preview")
    };
    let switch = &preview.changes[0];
    assert_eq!(switch.subject, "s3://web/live/");
    assert_eq!(
        switch.detail.as_deref(),
        Some(format!("4 of 4 files copied from s3://web/builds/{OLD}/, 1 deleted").as_str()),
        "{preview:?}"
    );

    let ActionOutput::Outcome(outcome) = site
        .agent
        .call("ui", restore(&to))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"))
        .output
    else {
        panic!("not an outcome")
    };
    assert!(outcome.changed, "{outcome:?}");
    let details = outcome.details.join("\n");
    assert!(details.contains(&format!("was build {NEW}")), "{details}");
    // The live prefix holds exactly the old build: new.js is gone.
    assert_eq!(site.s3.files(BUCKET, "live"), old);
    // Users get the old build, byte for byte, every file.
    assert_eq!(served(&site.varnish, &old), old);
    let (status, _) = get(site.varnish.port, "/new.js").unwrap();
    assert_eq!(status, 404, "new.js must no longer be served");
    // The stored builds are untouched.
    assert_eq!(site.s3.files(BUCKET, &format!("builds/{NEW}")), build(NEW));

    site.agent
        .call("ui", Action::Verify { to: to.clone() })
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"));
    let ActionOutput::Outcome(again) = site.agent.call("ui", restore(&to)).await.unwrap().output
    else {
        panic!()
    };
    assert!(
        !again.changed,
        "a second restore changes nothing: {again:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn live_files_that_are_no_stored_build_are_saved_before_the_switch() {
    let site = site(SECRET_KEY);
    let to = site.agent.snapshot("ui").await;
    // A hotfix edited in place: live/ is no stored build.
    let mut hotfix = build(NEW);
    hotfix[0].1 = b"hotfixed app.js\n".to_vec();
    deploy(&site, &hotfix);

    let ActionOutput::Outcome(outcome) = site
        .agent
        .call("ui", restore(&to))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"))
        .output
    else {
        panic!()
    };
    let details = outcome.details.join("\n");
    assert!(details.contains("matched no stored build"), "{details}");
    let saved: Vec<String> = std::fs::read_dir(site.s3.path(BUCKET, "builds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| {
            name.starts_with(&format!(
                "rewind-before-{}-",
                rewind_tests::step_file_name("run-3.ui.1")
            ))
        })
        .collect();
    assert_eq!(saved.len(), 1, "one saved build: {saved:?}");
    assert_eq!(
        site.s3.files(BUCKET, &format!("builds/{}", saved[0])),
        hotfix,
        "the hotfix is kept, byte for byte"
    );
    assert_eq!(site.s3.files(BUCKET, "live"), build(OLD));
    assert_eq!(served(&site.varnish, &build(OLD)), build(OLD));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switch_refused_halfway_puts_the_live_files_back() {
    let site = site(SECRET_KEY);
    let to = site.agent.snapshot("ui").await;
    let new = build(NEW);
    deploy(&site, &new);
    // The index is copied last; refusing it fails the switch after the
    // other files were copied.
    site.s3.refuse_writes_to(Some("web/live/index.html"));
    let error = site
        .agent
        .call("ui", restore(&to))
        .await
        .expect_err("a refused copy must fail the step");
    let text = error.to_string();
    assert!(matches!(error, CallError::Plugin { .. }), "{text}");
    assert!(text.contains("AccessDenied"), "{text}");
    assert!(text.contains("live/index.html"), "{text}");
    assert!(
        text.contains("were put back from build 2026.11.20"),
        "{text}"
    );
    // Nothing half-done: live/ is the new build exactly, as before.
    assert_eq!(site.s3.files(BUCKET, "live"), new);

    // With the policy lifted, the same step completes.
    site.s3.refuse_writes_to(None);
    site.agent
        .call("ui", restore(&to))
        .await
        .unwrap_or_else(|e| panic!("restore after the failure: {e}"));
    assert_eq!(site.s3.files(BUCKET, "live"), build(OLD));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_build_and_wrong_credentials_are_refused_with_nothing_copied() {
    let site = site(SECRET_KEY);
    let to = site.agent.snapshot("ui").await;
    let new = build(NEW);
    deploy(&site, &new);
    std::fs::write(
        site.s3.path(BUCKET, &format!("builds/{OLD}/app.js")),
        "tampered\n",
    )
    .unwrap();
    let text = site
        .agent
        .call("ui", restore(&to))
        .await
        .expect_err("a changed build must be refused")
        .to_string();
    assert!(text.contains("changed since the snapshot"), "{text}");
    assert!(text.contains("app.js"), "{text}");
    assert_eq!(site.s3.files(BUCKET, "live"), new, "nothing was copied");

    let wrong = site_with_secret(&site, "not-the-secret");
    let text = wrong
        .call("ui", restore(&to))
        .await
        .expect_err("a wrong secret key must be refused")
        .to_string();
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert!(
        !text.contains("not-the-secret"),
        "secrets never shown: {text}"
    );
    assert_eq!(site.s3.files(BUCKET, "live"), new, "nothing was copied");
}

/// Another agent on the same site, with another secret key.
fn site_with_secret(site: &Site, secret_key: &str) -> Agent {
    let text = std::fs::read_to_string(site.agent.dir.path().join("agent.toml")).unwrap();
    let targets = &text[text.find("[plugins").unwrap()..];
    let agent = Agent::new(&targets.replace(&site.agent.dir.path().display().to_string(), "{dir}"));
    std::fs::write(
        agent.dir.path().join("s3.env"),
        format!("AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={secret_key}\n"),
    )
    .unwrap();
    agent
}
