-- The reporter updates a check-run row more than once in one transaction; from the second update on,
-- Postgres checks the row's foreign keys again (FOR KEY SHARE on the referenced rows). A run cancel
-- holds its workflow_runs row FOR UPDATE and then, through run_transitions' trigger, waits on the
-- check row the reporter holds, while the reporter waited on that workflow_runs row: a deadlock
-- (seen in the re-run test). Check rows are written in the transaction that creates their run and
-- pull request row, and runs are never deleted, so the two keys go; a check row's own locks then
-- never wait on a run or a pull request.
ALTER TABLE github_checks DROP CONSTRAINT github_checks_run_id_fkey;
ALTER TABLE github_checks DROP CONSTRAINT github_checks_repo_number_fkey;
