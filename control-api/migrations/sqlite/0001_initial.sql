-- Bundles, their revisions (tarballs kept whole), the active revision of each bundle, and the
-- latest status report of each gateway. Times are Unix milliseconds (UTC).

CREATE TABLE revisions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    bundle          TEXT    NOT NULL,
    revision        TEXT    NOT NULL,
    digest          TEXT    NOT NULL,  -- lowercase hex SHA-256 of content: the ETag
    size            INTEGER NOT NULL,
    published_at_ms INTEGER NOT NULL,
    published_by    TEXT    NOT NULL,  -- the publishing token's name
    content         BLOB    NOT NULL,
    UNIQUE (bundle, revision)
);

CREATE INDEX revisions_by_digest ON revisions (bundle, digest);

CREATE TABLE bundles (
    name            TEXT    PRIMARY KEY NOT NULL,
    active_revision TEXT    NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    FOREIGN KEY (name, active_revision) REFERENCES revisions (bundle, revision)
);

CREATE TABLE gateways (
    instance          TEXT    PRIMARY KEY NOT NULL,
    bundle            TEXT    NOT NULL,
    revision          TEXT,
    digest            TEXT,
    last_sync         TEXT,   -- RFC 3339, as reported
    staleness_seconds REAL,
    last_report_ms    INTEGER NOT NULL
);
