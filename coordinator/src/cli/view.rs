//! What the operator sees: the preview before a rollback, the live view
//! while it runs (a redrawn table on a terminal, plain lines otherwise), and
//! the report at the end.

use crate::vocabulary::EventKind;
use rewind_proto::v1::{HookReport, PreviewReply, Risk, RunEvent, RunReport, StepPreview};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

pub fn risk_name(risk: i32) -> &'static str {
    match Risk::try_from(risk).unwrap_or(Risk::None) {
        Risk::None => "none",
        Risk::Restart => "restart",
        Risk::Downtime => "downtime",
        Risk::DataLoss => "DATA LOSS",
    }
}

/// Print a preview; returns how many steps would change something.
/// The most lines of a change's detail the preview prints.
const DETAIL_LINES: usize = 40;

pub fn print_preview(
    preview: &PreviewReply,
    release: &str,
    out: &mut impl Write,
) -> std::io::Result<usize> {
    let mut changing = 0;
    let mut envs: Vec<&str> = preview
        .stages
        .iter()
        .flat_map(|s| &s.steps)
        .map(|s| s.env.as_str())
        .filter(|e| !e.is_empty())
        .collect();
    envs.sort_unstable();
    envs.dedup();
    writeln!(
        out,
        "preview of the rollback to {release}{} (overall risk: {})",
        if envs.is_empty() {
            String::new()
        } else {
            format!(" in environment {}", envs.join(", "))
        },
        risk_name(preview.risk)
    )?;
    for stage in &preview.stages {
        let after = if stage.after.is_empty() {
            String::new()
        } else {
            format!(" (after {})", stage.after.join(", "))
        };
        writeln!(out, "stage {}{after}", stage.stage)?;
        for step in &stage.steps {
            let host = host(&step.agent, &step.env);
            let step = StepPreview {
                agent: host,
                ..step.clone()
            };
            match (&step.preview, &step.error) {
                (_, Some(error)) => writeln!(
                    out,
                    "  {} {}: cannot preview: {}: {}",
                    step.agent, step.target, error.kind, error.message
                )?,
                (Some(preview), None) if preview.changes.is_empty() => writeln!(
                    out,
                    "  {} {}: {} (nothing to change)",
                    step.agent, step.target, step.action
                )?,
                (Some(preview), None) => {
                    changing += 1;
                    let window = preview
                        .data_loss_window_seconds
                        .map(|w| {
                            format!(
                                ", loses data written in the last {}",
                                humantime::format_duration(Duration::from_secs(w))
                            )
                        })
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "  {} {}: {} change(s), risk {}{window}",
                        step.agent,
                        step.target,
                        preview.changes.len(),
                        risk_name(preview.risk)
                    )?;
                    for change in &preview.changes {
                        writeln!(
                            out,
                            "    {}: {} [{}]",
                            change.subject,
                            change.summary,
                            risk_name(change.risk)
                        )?;
                        // The detail (a diff, the SQL of a migration), cut for the terminal.
                        {
                            let lines: Vec<&str> = change.detail.lines().collect();
                            for line in lines.iter().take(DETAIL_LINES) {
                                writeln!(out, "      | {line}")?;
                            }
                            if lines.len() > DETAIL_LINES {
                                writeln!(
                                    out,
                                    "      | ... ({} more lines)",
                                    lines.len() - DETAIL_LINES
                                )?;
                            }
                        }
                    }
                }
                (None, None) => writeln!(out, "  {} {}: no preview", step.agent, step.target)?,
            }
        }
    }
    Ok(changing)
}

/// A host as previews and reports name it: with its environment, if any.
fn host(agent: &str, env: &str) -> String {
    if env.is_empty() {
        agent.to_string()
    } else {
        format!("{agent} ({env})")
    }
}

#[derive(Default)]
struct HostLine {
    status: String,
    message: String,
}

/// The live view of one run, fed with its events.
pub struct LiveView {
    terminal: bool,
    stages: Vec<(String, String)>,
    hosts: BTreeMap<(String, String), HostLine>,
    drawn_lines: usize,
}

