//! When a scheduled drill fires: a cron pattern (seconds allowed) in a time
//! zone, blackout windows in which nothing starts, and missed occurrences
//! (the coordinator was down) caught up at most once, and only within a
//! start deadline; never a burst. Pure: the scheduler asks with the time and
//! what it last fired for, and gets a decision it journals.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::CronParser;
use std::time::Duration;

/// A drill's schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pattern: String,
    cron: Cron,
    tz: Tz,
    blackouts: Vec<Blackout>,
    start_deadline: Duration,
}

/// A window in which no drill starts: it opens at each match of its
/// pattern (in the schedule's time zone) and lasts `length`.
#[derive(Debug, Clone)]
pub struct Blackout {
    pattern: String,
    cron: Cron,
    length: Duration,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due; the next occurrence, if the pattern has one.
    Wait { next: Option<DateTime<Utc>> },
    /// Start now for the occurrence `due`; `catch_up` when it was missed
    /// (due well before now).
    Fire { due: DateTime<Utc>, catch_up: bool },
    /// The occurrence `due` does not run, for `reason`; it is recorded.
    Skip { due: DateTime<Utc>, reason: String },
}

/// An occurrence due more than this before now was missed, not just reached.
const ON_TIME: Duration = Duration::from_secs(5);

fn parse_cron(pattern: &str) -> Result<Cron, String> {
    CronParser::new()
        .parse(pattern)
        .map_err(|e| format!("`{pattern}` is not a cron pattern: {e}"))
}

impl Blackout {
    pub fn parse(pattern: &str, length: Duration) -> Result<Blackout, String> {
        if length.is_zero() {
            return Err(format!(
                "blackout `{pattern}`: its length must be more than 0"
            ));
        }
        Ok(Blackout {
            pattern: pattern.to_string(),
            cron: parse_cron(pattern).map_err(|e| format!("blackout {e}"))?,
            length,
        })
    }
}

impl Schedule {
    /// A schedule from its pattern and time zone name (IANA, e.g.
    /// `Europe/Berlin`); the errors say which value is wrong and why.
    pub fn parse(
        pattern: &str,
        time_zone: &str,
        blackouts: Vec<Blackout>,
        start_deadline: Duration,
    ) -> Result<Schedule, String> {
        let tz: Tz = time_zone.parse().map_err(|_| {
            format!("`{time_zone}` is not a time zone (IANA names, e.g. Europe/Berlin or UTC)")
        })?;
        Ok(Schedule {
            pattern: pattern.to_string(),
            cron: parse_cron(pattern)?,
            tz,
            blackouts,
            start_deadline,
        })
    }

