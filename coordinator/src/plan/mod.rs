//! Rollback plans: a TOML file of stages, each selecting hosts by label and
//! naming a target and an action, ordered by `after`, with parallelism, a
//! canary, health gates, a timeout and a failure policy.
//!
//! ```toml
//! [[stage]]
//! name = "data"
//! select = { tier = "data" }
//! target = "db-config"
//!
//! [[stage]]
//! name = "core"
//! after = ["data"]
//! select = { tier = "core" }
//! target = "api-config"
//! max_parallel = "50%"
//! canary = 1
//! on_failure = "pause"
//! health = [{ http = "http://10.0.0.5/health", status = 200, within = "30s" }, { verify = true }]
//! ```
//!
//! Every error names the file, the line and the stage.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct PlanError {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Halt,
    Continue,
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAction {
    Restore,
    Restart,
    Verify,
}

impl StepAction {
    pub fn as_str(self) -> &'static str {
        match self {
            StepAction::Restore => "restore",
            StepAction::Restart => "restart",
            StepAction::Verify => "verify",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallel {
    Count(usize),
    Percent(u8),
}

impl Parallel {
    /// How many of `hosts` may run at once.
    pub fn of(self, hosts: usize) -> usize {
        match self {
            Parallel::Count(n) => n.max(1),
            Parallel::Percent(p) => (hosts * p as usize).div_ceil(100).max(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// GET `url` until it answers `status` (and contains `body`), within `within`.
    Http {
        url: String,
        status: u16,
        body: Option<String>,
        within: Duration,
    },
    /// Every step's plugin `verify` against the release's snapshot.
    Verify,
    /// A smoke check: the `verify` of a named target on a named agent (e.g.
    /// a `command` target running `pytest -m smoke`), against the release's
    /// snapshot of that target.
    Target { agent: String, target: String },
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookWhen {
    /// Ahead of the first stage; a failure stops the run before anything changes.
    Before,
    /// Once every stage passed.
    After,
    /// Always at the end: after success, failure or cancel.
    Finally,
}

impl HookWhen {
    pub fn as_str(self) -> &'static str {
        match self {
            HookWhen::Before => "before",
            HookWhen::After => "after",
            HookWhen::Finally => "finally",
        }
    }
}

/// An HTTP call the coordinator makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body, with `{{run}}`, `{{release}}`, `{{plan}}`, `{{verdict}}`
    /// and `{{started_by}}` replaced (escaped for a JSON string).
    pub body: Option<String>,
    /// The name of a secret of the coordinator's `[plans] secrets` (a file)
    /// sent as `Authorization: Bearer`.
    pub token_secret: Option<String>,
    /// The name of a CA of the coordinator's `[plans] cas` to trust for an
    /// https:// URL instead of the public roots.
    pub ca: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookCall {
    Http(HttpCall),
    /// An action of a target on an agent: `restart` with parts, or `verify`
    /// against the release's snapshot.
    Agent {
        agent: String,
        target: String,
        action: StepAction,
        parts: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub line: usize,
    pub when: HookWhen,
    pub call: HookCall,
    /// Further tries after a failed one.
    pub retries: u32,
    /// Per try.
    pub timeout: Duration,
    /// A failure is reported but does not fail the run.
    pub optional: bool,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub line: usize,
    pub select: BTreeMap<String, String>,
    pub select_line: usize,
    pub target: String,
    pub target_line: usize,
    pub action: StepAction,
    pub after: Vec<String>,
    pub max_parallel: Parallel,
    pub canary: usize,
    pub timeout: Duration,
    pub on_failure: OnFailure,
    pub health: Vec<Gate>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub path: String,
    pub name: String,
    /// The environment the plan is for (`env = "production"`), and its
    /// line: its agents are those whose `env` label says so.
    pub env: Option<(String, usize)>,
    pub stages: Vec<Stage>,
    pub hooks: Vec<Hook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: Option<String>,
    env: Option<Spanned<String>>,
    #[serde(rename = "stage", default)]
    stages: Vec<Spanned<RawStage>>,
    #[serde(rename = "hook", default)]
    hooks: Vec<Spanned<RawHook>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    name: Spanned<String>,
    when: Spanned<String>,
    http: Option<Spanned<RawHttp>>,
    agent: Option<Spanned<String>>,
    target: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    #[serde(default)]
    parts: Vec<String>,
    retries: Option<u32>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    optional: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    token_secret: Option<String>,
    ca: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: Spanned<String>,
    select: Option<Spanned<BTreeMap<String, String>>>,
    target: Spanned<String>,
    action: Option<Spanned<String>>,
    #[serde(default)]
    after: Vec<Spanned<String>>,
    max_parallel: Option<Spanned<RawParallel>>,
    canary: Option<usize>,
    timeout: Option<Spanned<String>>,
    on_failure: Option<Spanned<String>>,
    #[serde(default)]
    health: Vec<Spanned<RawGate>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawParallel {
    Count(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    http: Option<String>,
    status: Option<u16>,
    body: Option<String>,
    within: Option<String>,
    verify: Option<RawVerify>,
    agent: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawVerify {
    Steps(bool),
    Target(String),
}

struct Source<'a> {
    path: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn error(&self, span: &Range<usize>, message: String) -> PlanError {
        PlanError {
            path: self.path.to_string(),
            line: Some(self.line(span)),
            message,
        }
    }
}

fn duration(
    source: &Source,
    span: &Range<usize>,
    whose: &str,
    key: &str,
    text: &str,
) -> Result<Duration, PlanError> {
    humantime::parse_duration(text).map_err(|e| {
        source.error(
            span,
            format!("{whose}: {key} `{text}` is not a duration ({e}; e.g. 30s, 5m)"),
        )
    })
}

/// Parse and check a plan (structure, durations, `after` references, cycles).
pub fn parse(text: &str, path: &str) -> Result<Plan, PlanError> {
    let source = Source { path, text };
    let raw: RawPlan = toml::from_str(text).map_err(|e| PlanError {
        path: path.to_string(),
        line: e.span().map(|s| source.line(&s)),
        message: e.message().to_string(),
    })?;
    if raw.stages.is_empty() {
        return Err(PlanError {
            path: path.into(),
            line: None,
            message: "the plan has no [[stage]]".into(),
        });
    }
    let mut stages = Vec::new();
    let mut names = BTreeSet::new();
    for spanned in &raw.stages {
        let raw_stage = spanned.get_ref();
        let name = raw_stage.name.get_ref().clone();
        let here = raw_stage.name.span();
        if !names.insert(name.clone()) {
            return Err(source.error(
                &here,
                format!("stage {name}: a stage with this name already exists"),
            ));
        }
        let action = match raw_stage
            .action
            .as_ref()
            .map(|a| (a.get_ref().as_str(), a.span()))
        {
            None | Some(("restore", _)) => StepAction::Restore,
            Some(("restart", _)) => StepAction::Restart,
            Some(("verify", _)) => StepAction::Verify,
            Some((other, span)) => {
                return Err(source.error(
                    &span,
                    format!("stage {name}: action `{other}` is not restore, restart or verify"),
                ));
            }
        };
        let on_failure = match raw_stage
            .on_failure
            .as_ref()
            .map(|a| (a.get_ref().as_str(), a.span()))
        {
            None | Some(("halt", _)) => OnFailure::Halt,
            Some(("continue", _)) => OnFailure::Continue,
            Some(("pause", _)) => OnFailure::Pause,
            Some((other, span)) => {
                return Err(source.error(
                    &span,
                    format!("stage {name}: on_failure `{other}` is not halt, continue or pause"),
                ));
            }
        };
        let max_parallel = match &raw_stage.max_parallel {
            None => Parallel::Percent(100),
            Some(spanned) => {
                let bad = |what: String| {
                    source.error(
                        &spanned.span(),
                        format!("stage {name}: max_parallel {what}"),
                    )
                };
                match spanned.get_ref() {
                    RawParallel::Count(n) if *n >= 1 => Parallel::Count(*n as usize),
                    RawParallel::Count(n) => return Err(bad(format!("{n} must be at least 1"))),
                    RawParallel::Text(t) => match t
                        .strip_suffix('%')
                        .and_then(|p| p.trim().parse::<u8>().ok())
                    {
                        Some(p) if (1..=100).contains(&p) => Parallel::Percent(p),
                        _ => {
                            return Err(bad(format!(
                                "`{t}` is not a count or a percentage such as \"25%\""
                            )));
                        }
                    },
                }
            }
        };
        let timeout = match &raw_stage.timeout {
            Some(t) => duration(
                &source,
                &t.span(),
                &format!("stage {name}"),
                "timeout",
                t.get_ref(),
            )?,
            None => DEFAULT_STEP_TIMEOUT,
        };
        let mut health = Vec::new();
        for gate in &raw_stage.health {
            let span = gate.span();
            let g = gate.get_ref();
            let plain = g.status.is_none() && g.body.is_none() && g.within.is_none();
            match (&g.http, &g.verify) {
                (Some(url), None) if g.agent.is_none() => {
                    if !url.starts_with("http://") {
                        return Err(source.error(
                            &span,
                            format!("stage {name}: health http `{url}` must be an http:// URL"),
                        ));
                    }
                    let within = match &g.within {
                        Some(w) => {
                            duration(&source, &span, &format!("stage {name}"), "health within", w)?
                        }
                        None => Duration::from_secs(30),
                    };
                    health.push(Gate::Http {
                        url: url.clone(),
                        status: g.status.unwrap_or(200),
                        body: g.body.clone(),
                        within,
                    });
                }
                (None, Some(RawVerify::Steps(true))) if plain && g.agent.is_none() => {
                    health.push(Gate::Verify)
                }
                (None, Some(RawVerify::Target(target))) if plain => {
                    let Some(agent) = &g.agent else {
                        return Err(source.error(
                            &span,
                            format!("stage {name}: the smoke check {{ verify = \"{target}\" }} needs `agent`, the host whose target runs it"),
                        ));
                    };
                    health.push(Gate::Target {
                        agent: agent.clone(),
                        target: target.clone(),
                    })
                }
                _ => {
                    return Err(source.error(
                        &span,
                        format!("stage {name}: a health gate is {{ http = \"http://...\", status, body, within }}, {{ verify = true }} (every step's target) or {{ verify = \"<target>\", agent = \"<agent>\" }} (a smoke check)"),
                    ));
                }
            }
        }
        stages.push(Stage {
            line: source.line(&spanned.span()),
            select: raw_stage
                .select
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default(),
            select_line: raw_stage
                .select
                .as_ref()
                .map_or(source.line(&here), |s| source.line(&s.span())),
            target: raw_stage.target.get_ref().clone(),
            target_line: source.line(&raw_stage.target.span()),
            action,
            after: raw_stage
                .after
                .iter()
                .map(|a| a.get_ref().clone())
                .collect(),
            max_parallel,
            canary: raw_stage.canary.unwrap_or(0),
            timeout,
            on_failure,
            health,
            name,
        });
    }
    for (stage, raw_stage) in stages.iter().zip(&raw.stages) {
        for after in &raw_stage.get_ref().after {
            if !names.contains(after.get_ref()) {
                return Err(source.error(
                    &after.span(),
                    format!(
                        "stage {}: `after` names unknown stage `{}` (stages: {})",
                        stage.name,
                        after.get_ref(),
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&stages) {
        let first = &stages
            .iter()
            .find(|s| s.name == cycle[0])
            .map_or(0, |s| s.line);
        return Err(PlanError {
            path: path.to_string(),
            line: Some(*first),
            message: format!(
                "stage {}: the stages' `after` form a cycle: {}",
                cycle[0],
                cycle.join(" -> ")
            ),
        });
    }
    let hooks = hooks(&source, &raw.hooks)?;
    let env = match raw.env {
        Some(env) if env.get_ref().trim().is_empty() => {
            return Err(source.error(&env.span(), "env is empty: name an environment".into()));
        }
        Some(env) => Some((env.get_ref().clone(), source.line(&env.span()))),
        None => None,
    };
    Ok(Plan {
        path: path.to_string(),
        name: raw.name.unwrap_or_else(|| path.to_string()),
        env,
        stages,
        hooks,
    })
}

fn hooks(source: &Source, raw: &[Spanned<RawHook>]) -> Result<Vec<Hook>, PlanError> {
    let mut hooks: Vec<Hook> = Vec::new();
    for spanned in raw {
        let raw_hook = spanned.get_ref();
        let name = raw_hook.name.get_ref().clone();
        let here = spanned.span();
        let error = |span: &Range<usize>, message: String| {
            source.error(span, format!("hook {name}: {message}"))
        };
        if hooks.iter().any(|h| h.name == name) {
            return Err(error(
                &raw_hook.name.span(),
                "a hook with this name already exists".into(),
            ));
        }
        let when = match raw_hook.when.get_ref().as_str() {
            "before" => HookWhen::Before,
            "after" => HookWhen::After,
            "finally" => HookWhen::Finally,
            other => {
                return Err(error(
                    &raw_hook.when.span(),
                    format!("when `{other}` is not before, after or finally"),
                ));
            }
        };
        let call = match (&raw_hook.http, &raw_hook.agent, &raw_hook.target) {
            (Some(http), None, None) if raw_hook.action.is_none() && raw_hook.parts.is_empty() => {
                let raw_http = http.get_ref();
                let url = raw_http.url.clone();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(error(
                        &http.span(),
                        format!("url `{url}` must be an http:// or https:// URL"),
                    ));
                }
                if let Err(e) = url.parse::<hyper::Uri>() {
                    return Err(error(&http.span(), format!("url `{url}`: {e}")));
                }
                let method = raw_http
                    .method
                    .clone()
                    .unwrap_or_else(|| "POST".into())
                    .to_ascii_uppercase();
                if hyper::Method::from_bytes(method.as_bytes()).is_err() {
                    return Err(error(
                        &http.span(),
                        format!("method `{method}` is not an HTTP method"),
                    ));
                }
                for (header, value) in &raw_http.headers {
                    if hyper::header::HeaderName::from_bytes(header.as_bytes()).is_err()
                        || hyper::header::HeaderValue::from_str(value).is_err()
                    {
                        return Err(error(
                            &http.span(),
                            format!("header `{header}` is not a valid HTTP header name and value"),
                        ));
                    }
                }
                for (key, value) in [
                    ("token_secret", &raw_http.token_secret),
                    ("ca", &raw_http.ca),
                ] {
                    if let Some(value) = value
                        && (value.is_empty() || value.contains(['/', '\\', ' ']))
                    {
                        return Err(error(
                            &http.span(),
                            format!(
                                "{key} `{value}` must be a name from the coordinator's [plans] {}, \
                                 not a path: a plan names what the coordinator's configuration \
                                 lets it use",
                                if key == "ca" { "cas" } else { "secrets" }
                            ),
                        ));
                    }
                }
                HookCall::Http(HttpCall {
                    method,
                    url,
                    headers: raw_http
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    body: raw_http.body.clone(),
                    token_secret: raw_http.token_secret.clone(),
                    ca: raw_http.ca.clone(),
                })
            }
            (None, Some(agent), Some(target)) => {
                let action = match raw_hook
                    .action
                    .as_ref()
                    .map(|a| (a.get_ref().as_str(), a.span()))
                {
                    None | Some(("restart", _)) => StepAction::Restart,
                    Some(("verify", _)) if raw_hook.parts.is_empty() => StepAction::Verify,
                    Some(("verify", span)) => {
                        return Err(error(&span, "`parts` go with action restart only".into()));
                    }
                    Some((other, span)) => {
                        return Err(error(
                            &span,
                            format!(
                                "action `{other}` is not restart or verify (a hook changes no release)"
                            ),
                        ));
                    }
                };
                HookCall::Agent {
                    agent: agent.get_ref().clone(),
                    target: target.get_ref().clone(),
                    action,
                    parts: raw_hook.parts.clone(),
                }
            }
            _ => {
                return Err(error(
                    &here,
                    "a hook is either http = { url = \"https://...\", method, headers, body, token_secret } or agent = \"<agent>\" with target = \"<target>\" (and action, parts)".into(),
                ));
            }
        };
        let timeout = match &raw_hook.timeout {
            Some(t) => duration(
                source,
                &t.span(),
                &format!("hook {name}"),
                "timeout",
                t.get_ref(),
            )?,
            None => Duration::from_secs(30),
        };
        hooks.push(Hook {
            line: source.line(&here),
            when,
            call,
            retries: raw_hook.retries.unwrap_or(2),
            timeout,
            optional: raw_hook.optional,
            name,
        });
    }
    Ok(hooks)
}

/// A cycle in the `after` graph, as stage names from its first stage back to it.
fn find_cycle(stages: &[Stage]) -> Option<Vec<String>> {
    fn visit<'a>(
        name: &'a str,
        stages: &'a [Stage],
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| *n == name) {
            let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(name.to_string());
            return Some(cycle);
        }
        if done.contains(name) {
            return None;
        }
        path.push(name);
        let stage = stages.iter().find(|s| s.name == name)?;
        for after in &stage.after {
            if let Some(cycle) = visit(after, stages, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(name);
        None
    }
    let mut done = BTreeSet::new();
    stages
        .iter()
        .find_map(|s| visit(&s.name, stages, &mut Vec::new(), &mut done))
}

/// An agent as plans see it: its labels and the targets it declares.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub targets: Vec<String>,
}

/// One step of a resolved plan: an action on a target of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    pub agent: String,
    pub target: String,
}

impl Plan {
    /// Whether every URL the plan's hooks and gates call is among the
    /// coordinator's `[plans] destinations`, and every secret and CA it
    /// names is among `[plans] secrets` and `cas`.
    pub fn check_access(&self, access: &crate::config::PlanAccess) -> Result<(), PlanError> {
        let error = |line: usize, message: String| PlanError {
            path: self.path.clone(),
            line: Some(line),
            message,
        };
        for stage in &self.stages {
            for gate in &stage.health {
                if let Gate::Http { url, .. } = gate {
                    access.check_url(url).map_err(|e| {
                        error(
                            stage.line,
                            format!("stage {}: health gate: {e}", stage.name),
                        )
                    })?;
                }
            }
        }
        for hook in &self.hooks {
            let HookCall::Http(call) = &hook.call else {
                continue;
            };
            let here = |e: String| error(hook.line, format!("hook {}: {e}", hook.name));
            access.check_url(&call.url).map_err(here)?;
            if let Some(name) = &call.token_secret {
                access.named("secret", name).map_err(here)?;
            }
            if let Some(name) = &call.ca {
                access.named("ca", name).map_err(here)?;
            }
        }
        Ok(())
    }

    /// The agents the plan names itself (smoke checks, agent hooks): the
    /// agent, the line, and what names it.
    pub fn named_agents(&self) -> Vec<(&str, usize, String)> {
        let mut named = Vec::new();
        for stage in &self.stages {
            for gate in &stage.health {
                if let Gate::Target { agent, .. } = gate {
                    named.push((
                        agent.as_str(),
                        stage.line,
                        format!("stage {}: smoke check", stage.name),
                    ));
                }
            }
        }
        for hook in &self.hooks {
            if let HookCall::Agent { agent, .. } = &hook.call {
                named.push((agent.as_str(), hook.line, format!("hook {}", hook.name)));
            }
        }
        named
    }

    /// Where the plan itself says it acts outside environment `env`: its
    /// own `env`, or a stage's selector of another `env` label.
    pub fn outside(&self, env: &str) -> Option<(usize, String)> {
        if let Some((own, line)) = &self.env
            && own != env
        {
            return Some((*line, format!("the plan is for environment {own}")));
        }
        self.stages.iter().find_map(|stage| {
            stage.select.get("env").filter(|e| *e != env).map(|e| {
                (
                    stage.select_line,
                    format!("stage {} selects agents of environment {e}", stage.name),
                )
            })
        })
    }

    /// The steps of each stage on this fleet; errors name the stage's line.
    pub fn resolve(&self, agents: &[AgentView]) -> Result<Vec<Vec<StepPlan>>, PlanError> {
        let error = |line: usize, message: String| PlanError {
            path: self.path.clone(),
            line: Some(line),
            message,
        };
        let mut resolved = Vec::new();
        for stage in &self.stages {
            let matching: Vec<&AgentView> = agents
                .iter()
                .filter(|a| stage.select.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
                .collect();
            if matching.is_empty() {
                return Err(error(
                    stage.select_line,
                    format!(
                        "stage {}: the selector {} matches no agent (agents: {})",
                        stage.name,
                        selector_text(&stage.select),
                        if agents.is_empty() {
                            "none".to_string()
                        } else {
                            agents
                                .iter()
                                .map(|a| a.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
            let lacking: Vec<&str> = matching
                .iter()
                .filter(|a| !a.targets.contains(&stage.target))
                .map(|a| a.name.as_str())
                .collect();
            if !lacking.is_empty() {
                return Err(error(
                    stage.target_line,
                    format!(
                        "stage {}: target `{}` is unknown on {} (matched by {})",
                        stage.name,
                        stage.target,
                        lacking.join(", "),
                        selector_text(&stage.select)
                    ),
                ));
            }
            let mut steps: Vec<StepPlan> = matching
                .iter()
                .map(|a| StepPlan {
                    agent: a.name.clone(),
                    target: stage.target.clone(),
                })
                .collect();
            steps.sort_by(|a, b| a.agent.cmp(&b.agent));
            resolved.push(steps);
        }
        // Smoke checks and agent hooks name their agent and target: both must exist.
        let named = |agent: &str, target: &str, line: usize, what: String| match agents
            .iter()
            .find(|a| a.name == agent)
        {
            None => Err(error(
                line,
                format!("{what}: agent `{agent}` is not in the fleet"),
            )),
            Some(a) if !a.targets.iter().any(|t| t == target) => Err(error(
                line,
                format!(
                    "{what}: target `{target}` is unknown on {agent} (its targets: {})",
                    a.targets.join(", ")
                ),
            )),
            Some(_) => Ok(()),
        };
        for stage in &self.stages {
            for gate in &stage.health {
                if let Gate::Target { agent, target } = gate {
                    named(
                        agent,
                        target,
                        stage.line,
                        format!("stage {}: smoke check", stage.name),
                    )?;
                }
            }
        }
        for hook in &self.hooks {
            if let HookCall::Agent { agent, target, .. } = &hook.call {
                named(agent, target, hook.line, format!("hook {}", hook.name))?;
            }
        }
        Ok(resolved)
    }
}

pub fn selector_text(select: &BTreeMap<String, String>) -> String {
    if select.is_empty() {
        return "{} (every agent)".to_string();
    }
    let pairs: Vec<String> = select
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\""))
        .collect();
    format!("{{ {} }}", pairs.join(", "))
}

#[cfg(test)]
mod tests;
