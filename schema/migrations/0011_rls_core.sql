-- Row-level security on the tables of migrations 0001-0007 (docs/rls.md has the whole matrix).
-- Claim roles: viewer and ci read; ci also creates tasks and records changes; supervisor and admin
-- operate; admin alone reads or writes api_tokens; the audit log is append-only for everyone.
-- The last argument: the commands the background loops (devart_service) need on the table.

SELECT devart_secure_table('schema_migrations', '{admin}', '{admin}', '{admin}', '{admin}', '{}');

SELECT devart_secure_table('pools', '{viewer,ci,supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('agents', '{viewer,ci,supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('tasks', '{viewer,ci,supervisor,admin}', '{ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('task_transitions', '{viewer,ci,supervisor,admin}', '{ci,supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('attempts', '{viewer,ci,supervisor,admin}', '{ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('task_logs', '{viewer,ci,supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('outbox', '{supervisor,admin}', '{ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE,DELETE}');
SELECT devart_secure_table('dead_letters', '{supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('api_tokens', '{admin}', '{admin}', '{admin}', '{admin}', '{}');
SELECT devart_secure_table('audit_log', '{admin}', '{viewer,ci,supervisor,admin,agent}', '{}', '{}', '{INSERT}');

SELECT devart_secure_table('spans', '{viewer,ci,supervisor,admin}', '{agent,admin}', '{admin}', '{admin}',
                           '{SELECT,INSERT,DELETE}');
SELECT devart_secure_table('rca_memory', '{viewer,ci,supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('incidents', '{viewer,ci,supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('incident_anomalies', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('incident_silences', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT}');
SELECT devart_secure_table('maintenance_windows', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT}');
SELECT devart_secure_table('aiops_series_state', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT,UPDATE,DELETE}');
SELECT devart_secure_table('aiops_progress', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('rca_results', '{viewer,ci,supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('rca_calibration_samples', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('changes', '{viewer,ci,supervisor,admin}', '{ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT}');

-- The token functions of 0010 run as devart_auth, which FORCE ROW LEVEL SECURITY also binds.
CREATE POLICY api_tokens_auth_select ON api_tokens FOR SELECT TO devart_auth USING (true);
CREATE POLICY api_tokens_auth_update ON api_tokens FOR UPDATE TO devart_auth USING (true) WITH CHECK (true);
