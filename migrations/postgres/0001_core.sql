-- The core resource store (DESIGN.md, "Rules of the house" 1 and 2).
--
-- Every version of every resource is a row of resource_history; it is the only place the
-- JSON lives. resource holds one row per logical resource: the pointer to the current version and
-- the row that writers lock (select ... for update) to serialise concurrent updates of one resource.
-- Times are microseconds since the Unix epoch in a bigint, identical on both backends, so the
-- same comparisons and orderings hold on PostgreSQL and SQLite.

create table resource (
    res_type     text   not null,
    res_id       text   not null,
    -- current version; versions count 1, 2, 3 ... per resource and are never reused
    version_id   bigint not null,
    last_updated bigint not null,
    -- a deleted resource keeps its row so that its id is never handed out again and
    -- a read answers 410 Gone rather than 404 (FHIR R4 http.html#delete)
    deleted      boolean not null default false,
    primary key (res_type, res_id)
);

create table resource_history (
    res_type     text   not null,
    res_id       text   not null,
    version_id   bigint not null,
    last_updated bigint not null,
    -- the interaction that made this version: POST, PUT, PATCH or DELETE (Bundle.entry.request.method in history)
    method       text   not null,
    -- null for a delete
    content      text,
    primary key (res_type, res_id, version_id)
);

-- system- and type-level _history order by time
create index resource_history_time on resource_history (last_updated);
create index resource_history_type_time on resource_history (res_type, last_updated);

-- The change log: committed versions in the order they were written, read after commit by the
-- subscription engine, audit and billing (DESIGN.md rule 3). Written in the same transaction.
create table change_log (
    seq          bigserial primary key,
    res_type     text   not null,
    res_id       text   not null,
    version_id   bigint not null,
    method       text   not null,
    recorded_at  bigint not null
);

-- Token search index: one row per (resource, parameter, system, code). Until the search engine
-- lands it holds `identifier` only, which conditional create/update/delete and conditional
-- references in transactions need.
create table search_token (
    res_type text not null,
    res_id   text not null,
    param    text not null,
    system   text,
    code     text not null
);
create index search_token_lookup on search_token (res_type, param, code);
create index search_token_owner on search_token (res_type, res_id);