    /// The next occurrence strictly after `at`.
    pub fn next_after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&at.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest occurrence at or before `at`.
    fn latest_at(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&at.with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The blackout window `at` falls in, described, if any.
    pub fn blackout_at(&self, at: DateTime<Utc>) -> Option<String> {
        self.blackouts.iter().find_map(|b| {
            let opened = b
                .cron
                .find_previous_occurrence(&at.with_timezone(&self.tz), true)
                .ok()?;
            let closes = opened + chrono::Duration::from_std(b.length).ok()?;
            (at < closes.with_timezone(&Utc)).then(|| {
                format!(
                    "in the blackout window `{}` ({} from {})",
                    b.pattern,
                    humantime::format_duration(b.length),
                    opened.format("%Y-%m-%d %H:%M:%S %Z")
                )
            })
        })
    }

    /// What to do at `now`, given the occurrence the drill last fired or
    /// was skipped for (`last_due`) and when the schedule was first seen
    /// (`since`): occurrences before it were never missed.
    pub fn decide(
        &self,
        now: DateTime<Utc>,
        last_due: Option<DateTime<Utc>>,
        since: DateTime<Utc>,
    ) -> Decision {
        let floor = last_due.unwrap_or(since);
        let due = match self.latest_at(now) {
            Some(due) if due > floor => due,
            _ => {
                return Decision::Wait {
                    next: self.next_after(now),
                };
            }
        };
        // Only the latest occurrence counts: the ones before it are gone.
        let late = (now - due).to_std().unwrap_or_default();
        if late > self.start_deadline {
            return Decision::Skip {
                due,
                reason: format!(
                    "missed: due at {} ({}), {} ago, past the start deadline of {}",
                    due.with_timezone(&self.tz).format("%Y-%m-%d %H:%M:%S %Z"),
                    self.pattern,
                    humantime::format_duration(Duration::from_secs(late.as_secs())),
                    humantime::format_duration(self.start_deadline)
                ),
            };
        }
        if let Some(window) = self.blackout_at(now) {
            return Decision::Skip {
                due,
                reason: format!("not started: {window}"),
            };
        }
        Decision::Fire {
            due,
            catch_up: late > ON_TIME,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn hourly(deadline_secs: u64, blackouts: Vec<Blackout>) -> Schedule {
        Schedule::parse(
            "0 0 * * * *",
            "UTC",
            blackouts,
            Duration::from_secs(deadline_secs),
        )
        .unwrap()
    }

    #[test]
    fn an_occurrence_fires_once() {
        let s = hourly(600, vec![]);
        let since = at("2026-11-23T09:30:00Z");
        let due = at("2026-11-23T10:00:00Z");
        assert_eq!(
            s.decide(at("2026-11-23T10:00:01Z"), None, since),
            Decision::Fire {
                due,
                catch_up: false
            }
        );
        assert_eq!(
            s.decide(at("2026-11-23T10:00:02Z"), Some(due), since),
            Decision::Wait {
                next: Some(at("2026-11-23T11:00:00Z"))
            }
        );
    }

    #[test]
    fn missed_occurrences_are_caught_up_once_within_the_deadline() {
        let s = hourly(600, vec![]);
        let since = at("2026-11-01T00:00:00Z");
        // Down from before 10:00 until 13:04: 10, 11, 12 and 13 missed.
        let now = at("2026-11-23T13:04:00Z");
        let due = at("2026-11-23T13:00:00Z");
        assert_eq!(
            s.decide(now, Some(at("2026-11-23T09:00:00Z")), since),
            Decision::Fire {
                due,
                catch_up: true
            }
        );
        assert!(matches!(
            s.decide(now, Some(due), since),
            Decision::Wait { .. }
        ));
        // Back only at 13:20: past the 10 minutes, recorded as skipped.
        let late = s.decide(
            at("2026-11-23T13:20:00Z"),
            Some(at("2026-11-23T09:00:00Z")),
            since,
        );
        let Decision::Skip {
            due: skipped,
            reason,
        } = late
        else {
            panic!("{late:?}");
        };
        assert_eq!(skipped, due);
        assert!(
            reason.contains("past the start deadline of 10m"),
            "{reason}"
        );
    }

    #[test]
    fn a_new_schedule_does_not_fire_for_the_past() {
        let s = hourly(600, vec![]);
        assert!(matches!(
            s.decide(at("2026-11-23T10:00:30Z"), None, at("2026-11-23T10:00:10Z")),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn nothing_starts_in_a_blackout_window() {
        // Friday 18:00 for 60 hours: the weekend.
        let weekend = Blackout::parse("0 0 18 * * FRI", Duration::from_secs(60 * 3600)).unwrap();
        let s = hourly(600, vec![weekend]);
        let since = at("2026-11-01T00:00:00Z");
        // 2026-11-28 is a Saturday.
        let decision = s.decide(at("2026-11-28T10:00:01Z"), None, since);
        let Decision::Skip { reason, .. } = decision else {
            panic!("{decision:?}");
        };
        assert!(
            reason.contains("blackout window `0 0 18 * * FRI`"),
            "{reason}"
        );
        assert!(reason.contains("2026-11-27 18:00:00"), "{reason}");
        // Monday 06:00 the window has closed.
        assert!(matches!(
            s.decide(at("2026-11-30T06:00:01Z"), None, since),
            Decision::Fire { .. }
        ));
    }

    #[test]
    fn a_schedule_keeps_its_time_zone() {
        // 03:00 in Berlin is 02:00 UTC in winter (CET) and 01:00 in summer.
        let s = Schedule::parse("0 0 3 * * *", "Europe/Berlin", vec![], Duration::ZERO).unwrap();
        assert_eq!(
            s.next_after(at("2026-11-23T12:00:00Z")),
            Some(at("2026-11-24T02:00:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-07-01T12:00:00Z")),
            Some(at("2026-07-02T01:00:00Z"))
        );
    }

    #[test]
    fn seconds_may_be_scheduled() {
        let s = Schedule::parse("*/5 * * * * *", "UTC", vec![], Duration::from_secs(1)).unwrap();
        assert_eq!(
            s.next_after(at("2026-11-23T12:00:01Z")),
            Some(at("2026-11-23T12:00:05Z"))
        );
    }

    #[test]
    fn wrong_values_are_named() {
        let e = Schedule::parse("0 0 3 * *  * * *", "UTC", vec![], Duration::ZERO).unwrap_err();
        assert!(
            e.contains("`0 0 3 * *  * * *` is not a cron pattern"),
            "{e}"
        );
        let e = Schedule::parse("0 3 * * *", "Mars/Olympus", vec![], Duration::ZERO).unwrap_err();
        assert!(e.contains("`Mars/Olympus` is not a time zone"), "{e}");
        let e = Blackout::parse("0 18 * * FRI", Duration::ZERO).unwrap_err();
        assert!(e.contains("more than 0"), "{e}");
    }
}
