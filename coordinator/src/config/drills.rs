//! `[drills.<name>]` of the coordinator's configuration: which plan is
//! rehearsed on which environment's agents, when (cron with seconds, a time
//! zone, blackout windows, a start deadline for missed runs), the RTO the
//! roll-back phase must meet, and how long a pass stays fresh.
//!
//! ```toml
//! [drills.staging-monthly]
//! plan = "plans/platform.toml"
//! env = "staging"
//! schedule = "0 0 3 1 * *"
//! time_zone = "Europe/Berlin"
//! blackouts = [{ cron = "0 0 18 * * FRI", length = "60h" }]
//! rto = "15m"
//! fresh_for = "35d"
//! ```

use super::{ConfigError, Source};
use crate::drill::schedule::{Blackout, Schedule};
use crate::plan::{self, Plan};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// How long a pass counts as evidence when the configuration does not say.
pub const DEFAULT_FRESH_FOR: Duration = Duration::from_secs(35 * 24 * 3600);
/// How late a missed occurrence may still start when the configuration does not say.
pub const DEFAULT_START_DEADLINE: Duration = Duration::from_secs(3600);

/// One drill, parsed and checked.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    pub name: String,
    /// The line of its `[drills.<name>]` table.
    pub line: usize,
    pub plan_path: PathBuf,
    /// The plan's text, frozen into each drill run (a resumed run keeps it).
    pub plan_toml: String,
    pub plan: Plan,
    /// The `env` label of the agents it rehearses on.
    pub env: String,
    pub pattern: String,
    pub time_zone: String,
    pub schedule: Schedule,
    /// The target for the roll-back phase.
    pub rto: Duration,
    pub fresh_for: Duration,
    /// Roll back to this release instead of the one before the checkpoint.
    pub to: Option<String>,
    /// Data-loss steps (database restores) may run in this drill.
    pub confirm_data_loss: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrill {
    plan: Spanned<PathBuf>,
    env: Spanned<String>,
    schedule: Spanned<String>,
    time_zone: Option<Spanned<String>>,
    #[serde(default)]
    blackouts: Vec<Spanned<RawBlackout>>,
    rto: Spanned<String>,
    fresh_for: Option<Spanned<String>>,
    start_deadline: Option<Spanned<String>>,
    to: Option<String>,
    #[serde(default)]
    confirm_data_loss: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlackout {
    cron: String,
    length: String,
}

pub(super) fn duration(
    source: &Source<'_>,
    value: &Spanned<String>,
    what: &str,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.get_ref()).map_err(|e| {
        source.error(
            value.span().start,
            format!(
                "{what} = \"{}\" is not a duration (e.g. \"15m\", \"35d\"): {e}",
                value.get_ref()
            ),
        )
    })
}

pub(super) fn parse(
    source: &Source<'_>,
    base: &Path,
    name: &str,
    spanned: &Spanned<RawDrill>,
    protected: &[&str],
    access: &super::PlanAccess,
) -> Result<DrillConfig, ConfigError> {
    let raw = spanned.get_ref();
    let line = source.line(spanned.span().start);
    let here = |span: std::ops::Range<usize>, message: String| {
        source.error(span.start, format!("drill {name}: {message}"))
    };
    let env = raw.env.get_ref().clone();
    if protected.contains(&env.as_str()) {
        return Err(here(
            raw.env.span(),
            format!(
                "environment {env} is protected: a drill really rolls its agents back and forward, so drills run on staging-like environments only"
            ),
        ));
    }
    if env.is_empty() {
        return Err(here(
            raw.env.span(),
            "env must name the environment (the agents' `env` label) to rehearse on".into(),
        ));
    }
    let plan_path = match raw.plan.get_ref() {
        p if p.is_absolute() => p.clone(),
        p => base.join(p),
    };
    let plan_toml = std::fs::read_to_string(&plan_path).map_err(|e| {
        here(
            raw.plan.span(),
            format!("cannot read the plan {}: {e}", plan_path.display()),
        )
    })?;
    let plan = plan::parse(&plan_toml, &plan_path.display().to_string())
        .map_err(|e| here(raw.plan.span(), format!("its plan does not parse: {e}")))?;
    plan.check_access(access).map_err(|e| {
        here(
            raw.plan.span(),
            format!("its plan reaches beyond [plans]: {e}"),
        )
    })?;
    if let Some((line, what)) = plan.outside(&env) {
        return Err(here(
            raw.plan.span(),
            format!(
                "{}:{line}: {what}, not the drill's environment {env}: a drill rehearses on \
                 its own environment's agents only",
                plan_path.display()
            ),
        ));
    }
    let mut blackouts = Vec::new();
    for b in &raw.blackouts {
        let length = humantime::parse_duration(&b.get_ref().length).map_err(|e| {
            here(
                b.span(),
                format!("blackout length `{}`: {e}", b.get_ref().length),
            )
        })?;
        blackouts.push(Blackout::parse(&b.get_ref().cron, length).map_err(|e| here(b.span(), e))?);
    }
    let start_deadline = match &raw.start_deadline {
        Some(v) => duration(source, v, &format!("drill {name}: start_deadline"))?,
        None => DEFAULT_START_DEADLINE,
    };
    let time_zone = raw
        .time_zone
        .as_ref()
        .map_or("UTC".to_string(), |t| t.get_ref().clone());
    let schedule = Schedule::parse(
        raw.schedule.get_ref(),
        &time_zone,
        blackouts,
        start_deadline,
    )
    .map_err(|e| {
        let span = match (&raw.time_zone, e.contains("time zone")) {
            (Some(tz), true) => tz.span(),
            _ => raw.schedule.span(),
        };
        here(span, e)
    })?;
    let rto = duration(source, &raw.rto, &format!("drill {name}: rto"))?;
    let fresh_for = match &raw.fresh_for {
        Some(v) => duration(source, v, &format!("drill {name}: fresh_for"))?,
        None => DEFAULT_FRESH_FOR,
    };
    if rto.is_zero() || fresh_for.is_zero() {
        return Err(here(
            spanned.span(),
            "rto and fresh_for must be more than 0".into(),
        ));
    }
    Ok(DrillConfig {
        name: name.to_string(),
        line,
        plan_path,
        plan_toml,
        plan,
        env,
        pattern: raw.schedule.get_ref().clone(),
        time_zone,
        schedule,
        rto,
        fresh_for,
        to: raw.to.clone(),
        confirm_data_loss: raw.confirm_data_loss,
    })
}
