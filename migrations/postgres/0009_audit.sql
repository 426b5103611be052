-- The audit trail (issue 4, item 7): one narrow row per read, search, write, login and token
-- request, written in batches by a background task, served to admins as FHIR AuditEvent
-- (https://hl7.org/fhir/R4/auditevent.html). Who, what (type and id, never content), when,
-- outcome; nothing of a resource's content or a search's values is kept.
create table audit_event (
    id           bigserial primary key,
    -- microseconds since the epoch, when the request arrived
    recorded     bigint  not null,
    -- `rest` (a FHIR or API interaction), `login` (the login page) or `token` (the token endpoint)
    kind         text    not null,
    -- the interaction: read, vread, search-type, create, …, login, token
    subtype      text    not null,
    -- C R U D E (http://hl7.org/fhir/audit-event-action)
    action       text    not null,
    -- 0, 4, 8 (http://hl7.org/fhir/audit-event-outcome)
    outcome      text    not null,
    status       integer not null,
    client_id    text,
    subject      text,
    role         text,
    organization text,
    -- the external OpenID provider of the token, if not this server
    issuer       text,
    entity_type  text,
    entity_id    text,
    address      text,
    request_id   text
);
-- Every index costs each audited request a little more, so only two: rows are appended in
-- time order, so a BRIN index (a few pages per million rows, next to nothing to maintain) finds
-- a date range; the disclosures of one resource (`entity=Patient/1`) have a btree, and rows
-- without a resource (searches, logins) stay out of it. Other searches walk the rows newest
-- first by the primary key: give them a `date` range on a large trail.
create index audit_event_recorded on audit_event using brin (recorded);
create index audit_event_entity on audit_event (entity_id) where entity_id is not null;
