//! Bounds on what an agent's step results and progress carry, applied by
//! the coordinator before it keeps (journals) or re-broadcasts them (live
//! views, pages, notifications): a text past its bound is cut with a note
//! saying how much was left out, so one plugin's output cannot fill the
//! journal or the watchers' queues. A snapshot's data is not cut (a restore
//! needs it whole; the message size limit bounds it).

use crate::v1::{StepProgress, StepResult, step_result};

/// A progress message, a summary, a change's subject, a log line.
pub const LINE: usize = 2 << 10;
/// An error message, a change's detail (a diff).
pub const TEXT: usize = 32 << 10;
/// Lines of an outcome's details, of a result's logs, changes of a preview.
pub const LINES: usize = 200;

/// `text` cut to `max` bytes (on a character boundary), with a note.
pub fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let left = text.len() - end;
    text.truncate(end);
    text.push_str(&format!(" … ({left} more bytes cut by the coordinator)"));
}

fn cut_list<T>(list: &mut Vec<T>, note: impl FnOnce(usize) -> T) {
    if list.len() > LINES {
        let left = list.len() - LINES;
        list.truncate(LINES);
        list.push(note(left));
    }
}

/// Every text of a result within its bound.
pub fn result(result: &mut StepResult) {
    cut_list(&mut result.logs, |left| crate::v1::LogLine {
        level: "warn".into(),
        message: format!("… {left} more log lines cut by the coordinator"),
    });
    for line in &mut result.logs {
        cut(&mut line.message, LINE);
    }
    match &mut result.outcome {
        Some(step_result::Outcome::Captured(c)) => cut(&mut c.summary, LINE),
        Some(step_result::Outcome::Preview(p)) => {
            cut_list(&mut p.changes, |left| crate::v1::Change {
                subject: "…".into(),
                summary: format!("{left} more changes cut by the coordinator"),
                ..Default::default()
            });
            for change in &mut p.changes {
                cut(&mut change.subject, LINE);
                cut(&mut change.summary, LINE);
                cut(&mut change.detail, TEXT);
            }
        }
        Some(step_result::Outcome::Done(o)) => {
            cut(&mut o.summary, LINE);
            cut_list(&mut o.details, |left| {
                format!("… {left} more lines cut by the coordinator")
            });
            for line in &mut o.details {
                cut(line, LINE);
            }
        }
        Some(step_result::Outcome::Error(e)) => {
            cut(&mut e.kind, 64);
            cut(&mut e.message, TEXT);
        }
        None => {}
    }
}

/// A progress report within its bound.
pub fn progress(progress: &mut StepProgress) {
    cut(&mut progress.detail, LINE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Outcome;

    #[test]
    fn long_texts_and_lists_are_cut_with_a_note() {
        let mut r = StepResult {
            outcome: Some(step_result::Outcome::Done(Outcome {
                summary: "é".repeat(LINE),
                details: vec!["x".into(); LINES + 5],
                changed: true,
            })),
            ..Default::default()
        };
        result(&mut r);
        let Some(step_result::Outcome::Done(o)) = r.outcome else {
            unreachable!()
        };
        assert!(o.summary.len() < LINE + 64, "{}", o.summary.len());
        assert!(
            o.summary
                .ends_with(&format!("({} more bytes cut by the coordinator)", LINE))
        );
        assert_eq!(o.details.len(), LINES + 1);
        assert_eq!(o.details[LINES], "… 5 more lines cut by the coordinator");
        let mut p = StepProgress {
            detail: "p".repeat(20 << 20),
            ..Default::default()
        };
        progress(&mut p);
        assert!(p.detail.len() < LINE + 64);
    }
}
