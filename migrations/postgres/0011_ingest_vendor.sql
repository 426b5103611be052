-- Cellular vendor integrations (issue 5, "Three ways in" b): one per organization and vendor
-- account. The secret authenticates the vendor's webhooks (a header secret, HTTP Basic, or the
-- key of an HMAC-SHA256 of the body); HMAC needs it as such, so it is kept, never shown again
-- after it is issued, and never logged.
create table ingest_vendor (
    id           text    primary key,
    vendor       text    not null,
    organization text    not null,
    -- `header`, `basic` or `hmac`
    auth         text    not null,
    secret       text    not null,
    -- a "new data" notification's vendor (Withings-style): where the measures are fetched,
    -- and the bearer token that fetches them
    api_url      text,
    api_token    text,
    created_at   bigint  not null
);
