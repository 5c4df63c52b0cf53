//! The ids of the steps the coordinator sends, in one place. An id names
//! what it is for (`<run>/<stage>/<agent>/<target>/<nonce>`, a smoke check,
//! a hook, a verify, a preview, a checkpoint) and ends with 64 random bits
//! where it must not be guessed: a verify gate's id is not guessable, so a
//! compromised agent cannot answer for another's gate.

use crate::runner::nonce;

/// A step of a run's stage.
pub fn stage_step(run: &str, stage: &str, agent: &str, target: &str) -> String {
    format!("{run}/{stage}/{agent}/{target}/{}", nonce())
}

/// A stage's smoke check on one target.
pub fn smoke(run: &str, stage: &str, agent: &str, target: &str) -> String {
    format!("{run}/{stage}/smoke/{agent}/{target}")
}

/// A hook's action on an agent.
pub fn hook(run: &str, hook: &str) -> String {
    format!("{run}/hook/{hook}")
}

/// The verify gate that follows a step.
pub fn verify_of(step: &str) -> String {
    format!("{step}/verify/{}", nonce())
}

/// A drill's verify of one target after its roll forward.
pub fn drill_verify(drill_run: &str, agent: &str, target: &str) -> String {
    format!("{drill_run}/verify/{agent}/{target}/{}", nonce())
}

/// A preview of one target.
pub fn preview(agent: &str, target: &str) -> String {
    format!("preview/{agent}/{target}/{}", nonce())
}

/// A snapshot of one target for a release.
pub fn checkpoint(release: &str, agent: &str, target: &str) -> String {
    format!("checkpoint/{release}/{agent}/{target}/{}", nonce())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_say_what_they_are_for_and_gates_cannot_be_guessed() {
        let step = super::stage_step("run-1", "data", "db-1", "pg");
        assert!(step.starts_with("run-1/data/db-1/pg/"), "{step}");
        let a = super::verify_of(&step);
        let b = super::verify_of(&step);
        assert!(a.starts_with(&format!("{step}/verify/")), "{a}");
        assert_ne!(a, b, "a gate's id is new each time");
        assert_eq!(a.rsplit('/').next().unwrap().len(), 16, "64 random bits");
    }
}
