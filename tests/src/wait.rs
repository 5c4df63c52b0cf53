//! Waiting on facts, not on time: `eventually` asks a question until it
//! has an answer or its patience runs out, and then fails with the last
//! thing it saw.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How often a question is asked again.
const EVERY: Duration = Duration::from_millis(100);

/// Ask `check` until it answers `Ok`, for at most `patience`; panic with
/// `what` and the last `Err` seen otherwise.
pub fn eventually<T, E: Debug>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let until = Instant::now() + patience;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= until => {
                panic!("{what}: not within {patience:?}; last seen: {last:?}")
            }
            Err(_) => std::thread::sleep(EVERY),
        }
    }
}
