//! Fault sweep: `cargo bench -p rewind-tests --bench fault_sweep` (add
//! `-- --runs N --agent-kills N --connections N --silent N` to size it;
//! `-- --only-silent` runs just the silent flood, three times). Prints the
//! figures docs/RELIABILITY.md reports and fails on any violation.

use rewind_tests::sweep;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = arg("--runs", 52);
    let agent_kills = arg("--agent-kills", 20);
    let connections = arg("--connections", 500);
    let silent = arg("--silent", 10_000);
    let only_silent = std::env::args().any(|a| a == "--only-silent");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let floods = if only_silent { 3 } else { 1 };
        let mut locked_out = 0;
        for _ in 0..floods {
            let flood = sweep::silent_flood(silent, 40).await;
            println!(
                "{} silent connections from 40 addresses ({} opened): fresh operator connections {}/{} answered, median {:.1} ms; \
                 agent restarted during it connected again after {}",
                flood.connections,
                flood.opened,
                flood.operator_ok,
                flood.operator_calls,
                flood.operator_median_ms,
                flood
                    .agent_back_s
                    .map_or("never (30 s)".to_string(), |s| format!("{s:.2} s"))
            );
            locked_out += flood.operator_calls - flood.operator_ok
                + usize::from(flood.agent_back_s.is_none());
        }
        assert_eq!(locked_out, 0, "the silent flood locked someone out");
        if only_silent {
            return;
        }
        let kills = sweep::coordinator_kills(runs, None).await;
        println!(
            "coordinator SIGKILLed: {} runs of a 4-stage plan on 8 agents, {} kills \
             (random, during gates, after cancel, after a halt with a parallel stage in flight), \
             {:.0} s: {} ended, {} otherwise than expected ({:?}); applied twice: {}; applied after cancel: {}; sent after cancel: {}",
            kills.runs,
            kills.kills,
            kills.seconds,
            kills.ended,
            kills.unexpected,
            kills.statuses,
            kills.applied_twice,
            kills.applied_after_cancel,
            kills.sent_after_cancel
        );
        let agents = sweep::agent_kills(agent_kills).await;
        println!(
            "agent SIGKILLed after acting, before reporting: {} kills, {:.0} s: settled by verify: {}; applied twice: {}",
            agents.kills, agents.seconds, agents.recovered, agents.applied_twice
        );
        let flood = sweep::certificate_less_flood(connections).await;
        println!(
            "{} connections without a certificate (half sending a ClientHello, half silent): accepted {}; \
             coordinator RSS {} KiB before, {} KiB at most during; operator call median {:.1} ms before, {:.1} ms during",
            flood.connections,
            flood.accepted,
            flood.rss_before_kib,
            flood.rss_peak_kib,
            flood.latency_before_ms,
            flood.latency_during_ms
        );
        let violations = kills.runs - kills.ended
            + kills.unexpected
            + kills.applied_twice
            + kills.applied_after_cancel
            + kills.sent_after_cancel
            + agents.applied_twice
            + flood.accepted;
        assert_eq!(violations, 0, "the sweep found violations");
    });
}
