-- Decision-log events (OPA's schema, as gateways POST them to /v1/logs). The whole event is kept
-- as JSON text in `event`; the columns beside it are what queries filter and order on, taken from
-- it at ingest. `decision_id` is unique: a retried batch stores nothing twice.
-- decision: allow | deny | error. timestamp_ms: the event's `timestamp`, Unix milliseconds (UTC).
CREATE TABLE decision_logs (
    id           BIGSERIAL PRIMARY KEY,
    decision_id  TEXT    NOT NULL UNIQUE,
    bundle       TEXT    NOT NULL,
    revision     TEXT,
    route        TEXT,
    decision     TEXT    NOT NULL,
    timestamp_ms BIGINT  NOT NULL,
    event        TEXT    NOT NULL
);
-- Newest first, overall (queries without a bundle, retention) and per bundle.
CREATE INDEX decision_logs_by_time ON decision_logs (timestamp_ms, id);
CREATE INDEX decision_logs_by_bundle ON decision_logs (bundle, timestamp_ms, id);
