//! The journal of drills: each drill run's row (its phase, legs, verdict and
//! timings), each drill's schedule (the occurrence it last fired or skipped
//! for), and which agents the unfinished runs touch.

use super::{EventRecord, OutboxRecord, Store, StoreError, journal, opt_u, s, u};
use crate::drill::{DrillState, Phase, Verdict};
use sqlx::any::AnyRow;

#[derive(Debug, Clone)]
pub struct DrillRunRecord {
    pub id: String,
    pub drill: String,
    /// schedule, catch-up, or operator:<name>.
    pub trigger: String,
    /// The scheduled occurrence it ran (or was skipped) for.
    pub due_ms: Option<u64>,
    pub env: String,
    pub plan_name: String,
    pub plan_path: String,
    pub plan_toml: String,
    pub confirm_data_loss: bool,
    pub rto_target_ms: u64,
    /// The release taken at the start (`drill/<name>/<time>`).
    pub checkpoint: String,
    /// The release rolled back to.
    pub back_to: String,
    pub back_run: String,
    pub forward_run: String,
    pub state: DrillState,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
}

impl DrillRunRecord {
    /// running, paused, or the verdict.
    pub fn status(&self) -> &'static str {
        match (self.state.verdict, self.state.phase) {
            (Some(v), _) => v.as_str(),
            (None, Phase::RollForward) if self.state.critical => "paused",
            (None, _) => "running",
        }
    }
}

/// A drill's schedule as journaled.
#[derive(Debug, Clone)]
pub struct ScheduleRecord {
    pub drill: String,
    pub pattern: String,
    /// When this pattern was first seen: occurrences before it were never missed.
    pub since_ms: u64,
    pub last_due_ms: Option<u64>,
    /// The pass (a drill run id, or `never`) a stale notice was sent for.
    pub stale_notified: String,
}

/// The columns `drill_from` reads, in one place for every query.
macro_rules! columns {
    () => {
        "id, drill, trigger_by, due_ms, env, plan_name, plan_path, plan_toml, confirm_data_loss, \
         rto_target_ms, checkpoint, back_to, back_run, forward_run, phase, verdict, reason, abort_reason, critical, \
         started_ms, finished_ms, checkpoint_started_ms, checkpoint_finished_ms, verify_started_ms, verify_finished_ms"
    };
}

fn drill_from(row: &AnyRow) -> Result<DrillRunRecord, StoreError> {
    let corrupt = |e: crate::engine::Corrupt| StoreError::Corrupt(e.to_string());
    Ok(DrillRunRecord {
        id: s(row, "id")?,
        drill: s(row, "drill")?,
        trigger: s(row, "trigger_by")?,
        due_ms: opt_u(row, "due_ms")?,
        env: s(row, "env")?,
        plan_name: s(row, "plan_name")?,
        plan_path: s(row, "plan_path")?,
        plan_toml: s(row, "plan_toml")?,
        confirm_data_loss: u(row, "confirm_data_loss")? != 0,
        rto_target_ms: u(row, "rto_target_ms")?,
        checkpoint: s(row, "checkpoint")?,
        back_to: s(row, "back_to")?,
        back_run: s(row, "back_run")?,
        forward_run: s(row, "forward_run")?,
        state: DrillState {
            phase: Phase::parse(&s(row, "phase")?).map_err(corrupt)?,
            verdict: Verdict::parse(&s(row, "verdict")?).map_err(corrupt)?,
            reason: s(row, "reason")?,
            abort: s(row, "abort_reason")?,
            critical: u(row, "critical")? != 0,
            checkpoint_started_ms: opt_u(row, "checkpoint_started_ms")?,
            checkpoint_finished_ms: opt_u(row, "checkpoint_finished_ms")?,
            verify_started_ms: opt_u(row, "verify_started_ms")?,
            verify_finished_ms: opt_u(row, "verify_finished_ms")?,
        },
        started_ms: u(row, "started_ms")?,
        finished_ms: opt_u(row, "finished_ms")?,
    })
}

