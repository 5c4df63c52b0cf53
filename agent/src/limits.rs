//! What a step result may weigh on the wire. A result always gets through:
//! logs, previews and details too large for one message are cut (the cut is
//! said in the result, the agent's own log has everything); only a snapshot
//! too large to store is refused, with an error naming the limit.

use rewind_proto::v1::{LogLine, StepError, StepResult, step_result};

/// The largest message between agent and coordinator (both ends agree).
pub const MAX_MESSAGE: usize = 20 << 20;
/// The largest snapshot data a plugin may return (it is kept in the
/// coordinator's journal and sent back with every restore).
pub const MAX_SNAPSHOT: usize = 16 << 20;
/// What a result may carry besides its snapshot.
const MAX_REST: usize = 2 << 20;
/// Log lines kept in a result (the last ones, where the failure usually is).
const MAX_LOG_LINES: usize = 500;
/// The longest single text kept (a detail, a message, a log line).
const MAX_TEXT: usize = 64 << 10;
/// The most preview changes or outcome details kept.
const MAX_ITEMS: usize = 5_000;

fn cut(text: &mut String, limit: usize) {
    if text.len() > limit {
        let mut at = limit;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let dropped = text.len() - at;
        text.truncate(at);
        text.push_str(&format!(" [{dropped} bytes cut]"));
    }
}

fn cut_list<T>(items: &mut Vec<T>, limit: usize) -> usize {
    let dropped = items.len().saturating_sub(limit);
    items.truncate(limit);
    dropped
}

/// Make a result fit the wire; see the module's documentation.
pub fn fit(mut result: StepResult) -> StepResult {
    if let Some(step_result::Outcome::Captured(captured)) = &result.outcome
        && captured.data.len() > MAX_SNAPSHOT
    {
        let size = captured.data.len();
        result.outcome = Some(step_result::Outcome::Error(StepError {
            kind: "snapshot-too-large".into(),
            message: format!(
                "the plugin's snapshot is {:.1} MiB, over the limit of {} MiB for snapshot data; \
                 keep large data in the target's state directory and put its name and checksum in the snapshot",
                size as f64 / (1 << 20) as f64,
                MAX_SNAPSHOT >> 20
            ),
        }));
    }
    // Logs: the last lines, each bounded.
    let total_logs = result.logs.len();
    if total_logs > MAX_LOG_LINES {
        result.logs.drain(..total_logs - MAX_LOG_LINES);
        result.logs.insert(
            0,
            LogLine {
                level: "warn".into(),
                message: format!(
                    "{} earlier log lines cut from this result (the agent's log has them)",
                    total_logs - MAX_LOG_LINES
                ),
            },
        );
    }
    for line in &mut result.logs {
        cut(&mut line.message, MAX_TEXT);
    }
    match &mut result.outcome {
        Some(step_result::Outcome::Preview(preview)) => {
            let dropped = cut_list(&mut preview.changes, MAX_ITEMS);
            for change in &mut preview.changes {
                cut(&mut change.subject, MAX_TEXT);
                cut(&mut change.summary, MAX_TEXT);
                cut(&mut change.detail, MAX_TEXT);
            }
            if dropped > 0
                && let Some(last) = preview.changes.last_mut()
            {
                last.detail
                    .push_str(&format!(" [{dropped} more changes not shown]"));
            }
        }
        Some(step_result::Outcome::Done(outcome)) => {
            cut(&mut outcome.summary, MAX_TEXT);
            let dropped = cut_list(&mut outcome.details, MAX_ITEMS);
            for detail in &mut outcome.details {
                cut(detail, MAX_TEXT);
            }
            if dropped > 0 {
                outcome
                    .details
                    .push(format!("[{dropped} more details cut]"));
            }
        }
        Some(step_result::Outcome::Error(error)) => cut(&mut error.message, MAX_TEXT),
        Some(step_result::Outcome::Captured(captured)) => cut(&mut captured.summary, MAX_TEXT),
        None => {}
    }
    // Still too heavy (many long items): halve whichever weighs more, the
    // logs (keeping the last lines) or the preview's changes / the details.
    while rest_size(&result) > MAX_REST {
        use prost::Message;
        let logs: usize = result.logs.iter().map(|l| l.encoded_len()).sum();
        let items = rest_size(&result).saturating_sub(logs);
        let shrink_logs = result.logs.len() > 1 && (logs >= items || !shrinkable(&result));
        if shrink_logs {
            let total = result.logs.len();
            result.logs.drain(..total - total / 2);
            continue;
        }
        match &mut result.outcome {
            Some(step_result::Outcome::Preview(p)) if p.changes.len() > 1 => {
                let keep = p.changes.len() / 2;
                p.changes.truncate(keep);
            }
            Some(step_result::Outcome::Done(o)) if o.details.len() > 1 => {
                let keep = o.details.len() / 2;
                o.details.truncate(keep);
            }
            _ => break,
        }
    }
    result
}

fn shrinkable(result: &StepResult) -> bool {
    match &result.outcome {
        Some(step_result::Outcome::Preview(p)) => p.changes.len() > 1,
        Some(step_result::Outcome::Done(o)) => o.details.len() > 1,
        _ => false,
    }
}

