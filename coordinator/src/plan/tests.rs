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

#[test]
fn hooks_and_smoke_checks_parse_and_resolve() {
    let text = format!(
        "{GOOD}\n[[hook]]\nname = \"maintenance-on\"\nwhen = \"before\"\nhttp = {{ url = \"https://api.example.com/admin/maintenance/enable\", token_secret = \"admin-token\", body = '{{\"run\":\"{{{{run}}}}\"}}' }}\n\n[[hook]]\nname = \"maintenance-off\"\nwhen = \"finally\"\nagent = \"api-1\"\ntarget = \"maintenance\"\nparts = [\"off\"]\nretries = 5\ntimeout = \"1m\"\n\n[[stage]]\nname = \"smoke\"\nafter = [\"core\"]\nselect = {{ tier = \"core\" }}\ntarget = \"api\"\naction = \"verify\"\nhealth = [{{ verify = \"smoke-tests\", agent = \"api-1\" }}]\n"
    );
    let plan = parse(&text, "shop.toml").unwrap();
    assert_eq!(plan.hooks.len(), 2);
    // A path where the name of a coordinator's secret goes is refused.
    let path = text.replace("\"admin-token\"", "\"/etc/rewind/admin-token\"");
    let error = parse(&path, "shop.toml").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("token_secret `/etc/rewind/admin-token` must be a name"),
        "{error}"
    );
    assert_eq!(plan.hooks[0].when, HookWhen::Before);
    assert_eq!(plan.hooks[0].retries, 2);
    match &plan.hooks[0].call {
        HookCall::Http(call) => {
            assert_eq!(call.method, "POST");
            assert_eq!(call.body.as_deref(), Some("{\"run\":\"{{run}}\"}"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        plan.hooks[1].call,
        HookCall::Agent {
            agent: "api-1".into(),
            target: "maintenance".into(),
            action: StepAction::Restart,
            parts: vec!["off".into()],
        }
    );
    assert_eq!(plan.hooks[1].timeout, Duration::from_secs(60));
    assert_eq!(
        plan.stages[2].health,
        [Gate::Target {
            agent: "api-1".into(),
            target: "smoke-tests".into()
        }]
    );
    let fleet = [
        agent("db-1", "data", &["db"]),
        agent("api-1", "core", &["api", "maintenance"]),
    ];
    let missing = plan.resolve(&fleet).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("stage smoke: smoke check: target `smoke-tests` is unknown on api-1"),
        "{missing}"
    );
    let fleet = [
        agent("db-1", "data", &["db"]),
        agent("api-1", "core", &["api", "maintenance", "smoke-tests"]),
    ];
    plan.resolve(&fleet).unwrap();
    let fleet = [
        agent("db-1", "data", &["db"]),
        agent("api-2", "core", &["api", "smoke-tests"]),
    ];
    let gone = plan.resolve(&fleet).unwrap_err();
    assert!(
        gone.to_string()
            .contains("agent `api-1` is not in the fleet"),
        "{gone}"
    );
}

#[test]
fn bad_hooks_name_the_line() {
    let base = "[[stage]]\nname = \"a\"\ntarget = \"t\"\n\n";
    let when = error(&format!(
        "{base}[[hook]]\nname = \"h\"\nwhen = \"later\"\nhttp = {{ url = \"http://x/\" }}\n"
    ));
    assert_eq!(when.line, Some(7), "{when}");
    assert!(
        when.to_string()
            .contains("hook h: when `later` is not before, after or finally")
    );
    let neither = error(&format!(
        "{base}[[hook]]\nname = \"h\"\nwhen = \"before\"\n"
    ));
    assert!(
        neither.to_string().contains("hook h: a hook is either"),
        "{neither}"
    );
    let scheme = error(&format!(
        "{base}[[hook]]\nname = \"h\"\nwhen = \"before\"\nhttp = {{ url = \"ftp://x/\" }}\n"
    ));
    assert!(
        scheme
            .to_string()
            .contains("must be an http:// or https:// URL"),
        "{scheme}"
    );
    let restore = error(&format!(
        "{base}[[hook]]\nname = \"h\"\nwhen = \"after\"\nagent = \"a\"\ntarget = \"t\"\naction = \"restore\"\n"
    ));
    assert!(
        restore
            .to_string()
            .contains("action `restore` is not restart or verify"),
        "{restore}"
    );
    let smoke =
        error("[[stage]]\nname = \"a\"\ntarget = \"t\"\nhealth = [{ verify = \"smoke\" }]\n");
    assert!(smoke.to_string().contains("needs `agent`"), "{smoke}");
}

#[test]
fn the_example_plans_parse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut plans = vec![root.join("plan.example.toml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let plan = entry.unwrap().path().join("plan.toml");
        if plan.exists() {
            plans.push(plan);
        }
    }
    assert!(plans.len() >= 3, "{plans:?}");
    for path in plans {
        let text = std::fs::read_to_string(&path).unwrap();
        parse(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
    }
}
