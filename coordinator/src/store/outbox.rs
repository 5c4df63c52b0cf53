//! The notification outbox: a row per (event, webhook), written in the same
//! transaction as the event that causes it, taken by the delivery worker in
//! order, marked delivered once the webhook accepted it. Its id is the
//! delivery's idempotency key; a row written twice (an event journaled
//! again after a restart) is kept once.

use super::{Store, StoreError, opt_u, s, u};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// `<subject>/<event seq>/<webhook>`: the idempotency key.
    pub id: String,
    pub webhook: String,
    pub event: String,
    /// What to say, as JSON (`notify::Notice`); formatted for the
    /// webhook's kind when sent, with its secrets added then.
    pub notice: String,
    pub created_ms: u64,
    pub attempts: u32,
    pub next_ms: u64,
    pub delivered_ms: Option<u64>,
    pub given_up_ms: Option<u64>,
    pub last_error: String,
}

pub(super) async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[OutboxRecord],
) -> Result<(), StoreError> {
    for row in rows {
        // WHERE true: SQLite's upsert after INSERT ... SELECT needs it.
        sqlx::query(
            "INSERT INTO outbox (id, seq, webhook, event, notice, created_ms, attempts, next_ms, delivered_ms, \
             given_up_ms, last_error) SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, 0, $5, NULL, NULL, '' \
             FROM outbox WHERE true ON CONFLICT (id) DO NOTHING",
        )
        .bind(&row.id)
        .bind(&row.webhook)
        .bind(&row.event)
        .bind(&row.notice)
        .bind(row.created_ms as i64)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

macro_rules! columns {
    () => {
        "id, webhook, event, notice, created_ms, attempts, next_ms, delivered_ms, given_up_ms, last_error"
    };
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<OutboxRecord, StoreError> {
    Ok(OutboxRecord {
        id: s(row, "id")?,
        webhook: s(row, "webhook")?,
        event: s(row, "event")?,
        notice: s(row, "notice")?,
        created_ms: u(row, "created_ms")?,
        attempts: u(row, "attempts")? as u32,
        next_ms: u(row, "next_ms")?,
        delivered_ms: opt_u(row, "delivered_ms")?,
        given_up_ms: opt_u(row, "given_up_ms")?,
        last_error: s(row, "last_error")?,
    })
}

impl Store {
    /// The oldest notification a webhook has not yet taken (nor been given up on).
    pub async fn outbox_head(&self, webhook: &str) -> Result<Option<OutboxRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM outbox WHERE webhook = $1 AND delivered_ms IS NULL \
             AND given_up_ms IS NULL ORDER BY seq, id LIMIT 1"
        ))
        .bind(webhook)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Every notification, oldest first (for `rewind` and tests to see what
    /// was delivered).
    pub async fn outbox(&self, limit: u32) -> Result<Vec<OutboxRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM outbox ORDER BY seq, id LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// A try's outcome: delivered, or failed with when to try again (None:
    /// given up).
    pub async fn outbox_tried(
        &self,
        id: &str,
        attempts: u32,
        now_ms: u64,
        outcome: Result<(), (String, Option<u64>)>,
    ) -> Result<(), StoreError> {
        let (delivered, given_up, next, error) = match outcome {
            Ok(()) => (Some(now_ms), None, now_ms, String::new()),
            Err((error, Some(next))) => (None, None, next, error),
            Err((error, None)) => (None, Some(now_ms), now_ms, error),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE outbox SET attempts = $1, delivered_ms = $2, given_up_ms = $3, next_ms = $4, last_error = $5 \
             WHERE id = $6",
        )
        .bind(attempts as i64)
        .bind(delivered.map(|v| v as i64))
        .bind(given_up.map(|v| v as i64))
        .bind(next as i64)
        .bind(error)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(())
    }
}
