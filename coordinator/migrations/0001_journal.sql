-- rewind's coordinator journal. Portable SQL: the same migration runs on
-- SQLite (the embedded default) and PostgreSQL. Times are Unix milliseconds.

CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    targets TEXT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);

CREATE TABLE releases (
    name TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE snapshots (
    release_name TEXT NOT NULL,
    agent TEXT NOT NULL,
    target TEXT NOT NULL,
    plugin TEXT NOT NULL,
    digest TEXT NOT NULL,
    data TEXT NOT NULL,
    summary TEXT NOT NULL,
    taken_at BIGINT NOT NULL,
    PRIMARY KEY (release_name, agent, target)
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    plan_name TEXT NOT NULL,
    plan_path TEXT NOT NULL,
    plan_toml TEXT NOT NULL,
    release_name TEXT NOT NULL,
    status TEXT NOT NULL,
    started_by TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    confirm_data_loss BIGINT NOT NULL,
    force_apply BIGINT NOT NULL,
    data_loss_window BIGINT
);

CREATE TABLE stages (
    run_id TEXT NOT NULL,
    idx BIGINT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    PRIMARY KEY (run_id, idx)
);

CREATE TABLE steps (
    run_id TEXT NOT NULL,
    idx BIGINT NOT NULL,
    id TEXT NOT NULL,
    stage BIGINT NOT NULL,
    agent TEXT NOT NULL,
    target TEXT NOT NULL,
    action TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    summary TEXT NOT NULL,
    error_kind TEXT NOT NULL,
    error_message TEXT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    PRIMARY KEY (run_id, idx)
);

CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    unix_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    stage TEXT NOT NULL,
    agent TEXT NOT NULL,
    target TEXT NOT NULL,
    step_id TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
