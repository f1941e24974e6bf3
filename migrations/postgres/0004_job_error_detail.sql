-- The operator's detail of a failed job (tool output, paths): shown to platform admins only;
-- error_message keeps the one line the user sees.
ALTER TABLE jobs ADD COLUMN error_detail TEXT;
