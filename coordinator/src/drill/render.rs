//! A drill report rendered for people and tools: Markdown for the incident
//! or compliance folder, JUnit XML for CI dashboards, JSON for scripts.

use super::report::{DrillReport, seconds, span};
use std::fmt::Write as _;

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// The time of day (UTC) to the millisecond: the report's header has the date.
fn clock(ms: u64) -> String {
    let text = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
    )
    .to_string();
    text.get(11..23).unwrap_or(&text).to_string()
}

fn opt_clock(ms: Option<u64>) -> String {
    ms.map(clock).unwrap_or_else(|| "-".into())
}

fn opt_time(ms: Option<u64>) -> String {
    ms.map(time).unwrap_or_else(|| "-".into())
}

fn opt_seconds(ms: Option<u64>) -> String {
    ms.map(seconds).unwrap_or_else(|| "-".into())
}

/// A Markdown table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

impl DrillReport {
    pub fn rto_line(&self) -> String {
        let target =
            humantime::format_duration(std::time::Duration::from_millis(self.rto.target_ms));
        match (self.rto.measured_ms, self.rto.met) {
            (Some(m), Some(true)) => format!("{} (target {target}): met", seconds(m)),
            (Some(m), _) => format!("{} (target {target}): not met", seconds(m)),
            (None, _) => format!("not measured (target {target})"),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Drill {}: {}\n", self.drill, self.status);
        if !self.reason.is_empty() {
            let _ = writeln!(md, "> {}\n", cell(&self.reason));
        }
        if self.critical {
            let _ = writeln!(
                md,
                "> **Critical:** rolling forward failed; see where each host was left below.\n"
            );
        }
        let _ = writeln!(md, "| | |\n|---|---|");
        let rows = [
            ("Run", self.run_id.clone()),
            ("Trigger", self.trigger.clone()),
            ("Environment", self.env.clone()),
            ("Plan", format!("{} ({})", self.plan, self.plan_path)),
            ("Started", time(self.started_ms)),
            ("Finished", opt_time(self.finished_ms)),
            ("Checkpoint", self.checkpoint.clone()),
            ("Rolled back to", self.back_to.clone()),
            ("RTO", self.rto_line()),
        ];
        for (k, v) in rows {
            let _ = writeln!(md, "| {k} | {} |", cell(&v));
        }
        if let (Some(c), Some(rto)) = (&self.comparison, self.rto.measured_ms) {
            let _ = writeln!(md, "| Compared | {} |", cell(&c.sentence(rto)));
        }
        let _ = writeln!(md, "\n## Timeline\n");
        let _ = writeln!(
            md,
            "| Phase | Stage | Host | Target | Action | Status | Start (UTC) | End | Duration |\n|---|---|---|---|---|---|---|---|---|"
        );
        for p in &self.phases {
            let _ = writeln!(
                md,
                "| **{}** | | | | | {} | {} | {} | {} |",
                p.name,
                p.status,
                opt_clock(p.started_ms),
                opt_clock(p.finished_ms),
                opt_seconds(p.duration_ms)
            );
            for s in &p.stages {
                let _ = writeln!(
                    md,
                    "| | {} | | | | {} | {} | {} | {} |",
                    cell(&s.name),
                    s.status,
                    opt_clock(s.started_ms),
                    opt_clock(s.finished_ms),
                    opt_seconds(s.duration_ms)
                );
                for step in &s.steps {
                    let status = match &step.error {
                        Some(e) => format!("{}: {}", step.status, cell(e)),
                        None => step.status.clone(),
                    };
                    let _ = writeln!(
                        md,
                        "| | | {} | {} | {} | {} | {} | {} | {} |",
                        cell(&step.host),
                        cell(&step.target),
                        step.action,
                        status,
                        opt_clock(step.started_ms),
                        opt_clock(step.finished_ms),
                        opt_seconds(step.duration_ms)
                    );
                }
            }
            for h in &p.hooks {
                let _ = writeln!(
                    md,
                    "| | hook {} ({}) | | | | {} | | | {} |",
                    cell(&h.name),
                    h.when,
                    h.status,
                    opt_seconds(h.duration_ms)
                );
            }
        }
        let _ = writeln!(md, "\n## Data-loss windows\n");
        if self.data_loss.is_empty() {
            let _ = writeln!(md, "No data step lost data.");
        } else {
            let _ = writeln!(md, "| Stage | Host | Target | Window |\n|---|---|---|---|");
            for d in &self.data_loss {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    cell(&d.stage),
                    cell(&d.host),
                    cell(&d.target),
                    humantime::format_duration(std::time::Duration::from_secs(d.window_seconds))
                );
            }
        }
        let _ = writeln!(md, "\n## Where each host was left\n");
        let _ = writeln!(md, "| Host | Target | State |\n|---|---|---|");
        for h in &self.hosts {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                cell(&h.host),
                cell(&h.target),
                cell(&h.left_on)
            );
        }
        md
    }

    pub fn to_junit(&self) -> String {
        struct Case {
            class: String,
            name: String,
            ms: Option<u64>,
            failure: Option<String>,
            skipped: bool,
        }
        let suite = format!("drill.{}", self.drill);
        let mut cases = Vec::new();
        for p in &self.phases {
            let class = format!("{suite}.{}", p.name);
            let not_run = p.status == "not run";
            if p.stages.is_empty() {
                cases.push(Case {
                    class: class.clone(),
                    name: p.name.clone(),
                    ms: p.duration_ms,
                    failure: (p.status == "failed")
                        .then(|| format!("{} failed: {}", p.name, self.reason)),
                    skipped: not_run,
                });
            }
            for s in &p.stages {
                for step in &s.steps {
                    cases.push(Case {
                        class: class.clone(),
                        name: format!(
                            "stage {}: {} {} {}",
                            s.name, step.action, step.host, step.target
                        ),
                        ms: step.duration_ms,
                        failure: step.error.clone(),
                        skipped: matches!(step.status.as_str(), "skipped" | "pending"),
                    });
                }
                if s.status == "failed" && s.steps.iter().all(|st| st.error.is_none()) {
                    cases.push(Case {
                        class: class.clone(),
                        name: format!("stage {}: health gates", s.name),
                        ms: None,
                        failure: Some(format!("stage {} failed its health gates", s.name)),
                        skipped: false,
                    });
                }
            }
        }
        let target =
            humantime::format_duration(std::time::Duration::from_millis(self.rto.target_ms));
        cases.push(Case {
            class: suite.clone(),
            name: format!("RTO within {target}"),
            ms: self.rto.measured_ms,
            failure: (self.rto.met != Some(true)).then(|| self.rto_line()),
            skipped: false,
        });
        if let (Some(c), Some(rto)) = (&self.comparison, self.rto.measured_ms) {
            cases.push(Case {
                class: suite.clone(),
                name: "no slower than usual".into(),
                ms: None,
                failure: c.slower.then(|| c.sentence(rto)),
                skipped: false,
            });
        }
        cases.push(Case {
            class: suite.clone(),
            name: "verdict".into(),
            ms: span(Some(self.started_ms), self.finished_ms),
            failure: (self.status != "passed").then(|| format!("{}: {}", self.status, self.reason)),
            skipped: false,
        });
        let failures = cases.iter().filter(|c| c.failure.is_some()).count();
        let skipped = cases
            .iter()
            .filter(|c| c.skipped && c.failure.is_none())
            .count();
        let total = span(Some(self.started_ms), self.finished_ms).unwrap_or(0) as f64 / 1000.0;
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            xml,
            "<testsuites name=\"rewind drill {}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{total:.3}\">",
            escape(&self.drill),
            cases.len()
        );
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{}\" id=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{total:.3}\" timestamp=\"{}\">",
            escape(&suite),
            escape(&self.run_id),
            cases.len(),
            time(self.started_ms)
        );
        let _ = writeln!(xml, "    <properties>");
        for (k, v) in [
            ("env", &self.env),
            ("plan", &self.plan),
            ("checkpoint", &self.checkpoint),
            ("back_to", &self.back_to),
            ("status", &self.status),
            ("trigger", &self.trigger),
        ] {
            let _ = writeln!(
                xml,
                "      <property name=\"{k}\" value=\"{}\"/>",
                escape(v)
            );
        }
        let _ = writeln!(xml, "    </properties>");
        for c in &cases {
            let time = c.ms.map_or(String::new(), |ms| {
                format!(" time=\"{:.3}\"", ms as f64 / 1000.0)
            });
            let open = format!(
                "    <testcase classname=\"{}\" name=\"{}\"{time}",
                escape(&c.class),
                escape(&c.name)
            );
            match (&c.failure, c.skipped) {
                (Some(f), _) => {
                    let _ = writeln!(
                        xml,
                        "{open}>\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        escape(f),
                        escape(f)
                    );
                }
                (None, true) => {
                    let _ = writeln!(xml, "{open}>\n      <skipped/>\n    </testcase>");
                }
                (None, false) => {
                    let _ = writeln!(xml, "{open}/>");
                }
            }
        }
        let _ = writeln!(xml, "  </testsuite>\n</testsuites>");
        xml
    }
}

/// Text for an XML attribute or element.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }
}
