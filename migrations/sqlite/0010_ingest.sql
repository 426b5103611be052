-- Raw inbound device messages (issue 5, item 7): every body a hub, gateway or cellular vendor
-- posts, kept with its SHA-256 and what became of each reading in it, for the retention window
-- (`VB_RAW_RETENTION_DAYS`, 7 days by default), then purged in the background. Readings that
-- were refused (unknown, inactive or unassigned device, bad packet) live only here.
create table ingest_message (
    id          integer primary key autoincrement,
    -- hex SHA-256 of `body`; Provenance.entity names the message by it
    sha256      text    not null,
    -- microseconds since the epoch, when the server received it
    received_at bigint  not null,
    -- `hub` or `cellular/{vendor}`
    channel     text    not null,
    -- the authenticated sender: a hub's client id, a vendor name
    sender      text    not null,
    -- the owning organization of the sender (tenancy), if known
    organization text,
    body        blob    not null,
    -- JSON array: per reading, `accepted`, `duplicate` or `rejected` with the reason
    results     text    not null
);
create index ingest_message_received on ingest_message (received_at);
create index ingest_message_sha256 on ingest_message (sha256);
