-- The leader lease: coordinators sharing one journal elect one leader, the
-- only one that drives runs, drills and schedules. `term` is the fencing
-- token: raised by each new leader, and checked (with the holder) in every
-- journal transaction, so a deposed leader's writes are refused by the
-- database itself. `expires_ms` is on the database's clock.
CREATE TABLE leader (
    id INTEGER PRIMARY KEY,
    holder TEXT NOT NULL,
    term BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

INSERT INTO leader (id, holder, term, expires_ms) VALUES (1, '', 0, 0);
