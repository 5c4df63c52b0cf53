-- Where operators reach the leader: the URL it advertises. A standby tells
-- operators and agents that ask it, so that writes go to the leader.
ALTER TABLE leader ADD COLUMN address TEXT NOT NULL DEFAULT '';
