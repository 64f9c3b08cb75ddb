-- Live progress of a running attempt, written by its worker every few seconds (JSON text: rows
-- read and rejected so far, bytes, how far through the source where its size is known, rows per
-- second, the estimated seconds left, when it was written). Cleared when an attempt starts.
ALTER TABLE dataset_runs ADD COLUMN progress TEXT;
