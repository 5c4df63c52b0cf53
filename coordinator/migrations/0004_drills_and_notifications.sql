-- Drills and notifications. A run may belong to a drill (its roll back or
-- roll forward); a drill run journals its phase and outcome so that a
-- restarted coordinator resumes it; each drill's schedule remembers the
-- occurrence it last fired (or skipped) for; the outbox holds every
-- notification until its webhook has taken it.

ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'rollback';
ALTER TABLE runs ADD COLUMN drill_run TEXT NOT NULL DEFAULT '';

CREATE TABLE drill_runs (
    id TEXT PRIMARY KEY,
    drill TEXT NOT NULL,
    trigger_by TEXT NOT NULL,
    due_ms BIGINT,
    env TEXT NOT NULL,
    plan_name TEXT NOT NULL,
    plan_path TEXT NOT NULL,
    plan_toml TEXT NOT NULL,
    confirm_data_loss BIGINT NOT NULL,
    rto_target_ms BIGINT NOT NULL,
    checkpoint TEXT NOT NULL,
    back_to TEXT NOT NULL,
    back_run TEXT NOT NULL,
    forward_run TEXT NOT NULL,
    phase TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    abort_reason TEXT NOT NULL,
    critical BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    checkpoint_started_ms BIGINT,
    checkpoint_finished_ms BIGINT,
    verify_started_ms BIGINT,
    verify_finished_ms BIGINT
);

CREATE INDEX drill_runs_by_drill ON drill_runs (drill, started_ms);

CREATE TABLE drill_schedules (
    drill TEXT PRIMARY KEY,
    pattern TEXT NOT NULL,
    since_ms BIGINT NOT NULL,
    last_due_ms BIGINT,
    stale_notified TEXT NOT NULL
);

CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    webhook TEXT NOT NULL,
    event TEXT NOT NULL,
    notice TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_ms BIGINT NOT NULL,
    delivered_ms BIGINT,
    given_up_ms BIGINT,
    last_error TEXT NOT NULL
);

CREATE INDEX outbox_pending ON outbox (webhook, delivered_ms, given_up_ms, seq);
