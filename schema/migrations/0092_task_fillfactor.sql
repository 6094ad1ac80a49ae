-- Room on each page for the new versions of the rows updated in place. An attempt is updated once
-- or twice (start, end) and no update changes its only indexed columns, so with free space on its
-- page the update is HOT: no new primary-key entry and no lock record for a move to another page.
-- A task's status changes are never HOT (status is indexed), but a new version on the same page
-- still spares the move to another page. Applies to pages written from now on.
ALTER TABLE attempts SET (fillfactor = 50);
ALTER TABLE tasks SET (fillfactor = 70);
