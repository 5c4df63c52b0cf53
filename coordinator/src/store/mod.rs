//! The coordinator's journal, through sqlx: SQLite by default (one file,
//! nothing to install), PostgreSQL for teams that run several coordinators.
//! Both run the same migrations and the same queries.
//!
//! A run's state is written in one transaction per batch of engine events,
//! before the steps it dispatches are sent, together with the notifications
//! those events cause (the outbox), so that none is lost or invented.

mod drills;
pub mod lease;
mod outbox;

pub use drills::{BusyAgent, DrillRunRecord, ScheduleRecord};
pub use outbox::OutboxRecord;

use crate::engine::{HookStatus, Note, RunState, StepStatus};
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}: {error}")]
    Open { url: String, error: String },
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Conflict(String),
    #[error("database: a stored value cannot be read: {0}")]
    Corrupt(String),
    /// The leader lease does not allow this coordinator to write.
    #[error("{0}")]
    Fenced(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetRecord {
    pub name: String,
    pub plugin: String,
    pub digest: String,
}

#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub targets: Vec<TargetRecord>,
    pub last_seen_ms: u64,
}

#[derive(Debug, Clone)]
pub struct SnapshotRecord {
    pub agent: String,
    pub target: String,
    pub plugin: String,
    pub digest: String,
    pub data: String,
    pub summary: String,
    pub taken_at: u64,
}

#[derive(Debug, Clone)]
pub struct ReleaseRecord {
    pub name: String,
    pub env: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: String,
    pub plan_name: String,
    pub plan_path: String,
    pub plan_toml: String,
    pub release: String,
    pub status: String,
    pub started_by: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub confirm_data_loss: bool,
    pub force: bool,
    /// The largest data-loss window the preview announced.
    pub data_loss_window: Option<u64>,
    pub halting: bool,
    pub cancelling: bool,
    /// What the stages decided, once over (empty before).
    pub verdict: String,
    /// `rollback`, or a drill's `drill-back` / `drill-forward`.
    pub kind: String,
    /// The drill run this run is a leg of (empty for a rollback).
    pub drill_run: String,
    /// The environment of its agents (empty: the fleet has no `env` labels).
    pub env: String,
}