impl LiveView {
    pub fn new(terminal: bool) -> LiveView {
        LiveView {
            terminal,
            stages: Vec::new(),
            hosts: BTreeMap::new(),
            drawn_lines: 0,
        }
    }

    fn stage_mut(&mut self, name: &str) -> &mut String {
        if let Some(i) = self.stages.iter().position(|(n, _)| n == name) {
            return &mut self.stages[i].1;
        }
        self.stages.push((name.to_string(), "waiting".into()));
        &mut self.stages.last_mut().expect("just pushed").1
    }

    pub fn event(&mut self, event: &RunEvent, out: &mut impl Write) -> std::io::Result<()> {
        let host_key = (
            event.stage.clone(),
            format!("{} {}", event.agent, event.target),
        );
        match EventKind::parse(&event.kind) {
            Some(EventKind::StageStarted) => *self.stage_mut(&event.stage) = "running".into(),
            Some(EventKind::StageSucceeded) => *self.stage_mut(&event.stage) = "succeeded".into(),
            Some(EventKind::StageFailed) => *self.stage_mut(&event.stage) = "FAILED".into(),
            Some(EventKind::RunPaused) => *self.stage_mut(&event.stage) = "PAUSED".into(),
            Some(EventKind::HealthPassed) => *self.stage_mut(&event.stage) = "healthy".into(),
            Some(EventKind::StepSent) => {
                self.stage_mut(&event.stage);
                self.hosts.insert(
                    host_key.clone(),
                    HostLine {
                        status: "running".into(),
                        message: String::new(),
                    },
                );
            }
            Some(EventKind::StepProgress) => {
                self.hosts.entry(host_key.clone()).or_default().message = event.message.clone()
            }
            Some(EventKind::StepSucceeded) => {
                *self.hosts.entry(host_key.clone()).or_default() = HostLine {
                    status: "done".into(),
                    message: event.message.clone(),
                }
            }
            Some(EventKind::StepFailed) => {
                *self.hosts.entry(host_key.clone()).or_default() = HostLine {
                    status: "FAILED".into(),
                    message: event.message.clone(),
                }
            }
            _ => {}
        }
        if self.terminal {
            self.redraw(out)
        } else {
            plain_line(event, out)
        }
    }

    fn redraw(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.drawn_lines > 0 {
            write!(out, "\x1b[{}F\x1b[J", self.drawn_lines)?;
        }
        let mut lines = 0;
        for (stage, status) in &self.stages {
            writeln!(out, "{stage:<12} {status}")?;
            lines += 1;
            for ((host_stage, host), line) in &self.hosts {
                if host_stage == stage {
                    let message: String = line.message.chars().take(70).collect();
                    writeln!(out, "  {host:<28} {:<8} {message}", line.status)?;
                    lines += 1;
                }
            }
        }
        self.drawn_lines = lines;
        out.flush()
    }
}

fn clock(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        unix_ms % 1000
    )
}

fn plain_line(event: &RunEvent, out: &mut impl Write) -> std::io::Result<()> {
    let mut line = format!("{} {}", clock(event.unix_ms), event.kind);
    if !event.stage.is_empty() {
        line += &format!(" stage={}", event.stage);
    }
    if !event.agent.is_empty() {
        line += &format!(" host={} target={}", event.agent, event.target);
    }
    if !event.message.is_empty() {
        line += &format!(": {}", event.message);
    }
    writeln!(out, "{line}")
}

fn seconds(from: u64, to: u64) -> String {
    if from == 0 || to < from {
        return "-".into();
    }
    format!("{:.1}s", (to - from) as f64 / 1000.0)
}

