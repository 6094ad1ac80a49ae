-- GET /api/v1/github/deliveries shows every reader what each delivery led to (never its payload):
-- the deliveries' read policy follows the readers of the runs they start.
DROP POLICY github_deliveries_select ON github_deliveries;
CREATE POLICY github_deliveries_select ON github_deliveries AS PERMISSIVE FOR SELECT TO authenticated
    USING ((SELECT auth.jwt() -> 'app_metadata' ->> 'devart_role') = ANY ('{viewer,ci,supervisor,admin}'::text[]));
