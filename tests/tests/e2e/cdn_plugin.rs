//! The cdn plugin through the agent, with a real Varnish in front of a local
//! origin: the UI goes back to the previous build, the cache is purged, and
//! what Varnish serves is the old build, byte for byte, with no mix.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput};
use rewind_tests::cdn::{Origin, VCL_PURGE_ALLOWED, VCL_PURGE_REFUSED, Varnish, get};
use rewind_tests::{Agent, unsigned_plugin};
use std::path::Path;

const FILES: [&str; 3] = ["index.html", "app.js", "assets/style.css"];

fn write_build(root: &Path, id: &str) {
    for file in FILES {
        let path = root.join("builds").join(id).join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{file} of build {id}\n").repeat(50)).unwrap();
    }
}

fn point_current(root: &Path, id: &str) {
    let link = root.join("current");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(root.join("builds").join(id), &link).unwrap();
}

fn url_path(file: &str) -> String {
    if file == "index.html" {
        "/".into()
    } else {
        format!("/{file}")
    }
}

/// Everything Varnish serves, as (path, body).
fn served(varnish: &Varnish) -> Vec<(String, Vec<u8>)> {
    FILES
        .iter()
        .map(|f| {
            let (status, body) = get(varnish.port, &url_path(f)).expect("varnish answers");
            assert_eq!(status, 200, "{f}");
            (f.to_string(), body)
        })
        .collect()
}

fn build_files(root: &Path, id: &str) -> Vec<(String, Vec<u8>)> {
    FILES
        .iter()
        .map(|f| {
            (
                f.to_string(),
                std::fs::read(root.join("builds").join(id).join(f)).unwrap(),
            )
        })
        .collect()
}

