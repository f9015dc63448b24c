-- What each revision cost when it was validated (JSON: sizes, compiled size, compile time, routes,
-- upstreams), compared by the growth guard with the next publish; and the reason given when a
-- publish was forced past the guard.
ALTER TABLE revisions ADD COLUMN figures TEXT;
ALTER TABLE revisions ADD COLUMN forced_reason TEXT;
