//! The web view's pages, rendered on the server from the operator API's
//! replies (maud escapes every value). Pure functions of their input, so
//! the same reply always gives the same page.

use crate::cli::view::{print_report, risk_name};
use crate::drill::report::DrillReport;
use maud::{DOCTYPE, Markup, html};
use rewind_proto::v1::*;

/// Who is looking, and the token their page must send with an action.
pub struct Viewer<'a> {
    pub operator: &'a str,
    pub role: &'a str,
    pub token: &'a str,
}

impl Viewer<'_> {
    /// Whether the role may approve and cancel runs (the coordinator
    /// checks again).
    pub fn may_act(&self) -> bool {
        matches!(self.role, "operator" | "admin")
    }
}

/// A page: the navigation, who is looking, and the body.
pub fn layout(viewer: &Viewer, title: &str, active: &str, body: Markup) -> Markup {
    let nav = [
        ("fleet", "/fleet", "Fleet"),
        ("releases", "/releases", "Releases"),
        ("runs", "/runs", "Runs"),
        ("drills", "/drills", "Drills"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="rewind-token" content=(viewer.token);
                title { "rewind · " (title) }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "rewind" }
                    nav {
                        @for (key, href, label) in nav {
                            a href=(href) class=[(key == active).then_some("active")] { (label) }
                        }
                    }
                    span.who { (viewer.operator) " · " span.role { (viewer.role) } }
                }
                main {
                    h1 { (title) }
                    div #notice role="status" {}
                    (body)
                }
            }
        }
    }
}

/// A page that says what went wrong (a refusal, a missing run, the
/// coordinator unreachable).
pub fn error_page(viewer: &Viewer, title: &str, message: &str) -> Markup {
    layout(viewer, title, "", html! { p.error { (message) } })
}

/// Unix milliseconds as UTC, to the second; "-" for 0.
pub fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// How long from `from` to `to` (or to `now` while it goes on).
pub fn took(from: u64, to: u64, now: u64) -> String {
    let end = if to == 0 { now } else { to };
    if from == 0 || end < from {
        return "-".into();
    }
    format!("{:.1}s", (end - from) as f64 / 1000.0)
}

fn badge(status: &str) -> Markup {
    let class = match status {
        "succeeded" | "passed" | "connected" | "met" | "fresh" | "none" => "good",
        "failed" | "cancelled" | "aborted" | "offline" | "STALE" | "missed" | "data-loss" => "bad",
        "paused" | "skipped" | "downtime" | "restart" => "warn",
        _ => "busy",
    };
    html! { span class={ "badge " (class) } { (status) } }
}

