//! Credentials masked in what crosses the wire: the agent masks every text
//! of a step's result before it leaves its host, and the coordinator masks
//! again what it receives (an agent of an older version, a third-party
//! plugin's text), before anything is journaled, shown or sent on.

use crate::v1::{StepResult, step_result};

pub use rewind_mask::{MASK, Masker};

/// A text with its credentials masked (the default key patterns).
pub fn text(text: &str) -> String {
    rewind_mask::mask(text)
}

/// Every text of a result masked: its log lines, preview, outcome or error
/// and a snapshot's summary. A snapshot's data is left as the plugin wrote
/// it (a restore needs it so); the shipped plugins keep credentials out of
/// it, in the target's state directory on the host.
pub fn result(result: &mut StepResult) {
    let masker = Masker::default();
    let mask = |text: &mut String| {
        let masked = masker.mask(text);
        if masked != *text {
            *text = masked;
        }
    };
    for line in &mut result.logs {
        mask(&mut line.message);
    }
    match &mut result.outcome {
        Some(step_result::Outcome::Captured(c)) => mask(&mut c.summary),
        Some(step_result::Outcome::Preview(p)) => {
            for change in &mut p.changes {
                mask(&mut change.subject);
                mask(&mut change.summary);
                mask(&mut change.detail);
            }
        }
        Some(step_result::Outcome::Done(o)) => {
            mask(&mut o.summary);
            o.details.iter_mut().for_each(mask);
        }
        Some(step_result::Outcome::Error(e)) => mask(&mut e.message),
        None => {}
    }
}