#[derive(Debug, Clone)]
pub struct HookRecord {
    pub idx: usize,
    pub name: String,
    /// before, after or finally.
    pub phase: String,
    pub status: String,
    pub attempt: u32,
    pub answer: String,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct StepRecord {
    pub idx: usize,
    pub id: String,
    pub stage: usize,
    pub agent: String,
    pub target: String,
    pub action: String,
    pub status: String,
    pub attempt: u32,
    pub summary: String,
    /// Whether the step changed its target.
    pub changed: bool,
    pub error_kind: String,
    pub error_message: String,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// The data-loss window the step's preview announced (data steps only).
    pub data_loss_window: Option<u64>,
    /// Further lines of the outcome, e.g. a command's exit code and output.
    pub details: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct StageRecord {
    pub idx: usize,
    pub name: String,
    pub status: String,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub run_id: String,
    pub seq: u64,
    pub unix_ms: u64,
    /// An [`EventKind`](crate::vocabulary::EventKind)'s text, as journaled
    /// (read with [`EventRecord::kind`]).
    pub kind: String,
    pub stage: String,
    pub agent: String,
    pub target: String,
    pub step_id: String,
    pub message: String,
}

impl EventRecord {
    /// What the event says happened; `None` for a text this version does
    /// not know (written by a newer coordinator).
    pub fn kind(&self) -> Option<crate::vocabulary::EventKind> {
        crate::vocabulary::EventKind::parse(&self.kind)
    }

    /// An event of a run or drill run as a whole (no stage, host or step).
    pub fn whole(
        run_id: &str,
        seq: u64,
        unix_ms: u64,
        kind: crate::vocabulary::EventKind,
        message: String,
    ) -> EventRecord {
        EventRecord {
            run_id: run_id.to_string(),
            seq,
            unix_ms,
            kind: kind.as_str().to_string(),
            stage: String::new(),
            agent: String::new(),
            target: String::new(),
            step_id: String::new(),
            message,
        }
    }
}

/// The columns `run_from` reads, in one place for every runs query.
macro_rules! run_columns {
    () => {
        "id, plan_name, plan_path, plan_toml, release_name, status, started_by, started_ms, finished_ms, \
         confirm_data_loss, force_apply, data_loss_window, halting, cancelling, verdict, kind, drill_run, env"
    };
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
    fence: lease::FenceCell,
}

fn u(row: &AnyRow, column: &str) -> Result<u64, sqlx::Error> {
    Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
}

fn opt_u(row: &AnyRow, column: &str) -> Result<Option<u64>, sqlx::Error> {
    Ok(row
        .try_get::<Option<i64>, _>(column)?
        .map(|v| v.max(0) as u64))
}

fn s(row: &AnyRow, column: &str) -> Result<String, sqlx::Error> {
    row.try_get::<String, _>(column)
}

impl Store {
    /// Open (creating a SQLite file if needed) and migrate.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let open_error = |e: sqlx::Error| StoreError::Open {
            url: url.to_string(),
            error: e.to_string(),
        };
        let sqlite = url.starts_with("sqlite:");
        let connect_url = if sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .map_err(open_error)?;
        if sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(open_error)?;
        }
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store {
            pool,
            sqlite,
            fence: lease::FenceCell::default(),
        })
    }

    /// Record agents as they said Hello, in one transaction (an agent
    /// named twice is recorded as it said last).
    pub async fn upsert_agents(&self, agents: &[AgentRecord]) -> Result<(), StoreError> {
        let mut latest: HashMap<&str, &AgentRecord> = HashMap::new();
        for agent in agents {
            latest.insert(&agent.name, agent);
        }
        let latest: Vec<&AgentRecord> = latest.into_values().collect();
        let mut tx = self.pool.begin().await?;
        for chunk in latest.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO agents (name, labels, targets, last_seen_ms) VALUES {} \
                 ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, \
                 targets = excluded.targets, last_seen_ms = excluded.last_seen_ms",
                rows(self.sqlite, chunk.len(), 4, "")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for agent in chunk {
                let labels = serde_json::to_string(&agent.labels)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let targets = serde_json::to_string(&agent.targets)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                query = query
                    .bind(agent.name.clone())
                    .bind(labels)
                    .bind(targets)
                    .bind(agent.last_seen_ms as i64);
            }
            query.execute(&mut *tx).await?;
        }
        self.commit(tx).await?;
        Ok(())
    }

    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT name, labels, targets, last_seen_ms FROM agents ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(AgentRecord {
                    name: s(row, "name")?,
                    labels: serde_json::from_str(&s(row, "labels")?)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    targets: serde_json::from_str(&s(row, "targets")?)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    last_seen_ms: u(row, "last_seen_ms")?,
                })
            })
            .collect()
    }

    /// Record a release with all its snapshots, or nothing.
    pub async fn insert_release(
        &self,
        release: &ReleaseRecord,
        created_by: &str,
        snapshots: &[SnapshotRecord],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT name FROM releases WHERE name = $1")
            .bind(&release.name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!(
                "release {} already exists; choose another name",
                release.name
            )));
        }
        sqlx::query(
            "INSERT INTO releases (name, env, created_ms, created_by) VALUES ($1, $2, $3, $4)",
        )
        .bind(&release.name)
        .bind(&release.env)
        .bind(release.created_ms as i64)
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
        for snap in snapshots {
            sqlx::query(
                "INSERT INTO snapshots (release_name, agent, target, plugin, digest, data, summary, taken_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&release.name)
            .bind(&snap.agent)
            .bind(&snap.target)
            .bind(&snap.plugin)
            .bind(&snap.digest)
            .bind(&snap.data)
            .bind(&snap.summary)
            .bind(snap.taken_at as i64)
            .execute(&mut *tx)
            .await?;
        }
        self.commit(tx).await?;
        Ok(())
    }

    pub async fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT name, env, created_ms FROM releases ORDER BY created_ms, name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(ReleaseRecord {
                    name: s(row, "name")?,
                    env: s(row, "env")?,
                    created_ms: u(row, "created_ms")?,
                })
            })
            .collect()
    }

    pub async fn release(&self, name: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        Ok(self.releases().await?.into_iter().find(|r| r.name == name))
    }

    pub async fn snapshots(&self, release: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT agent, target, plugin, digest, data, summary, taken_at FROM snapshots WHERE release_name = $1 ORDER BY agent, target",
        )
        .bind(release)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SnapshotRecord {
                    agent: s(row, "agent")?,
                    target: s(row, "target")?,
                    plugin: s(row, "plugin")?,
                    digest: s(row, "digest")?,
                    data: s(row, "data")?,
                    summary: s(row, "summary")?,
                    taken_at: u(row, "taken_at")?,
                })
            })
            .collect()
    }

    /// Record a new run with its stages and steps (all pending).
    pub async fn create_run(
        &self,
        run: &RunRecord,
        stages: &[StageRecord],
        steps: &[StepRecord],
        hooks: &[HookRecord],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO runs (id, plan_name, plan_path, plan_toml, release_name, status, started_by, started_ms, finished_ms, \
             confirm_data_loss, force_apply, data_loss_window, kind, drill_run, env) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&run.id)
        .bind(&run.plan_name)
        .bind(&run.plan_path)
        .bind(&run.plan_toml)
        .bind(&run.release)
        .bind(&run.status)
        .bind(&run.started_by)
        .bind(run.started_ms as i64)
        .bind(run.confirm_data_loss as i64)
        .bind(run.force as i64)
        .bind(run.data_loss_window.map(|w| w as i64))
        .bind(&run.kind)
        .bind(&run.drill_run)
        .bind(&run.env)
        .execute(&mut *tx)
        .await?;
        for stage in stages {
            sqlx::query("INSERT INTO stages (run_id, idx, name, status, started_ms, finished_ms) VALUES ($1, $2, $3, $4, NULL, NULL)")
                .bind(&run.id)
                .bind(stage.idx as i64)
                .bind(&stage.name)
                .bind(&stage.status)
                .execute(&mut *tx)
                .await?;
        }
        // Many rows per statement: a run of a large fleet has thousands.
        for chunk in steps.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO steps (run_id, idx, id, stage, agent, target, action, status, data_loss_window, \
                 attempt, summary, error_kind, error_message, started_ms, finished_ms) VALUES {}",
                rows(self.sqlite, chunk.len(), 9, "0, '', '', '', NULL, NULL")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for step in chunk {
                query = query
                    .bind(&run.id)
                    .bind(step.idx as i64)
                    .bind(&step.id)
                    .bind(step.stage as i64)
                    .bind(&step.agent)
                    .bind(&step.target)
                    .bind(&step.action)
                    .bind(&step.status)
                    .bind(step.data_loss_window.map(|w| w as i64));
            }
            query.execute(&mut *tx).await?;
        }
        for hook in hooks {
            sqlx::query(
                "INSERT INTO hooks (run_id, idx, name, phase, status, attempt, answer, started_ms, finished_ms) \
                 VALUES ($1, $2, $3, $4, $5, 0, '', NULL, NULL)",
            )
            .bind(&run.id)
            .bind(hook.idx as i64)
            .bind(&hook.name)
            .bind(&hook.phase)
            .bind(&hook.status)
            .execute(&mut *tx)
            .await?;
        }
        self.commit(tx).await?;
        Ok(())
    }

    /// Journal what changed in a run since the last call, its notes and
    /// the notifications they cause, in one transaction; clears the state's
    /// dirty lists.
    pub async fn persist(
        &self,
        run_id: &str,
        state: &mut RunState,
        events: &[EventRecord],
        outbox: &[OutboxRecord],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        journal(&mut tx, self.sqlite, events, outbox).await?;
        let mut steps = std::mem::take(&mut state.dirty_steps);
        steps.sort_unstable();
        steps.dedup();
        // Steps that changed alike (dispatched together, or finished with
        // the same summary) are updated by one statement.
        let mut alike: BTreeMap<StepRow, Vec<i64>> = BTreeMap::new();
        for idx in steps {
            let status = &state.step_status[idx];
            let (summary, changed, kind, message) = match status {
                StepStatus::Succeeded(done) => (done.summary.as_str(), done.changed, "", ""),
                StepStatus::Failed(f) => ("", false, f.kind.as_str(), f.message.as_str()),
                _ => ("", false, "", ""),
            };
            let details = match status {
                StepStatus::Succeeded(done) if !done.details.is_empty() => {
                    serde_json::to_string(&done.details).unwrap_or_default()
                }
                StepStatus::Failed(f) if !f.details.is_empty() => {
                    serde_json::to_string(&f.details).unwrap_or_default()
                }
                _ => String::new(),
            };
            let started = matches!(status, StepStatus::Sent { .. });
            let finished = matches!(status, StepStatus::Succeeded(_) | StepStatus::Failed(_));
            let row = StepRow {
                status: status.as_str(),
                attempt: state.attempts[idx] as i64,
                summary: summary.to_string(),
                kind: kind.to_string(),
                message: message.to_string(),
                started,
                finished,
                changed,
                details,
            };
            alike.entry(row).or_default().push(idx as i64);
        }
        for (row, indexes) in alike {
            for chunk in indexes.chunks(ROWS_PER_STATEMENT) {
                let p = |n| placeholder(self.sqlite, n);
                let sql = format!(
                    "UPDATE steps SET status = {}, attempt = {}, summary = {}, error_kind = {}, error_message = {}, \
                     started_ms = CASE WHEN {} = 1 THEN {} ELSE started_ms END, \
                     finished_ms = CASE WHEN {} = 1 THEN {} ELSE finished_ms END, changed = {}, details = {} \
                     WHERE run_id = {} AND idx IN ({})",
                    p(1),
                    p(2),
                    p(3),
                    p(4),
                    p(5),
                    p(6),
                    p(7),
                    p(8),
                    p(9),
                    p(10),
                    p(11),
                    p(12),
                    placeholders(self.sqlite, 13, chunk.len())
                );
                let mut query = sqlx::query(AssertSqlSafe(sql))
                    .bind(row.status)
                    .bind(row.attempt)
                    .bind(&row.summary)
                    .bind(&row.kind)
                    .bind(&row.message)
                    .bind(row.started as i64)
                    .bind(now_ms as i64)
                    .bind(row.finished as i64)
                    .bind(now_ms as i64)
                    .bind(row.changed as i64)
                    .bind(&row.details)
                    .bind(run_id);
                for idx in chunk {
                    query = query.bind(*idx);
                }
                query.execute(&mut *tx).await?;
            }
        }
        let mut hooks = std::mem::take(&mut state.dirty_hooks);
        hooks.sort_unstable();
        hooks.dedup();
        for idx in hooks {
            let status = &state.hook_status[idx];
            let started = *status == HookStatus::Running;
            let finished = matches!(status, HookStatus::Succeeded(_) | HookStatus::Failed(_));
            sqlx::query(
                "UPDATE hooks SET status = $1, attempt = $2, answer = $3, \
                 started_ms = CASE WHEN $4 = 1 AND started_ms IS NULL THEN $5 ELSE started_ms END, \
                 finished_ms = CASE WHEN $6 = 1 THEN $5 ELSE finished_ms END \
                 WHERE run_id = $7 AND idx = $8",
            )
            .bind(status.as_str())
            .bind(state.hook_attempts[idx] as i64)
            .bind(status.answer())
            .bind(started as i64)
            .bind(now_ms as i64)
            .bind(finished as i64)
            .bind(run_id)
            .bind(idx as i64)
            .execute(&mut *tx)
            .await?;
        }
        let mut stages = std::mem::take(&mut state.dirty_stages);
        stages.sort_unstable();
        stages.dedup();
        for idx in stages {
            let status = state.stage_status[idx];
            let started = status == crate::engine::StageStatus::Running;
            let finished = status.is_settled();
            sqlx::query(
                "UPDATE stages SET status = $1, \
                 started_ms = CASE WHEN $2 = 1 AND started_ms IS NULL THEN $3 ELSE started_ms END, \
                 finished_ms = CASE WHEN $4 = 1 THEN $3 ELSE finished_ms END \
                 WHERE run_id = $5 AND idx = $6",
            )
            .bind(status.as_str())
            .bind(started as i64)
            .bind(now_ms as i64)
            .bind(finished as i64)
            .bind(run_id)
            .bind(idx as i64)
            .execute(&mut *tx)
            .await?;
        }
        let finished = state.status.is_terminal().then_some(now_ms as i64);
        sqlx::query(
            "UPDATE runs SET status = $1, finished_ms = $2, halting = $3, cancelling = $4, verdict = $5 WHERE id = $6",
        )
        .bind(state.status.as_str())
        .bind(finished)
        .bind(state.halting as i64)
        .bind(state.cancelling as i64)
        .bind(state.verdict.map_or("", |v| v.as_str()))
        .bind(run_id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Steps journaled as sent, in runs not yet finished.
    pub async fn steps_in_flight(&self) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS n FROM steps JOIN runs ON runs.id = steps.run_id \
             WHERE steps.status = 'sent' AND runs.status IN ('running', 'paused')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u(&row, "n")?)
    }

    /// Journal events outside of a run's batches (e.g. a run that cannot be resumed).
    pub async fn append_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        journal(&mut tx, self.sqlite, events, &[]).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Forget a retired agent: it no longer counts in plans and checkpoints.
    /// Its snapshots in past releases and its runs' history are kept.
    pub async fn remove_agent(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM agents WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(done.rows_affected() > 0)
    }

    fn run_from(row: &AnyRow) -> Result<RunRecord, StoreError> {
        Ok(RunRecord {
            id: s(row, "id")?,
            plan_name: s(row, "plan_name")?,
            plan_path: s(row, "plan_path")?,
            plan_toml: s(row, "plan_toml")?,
            release: s(row, "release_name")?,
            status: s(row, "status")?,
            started_by: s(row, "started_by")?,
            started_ms: u(row, "started_ms")?,
            finished_ms: opt_u(row, "finished_ms")?,
            confirm_data_loss: u(row, "confirm_data_loss")? != 0,
            force: u(row, "force_apply")? != 0,
            data_loss_window: opt_u(row, "data_loss_window")?,
            halting: u(row, "halting")? != 0,
            cancelling: u(row, "cancelling")? != 0,
            verdict: s(row, "verdict")?,
            kind: s(row, "kind")?,
            drill_run: s(row, "drill_run")?,
            env: s(row, "env")?,
        })
    }

    pub async fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::run_from).transpose()
    }

    /// The latest runs, newest first.
    pub async fn runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs ORDER BY started_ms DESC, id DESC LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::run_from).collect()
    }

    /// Runs that were running or paused when the coordinator stopped.
    pub async fn unfinished_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE status IN ('running', 'paused') ORDER BY started_ms"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::run_from).collect()
    }

    pub async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, id, stage, agent, target, action, status, attempt, summary, changed, error_kind, error_message, \
             started_ms, finished_ms, data_loss_window, details FROM steps WHERE run_id = $1 ORDER BY idx",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StepRecord {
                    idx: u(row, "idx")? as usize,
                    id: s(row, "id")?,
                    stage: u(row, "stage")? as usize,
                    agent: s(row, "agent")?,
                    target: s(row, "target")?,
                    action: s(row, "action")?,
                    status: s(row, "status")?,
                    attempt: u(row, "attempt")? as u32,
                    summary: s(row, "summary")?,
                    changed: u(row, "changed")? != 0,
                    error_kind: s(row, "error_kind")?,
                    error_message: s(row, "error_message")?,
                    started_ms: opt_u(row, "started_ms")?,
                    finished_ms: opt_u(row, "finished_ms")?,
                    data_loss_window: opt_u(row, "data_loss_window")?,
                    details: match s(row, "details")?.as_str() {
                        "" => Vec::new(),
                        text => serde_json::from_str(text).map_err(|e| {
                            StoreError::Corrupt(format!(
                                "details of step {}: {e}",
                                s(row, "id").unwrap_or_default()
                            ))
                        })?,
                    },
                })
            })
            .collect()
    }

    pub async fn hooks(&self, run_id: &str) -> Result<Vec<HookRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, name, phase, status, attempt, answer, started_ms, finished_ms FROM hooks \
             WHERE run_id = $1 ORDER BY idx",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(HookRecord {
                    idx: u(row, "idx")? as usize,
                    name: s(row, "name")?,
                    phase: s(row, "phase")?,
                    status: s(row, "status")?,
                    attempt: u(row, "attempt")? as u32,
                    answer: s(row, "answer")?,
                    started_ms: opt_u(row, "started_ms")?,
                    finished_ms: opt_u(row, "finished_ms")?,
                })
            })
            .collect()
    }

    pub async fn stages(&self, run_id: &str) -> Result<Vec<StageRecord>, StoreError> {
        let rows = sqlx::query("SELECT idx, name, status, started_ms, finished_ms FROM stages WHERE run_id = $1 ORDER BY idx")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StageRecord {
                    idx: u(row, "idx")? as usize,
                    name: s(row, "name")?,
                    status: s(row, "status")?,
                    started_ms: opt_u(row, "started_ms")?,
                    finished_ms: opt_u(row, "finished_ms")?,
                })
            })
            .collect()
    }

    pub async fn events_after(
        &self,
        run_id: &str,
        after_seq: u64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT run_id, seq, unix_ms, kind, stage, agent, target, step_id, message FROM events \
             WHERE run_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(run_id)
        .bind(after_seq as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(EventRecord {
                    run_id: s(row, "run_id")?,
                    seq: u(row, "seq")?,
                    unix_ms: u(row, "unix_ms")?,
                    kind: s(row, "kind")?,
                    stage: s(row, "stage")?,
                    agent: s(row, "agent")?,
                    target: s(row, "target")?,
                    step_id: s(row, "step_id")?,
                    message: s(row, "message")?,
                })
            })
            .collect()
    }
}