struct Site {
    agent: Agent,
    varnish: Varnish,
    root: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn site(vcl: &str) -> Site {
    site_with(vcl, "")
}

/// A site whose Varnish purge entry has `purge_extra` added (`, key = ...`).
fn site_with(vcl: &str, purge_extra: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ui");
    write_build(&root, "2026.11.01");
    write_build(&root, "2026.11.20");
    point_current(&root, "2026.11.01");
    let origin = Origin::start(root.join("current"));
    let varnish = Varnish::start(origin.port, vcl);
    let agent = Agent::new(&format!(
        r#"{}
[targets.ui]
plugin = "cdn"
settings = {{ builds = "{root}/builds", current = "{root}/current", verify_url = "{url}", purge = [{{ kind = "varnish", url = "{url}"{purge_extra} }}] }}
grant = {{ files = ["{root}"], http = ["127.0.0.1:{port}"] }}
"#,
        unsigned_plugin("cdn", "cdn"),
        root = root.display(),
        url = varnish.url(),
        port = varnish.port,
    ));
    Site {
        agent,
        varnish,
        root,
        _dir: dir,
    }
}

fn restore(to: &SnapshotRecord) -> Action {
    Action::Restore {
        to: to.clone(),
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: "step-1".into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_rollback_varnish_serves_the_old_build_byte_for_byte() {
    let site = site(VCL_PURGE_ALLOWED);
    let old = build_files(&site.root, "2026.11.01");
    let new = build_files(&site.root, "2026.11.20");
    assert_eq!(served(&site.varnish), old);
    let to = site.agent.snapshot("ui").await;
    assert_eq!(to.summary, "build 2026.11.01, 3 files");

    // The deploy: the origin switches to the new build.
    point_current(&site.root, "2026.11.20");
    // The cache still holds the old build: purged by hand, as a deploy would.
    site.varnish.ban("X-Ban-Url", ".");
    assert_eq!(served(&site.varnish), new);

    let output = site
        .agent
        .call("ui", restore(&to))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let ActionOutput::Outcome(outcome) = output.output else {
        panic!("not an outcome")
    };
    assert!(outcome.changed, "{outcome:?}");
    // Byte for byte the old build, every file: no mix.
    assert_eq!(served(&site.varnish), old);
    assert_eq!(
        std::fs::read_link(site.root.join("current")).unwrap(),
        site.root.join("builds/2026.11.01")
    );
    site.agent
        .call("ui", Action::Verify { to: to.clone() })
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"));
    // A second restore changes nothing.
    let again = site.agent.call("ui", restore(&to)).await.unwrap();
    let ActionOutput::Outcome(again) = again.output else {
        panic!()
    };
    assert!(!again.changed, "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_varnish_that_refuses_the_purge_fails_the_step_clearly() {
    let site = site(VCL_PURGE_REFUSED);
    let to = site.agent.snapshot("ui").await;
    point_current(&site.root, "2026.11.20");
    let error = site
        .agent
        .call("ui", restore(&to))
        .await
        .expect_err("a refused purge must fail the step");
    let text = error.to_string();
    assert!(text.contains("refused the BAN"), "{text}");
    assert!(text.contains("405"), "{text}");
    assert!(text.contains(&site.varnish.url()), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_changed_or_removed_since_the_snapshot_is_refused() {
    let site = site(VCL_PURGE_ALLOWED);
    let to = site.agent.snapshot("ui").await;
    point_current(&site.root, "2026.11.20");
    std::fs::write(site.root.join("builds/2026.11.01/app.js"), "tampered\n").unwrap();
    let text = site
        .agent
        .call("ui", restore(&to))
        .await
        .expect_err("a changed build must be refused")
        .to_string();
    assert!(text.contains("changed since the snapshot"), "{text}");
    assert!(text.contains("app.js"), "{text}");
    assert_eq!(
        std::fs::read_link(site.root.join("current")).unwrap(),
        site.root.join("builds/2026.11.20"),
        "nothing was switched"
    );
}

/// Tags every answer with `Surrogate-Key: ui`; a BAN carrying a
/// Surrogate-Key header bans the objects tagged with it.
const VCL_SURROGATE_KEYS: &str = r#"
sub vcl_recv {
    if (req.method == "BAN" && req.http.Surrogate-Key) {
        ban("obj.http.Surrogate-Key ~ " + req.http.Surrogate-Key);
        return (synth(200, "Banned"));
    }
    if (req.method == "BAN") {
        return (synth(400, "Surrogate-Key needed"));
    }
}
sub vcl_backend_response {
    set beresp.http.Surrogate-Key = "ui";
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn varnish_purged_by_surrogate_key_serves_the_old_build() {
    // The right key: everything tagged with it is purged.
    let site = site_with(VCL_SURROGATE_KEYS, r#", surrogate_keys = ["ui"]"#);
    let old = build_files(&site.root, "2026.11.01");
    assert_eq!(served(&site.varnish), old);
    let to = site.agent.snapshot("ui").await;
    point_current(&site.root, "2026.11.20");
    let ActionOutput::Outcome(outcome) = site
        .agent
        .call("ui", restore(&to))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"))
        .output
    else {
        panic!("not an outcome")
    };
    assert!(
        outcome.details.iter().any(|d| d.contains("1 BAN request")),
        "{outcome:?}"
    );
    assert_eq!(served(&site.varnish), old);

    // A key that tags nothing purges nothing: the cache keeps serving the
    // new build, and the step fails on what users get.
    let site = site_with(VCL_SURROGATE_KEYS, r#", surrogate_keys = ["other"]"#);
    let to = site.agent.snapshot("ui").await;
    point_current(&site.root, "2026.11.20");
    site.varnish.ban("Surrogate-Key", "ui");
    let new = build_files(&site.root, "2026.11.20");
    assert_eq!(served(&site.varnish), new, "the cache holds the new build");
    let error = site
        .agent
        .call("ui", restore(&to))
        .await
        .expect_err("a purge that purged nothing must fail the step");
    let text = error.to_string();
    assert!(text.contains("are not build 2026.11.01"), "{text}");
    assert!(text.contains("/app.js"), "{text}");
}

/// As an operator runs it: `rewind rollback` through a real coordinator and
/// agent; what Varnish serves afterwards is the old build, byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_through_the_coordinator_serves_the_old_build() {
    use rewind_tests::fleet::TestFleet;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ui");
    write_build(&root, "2026.11.01");
    write_build(&root, "2026.11.20");
    point_current(&root, "2026.11.01");
    let origin = Origin::start(root.join("current"));
    let varnish = Varnish::start(origin.port, VCL_PURGE_ALLOWED);
    let targets = format!(
        "[plugins.cdn]\npath = \"{{plugins}}/cdn.wasm\"\nallow_unsigned = true\n\n\
         [targets.ui]\nplugin = \"cdn\"\n\
         settings = {{ builds = \"{root}/builds\", current = \"{root}/current\", verify_url = \"{url}\", purge = [{{ kind = \"varnish\", url = \"{url}\" }}] }}\n\
         grant = {{ files = [\"{root}\"], http = [\"127.0.0.1:{port}\"] }}\n",
        root = root.display(),
        url = varnish.url(),
        port = varnish.port,
    );
    let fleet = TestFleet::start_agents(vec![("ui-1".into(), "ui".into(), targets)], None).await;
    fleet.checkpoint("v1").await;
    point_current(&root, "2026.11.20");
    assert_eq!(served(&varnish), build_files(&root, "2026.11.20"));

    let plan = "[[stage]]\nname = \"ui\"\nselect = { tier = \"ui\" }\ntarget = \"ui\"\nhealth = [{ verify = true }]\n";
    let output = fleet.rollback_cli(plan, "v1", &[]);
    assert!(output.success, "{output}");
    assert_eq!(served(&varnish), build_files(&root, "2026.11.01"));
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap(),
        root.join("builds/2026.11.01")
    );
}