pub fn fleet(viewer: &Viewer, reply: &FleetReply, now: u64) -> Markup {
    let mut agents: Vec<&AgentStatus> = reply.agents.iter().collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    let connected = agents.iter().filter(|a| a.connected).count();
    let body = html! {
        p.summary { (connected) " of " (agents.len()) " agent(s) connected" }
        table #agents {
            thead { tr { th { "Agent" } th { "State" } th { "Last seen" } th { "Labels" } th { "Targets (plugin, digest)" } } }
            tbody {
                @for agent in &agents {
                    tr data-agent=(agent.name) {
                        td.name { (agent.name) }
                        td { (badge(if agent.connected { "connected" } else { "offline" })) }
                        td title=(when(agent.last_seen_ms)) {
                            @if agent.connected { "now" } @else { (ago(agent.last_seen_ms, now)) }
                        }
                        td {
                            @for (key, value) in &agent.labels {
                                span.label { (key) "=" (value) }
                            }
                        }
                        td {
                            ul.targets {
                                @for target in &agent.targets {
                                    li {
                                        strong { (target.name) } " · " (target.plugin) " · "
                                        code title=(target.digest) { (short(&target.digest)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !reply.refused.is_empty() {
            h2 { "Refused from agents" }
            table {
                thead { tr { th { "Kind" } th { "Count" } } }
                tbody { @for (kind, count) in &reply.refused { tr { td { (kind) } td { (count) } } } }
            }
        }
    };
    layout(viewer, "Fleet", "fleet", body)
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn ago(ms: u64, now: u64) -> String {
    if ms == 0 || now < ms {
        return "never".into();
    }
    let seconds = (now - ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86400),
    }
}

pub fn releases(viewer: &Viewer, reply: &ListReleasesReply, plans: &[String]) -> Markup {
    let body = html! {
        @if viewer.may_act() {
            form.preview method="get" action="/preview" {
                input type="hidden" name="token" value=(viewer.token);
                label { "Preview plan " select name="plan" {
                    @for plan in plans { option value=(plan) { (plan) } }
                } }
                label { " against release " select name="release" {
                    @for release in &reply.releases { option value=(release.name) { (release.name) } }
                } }
                label { " in environment " input name="env" placeholder="the plan's" size="12"; }
                " " button type="submit" { "Preview" }
                @if plans.is_empty() { p.hint { "No plan files (*.toml) in the directory given to rewind ui --plans." } }
            }
        }
        @if reply.releases.is_empty() { p { "No releases yet: " code { "rewind checkpoint <release>" } } }
        @for release in &reply.releases {
            details.release {
                summary {
                    strong { (release.name) }
                    " · " (if release.env.is_empty() { "all environments" } else { &release.env })
                    " · " (when(release.created_ms))
                    " · " (release.snapshots.len()) " snapshot(s)"
                }
                table {
                    thead { tr { th { "Host" } th { "Target" } th { "Plugin" } th { "Snapshot" } th { "Digest" } } }
                    tbody {
                        @for s in &release.snapshots {
                            tr { td { (s.agent) } td { (s.target) } td { (s.plugin) } td { (s.summary) } td { code title=(s.digest) { (short(&s.digest)) } } }
                        }
                    }
                }
            }
        }
    };
    layout(viewer, "Releases", "releases", body)
}

pub fn preview(
    viewer: &Viewer,
    plan: &str,
    release: &str,
    env: &str,
    reply: &PreviewReply,
) -> Markup {
    let env_flag = if env.is_empty() {
        String::new()
    } else {
        format!(" --env {env}")
    };
    let body = html! {
        p.summary {
            "Plan " strong { (plan) } " to release " strong { (release) }
            @if !env.is_empty() { " in environment " strong { (env) } }
            ": highest risk " (badge(risk_name(reply.risk)))
        }
        p.hint { "Start it with " code { "rewind rollback " (plan) " --to " (release) (env_flag) } " (a rollback asks for its confirmations in the terminal)." }
        @for stage in &reply.stages {
            section.stage {
                h2 { "Stage " (stage.stage) @if !stage.after.is_empty() { span.after { " after " (stage.after.join(", ")) } } }
                table {
                    thead { tr { th { "Host" } th { "Environment" } th { "Target" } th { "Action" } th { "Risk" } th { "Changes" } } }
                    tbody {
                        @for step in &stage.steps {
                            tr {
                                td { (step.agent) } td { (step.env) } td { (step.target) } td { (step.action) }
                                td { (badge(step.preview.as_ref().map_or("none", |p| risk_name(p.risk)))) }
                                td {
                                    @if let Some(error) = &step.error { p.error { (error.kind) ": " (error.message) } }
                                    @if let Some(preview) = &step.preview {
                                        ul.changes {
                                            @for change in &preview.changes {
                                                li { strong { (change.subject) } ": " (change.summary) }
                                            }
                                        }
                                        @if let Some(window) = preview.data_loss_window_seconds {
                                            p.error { "loses data written in the last " (humantime::format_duration(std::time::Duration::from_secs(window))) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(viewer, "Preview", "releases", body)
}

pub fn history(viewer: &Viewer, reply: &HistoryReply, now: u64) -> Markup {
    let body = html! {
        @if reply.runs.is_empty() { p { "No runs yet." } }
        table #runs {
            thead { tr { th { "Run" } th { "Status" } th { "Took" } th { "Plan" } th { "Release" } th { "By" } th { "Started" } } }
            tbody {
                @for run in &reply.runs {
                    tr {
                        td { a href={ "/runs/" (run.run_id) } { (run.run_id) } }
                        td { (badge(&run.status)) }
                        td { (took(run.started_ms, run.finished_ms, now)) }
                        td { (run.plan) } td { (run.release) } td { (run.started_by) }
                        td { (when(run.started_ms)) }
                    }
                }
            }
        }
    };
    layout(viewer, "Runs", "runs", body)
}

/// A run's page: the live part (refreshed as events arrive) and the event log.
pub fn run(viewer: &Viewer, report: &RunReport, now: u64) -> Markup {
    let body = html! {
        p.summary {
            "Plan " strong { (report.plan) } " to release " strong { (report.release) }
            ", started by " (report.started_by) " at " (when(report.started_ms)) ". "
            a href={ "/runs/" (report.run_id) "/report" } { "Report" }
        }
        div #live data-run=(report.run_id) { (live(viewer, report, now)) }
        div.columns {
            section { h2 { "Gates" } ul #gates {} }
            section { h2 { "Events" } ol #events {} }
        }
    };
    layout(viewer, &format!("Run {}", report.run_id), "runs", body)
}

/// The part of a run's page that follows the run: its status, the actions
/// the viewer may take, the stages as a timeline, each host's steps.
pub fn live(viewer: &Viewer, report: &RunReport, now: u64) -> Markup {
    let ended = matches!(report.status.as_str(), "succeeded" | "failed" | "cancelled");
    html! {
        div.status data-status=(report.status) {
            "Status " (badge(&report.status)) " · " (took(report.started_ms, report.finished_ms, now))
            @if let Some(window) = report.data_loss_window_seconds {
                " · " span.error { "data-loss window " (humantime::format_duration(std::time::Duration::from_secs(window))) }
            }
            @if viewer.may_act() && !ended {
                span.actions {
                    @if report.status == "paused" {
                        button.approve data-action="approve" data-run=(report.run_id)
                            data-confirm={ "Resume run " (report.run_id) ", retrying the failed steps of the paused stage?" } { "Approve" }
                    }
                    button.cancel data-action="cancel" data-run=(report.run_id)
                        data-confirm={ "Cancel run " (report.run_id) "? Steps in flight finish; nothing new starts." } { "Cancel" }
                }
            }
        }
        (timeline(report, now))
        @for stage in &report.stages {
            section.stage data-stage=(stage.name) {
                h2 { "Stage " (stage.name) " " (badge(&stage.status)) " " span.took { (took(stage.started_ms, stage.finished_ms, now)) } }
                table.steps {
                    thead { tr { th { "Host" } th { "Target" } th { "Action" } th { "Status" } th { "Try" } th { "Took" } th { "Progress / outcome" } } }
                    tbody {
                        @for step in report.steps.iter().filter(|s| s.stage == stage.name) {
                            tr data-step=(step.step_id) data-status=(step.status) {
                                td { (step.agent) } td { (step.target) } td { (step.action) }
                                td { (badge(&step.status)) }
                                td { (step.attempt) }
                                td { (took(step.started_ms, step.finished_ms, now)) }
                                td.outcome {
                                    span.progress {}
                                    @if !step.summary.is_empty() { span.summary { (step.summary) } }
                                    @if let Some(error) = &step.error { p.error { (error.kind) ": " (error.message) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !report.hooks.is_empty() {
            section {
                h2 { "Hooks" }
                table {
                    thead { tr { th { "Hook" } th { "When" } th { "Status" } th { "Took" } th { "Answer" } } }
                    tbody { @for hook in &report.hooks {
                        tr { td { (hook.name) } td { (hook.phase) } td { (badge(&hook.status)) } td { (took(hook.started_ms, hook.finished_ms, now)) } td { (hook.answer) } }
                    } }
                }
            }
        }
    }
}

/// The stages as bars on one time axis, from the run's start to its end
/// (or now); a stage still going on reaches to now.
fn timeline(report: &RunReport, now: u64) -> Markup {
    let start = report.started_ms;
    let end = if report.finished_ms > 0 {
        report.finished_ms
    } else {
        now
    }
    .max(start + 1);
    let span = (end - start) as f64;
    let (label, width, row) = (120.0, 600.0, 26.0);
    let height = row * report.stages.len() as f64 + 24.0;
    let x = |ms: u64| label + width * (ms.saturating_sub(start) as f64 / span).clamp(0.0, 1.0);
    html! {
        svg.timeline viewBox={ "0 0 " (label + width + 10.0) " " (height) } role="img" aria-label="stage timeline" {
            @for (i, stage) in report.stages.iter().enumerate() {
                @let y = i as f64 * row + 4.0;
                text x="0" y=(y + 15.0) class="stage-name" { (stage.name) }
                rect x=(label) y=(y) width=(width) height=(row - 8.0) class="lane" {}
                @if stage.started_ms > 0 {
                    @let stop = if stage.finished_ms > 0 { stage.finished_ms } else { end };
                    rect x=(x(stage.started_ms)) y=(y) width=((x(stop) - x(stage.started_ms)).max(2.0)) height=(row - 8.0)
                        class={ "bar " (stage.status) } data-stage=(stage.name) {
                        title { (stage.name) ": " (stage.status) ", " (took(stage.started_ms, stage.finished_ms, now)) }
                    }
                }
            }
            text x=(label) y=(height - 4.0) class="axis" { "0s" }
            text x=(label + width) y=(height - 4.0) class="axis" text-anchor="end" { (format!("{:.1}s", span / 1000.0)) }
        }
    }
}

/// A run's report, as `rewind status` prints it, with tables to print.
pub fn report(viewer: &Viewer, report: &RunReport, now: u64) -> Markup {
    let mut text = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = print_report(report, &mut text);
    let body = html! {
        p.noprint { button data-action="print" { "Print" } " " a href={ "/runs/" (report.run_id) } { "Live view" } }
        table.facts {
            tr { th { "Run" } td { (report.run_id) } }
            tr { th { "Status" } td { (badge(&report.status)) } }
            tr { th { "Plan" } td { (report.plan) } }
            tr { th { "Release" } td { (report.release) } }
            tr { th { "Started by" } td { (report.started_by) } }
            tr { th { "Started" } td { (when(report.started_ms)) } }
            tr { th { "Finished" } td { (when(report.finished_ms)) } }
            tr { th { "Took" } td { (took(report.started_ms, report.finished_ms, now)) } }
        }
        h2 { "As " code { "rewind status " (report.run_id) } " prints it" }
        pre.report { (String::from_utf8_lossy(&text)) }
        h2 { "Steps" }
        table.steps {
            thead { tr { th { "Stage" } th { "Host" } th { "Target" } th { "Action" } th { "Status" } th { "Try" } th { "Took" } th { "Changed" } th { "Outcome" } } }
            tbody {
                @for step in &report.steps {
                    tr {
                        td { (step.stage) } td { (step.agent) } td { (step.target) } td { (step.action) }
                        td { (badge(&step.status)) } td { (step.attempt) }
                        td { (took(step.started_ms, step.finished_ms, now)) }
                        td { (if step.changed { "yes" } else { "no" }) }
                        td {
                            (step.summary)
                            @if let Some(error) = &step.error { p.error { (error.kind) ": " (error.message) } }
                            @for line in &step.details { br; code { (line) } }
                        }
                    }
                }
            }
        }
    };
    layout(
        viewer,
        &format!("Report of run {}", report.run_id),
        "runs",
        body,
    )
}

pub fn drills(viewer: &Viewer, reply: &ListDrillsReply, now: u64) -> Markup {
    let body = html! {
        @if reply.drills.is_empty() { p { "No drills: define them under [drills.<name>] in the coordinator's configuration (docs/drills.md)." } }
        table #drills {
            thead { tr { th { "Drill" } th { "Env" } th { "Schedule" } th { "Next run" } th { "Last verdict" } th { "Since last pass" } th { "Evidence" } th { "RTO target" } } }
            tbody {
                @for drill in &reply.drills {
                    tr {
                        td { a href={ "/drills/" (drill.name) } { (drill.name) } }
                        td { (drill.env) }
                        td { code { (drill.schedule) } " " (drill.time_zone) }
                        td { (when(drill.next_run_ms)) }
                        td {
                            @if drill.last_verdict.is_empty() { "never ran" } @else { (badge(&drill.last_verdict)) }
                            @if !drill.active_run_id.is_empty() { " (running " (drill.active_run_id) ")" }
                        }
                        td { (days_since(drill.last_pass_ms, now)) }
                        td { (badge(if drill.stale { "STALE" } else { "fresh" })) }
                        td { (seconds(drill.rto_target_ms)) }
                    }
                }
            }
        }
    };
    layout(viewer, "Drills", "drills", body)
}

fn days_since(ms: u64, now: u64) -> String {
    if ms == 0 {
        return "never passed".into();
    }
    match now.saturating_sub(ms) / 86_400_000 {
        0 => "today".into(),
        1 => "1 day ago".into(),
        days => format!("{days} days ago"),
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// A drill's history: its RTO over time against the target, and each run.
pub fn drill(
    viewer: &Viewer,
    name: &str,
    summary: Option<&DrillSummary>,
    runs: &[DrillRunSummary],
    now: u64,
) -> Markup {
    let body = html! {
        @if let Some(drill) = summary {
            p.summary {
                "Plan " strong { (drill.plan) } " on env " strong { (drill.env) }
                " · last pass " (days_since(drill.last_pass_ms, now)) " · "
                (badge(if drill.stale { "STALE" } else { "fresh" }))
                " · next run " (when(drill.next_run_ms))
            }
        }
        h2 { "RTO over time" }
        (rto_chart(runs, summary.map_or(0, |d| d.rto_target_ms)))
        h2 { "Runs" }
        table #drill-runs {
            thead { tr { th { "Run" } th { "Trigger" } th { "Verdict" } th { "Phase" } th { "Started" } th { "RTO" } th { "Target" } th { "Legs" } th { "Reason" } } }
            tbody {
                @for run in runs {
                    tr {
                        td { a href={ "/drills/" (name) "/runs/" (run.run_id) } { (run.run_id) } }
                        td { (run.trigger) }
                        td { (badge(&run.status)) @if run.slower { " " span.badge.warn { "slower" } } }
                        td { (run.phase) }
                        td { (when(run.started_ms)) }
                        td { (run.rto_ms.map(seconds).unwrap_or_else(|| "-".into())) }
                        td { (seconds(run.rto_target_ms)) }
                        td {
                            @if !run.back_run.is_empty() { a href={ "/runs/" (run.back_run) } { "back" } }
                            @if !run.forward_run.is_empty() { " " a href={ "/runs/" (run.forward_run) } { "forward" } }
                        }
                        td { (run.reason) }
                    }
                }
            }
        }
    };
    layout(viewer, &format!("Drill {name}"), "drills", body)
}

/// The measured RTO of each run that got that far, oldest first, as points
/// (coloured by verdict) against a dashed line at the target.
fn rto_chart(runs: &[DrillRunSummary], target_ms: u64) -> Markup {
    let mut points: Vec<&DrillRunSummary> = runs.iter().filter(|r| r.rto_ms.is_some()).collect();
    points.sort_by_key(|r| r.started_ms);
    if points.is_empty() {
        return html! { p.hint { "No drill run has finished rolling back yet." } };
    }
    let (left, width, height, top) = (50.0, 600.0, 180.0, 10.0);
    let highest = points
        .iter()
        .filter_map(|r| r.rto_ms)
        .chain([target_ms])
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    let y = |ms: u64| top + height - height * (ms as f64 / highest);
    let step = if points.len() > 1 {
        width / (points.len() - 1) as f64
    } else {
        0.0
    };
    let x = |i: usize| {
        left + if points.len() > 1 {
            step * i as f64
        } else {
            width / 2.0
        }
    };
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{:.1},{:.1}", x(i), y(r.rto_ms.unwrap_or(0))))
        .collect();
    html! {
        svg.chart #rto-chart viewBox={ "0 0 " (left + width + 20.0) " " (top + height + 30.0) } role="img" aria-label="RTO of each drill run against the target" {
            line x1=(left) y1=(top + height) x2=(left + width) y2=(top + height) class="axis-line" {}
            line x1=(left) y1=(top) x2=(left) y2=(top + height) class="axis-line" {}
            text x=(left - 6.0) y=(top + height) text-anchor="end" class="axis" { "0s" }
            text x=(left - 6.0) y=(top + 10.0) text-anchor="end" class="axis" { (format!("{:.0}s", highest / 1000.0)) }
            @if target_ms > 0 {
                line x1=(left) y1=(y(target_ms)) x2=(left + width) y2=(y(target_ms)) class="target" {}
                text x=(left + width) y=(y(target_ms) - 4.0) text-anchor="end" class="target-label" { "target " (seconds(target_ms)) }
            }
            polyline points=(line.join(" ")) class="rto-line" {}
            @for (i, run) in points.iter().enumerate() {
                circle cx=(x(i)) cy=(y(run.rto_ms.unwrap_or(0))) r="5" class={ "point " (run.status) } data-run=(run.run_id) {
                    title { (run.run_id) ": " (run.status) ", RTO " (seconds(run.rto_ms.unwrap_or(0))) }
                }
                @let anchor = if points.len() == 1 { "middle" } else if i == 0 { "start" } else if i + 1 == points.len() { "end" } else { "middle" };
                text x=(x(i)) y=(top + height + 18.0) text-anchor=(anchor) class="axis" { (when(run.started_ms).get(5..16).unwrap_or("")) }
            }
        }
    }
}

/// One drill run's report, as `rewind drill report --format md` gives it.
pub fn drill_report(viewer: &Viewer, report: &DrillReport) -> Markup {
    let body = html! {
        p.noprint { button data-action="print" { "Print" } " " a href={ "/drills/" (report.drill) } { "Drill history" } }
        p.summary { "Verdict " (badge(&report.status)) " · " (report.rto_line()) }
        pre.report { (report.to_markdown()) }
    };
    layout(
        viewer,
        &format!("Drill run {}", report.run_id),
        "drills",
        body,
    )
}
