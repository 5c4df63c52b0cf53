-- What resume needs beyond statuses (a halt or a cancel in progress), and
-- what each step did: whether it changed its target, and the data-loss
-- window its preview announced (so a report states a window only for data
-- steps that changed something).

ALTER TABLE runs ADD COLUMN halting BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cancelling BIGINT NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN changed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN data_loss_window BIGINT;
