//! `rewind:plugin/log`: plugin log lines, kept for the call's result and
//! forwarded to the agent's own log with the plugin and target attached.

use crate::host::bindings::rewind::plugin::log::{Host, Level};
use crate::host::state::CallState;
use serde::Serialize;

const MAX_LINE: usize = 8 * 1024;
const MAX_LINES: usize = 10_000;
/// The most bytes of log lines one call keeps.
const MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
}

/// The lines a call logged, bounded.
#[derive(Debug, Default)]
pub struct CallLog {
    pub lines: Vec<LogLine>,
    pub dropped: u64,
    bytes: usize,
}

impl CallLog {
    pub fn push(&mut self, level: &'static str, mut message: String) {
        if self.lines.len() >= MAX_LINES || self.bytes >= MAX_BYTES {
            self.dropped += 1;
            return;
        }
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [cut]");
        }
        self.bytes += message.len();
        self.lines.push(LogLine { level, message });
    }

    /// The lines kept, and a last line saying how many were dropped.
    pub fn finish(&self) -> Vec<LogLine> {
        let mut lines = self.lines.clone();
        if self.dropped > 0 {
            lines.push(LogLine {
                level: "warn",
                message: format!(
                    "{} more log lines dropped: a call keeps at most {MAX_LINES} lines and {} MiB",
                    self.dropped,
                    MAX_BYTES >> 20
                ),
            });
        }
        lines
    }
}

impl Host for CallState {
    async fn log(&mut self, level: Level, message: String) {
        let (plugin, target) = (&self.plugin, &self.target.name);
        let level = match level {
            Level::Debug => {
                tracing::debug!(plugin, target, "{message}");
                "debug"
            }
            Level::Info => {
                tracing::info!(plugin, target, "{message}");
                "info"
            }
            Level::Warn => {
                tracing::warn!(plugin, target, "{message}");
                "warn"
            }
            Level::Error => {
                tracing::error!(plugin, target, "{message}");
                "error"
            }
        };
        self.log.push(level, message);
    }
}
