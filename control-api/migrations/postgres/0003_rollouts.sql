-- Staged rollouts: a published revision goes to the canary cohort first; the bundle's active
-- revision (what everyone else is served) changes only when the rollout is promoted.
-- state: canary | promoted | rolled_back | superseded. Times are Unix milliseconds (UTC).
CREATE TABLE rollouts (
    id            BIGSERIAL PRIMARY KEY,
    bundle        TEXT    NOT NULL,
    revision      TEXT    NOT NULL,
    previous      TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    started_at_ms BIGINT  NOT NULL,
    ended_at_ms   BIGINT,
    reason        TEXT
);
CREATE INDEX rollouts_by_bundle ON rollouts (bundle, id);

-- What a gateway reported about its health (last activation attempt, what its bundle served),
-- as JSON: what a canary is judged by.
ALTER TABLE gateways ADD COLUMN health TEXT;
