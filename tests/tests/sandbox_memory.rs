//! Host memory stays bounded while plugins hit their memory limit again and
//! again (its own test binary, so that no other test shares the process).

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, CallError};
use rewind_tests::{Agent, peak_rss_kib, unsigned_plugin};

#[tokio::test]
async fn repeated_memory_hogs_leave_host_memory_bounded() {
    let agent = Agent::new(&format!(
        "{}{}[targets.hog]\nplugin = \"hog\"\nmemory_limit = \"64MiB\"\n\n[targets.good]\nplugin = \"noop\"\n",
        unsigned_plugin("hog", "fixture_memory_hog"),
        unsigned_plugin("noop", "fixture_noop"),
    ));
    let restore = || Action::Restore {
        to: SnapshotRecord {
            data: "{}".into(),
            summary: String::new(),
            taken_at: 0,
        },
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: "m".into(),
        },
    };
    // Warm up (compile, first instance) before taking the baseline.
    agent.call("good", restore()).await.unwrap();
    let baseline = peak_rss_kib();
    for round in 0..8 {
        let error = agent.call("hog", restore()).await.unwrap_err();
        assert!(
            matches!(error, CallError::MemoryLimit { .. }),
            "round {round}: {error}"
        );
    }
    agent
        .call("good", restore())
        .await
        .expect("a good plugin runs after the hogs");
    let peak = peak_rss_kib();
    // One hog at a time can use its 64 MiB; eight in a row must not add up.
    let growth_mib = (peak.saturating_sub(baseline)) / 1024;
    assert!(
        growth_mib <= 64 + 32,
        "peak RSS grew by {growth_mib} MiB over 8 calls limited to 64 MiB each"
    );
}
