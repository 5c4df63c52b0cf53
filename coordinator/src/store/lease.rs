//! The leader lease and the fence, in the journal itself (docs/ha.md).
//!
//! One row holds the leader's name, its term and when its lease expires
//! (on the database's clock, so the coordinators' clocks do not matter). A
//! coordinator takes the lease when it has expired, or when it was its own
//! (a restarted coordinator takes over at once from its previous life),
//! raising the term. Every journal transaction of a coordinator first
//! checks that the row still names it with its term, in the same
//! transaction: that update locks the row, so a takeover waits for the
//! transaction, and a transaction after a takeover is refused. A leader
//! that was paused, or cut off from the database, cannot write once
//! another took over, whatever its own clock says.

use super::{Store, StoreError};
use sqlx::{AssertSqlSafe, Row};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What a coordinator may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// No lease is checked (tools, tests of the store).
    Unfenced,
    /// Waiting for the lease: nothing may be written.
    Standby,
    /// The leader of `term`.
    Leader { holder: String, term: i64 },
    /// It was the leader and is no more: nothing may be written, ever.
    Deposed { holder: String, term: i64 },
}

#[derive(Clone)]
pub(crate) struct FenceCell {
    state: Arc<RwLock<Fence>>,
    deposed: Arc<tokio::sync::Notify>,
}

impl Default for FenceCell {
    fn default() -> Self {
        FenceCell {
            state: Arc::new(RwLock::new(Fence::Unfenced)),
            deposed: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

impl FenceCell {
    pub(crate) fn get(&self) -> Fence {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, fence: Fence) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = fence;
    }

    /// This coordinator lost the lease: from now on nothing is written.
    pub(crate) fn depose(&self) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Fence::Leader { holder, term } = &*state {
            *state = Fence::Deposed {
                holder: holder.clone(),
                term: *term,
            };
        }
        drop(state);
        self.deposed.notify_waiters();
        self.deposed.notify_one();
    }
}

/// Who holds the lease, as the journal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    pub term: i64,
    /// The URL it advertises to operators and agents.
    pub address: String,
    /// How long until it expires (negative: expired).
    pub remaining_ms: i64,
}

impl Store {
    /// The database's clock, in Unix milliseconds, as SQL.
    fn now_sql(&self) -> &'static str {
        if self.sqlite {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)"
        } else {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        }
    }

    /// What this store may write now.
    pub fn fence(&self) -> Fence {
        self.fence.get()
    }

    /// From now on, write only as the lease's holder (a coordinator).
    pub fn stand_by(&self) {
        self.fence.set(Fence::Standby);
    }

    /// Resolves when this coordinator has been deposed.
    pub async fn deposed(&self) {
        loop {
            let notified = self.fence.deposed.notified();
            if matches!(self.fence.get(), Fence::Deposed { .. }) {
                return;
            }
            notified.await;
        }
    }

    pub async fn lease_holder(&self) -> Result<LeaseHolder, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT holder, term, address, expires_ms - {} AS remaining FROM leader WHERE id = 1",
            self.now_sql()
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(LeaseHolder {
            holder: row.try_get("holder")?,
            term: row.try_get("term")?,
            address: row.try_get("address")?,
            remaining_ms: row.try_get("remaining")?,
        })
    }

    /// Take the lease for `holder`, reachable at `address`, if it is free
    /// (expired, never held, or held by `holder` itself): its new term, or
    /// None.
    pub async fn acquire_lease(
        &self,
        holder: &str,
        address: &str,
        lease: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let now = self.now_sql();
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE leader SET holder = $1, term = term + 1, expires_ms = {now} + $2, address = $3 \
             WHERE id = 1 AND (holder = $1 OR holder = '' OR expires_ms < {now}) RETURNING term"
        )))
        .bind(holder)
        .bind(lease.as_millis() as i64)
        .bind(address)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let term: i64 = row.try_get("term")?;
        self.fence.set(Fence::Leader {
            holder: holder.to_string(),
            term,
        });
        Ok(Some(term))
    }

    /// Extend this leader's lease; false when another holds it now (then
    /// this coordinator is deposed).
    pub async fn renew_lease(&self, lease: Duration) -> Result<bool, StoreError> {
        let Fence::Leader { holder, term } = self.fence.get() else {
            return Ok(false);
        };
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE leader SET expires_ms = {} + $1 WHERE id = 1 AND holder = $2 AND term = $3",
            self.now_sql()
        )))
        .bind(lease.as_millis() as i64)
        .bind(&holder)
        .bind(term)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            self.fence.depose();
            return Ok(false);
        }
        Ok(true)
    }

    /// Give the lease up (a clean stop), so that a standby takes over at once.
    pub async fn release_lease(&self) -> Result<(), StoreError> {
        if let Fence::Leader { holder, term } = self.fence.get() {
            sqlx::query(
                "UPDATE leader SET expires_ms = 0 WHERE id = 1 AND holder = $1 AND term = $2",
            )
            .bind(&holder)
            .bind(term)
            .execute(&self.pool)
            .await?;
            self.fence.set(Fence::Deposed { holder, term });
        }
        Ok(())
    }

    /// The fence, inside a journal transaction: the lease must still name
    /// this coordinator with its term.
    pub(crate) async fn check_fence(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), StoreError> {
        match self.fence.get() {
            Fence::Unfenced => Ok(()),
            Fence::Standby => Err(StoreError::Fenced(
                "this coordinator is a standby; only the leader writes the journal".into(),
            )),
            Fence::Deposed { holder, term } => Err(StoreError::Fenced(format!(
                "{holder} was deposed as leader of term {term}; it writes nothing more"
            ))),
            Fence::Leader { holder, term } => {
                let done = sqlx::query(
                    "UPDATE leader SET term = term WHERE id = 1 AND holder = $1 AND term = $2",
                )
                .bind(&holder)
                .bind(term)
                .execute(&mut **tx)
                .await?;
                if done.rows_affected() == 1 {
                    Ok(())
                } else {
                    self.fence.depose();
                    Err(StoreError::Fenced(format!(
                        "{holder} is no longer the leader (its term {term} is over); the journal refused the write"
                    )))
                }
            }
        }
    }
}

impl Store {
    /// This coordinator gives up writing (its lease could not be renewed).
    pub fn depose(&self) {
        self.fence.depose();
    }
}
