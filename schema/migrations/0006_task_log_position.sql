-- Log lines of one attempt may come from several agents (a redelivery after an agent died), each
-- numbering its lines from 0: the key includes the agent, and `position` orders lines as stored.
ALTER TABLE task_logs ADD COLUMN agent_id text NOT NULL DEFAULT '';
ALTER TABLE task_logs ADD COLUMN position bigserial;
ALTER TABLE task_logs DROP CONSTRAINT task_logs_pkey;
ALTER TABLE task_logs ADD PRIMARY KEY (task_id, attempt, agent_id, seq);
CREATE UNIQUE INDEX task_logs_task_position ON task_logs (task_id, position);
