//! The words the journal, the wire, notifications, metrics and the views
//! share: the kinds of events a run or a drill run journals. Each kind is
//! written once, here, with what it means elsewhere (whether it ends a
//! watch, its severity, whether it opens or closes an incident, the label
//! it counts under). The journal and the wire carry its text
//! ([`EventKind::as_str`]); [`EventKind::parse`] reads it back.

macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// What an event of a run or a drill run says happened.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $($(#[$doc])* $variant,)*
        }

        impl EventKind {
            /// Every kind, in the order they are declared.
            pub const ALL: &[EventKind] = &[$(EventKind::$variant,)*];

            /// The kind's text in the journal and on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $text,)*
                }
            }

            /// The kind a journal's or the wire's text names, if any.
            pub fn parse(text: &str) -> Option<EventKind> {
                match text {
                    $($text => Some(EventKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_kinds! {
    RunStarted = "run-started",
    RunResumed = "run-resumed",
    RunRecovered = "run-recovered",
    RunPaused = "run-paused",
    RunHalting = "run-halting",
    RunCancelling = "run-cancelling",
    RunSucceeded = "run-succeeded",
    RunFailed = "run-failed",
    RunCancelled = "run-cancelled",
    /// A run the coordinator cannot resume from its journal (its last event).
    RunUnreadable = "run-unreadable",
    StageStarted = "stage-started",
    StageSucceeded = "stage-succeeded",
    StageFailed = "stage-failed",
    /// A step was sent to its agent (not an outcome of the engine: the
    /// runner journals it as it sends).
    StepSent = "step-sent",
    /// Best effort, never journaled: what an agent says of a step in flight.
    StepProgress = "step-progress",
    StepSucceeded = "step-succeeded",
    StepFailed = "step-failed",
    HealthPassed = "health-passed",
    HealthFailed = "health-failed",
    HookStarted = "hook-started",
    HookSucceeded = "hook-succeeded",
    HookFailed = "hook-failed",
    DrillStarted = "drill-started",
    DrillRollingBack = "drill-rolling-back",
    DrillVerified = "drill-verified",
    DrillRollingForward = "drill-rolling-forward",
    DrillAborting = "drill-aborting",
    DrillPaused = "drill-paused",
    DrillRecovered = "drill-recovered",
    DrillPassed = "drill-passed",
    DrillFailed = "drill-failed",
    DrillAborted = "drill-aborted",
    DrillSkipped = "drill-skipped",
    DrillSlower = "drill-slower",
    DrillStale = "drill-stale",
}

use EventKind::*;

impl EventKind {
    /// The last event of a run or a drill run: a watch of it ends there.
    pub fn ends_watch(self) -> bool {
        matches!(
            self,
            RunSucceeded
                | RunFailed
                | RunCancelled
                | RunUnreadable
                | DrillPassed
                | DrillFailed
                | DrillAborted
                | DrillSkipped
        )
    }

    /// The kinds a notification may subscribe to, in the order the
    /// configuration's errors list them.
    pub const NOTIFIABLE: &[EventKind] = &[
        RunStarted,
        RunSucceeded,
        RunFailed,
        RunPaused,
        DrillStarted,
        DrillPassed,
        DrillFailed,
        DrillSlower,
        DrillStale,
        DrillSkipped,
    ];

    /// The kinds a PagerDuty service is sent: the ones that open an
    /// incident (trigger) and the ones that close it (resolve).
    pub const PAGED: &[EventKind] = &[
        RunFailed,
        RunPaused,
        RunSucceeded,
        DrillFailed,
        DrillSlower,
        DrillStale,
        DrillPassed,
    ];

    /// Opens an incident (PagerDuty triggers on it).
    pub fn is_trouble(self) -> bool {
        matches!(
            self,
            RunFailed | RunPaused | DrillFailed | DrillSlower | DrillStale
        )
    }

    /// Closes the incident its subject opened (PagerDuty resolves on it).
    pub fn is_recovery(self) -> bool {
        matches!(self, RunSucceeded | DrillPassed)
    }

    /// The severity a notice of it gets unless its source says more (a
    /// drill whose roll forward failed is `critical`).
    pub fn severity(self) -> &'static str {
        match self {
            RunFailed | DrillFailed => "error",
            RunPaused | DrillSlower | DrillStale | DrillSkipped => "warning",
            _ => "info",
        }
    }

    /// How a run's, a step's or a drill run's end is counted in the
    /// metrics: the metric and the outcome's label.
    pub fn counted(self) -> Option<(Counted, &'static str)> {
        Some(match self {
            RunSucceeded => (Counted::Run, "succeeded"),
            RunFailed => (Counted::Run, "failed"),
            RunCancelled => (Counted::Run, "cancelled"),
            StepSucceeded => (Counted::Step, "succeeded"),
            StepFailed => (Counted::Step, "failed"),
            DrillPassed => (Counted::Drill, "passed"),
            DrillFailed => (Counted::Drill, "failed"),
            DrillAborted => (Counted::Drill, "aborted"),
            DrillSkipped => (Counted::Drill, "skipped"),
            _ => return None,
        })
    }
}

/// The metric an ending event is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Run,
    Step,
    Drill,
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_text_and_no_text_is_written_twice() {
        let mut texts = std::collections::BTreeSet::new();
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(*kind));
            assert!(texts.insert(kind.as_str()), "{kind} twice");
        }
        assert_eq!(EventKind::parse("run-exploded"), None);
    }

    #[test]
    fn pagerduty_is_sent_what_opens_or_closes_an_incident() {
        for kind in EventKind::ALL {
            assert_eq!(
                EventKind::PAGED.contains(kind),
                kind.is_trouble() || kind.is_recovery(),
                "{kind}"
            );
            if EventKind::PAGED.contains(kind) {
                assert!(EventKind::NOTIFIABLE.contains(kind), "{kind}");
            }
        }
    }
}