/// Journal events and the notifications they cause, in the caller's transaction.
async fn journal(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sqlite: bool,
    events: &[EventRecord],
    notifications: &[OutboxRecord],
) -> Result<(), StoreError> {
    // Many rows per statement: a batch of a large run holds thousands.
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO events (run_id, seq, unix_ms, kind, stage, agent, target, step_id, message) VALUES {}",
            rows(sqlite, chunk.len(), 9, "")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for event in chunk {
            query = query
                .bind(&event.run_id)
                .bind(event.seq as i64)
                .bind(event.unix_ms as i64)
                .bind(&event.kind)
                .bind(&event.stage)
                .bind(&event.agent)
                .bind(&event.target)
                .bind(&event.step_id)
                .bind(&event.message);
        }
        query.execute(&mut **tx).await?;
    }
    outbox::insert(tx, notifications).await
}

/// `count` bound parameters from `$first` on: `$3, $4, $5`.
///
/// SQLite gets anonymous `?`s, bound in order: it looks a numbered
/// parameter's name up in a list as long as the statement's parameters,
/// for each one bound, which makes a statement of thousands of them cost
/// the square of that.
fn placeholders(sqlite: bool, first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| placeholder(sqlite, n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `count` rows of `columns` bound parameters each, numbered on from row to
/// row, each followed by `constants` (SQL literals, or empty):
/// `($1, $2, 0), ($3, $4, 0)`.
fn rows(sqlite: bool, count: usize, columns: usize, constants: &str) -> String {
    (0..count)
        .map(|i| {
            let bound = placeholders(sqlite, i * columns + 1, columns);
            if constants.is_empty() {
                format!("({bound})")
            } else {
                format!("({bound}, {constants})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `n`th bound parameter (see `placeholders`).
fn placeholder(sqlite: bool, n: usize) -> String {
    if sqlite {
        "?".to_string()
    } else {
        format!("${n}")
    }
}

/// The columns a step's update sets (beside the time).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct StepRow {
    status: &'static str,
    attempt: i64,
    summary: String,
    kind: String,
    message: String,
    started: bool,
    finished: bool,
    changed: bool,
    details: String,
}

/// Rows (or step indexes) one statement carries at most: within SQLite's
/// and PostgreSQL's limits on bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// Turn an engine note into a journal event.
pub fn event_of(
    run_id: &str,
    seq: u64,
    now_ms: u64,
    note: &Note,
    state: &RunState,
    step_ids: &[String],
) -> EventRecord {
    let step = note.step.map(|i| &state.steps[i]);
    EventRecord {
        run_id: run_id.to_string(),
        seq,
        unix_ms: now_ms,
        kind: note.kind.to_string(),
        stage: note
            .stage
            .map(|i| state.stages[i].name.clone())
            .unwrap_or_default(),
        agent: step.map(|s| s.agent.clone()).unwrap_or_default(),
        target: step.map(|s| s.target.clone()).unwrap_or_default(),
        step_id: note.step.map(|i| step_ids[i].clone()).unwrap_or_default(),
        message: note.message.clone(),
    }
}

impl Store {
    /// Commit a journal transaction if the lease still allows this
    /// coordinator to write (the fence), timing it for the metrics.
    pub(crate) async fn commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.check_fence(&mut tx).await?;
        tx.commit().await?;
        crate::metrics::journal_write(started.elapsed());
        Ok(())
    }
}
