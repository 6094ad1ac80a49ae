-- A ci token starts workflow runs, and the engine moves a run it starts (queued -> running, its first
-- steps to their tasks) in that same request: ci may update runs and their steps, not delete them.
-- Without this the UPDATEs matched no row (row-level security filters, it does not raise) and a run
-- started by ci stayed queued.
DROP POLICY workflow_runs_update ON workflow_runs;
CREATE POLICY workflow_runs_update ON workflow_runs FOR UPDATE TO authenticated
    USING ((SELECT auth.jwt() -> 'app_metadata' ->> 'devart_role') = ANY ('{ci,supervisor,admin}'::text[]))
    WITH CHECK ((SELECT auth.jwt() -> 'app_metadata' ->> 'devart_role') = ANY ('{ci,supervisor,admin}'::text[]));
DROP POLICY run_steps_update ON run_steps;
CREATE POLICY run_steps_update ON run_steps FOR UPDATE TO authenticated
    USING ((SELECT auth.jwt() -> 'app_metadata' ->> 'devart_role') = ANY ('{ci,supervisor,admin}'::text[]))
    WITH CHECK ((SELECT auth.jwt() -> 'app_metadata' ->> 'devart_role') = ANY ('{ci,supervisor,admin}'::text[]));
