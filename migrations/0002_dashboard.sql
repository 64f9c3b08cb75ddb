-- Dashboard actions: an operator may kill a queued or running job, and a retried job points to
-- the run that replaced it.
ALTER TABLE dataset_runs DROP CONSTRAINT dataset_runs_state_check;
ALTER TABLE dataset_runs ADD CONSTRAINT dataset_runs_state_check
    CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead', 'killed'));
ALTER TABLE dataset_runs ADD COLUMN retried_as TEXT;
CREATE INDEX dataset_runs_by_finish ON dataset_runs (finished_at) WHERE finished_at IS NOT NULL;
