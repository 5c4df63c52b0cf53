//! Plan parsing and resolution: good plans resolve; bad ones are refused with
//! file, line and stage.

use super::*;

const GOOD: &str = r#"name = "shop"

[[stage]]
name = "data"
select = { tier = "data" }
target = "db"

[[stage]]
name = "core"
after = ["data"]
select = { tier = "core" }
target = "api"
max_parallel = "50%"
canary = 1
timeout = "30s"
on_failure = "pause"
health = [{ http = "http://127.0.0.1:1/health", status = 204, within = "5s" }, { verify = true }]
"#;

fn agent(name: &str, tier: &str, targets: &[&str]) -> AgentView {
    AgentView {
        name: name.into(),
        labels: [("tier".to_string(), tier.to_string())].into(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
    }
}

#[test]
fn a_good_plan_parses_and_resolves() {
    let plan = parse(GOOD, "shop.toml").unwrap();
    assert_eq!(plan.name, "shop");
    let core = &plan.stages[1];
    assert_eq!(core.after, ["data"]);
    assert_eq!(core.max_parallel.of(4), 2);
    assert_eq!(core.max_parallel.of(3), 2);
    assert_eq!(core.canary, 1);
    assert_eq!(core.timeout, Duration::from_secs(30));
    assert_eq!(core.on_failure, OnFailure::Pause);
    assert_eq!(core.health.len(), 2);
    let fleet = [
        agent("db-1", "data", &["db"]),
        agent("api-2", "core", &["api"]),
        agent("api-1", "core", &["api"]),
    ];
    let steps = plan.resolve(&fleet).unwrap();
    assert_eq!(
        steps[1]
            .iter()
            .map(|s| s.agent.as_str())
            .collect::<Vec<_>>(),
        ["api-1", "api-2"]
    );
}

fn error(text: &str) -> PlanError {
    parse(text, "plan.toml").unwrap_err()
}

#[test]
fn bad_plans_name_the_file_line_and_stage() {
    let cycle = error(
        "[[stage]]\nname = \"a\"\ntarget = \"t\"\nafter = [\"b\"]\n\n[[stage]]\nname = \"b\"\ntarget = \"t\"\nafter = [\"a\"]\n",
    );
    assert_eq!(cycle.line, Some(1), "{cycle}");
    assert!(
        cycle
            .to_string()
            .starts_with("plan.toml:1: stage a: the stages' `after` form a cycle: a -> b -> a"),
        "{cycle}"
    );

    let unknown = error("[[stage]]\nname = \"a\"\ntarget = \"t\"\nafter = [\"nope\"]\n");
    assert_eq!(unknown.line, Some(4), "{unknown}");
    assert!(
        unknown
            .message
            .contains("stage a: `after` names unknown stage `nope`"),
        "{unknown}"
    );

    let duration = error("[[stage]]\nname = \"a\"\ntarget = \"t\"\ntimeout = \"soon\"\n");
    assert_eq!(duration.line, Some(4), "{duration}");
    assert!(
        duration
            .message
            .contains("stage a: timeout `soon` is not a duration"),
        "{duration}"
    );

    let action = error("[[stage]]\nname = \"a\"\ntarget = \"t\"\naction = \"explode\"\n");
    assert!(action.message.contains("action `explode`"), "{action}");

    let parallel = error("[[stage]]\nname = \"a\"\ntarget = \"t\"\nmax_parallel = \"150%\"\n");
    assert!(parallel.message.contains("max_parallel"), "{parallel}");

    let field = error("[[stage]]\nname = \"a\"\ntarget = \"t\"\ntarrget = \"x\"\n");
    assert_eq!(field.line, Some(4), "{field}");
}

#[test]
fn resolution_refuses_selectors_and_targets_the_fleet_lacks() {
    let plan = parse(GOOD, "shop.toml").unwrap();
    let no_core = plan.resolve(&[agent("db-1", "data", &["db"])]).unwrap_err();
    assert_eq!(no_core.line, Some(11), "{no_core}");
    assert!(
        no_core.to_string().contains(
            "stage core: the selector { tier = \"core\" } matches no agent (agents: db-1)"
        ),
        "{no_core}"
    );

    let lacking = plan
        .resolve(&[
            agent("db-1", "data", &["db"]),
            agent("api-1", "core", &["other"]),
        ])
        .unwrap_err();
    assert_eq!(lacking.line, Some(12), "{lacking}");
    assert!(
        lacking
            .to_string()
            .contains("stage core: target `api` is unknown on api-1"),
        "{lacking}"
    );
}

#[test]
fn the_example_plan_parses() {
    let plan = parse(
        include_str!("../../../deploy/plan.example.toml"),
        "deploy/plan.example.toml",
    )
    .unwrap();
    assert_eq!(plan.stages.len(), 4);
    assert_eq!(plan.stages[1].on_failure, OnFailure::Pause);
}
