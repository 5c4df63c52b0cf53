//! `rewind:plugin/progress`: heartbeats with detail for the live view.

use crate::host::bindings::rewind::plugin::progress::Host;
use crate::host::state::CallState;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Reports closer together than this are dropped (the WIT's limit).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_DETAIL: usize = 1024;

/// One progress report of a running action.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProgressReport {
    pub target: String,
    pub detail: String,
    pub percent: Option<u8>,
}

impl Host for CallState {
    async fn report(&mut self, mut detail: String, percent: Option<u8>) {
        let Some(sink) = &self.progress else { return };
        let now = Instant::now();
        // Reports closer together than MIN_INTERVAL are dropped, so a chatty
        // plugin cannot flood the wire; a phase's final one (100%) gets
        // through once, but 100% again and again is dropped like the rest.
        let recent = self.last_progress.is_some_and(|t| now - t < MIN_INTERVAL);
        let finishing = percent == Some(100) && self.last_percent != Some(100);
        if recent && !finishing {
            self.progress_dropped += 1;
            return;
        }
        self.last_progress = Some(now);
        self.last_percent = percent;
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        sink(ProgressReport {
            target: self.target.name.clone(),
            detail,
            percent: percent.map(|p| p.min(100)),
        });
    }
}
