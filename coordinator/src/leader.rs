//! Leadership: several coordinators may share one journal (PostgreSQL);
//! one holds the lease and drives runs, drills and schedules, the others
//! stand by and take over when its lease lapses (docs/ha.md). The lease and
//! its fence live in the journal (`store::lease`).

use crate::store::{Store, StoreError};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Leadership {
    /// This coordinator's name in the lease (unique among coordinators).
    pub name: String,
    /// The URL operators and agents reach this coordinator at.
    pub address: String,
    pub lease: Duration,
    ready: AtomicBool,
    /// Who leads and where, as last read from the journal.
    holder: Mutex<(String, String)>,
}

/// The gRPC metadata key a standby's refusal carries the leader's URL in.
pub const LEADER_METADATA: &str = "rewind-leader";

impl Leadership {
    pub fn new(name: String, address: String, lease: Duration) -> Leadership {
        Leadership {
            name,
            address,
            lease,
            ready: AtomicBool::new(false),
            holder: Mutex::new((String::new(), String::new())),
        }
    }

    /// Who leads and the URL it advertises, as last read from the journal
    /// (empty when none is known yet).
    pub fn leader(&self) -> (String, String) {
        self.holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether this coordinator leads and has resumed its runs, so that
    /// agents and operators may be served.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// What agents and operators are told while this coordinator does not
    /// lead (agents then try the next coordinator they know).
    pub fn refusal(&self) -> tonic::Status {
        let (holder, address) = self.leader();
        let known = !holder.is_empty() && holder != self.name;
        let leader = match (known, address.is_empty()) {
            (false, _) => "no leader is known yet".to_string(),
            (true, true) => format!("the leader is coordinator {holder}"),
            (true, false) => format!("the leader is coordinator {holder} at {address}"),
        };
        let mut status = tonic::Status::unavailable(format!(
            "coordinator {} is a standby ({leader}); try another coordinator",
            self.name
        ));
        if known && let Ok(value) = address.parse() {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        status
    }

    /// Wait until this coordinator holds the lease; its term.
    pub async fn campaign(&self, store: &Store) -> Result<i64, StoreError> {
        store.stand_by();
        let mut announced = (String::new(), 0);
        loop {
            match store
                .acquire_lease(&self.name, &self.address, self.lease)
                .await
            {
                Ok(Some(term)) => {
                    *self.holder.lock().unwrap_or_else(|e| e.into_inner()) =
                        (self.name.clone(), self.address.clone());
                    return Ok(term);
                }
                Ok(None) => {
                    let held = store.lease_holder().await?;
                    if (held.holder.clone(), held.term) != announced {
                        eprintln!(
                            "coordinator {} stands by: {} leads (term {}); taking over if its lease lapses",
                            self.name, held.holder, held.term
                        );
                        announced = (held.holder.clone(), held.term);
                    }
                    *self.holder.lock().unwrap_or_else(|e| e.into_inner()) =
                        (held.holder, held.address);
                }
                Err(e) => tracing::warn!("cannot reach the journal for the lease: {e}"),
            }
            tokio::time::sleep(self.lease / 4).await;
        }
    }

    /// Runs and agents are resumed: serve them.
    pub fn ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Renew the lease until it is lost; why it was. A lease that cannot be
    /// renewed for its whole length is given up: another coordinator may
    /// hold it by then.
    pub async fn hold(&self, store: &Store) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.lease / 3).await;
            // A journal that does not answer counts as one that refused.
            let renewal = tokio::time::timeout(self.lease / 3, store.renew_lease(self.lease));
            let renewal = match renewal.await {
                Ok(renewal) => renewal,
                Err(_) => Err(StoreError::Fenced(format!(
                    "no answer from the journal within {}",
                    humantime::format_duration(self.lease / 3)
                ))),
            };
            match renewal {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    self.ready.store(false, Ordering::SeqCst);
                    return "another coordinator holds the lease".into();
                }
                Err(e) if renewed.elapsed() >= self.lease => {
                    store.depose();
                    self.ready.store(false, Ordering::SeqCst);
                    return format!(
                        "the lease could not be renewed for {} ({e})",
                        humantime::format_duration(self.lease)
                    );
                }
                Err(e) => tracing::warn!("cannot renew the lease yet: {e}"),
            }
        }
    }
}
