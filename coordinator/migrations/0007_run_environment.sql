-- The environment a run acted on (its agents' `env` label), named in its
-- report beside every host. Runs journaled before have none.
ALTER TABLE runs ADD COLUMN env TEXT NOT NULL DEFAULT '';
