-- The token a gateway's row was first reported with: a report for that instance by another
-- token is refused, so that one gateway's token cannot overwrite (hide) another gateway's row.
-- '' for rows from before this column: bound by their next report.
ALTER TABLE gateways ADD COLUMN token TEXT NOT NULL DEFAULT '';
