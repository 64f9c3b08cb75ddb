-- Retries go back to the queue: a run waiting for its next attempt says when that is and how
-- many attempts it has in all. A job's attempt number travels in its queued body.
ALTER TABLE dataset_runs ADD COLUMN next_attempt_at TEXT;
ALTER TABLE dataset_runs ADD COLUMN max_attempts INTEGER;
CREATE INDEX dataset_runs_queued ON dataset_runs (dataset_id) WHERE state = 'queued';