fn rest_size(result: &StepResult) -> usize {
    use prost::Message;
    let snapshot = match &result.outcome {
        Some(step_result::Outcome::Captured(c)) => c.data.len(),
        _ => 0,
    };
    result.encoded_len().saturating_sub(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use rewind_proto::v1::{Captured, Change, Outcome, Preview};

    #[test]
    fn huge_logs_and_previews_are_cut_to_fit_one_message() {
        let result = StepResult {
            logs: (0..20_000)
                .map(|i| LogLine {
                    level: "info".into(),
                    message: format!("line {i} {}", "x".repeat(4000)),
                })
                .collect(),
            outcome: Some(step_result::Outcome::Preview(Preview {
                changes: (0..50_000)
                    .map(|i| Change {
                        subject: format!("key {i}"),
                        summary: "changed".into(),
                        detail: "y".repeat(200_000.min(100 * i)),
                        risk: 0,
                    })
                    .collect(),
                risk: 0,
                data_loss_window_seconds: None,
            })),
            ..Default::default()
        };
        let fitted = fit(result);
        assert!(fitted.encoded_len() <= MAX_REST, "{}", fitted.encoded_len());
        assert!(fitted.logs.iter().any(|l| l.message.contains("line 19999")));
        let Some(step_result::Outcome::Preview(preview)) = &fitted.outcome else {
            panic!()
        };
        assert!(!preview.changes.is_empty());
    }

    #[test]
    fn a_snapshot_over_the_limit_becomes_an_error_naming_it() {
        let result = fit(StepResult {
            outcome: Some(step_result::Outcome::Captured(Captured {
                data: "z".repeat(MAX_SNAPSHOT + 1),
                summary: "big".into(),
            })),
            ..Default::default()
        });
        let Some(step_result::Outcome::Error(error)) = &result.outcome else {
            panic!("{result:?}")
        };
        assert_eq!(error.kind, "snapshot-too-large");
        assert!(
            error.message.contains("limit of 16 MiB"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_small_result_is_left_alone() {
        let result = StepResult {
            step_id: "s".into(),
            outcome: Some(step_result::Outcome::Done(Outcome {
                changed: true,
                summary: "ok".into(),
                details: vec!["a".into()],
            })),
            ..Default::default()
        };
        assert_eq!(fit(result.clone()), result);
    }
}

#[cfg(test)]
mod properties {
    //! Whatever a plugin returns and whatever bytes arrive, a result fits
    //! the wire and decoding never panics.
    use super::*;
    use proptest::prelude::*;
    use prost::Message;
    use rewind_proto::v1::{Captured, Change, Outcome, Preview, StepRequest};

    fn result() -> impl Strategy<Value = StepResult> {
        let text = || prop::string::string_regex(".{0,300}").unwrap();
        let logs = prop::collection::vec((text(), 0usize..200_000), 0..50).prop_map(|lines| {
            lines
                .into_iter()
                .map(|(m, pad)| LogLine {
                    level: "info".into(),
                    message: format!("{m}{}", "x".repeat(pad)),
                })
                .collect::<Vec<_>>()
        });
        let outcome = prop_oneof![
            (text(), 0usize..(20 << 20)).prop_map(|(s, n)| step_result::Outcome::Captured(
                Captured {
                    data: "d".repeat(n),
                    summary: s
                }
            )),
            prop::collection::vec((text(), 0usize..100_000), 0..200).prop_map(|changes| {
                step_result::Outcome::Preview(Preview {
                    changes: changes
                        .into_iter()
                        .map(|(s, n)| Change {
                            subject: s.clone(),
                            summary: s,
                            detail: "y".repeat(n),
                            risk: 0,
                        })
                        .collect(),
                    risk: 0,
                    data_loss_window_seconds: None,
                })
            }),
            (text(), prop::collection::vec(text(), 0..100)).prop_map(|(s, d)| {
                step_result::Outcome::Done(Outcome {
                    changed: true,
                    summary: s,
                    details: d,
                })
            }),
        ];
        (logs, outcome).prop_map(|(logs, outcome)| StepResult {
            logs,
            outcome: Some(outcome),
            ..Default::default()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_result_fits_one_message(result in result()) {
            let fitted = fit(result);
            prop_assert!(fitted.encoded_len() <= MAX_MESSAGE);
        }
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(request) = StepRequest::decode(bytes.as_slice()) {
                let _ = crate::daemon::action_of_for_tests(&request);
            }
            if let Ok(result) = StepResult::decode(bytes.as_slice()) {
                let _ = fit(result);
            }
            let _ = rewind_proto::v1::CoordinatorMessage::decode(bytes.as_slice());
        }

        #[test]
        fn the_agent_config_parser_never_panics(text in ".{0,400}") {
            let _ = crate::config::parse(&text, std::path::Path::new("/etc/rewind/agent.toml"));
        }

        #[test]
        fn config_like_text_never_panics(
            name in "[a-z0-9._-]{0,10}",
            program in "(\"[a-z/]{0,12}\"|\\{ program = \"[a-z/]{0,12}\", args = \\[\\[(\"[a-z*./-]{0,6}\", ?){0,3}\\]\\] \\})",
            files in "\"[a-z/.]{0,12}\"",
            http in "\"[a-z0-9.:\\[\\]/]{0,16}\"",
        ) {
            let text = format!(
                "[agent]\nname = \"{name}\"\nstate_dir = \"/var/lib/rewind\"\n\n[plugins.p]\npath = \"p.wasm\"\n\n\
                 [targets.t]\nplugin = \"p\"\ngrant = {{ process = [{program}], files = [{files}], http = [{http}] }}\n"
            );
            let _ = crate::config::parse(&text, std::path::Path::new("/etc/rewind/agent.toml"));
        }
    }
}
