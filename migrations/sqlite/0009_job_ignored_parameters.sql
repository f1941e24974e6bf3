-- Parameters the request gave that the job's engine does not use (a JSON array of names): accepted, so
-- clients written for one engine work on every engine, and shown on the job.
ALTER TABLE jobs ADD COLUMN ignored_parameters TEXT NOT NULL DEFAULT '[]';
