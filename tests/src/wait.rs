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

/// `eventually` for questions that are asked over the network: the same
/// patience and failure, without blocking the runtime between tries.
pub async fn eventually_async<T, E: Debug>(
    what: &str,
    patience: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let until = Instant::now() + patience;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= until => {
                panic!("{what}: not within {patience:?}; last seen: {last:?}")
            }
            Err(_) => tokio::time::sleep(EVERY).await,
        }
    }
}

/// `Ok` when `holds`, else what was seen: for `eventually`'s questions.
pub fn holds<E>(holds: bool, seen: E) -> Result<(), E> {
    if holds { Ok(()) } else { Err(seen) }
}