impl Store {
    /// Record a new drill run (or a skipped one) and, for a scheduled one,
    /// the occurrence its schedule is now past, in one transaction: an
    /// occurrence is fired or skipped exactly once.
    pub async fn create_drill_run(
        &self,
        run: &DrillRunRecord,
        schedule: Option<&ScheduleRecord>,
        events: &[EventRecord],
        outbox_rows: &[OutboxRecord],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let st = &run.state;
        sqlx::query(concat!(
            "INSERT INTO drill_runs (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)"
        ))
        .bind(&run.id)
        .bind(&run.drill)
        .bind(&run.trigger)
        .bind(run.due_ms.map(|v| v as i64))
        .bind(&run.env)
        .bind(&run.plan_name)
        .bind(&run.plan_path)
        .bind(&run.plan_toml)
        .bind(run.confirm_data_loss as i64)
        .bind(run.rto_target_ms as i64)
        .bind(&run.checkpoint)
        .bind(&run.back_to)
        .bind(&run.back_run)
        .bind(&run.forward_run)
        .bind(st.phase.as_str())
        .bind(st.verdict.map_or("", |v| v.as_str()))
        .bind(&st.reason)
        .bind(&st.abort)
        .bind(st.critical as i64)
        .bind(run.started_ms as i64)
        .bind(run.finished_ms.map(|v| v as i64))
        .bind(st.checkpoint_started_ms.map(|v| v as i64))
        .bind(st.checkpoint_finished_ms.map(|v| v as i64))
        .bind(st.verify_started_ms.map(|v| v as i64))
        .bind(st.verify_finished_ms.map(|v| v as i64))
        .execute(&mut *tx)
        .await?;
        if let Some(schedule) = schedule {
            upsert_schedule(&mut tx, schedule).await?;
        }
        journal(&mut tx, self.sqlite, events, outbox_rows).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Journal a drill run's state, its events and their notifications in
    /// one transaction.
    pub async fn persist_drill(
        &self,
        id: &str,
        state: &DrillState,
        finished_ms: Option<u64>,
        events: &[EventRecord],
        outbox_rows: &[OutboxRecord],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE drill_runs SET phase = $1, verdict = $2, reason = $3, abort_reason = $4, critical = $5, \
             finished_ms = $6, checkpoint_started_ms = $7, checkpoint_finished_ms = $8, verify_started_ms = $9, \
             verify_finished_ms = $10 WHERE id = $11",
        )
        .bind(state.phase.as_str())
        .bind(state.verdict.map_or("", |v| v.as_str()))
        .bind(&state.reason)
        .bind(&state.abort)
        .bind(state.critical as i64)
        .bind(finished_ms.map(|v| v as i64))
        .bind(state.checkpoint_started_ms.map(|v| v as i64))
        .bind(state.checkpoint_finished_ms.map(|v| v as i64))
        .bind(state.verify_started_ms.map(|v| v as i64))
        .bind(state.verify_finished_ms.map(|v| v as i64))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        journal(&mut tx, self.sqlite, events, outbox_rows).await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub async fn drill_run(&self, id: &str) -> Result<Option<DrillRunRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM drill_runs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(drill_from).transpose()
    }

    /// A drill's runs, newest first (all drills' when `drill` is empty).
    pub async fn drill_runs(
        &self,
        drill: &str,
        limit: u32,
    ) -> Result<Vec<DrillRunRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM drill_runs WHERE drill = $1 OR $1 = '' ORDER BY started_ms DESC, id DESC LIMIT $2"
        ))
        .bind(drill)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(drill_from).collect()
    }

    /// Drill runs not done: to resume after a restart, and to keep
    /// operators' runs off their agents.
    pub async fn unfinished_drill_runs(&self) -> Result<Vec<DrillRunRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM drill_runs WHERE phase <> 'done' ORDER BY started_ms"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(drill_from).collect()
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT drill, pattern, since_ms, last_due_ms, stale_notified FROM drill_schedules",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ScheduleRecord {
                    drill: s(row, "drill")?,
                    pattern: s(row, "pattern")?,
                    since_ms: u(row, "since_ms")?,
                    last_due_ms: opt_u(row, "last_due_ms")?,
                    stale_notified: s(row, "stale_notified")?,
                })
            })
            .collect()
    }

    /// Record a schedule (first seen, changed, or a stale notice sent) with
    /// the events and notifications that go with it.
    pub async fn save_schedule(
        &self,
        schedule: &ScheduleRecord,
        events: &[EventRecord],
        outbox_rows: &[OutboxRecord],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        upsert_schedule(&mut tx, schedule).await?;
        journal(&mut tx, self.sqlite, events, outbox_rows).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// The agents that unfinished runs have steps on: (agent, run id, plan
    /// name, started by, drill run), one row per agent and run.
    pub async fn busy_agents(&self) -> Result<Vec<BusyAgent>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT steps.agent AS agent, runs.id AS run_id, runs.plan_name AS plan_name, \
             runs.started_by AS started_by, runs.drill_run AS drill_run FROM steps \
             JOIN runs ON runs.id = steps.run_id WHERE runs.status IN ('running', 'paused') \
             ORDER BY run_id, agent",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BusyAgent {
                    agent: s(row, "agent")?,
                    run_id: s(row, "run_id")?,
                    plan: s(row, "plan_name")?,
                    started_by: s(row, "started_by")?,
                    drill_run: s(row, "drill_run")?,
                })
            })
            .collect()
    }

    /// The next sequence number of a subject's events (a drill run, or a
    /// drill's own `drill/<name>` for stale and skipped notices).
    pub async fn next_event_seq(&self, subject: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS n FROM events WHERE run_id = $1")
            .bind(subject)
            .fetch_one(&self.pool)
            .await?;
        Ok(u(&row, "n")? + 1)
    }
}

/// An agent an unfinished run has a step on.
#[derive(Debug, Clone)]
pub struct BusyAgent {
    pub agent: String,
    pub run_id: String,
    pub plan: String,
    pub started_by: String,
    pub drill_run: String,
}

async fn upsert_schedule(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    schedule: &ScheduleRecord,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM drill_schedules WHERE drill = $1")
        .bind(&schedule.drill)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO drill_schedules (drill, pattern, since_ms, last_due_ms, stale_notified) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&schedule.drill)
    .bind(&schedule.pattern)
    .bind(schedule.since_ms as i64)
    .bind(schedule.last_due_ms.map(|v| v as i64))
    .bind(&schedule.stale_notified)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