/// The report at the end of a run.
pub fn print_report(report: &RunReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "run {} {} in {} (plan {}, release {}{}, started by {})",
        report.run_id,
        report.status,
        seconds(report.started_ms, report.finished_ms),
        report.plan,
        report.release,
        if report.env.is_empty() {
            String::new()
        } else {
            format!(", environment {}", report.env)
        },
        report.started_by
    )?;
    // One column for the names of hooks and stages.
    let width = report
        .hooks
        .iter()
        .map(|h| h.name.len())
        .chain(report.stages.iter().map(|s| s.name.len()))
        .max()
        .unwrap_or(0)
        .max(12);
    let hook_line = |hook: &HookReport| {
        let answer = hook.answer.lines().next().unwrap_or("");
        format!(
            "  hook  {:<width$} {:<10} {:>7}  {}{}",
            hook.name,
            hook.status,
            seconds(hook.started_ms, hook.finished_ms),
            hook.phase,
            if answer.is_empty() {
                String::new()
            } else {
                format!(": {answer}")
            }
        )
    };
    for hook in report.hooks.iter().filter(|h| h.phase == "before") {
        writeln!(out, "{}", hook_line(hook))?;
    }
    for stage in &report.stages {
        let hosts = report
            .steps
            .iter()
            .filter(|s| s.stage == stage.name)
            .count();
        writeln!(
            out,
            "  stage {:<width$} {:<10} {:>7}  {hosts} host(s)",
            stage.name,
            stage.status,
            seconds(stage.started_ms, stage.finished_ms)
        )?;
    }
    for hook in report.hooks.iter().filter(|h| h.phase != "before") {
        writeln!(out, "{}", hook_line(hook))?;
    }
    if report.status != "succeeded" && !report.steps.is_empty() {
        // Where each host was left: what changed, what failed, what never started.
        writeln!(out, "hosts:")?;
        let mut agents: Vec<(&str, &str)> = report
            .steps
            .iter()
            .map(|s| (s.agent.as_str(), s.env.as_str()))
            .collect();
        agents.sort_unstable();
        agents.dedup();
        for (agent, env) in agents {
            let states: Vec<String> = report
                .steps
                .iter()
                .filter(|s| s.agent == agent)
                .map(|s| {
                    let state = match s.status.as_str() {
                        "succeeded" if s.changed => format!("{} (changed)", s.action),
                        "succeeded" => format!("{}: already in place", s.action),
                        "failed" => format!(
                            "failed ({})",
                            s.error.as_ref().map_or("", |e| e.kind.as_str())
                        ),
                        "skipped" | "pending" => "not started".into(),
                        other => other.into(),
                    };
                    format!("{}/{} {state}", s.stage, s.target)
                })
                .collect();
            writeln!(out, "  {}: {}", host(agent, env), states.join("; "))?;
        }
    }
    if let Some(window) = report.data_loss_window_seconds {
        writeln!(
            out,
            "  data-loss window: data written in the {} before the release was lost",
            humantime::format_duration(Duration::from_secs(window))
        )?;
    }
    let failures: Vec<_> = report.steps.iter().filter(|s| s.error.is_some()).collect();
    if !failures.is_empty() {
        writeln!(out, "failures:")?;
        for step in failures {
            let error = step.error.as_ref().expect("filtered on error");
            writeln!(
                out,
                "  stage {} host {} target {}: {}: {}",
                step.stage,
                host(&step.agent, &step.env),
                step.target,
                error.kind,
                error.message
            )?;
        }
    }
    let failed_hooks: Vec<_> = report
        .hooks
        .iter()
        .filter(|h| h.status == "failed")
        .collect();
    if !failed_hooks.is_empty() {
        writeln!(out, "hook failures:")?;
        for hook in failed_hooks {
            writeln!(
                out,
                "  hook {} ({}): {}",
                hook.name, hook.phase, hook.answer
            )?;
        }
    }
    for step in report.steps.iter().filter(|s| !s.details.is_empty()) {
        writeln!(
            out,
            "{} on {} ({}):",
            step.target,
            host(&step.agent, &step.env),
            step.stage
        )?;
        for line in &step.details {
            writeln!(out, "  {line}")?;
        }
    }
    let skipped = report
        .steps
        .iter()
        .filter(|s| s.status == "skipped")
        .count();
    if skipped > 0 {
        writeln!(out, "  {skipped} step(s) skipped (not started)")?;
    }
    Ok(())
}
