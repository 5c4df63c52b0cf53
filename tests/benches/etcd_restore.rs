//! etcd benchmark: `cargo bench -p rewind-tests --bench etcd_restore`.
//!
//! 10,000 keys under one prefix are put back from v2 to v1 alternately (a)
//! through the etcd plugin in the agent's sandbox (read, emergency snapshot,
//! guarded transactions of 64 operations) and (b) directly: the same reads
//! and the same guarded transactions sent to etcd's JSON gateway by this
//! process, one connection per request as the plugin does. Reports both
//! medians and their ratio, measured in the same run.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput};
use rewind_tests::etcd::{EtcdServer, b64, int, post_json};
use rewind_tests::{Agent, unsigned_plugin};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KEYS: usize = 10_000;
const BATCH: usize = 64;
const ROUNDS: usize = 9;

fn release(version: &str) -> Vec<(String, String)> {
    (0..KEYS)
        .map(|i| (format!("/bench/key-{i:05}"), format!("{version}-value-{i}")))
        .collect()
}

/// Read the prefix page by page: key -> (value base64, mod_revision).
fn read(port: u16) -> BTreeMap<String, (String, i64)> {
    let mut keys = BTreeMap::new();
    let mut from = b64("/bench/");
    let end = b64("/bench0");
    let mut revision = 0;
    loop {
        let mut request = json!({ "key": from, "range_end": end, "limit": 1000 });
        if revision > 0 {
            request["revision"] = json!(revision.to_string());
        }
        let answer = post_json(port, "/v3/kv/range", &request).unwrap();
        revision = int(&answer["header"]["revision"]);
        let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
        for kv in &kvs {
            keys.insert(
                kv["key"].as_str().unwrap().to_string(),
                (
                    kv["value"].as_str().unwrap().to_string(),
                    int(&kv["mod_revision"]),
                ),
            );
        }
        if answer["more"].as_bool() != Some(true) {
            return keys;
        }
        let last = kvs.last().unwrap()["key"].as_str().unwrap();
        let mut next = base64_decode(last);
        next.push(0);
        from = base64_encode(&next);
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The baseline: the same guarded transactions, sent directly.
fn restore_directly(port: u16, to: &[(String, String)]) {
    let now = read(port);
    let ops: Vec<(String, String, i64)> = to
        .iter()
        .filter_map(|(k, v)| {
            let key = b64(k);
            let value = b64(v);
            match now.get(&key) {
                Some((current, _)) if *current == value => None,
                Some((_, revision)) => Some((key, value, *revision)),
                None => Some((key, value, 0)),
            }
        })
        .collect();
    for batch in ops.chunks(BATCH) {
        let compare: Vec<Value> = batch
            .iter()
            .map(|(k, _, r)| json!({ "key": k, "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string() }))
            .collect();
        let success: Vec<Value> = batch
            .iter()
            .map(|(k, v, _)| json!({ "request_put": { "key": k, "value": v } }))
            .collect();
        let failure: Vec<Value> = batch
            .iter()
            .map(|(k, _, _)| json!({ "request_range": { "key": k } }))
            .collect();
        let answer = post_json(
            port,
            "/v3/kv/txn",
            &json!({ "compare": compare, "success": success, "failure": failure }),
        )
        .unwrap();
        assert_eq!(answer["succeeded"], true);
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let etcd = EtcdServer::start();
    let v1 = release("v1");
    let v2 = release("v2");
    etcd.put_many(&v1);
    let agent = Agent::new(&format!(
        r#"{}
[targets.config]
plugin = "etcd"
settings = {{ endpoint = "{endpoint}", prefixes = ["/bench/"], batch = {BATCH} }}
grant = {{ http = ["127.0.0.1:{port}"] }}
"#,
        unsigned_plugin("etcd", "etcd"),
        endpoint = etcd.endpoint(),
        port = etcd.port,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ActionOutput::Captured(captured) =
            agent.call("config", Action::Snapshot).await.unwrap().output
        else {
            panic!("not a snapshot")
        };
        let to = SnapshotRecord {
            data: captured.data,
            summary: captured.summary,
            taken_at: 0,
        };
        let mut plugin = Vec::new();
        let mut direct = Vec::new();
        for round in 0..=ROUNDS {
            etcd.put_many(&v2);
            let started = Instant::now();
            let output = agent
                .call(
                    "config",
                    Action::Restore {
                        to: to.clone(),
                        options: RestoreOptions {
                            confirm_data_loss: false,
                            force: false,
                            step_id: format!("bench-{round}"),
                        },
                    },
                )
                .await
                .unwrap();
            let elapsed = started.elapsed();
            let ActionOutput::Outcome(outcome) = output.output else {
                panic!()
            };
            assert!(outcome.changed);
            assert_eq!(etcd.get("/bench/key-09999").as_deref(), Some("v1-value-9999"));

            etcd.put_many(&v2);
            let started = Instant::now();
            restore_directly(etcd.port, &v1);
            let direct_elapsed = started.elapsed();
            assert_eq!(etcd.get("/bench/key-09999").as_deref(), Some("v1-value-9999"));
            // Round 0 warms both paths up (plugin compiled, connections).
            if round > 0 {
                plugin.push(elapsed);
                direct.push(direct_elapsed);
            }
        }
        let p = median(&mut plugin);
        let d = median(&mut direct);
        println!(
            "etcd benchmark: {KEYS} keys restored in guarded transactions of {BATCH}, {ROUNDS} rounds each"
        );
        println!(
            "through the plugin: median {:.0} ms (min {:.0}, max {:.0})",
            p.as_secs_f64() * 1e3,
            plugin[0].as_secs_f64() * 1e3,
            plugin[ROUNDS - 1].as_secs_f64() * 1e3
        );
        println!(
            "directly to etcd's JSON gateway: median {:.0} ms (min {:.0}, max {:.0})",
            d.as_secs_f64() * 1e3,
            direct[0].as_secs_f64() * 1e3,
            direct[ROUNDS - 1].as_secs_f64() * 1e3
        );
        println!(
            "ratio plugin/direct: {:.3}",
            p.as_secs_f64() / d.as_secs_f64()
        );
    });
}
