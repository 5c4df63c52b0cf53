//! The agent's Prometheus metrics (served on `[agent] metrics`, see
//! docs/metrics.md): whether it holds a session with the coordinator, each
//! plugin call's duration by plugin, action and outcome, and plugin errors
//! (traps included) by kind.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    pub connected: Gauge,
    pub step_seconds: Family<Labels, Histogram>,
    pub plugin_errors: Family<Labels, Counter>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    connected: Gauge::default(),
    step_seconds: Family::new_with_constructor(|| {
        Histogram::new(rewind_proto::metrics::duration_buckets())
    }),
    plugin_errors: Family::default(),
});

pub fn registry() -> Arc<Registry> {
    let m = &*METRICS;
    let mut registry = Registry::with_prefix("rewind_agent");
    registry.register(
        "connected",
        "1 while this agent holds a session with the coordinator",
        m.connected.clone(),
    );
    registry.register(
        "step_duration_seconds",
        "Plugin calls for steps, by plugin, action and outcome (ok, error)",
        m.step_seconds.clone(),
    );
    registry.register(
        "plugin_errors",
        "Plugin calls that failed, by plugin and kind (failed, deadline, memory-limit, crashed for a trap, ...)",
        m.plugin_errors.clone(),
    );
    Arc::new(registry)
}

/// One plugin call for a step: how long it took, and its error's kind.
pub fn step(plugin: &str, action: &str, took: Duration, error: Option<&str>) {
    let m = &*METRICS;
    m.step_seconds
        .get_or_create(&vec![
            ("plugin", plugin.to_string()),
            ("action", action.to_string()),
            (
                "outcome",
                if error.is_some() { "error" } else { "ok" }.to_string(),
            ),
        ])
        .observe(took.as_secs_f64());
    if let Some(kind) = error {
        m.plugin_errors
            .get_or_create(&vec![
                ("plugin", plugin.to_string()),
                ("kind", kind.to_string()),
            ])
            .inc();
    }
}
