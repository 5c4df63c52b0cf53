//! The coordinator's Prometheus metrics (served on `[coordinator] metrics`,
//! see docs/metrics.md): agents connected, runs and steps by outcome, drills
//! by verdict and the time of each drill's last pass, journal write latency,
//! notification deliveries. One set per process, updated where the thing
//! happens.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    pub agents_connected: Gauge,
    pub runs: Family<Labels, Counter>,
    pub steps: Family<Labels, Counter>,
    pub drills: Family<Labels, Counter>,
    pub drill_last_pass: Family<Labels, Gauge<f64, AtomicU64>>,
    pub journal_writes: Histogram,
    pub notifications: Family<Labels, Counter>,
    pub agent_messages_refused: Family<Labels, Counter>,
    pub leader_term: Gauge,
    pub watch_streams: Gauge,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    agents_connected: Gauge::default(),
    runs: Family::default(),
    steps: Family::default(),
    drills: Family::default(),
    drill_last_pass: Family::default(),
    journal_writes: Histogram::new(rewind_proto::metrics::duration_buckets()),
    notifications: Family::default(),
    agent_messages_refused: Family::default(),
    leader_term: Gauge::default(),
    watch_streams: Gauge::default(),
});

/// Counts one open thing on a gauge for as long as it lives.
pub struct Open(&'static Gauge);

impl Open {
    pub fn new(gauge: &'static Gauge) -> Open {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The registry to serve: the same metrics, named and described.
pub fn registry() -> Arc<Registry> {
    let m = &*METRICS;
    let mut registry = Registry::with_prefix("rewind");
    registry.register(
        "watch_streams",
        "Watch streams open to operators (rewind watch, the web page)",
        m.watch_streams.clone(),
    );
    registry.register(
        "agents_connected",
        "Agents with a session to this coordinator",
        m.agents_connected.clone(),
    );
    registry.register(
        "runs",
        "Runs ended, by kind (rollback, drill-back, drill-forward) and outcome (succeeded, failed, cancelled)",
        m.runs.clone(),
    );
    registry.register(
        "steps",
        "Step outcomes journaled, by outcome (succeeded, failed)",
        m.steps.clone(),
    );
    registry.register(
        "drills",
        "Drill runs ended, by drill and verdict (passed, failed, aborted, skipped)",
        m.drills.clone(),
    );
    registry.register(
        "drill_last_pass_timestamp_seconds",
        "When each drill last passed (Unix seconds)",
        m.drill_last_pass.clone(),
    );
    registry.register(
        "journal_write_seconds",
        "Time to commit one journal transaction",
        m.journal_writes.clone(),
    );
    registry.register(
        "notification_deliveries",
        "Notification delivery tries, by webhook and result (delivered, retry, given-up)",
        m.notifications.clone(),
    );
    registry.register(
        "agent_messages_refused",
        "Messages refused from agents, by kind",
        m.agent_messages_refused.clone(),
    );
    registry.register(
        "leader_term",
        "The leader lease's term while this coordinator leads; 0 while it stands by",
        m.leader_term.clone(),
    );
    Arc::new(registry)
}

/// Every counter that the configuration says can move starts at 0, so a
/// dashboard or alert sees the series (and its first increase) from the
/// coordinator's start rather than from its first event.
pub fn prime(config: &crate::config::CoordinatorConfig) {
    let m = &*METRICS;
    for kind in ["rollback", "drill-back", "drill-forward"] {
        for outcome in ["succeeded", "failed", "cancelled"] {
            m.runs
                .get_or_create(&vec![("kind", kind.into()), ("outcome", outcome.into())])
                .inc_by(0);
        }
    }
    for outcome in ["succeeded", "failed"] {
        m.steps
            .get_or_create(&vec![("outcome", outcome.into())])
            .inc_by(0);
    }
    for drill in config.drills.keys() {
        for verdict in ["passed", "failed", "aborted", "skipped"] {
            m.drills
                .get_or_create(&vec![("drill", drill.clone()), ("verdict", verdict.into())])
                .inc_by(0);
        }
    }
    for webhook in &config.notifications {
        for result in ["delivered", "retry", "given-up"] {
            m.notifications
                .get_or_create(&vec![
                    ("webhook", webhook.name.clone()),
                    ("result", result.into()),
                ])
                .inc_by(0);
        }
    }
    for kind in [
        "hello-twice",
        "hello-for-other-agent",
        "env-not-allowed",
        "result-from-other-agent",
        "progress-from-other-agent",
        "result-for-unknown-step",
        "progress-for-unknown-step",
    ] {
        m.agent_messages_refused
            .get_or_create(&vec![("kind", kind.into())])
            .inc_by(0);
    }
}

/// A journaled event of a run (`kind` is the run's kind) or drill run
/// (`drill` its drill), counted once it is durable.
pub fn journaled(kind: &str, drill: Option<&str>, event: &crate::store::EventRecord) {
    use crate::vocabulary::Counted;
    let m = &*METRICS;
    let Some((counted, outcome)) = event.kind().and_then(|k| k.counted()) else {
        return;
    };
    match counted {
        Counted::Run => m
            .runs
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("outcome", outcome.into()),
            ])
            .inc(),
        Counted::Step => m
            .steps
            .get_or_create(&vec![("outcome", outcome.into())])
            .inc(),
        Counted::Drill => {
            let drill = drill.unwrap_or_default().to_string();
            if outcome == "passed" {
                drill_passed(&drill, event.unix_ms);
            }
            m.drills
                .get_or_create(&vec![("drill", drill), ("verdict", outcome.into())])
                .inc()
        }
    };
}

/// A drill's last pass (also set at start from the journal).
pub fn drill_passed(drill: &str, unix_ms: u64) {
    METRICS
        .drill_last_pass
        .get_or_create(&vec![("drill", drill.to_string())])
        .set(unix_ms as f64 / 1000.0);
}

pub fn journal_write(took: Duration) {
    METRICS.journal_writes.observe(took.as_secs_f64());
}

pub fn notification(webhook: &str, result: &'static str) {
    METRICS
        .notifications
        .get_or_create(&vec![
            ("webhook", webhook.to_string()),
            ("result", result.to_string()),
        ])
        .inc();
}
