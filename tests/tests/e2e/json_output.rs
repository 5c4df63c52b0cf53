//! `--output json` and exit statuses, as a script uses them: every listing
//! command prints one document with its schema, read back here, and the
//! exit status says whether a run succeeded, is paused, or was refused.

use rewind_tests::drills::{RECORDER_PLAN, drill_table};
use rewind_tests::fleet::{TestFleet, host};

/// The document a command printed, checked against the JSON Schema its
/// `schema` field names (docs/schemas/).
fn json(output: &rewind_tests::fleet::CommandOutput) -> serde_json::Value {
    let document = serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("{e}: {output}"));
    conforms(&document);
    document
}

fn conforms(document: &serde_json::Value) {
    let name = document["schema"]
        .as_str()
        .unwrap_or_else(|| panic!("no schema named in {document}"));
    let file = format!(
        "docs/schemas/{}.schema.json",
        name.trim_start_matches("rewind.").replace('/', "-")
    );
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(rewind_tests::root().join(&file))
            .unwrap_or_else(|e| panic!("{file}: {e}")),
    )
    .unwrap_or_else(|e| panic!("{file}: {e}"));
    let validator = jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{file}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} does not conform to {file}: {errors:#?}\n{document:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_commands_print_versioned_json_and_exit_statuses_say_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, RECORDER_PLAN).unwrap();
    let tables = drill_table("nightly", &plan, "schedule = \"0 0 3 1 1 *\"\nrto = \"5m\"");
    let fleet = TestFleet::start_in(
        vec![host("stg-db-1", "data"), host("stg-api-1", "core")],
        None,
        Some(&tables),
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    let rolled = fleet.rollback_cli(RECORDER_PLAN, "v1", &[]);
    assert!(rolled.success, "{rolled}");
    let run = TestFleet::run_id_of(&rolled);

    let status = fleet.rewind("viewer", &["status", &run, "--output", "json"]);
    assert_eq!(status.code, Some(0), "{status}");
    let report = json(&status);
    assert_eq!(report["schema"], "rewind.run/v1");
    assert_eq!(report["run_id"], run.as_str());
    assert_eq!(report["status"], "succeeded");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["host"], "stg-db-1");
    assert!(steps[0]["duration_ms"].is_u64(), "{report}");
    assert_eq!(report["stages"][1]["name"], "core");

    let history = json(&fleet.rewind("viewer", &["history", "--output", "json"]));
    assert_eq!(history["schema"], "rewind.history/v1");
    assert_eq!(history["runs"][0]["run_id"], run.as_str());

    let agents = json(&fleet.rewind("viewer", &["fleet", "--output", "json"]));
    assert_eq!(agents["schema"], "rewind.fleet/v1");
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stg-api-1", "stg-db-1"]);
    assert_eq!(agents["agents"][0]["connected"], true);
    assert_eq!(agents["agents"][0]["labels"]["tier"], "core");
    assert_eq!(agents["agents"][0]["targets"][0]["plugin"], "recorder");

    let preview = fleet.rewind(
        "ops",
        &[
            "plan",
            &plan.display().to_string(),
            "--to",
            "v1",
            "--output",
            "json",
        ],
    );
    let preview = json(&preview);
    assert_eq!(preview["schema"], "rewind.preview/v1");
    assert_eq!(preview["risk"], "none");
    assert_eq!(preview["stages"][0]["steps"][0]["host"], "stg-db-1");
    assert_eq!(
        preview["stages"][0]["steps"][0]["changes"][0]["summary"],
        "would record a restore"
    );
    assert!(preview["stages"][1]["steps"][0]["fingerprint"].is_string());

    let releases = json(&fleet.rewind("viewer", &["releases", "--output", "json"]));
    assert_eq!(releases["schema"], "rewind.releases/v1");
    assert_eq!(releases["releases"][0]["name"], "v1");
    assert_eq!(
        releases["releases"][0]["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let drills = json(&fleet.rewind("viewer", &["drill", "list", "--output", "json"]));
    assert_eq!(drills["schema"], "rewind.drills/v1");
    assert_eq!(drills["drills"][0]["name"], "nightly");
    assert!(drills["drills"][0]["last_verdict"].is_null());
    let drilled = fleet.rewind("ops", &["drill", "run", "nightly"]);
    assert_eq!(drilled.code, Some(0), "{drilled}");
    let history = json(&fleet.rewind(
        "viewer",
        &["drill", "history", "nightly", "--output", "json"],
    ));
    assert_eq!(history["schema"], "rewind.drill-history/v1");
    assert_eq!(history["runs"][0]["status"], "passed");
    assert!(history["runs"][0]["rto_ms"].is_u64(), "{history}");
    let drill_run = history["runs"][0]["run_id"].as_str().unwrap();
    let report = json(&fleet.rewind(
        "viewer",
        &["drill", "report", drill_run, "--format", "json"],
    ));
    assert_eq!(report["schema"], "rewind.drill-report/v1");
    assert_eq!(report["phases"][1]["name"], "roll-back");

    // Refused by the coordinator: a viewer may not roll back; no such run.
    let refused = fleet.rewind(
        "viewer",
        &[
            "rollback",
            &plan.display().to_string(),
            "--to",
            "v1",
            "--yes",
        ],
    );
    assert_eq!(refused.code, Some(4), "{refused}");
    assert!(
        refused
            .stderr
            .contains("error: refused: operator viewer has role viewer"),
        "{refused}"
    );
    let missing = fleet.rewind("viewer", &["status", "run-that-is-not"]);
    assert_eq!(missing.code, Some(4), "{missing}");
    // A command that cannot run at all is 2.
    let unreadable = fleet.rewind(
        "ops",
        &["rollback", "/no/such/plan.toml", "--to", "v1", "--yes"],
    );
    assert_eq!(unreadable.code, Some(2), "{unreadable}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_run_exits_3_and_a_failed_one_1() {
    let fleet = TestFleet::start(vec![host("db-1", "data").with("fail = true")], None).await;
    fleet.checkpoint("v1").await;
    let pausing = "[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"app\"\non_failure = \"pause\"\n";
    let run = fleet.start_run(pausing, "v1").await;
    fleet.events_until(&run, |e| e.kind == "run-paused").await;
    let paused = fleet.rewind("viewer", &["status", &run, "--output", "json"]);
    assert_eq!(paused.code, Some(3), "{paused}");
    assert_eq!(json(&paused)["status"], "paused");
    assert!(
        json(&paused)["steps"][0]["error"]["kind"] == "failed",
        "{paused}"
    );
    assert!(fleet.rewind("ops", &["cancel", &run]).success);
    fleet.finish(&run).await;
    let cancelled = fleet.rewind("viewer", &["status", &run]);
    assert_eq!(cancelled.code, Some(1), "{cancelled}");
}
