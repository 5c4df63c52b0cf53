-- Run hooks (before / after / finally) and what each answered; the verdict
-- of a run's stages, journaled before its closing hooks run; the further
-- lines of a step's outcome (e.g. a smoke test's exit code and last output).

ALTER TABLE runs ADD COLUMN verdict TEXT NOT NULL DEFAULT '';
ALTER TABLE steps ADD COLUMN details TEXT NOT NULL DEFAULT '';

CREATE TABLE hooks (
    run_id TEXT NOT NULL,
    idx BIGINT NOT NULL,
    name TEXT NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    answer TEXT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    PRIMARY KEY (run_id, idx)
);
