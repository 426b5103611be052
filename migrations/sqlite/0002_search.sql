-- The search index (https://hl7.org/fhir/R4/search.html#ptypes): one table per parameter type,
-- one row per (resource, parameter, value) of the CURRENT version of each resource. A write
-- replaces the rows of its resource in the same transaction (DESIGN.md rule 1); a delete leaves
-- none, so the index alone answers "which current resources match" without a join.
-- `_id` and `_lastUpdated` are answered from `resource` itself.
--
-- Tokens: `system` is null when the value has none; `text` is the normalised display of the
-- Coding / text of the CodeableConcept, for the `:text` modifier.
alter table search_token add column text text;
drop index search_token_lookup;
drop index search_token_owner;
-- res_id last: counting and intersecting the matches of a code reads the index only.
create index search_token_lookup on search_token (res_type, param, code, system, res_id);
-- The owner index carries the code, so checking a resource's category or code is index-only.
create index search_token_owner on search_token (res_type, res_id, param, code, system);

-- Strings: `norm` is lower-cased with accents removed (the default match is a case- and
-- accent-insensitive prefix), `exact` as written (`:exact`). Collation "C" makes the prefix
-- (SQLite compares text bytewise by default, as collation "C" does on PostgreSQL.)
--
create table search_string (
    res_type text not null,
    res_id   text not null,
    param    text not null,
    norm     text not null,
    exact    text not null
);
create index search_string_lookup on search_string (res_type, param, norm);
create index search_string_owner on search_string (res_type, res_id, param);

-- Dates: the inclusive range of instants the value covers, in microseconds since the epoch
-- (an open Period end is the smallest / largest bigint).
create table search_date (
    res_type text   not null,
    res_id   text   not null,
    param    text   not null,
    lo       bigint not null,
    hi       bigint not null
);
create index search_date_lookup on search_date (res_type, param, lo, hi);
create index search_date_owner on search_date (res_type, res_id, param, lo, hi);

-- References: `target_type`/`target_id` for literal references `Type/id` (relative or absolute),
-- `url` as written. The lookup index also serves `_revinclude` and `_has`.
-- `date_lo`/`date_hi` carry the envelope of the referring resource's `date` parameter (e.g. an
-- Observation's effective time), so "this patient's readings since X" is one range of the
-- lookup index instead of a probe per reading.
-- `code_system`/`code`: a `subject` row is written once per `code` token of the resource (the
-- system '' when it has none), so the lookup index walks one patient's readings of one code
-- newest first: `$lastn` reads `max` rows per code instead of probing every reading's code.
create table search_reference (
    res_type    text not null,
    res_id      text not null,
    param       text not null,
    target_type text,
    target_id   text,
    url         text not null,
    date_lo     bigint,
    date_hi     bigint,
    code_system text,
    code        text
);
create index search_reference_lookup on search_reference
    (res_type, param, target_id, code, code_system, date_hi desc, res_id desc);
create index search_reference_owner on search_reference (res_type, res_id, param);

-- Quantities: the value as given and, when the unit is a known UCUM unit, in the canonical unit
-- of its dimension (`cvalue`, `ccode`), so `gt70|http://unitsofmeasure.org|kg` finds pounds.
create table search_quantity (
    res_type text not null,
    res_id   text not null,
    param    text not null,
    value    real not null,
    system   text,
    code     text,
    cvalue   real,
    ccode    text
);
create index search_quantity_lookup on search_quantity (res_type, param, value);
create index search_quantity_owner on search_quantity (res_type, res_id, param);

create table search_number (
    res_type text not null,
    res_id   text not null,
    param    text not null,
    value    real not null
);
create index search_number_lookup on search_number (res_type, param, value);
create index search_number_owner on search_number (res_type, res_id, param);

create table search_uri (
    res_type text not null,
    res_id   text not null,
    param    text not null,
    value    text not null
);
create index search_uri_lookup on search_uri (res_type, param, value);
create index search_uri_owner on search_uri (res_type, res_id, param);

-- Composite parameters (https://hl7.org/fhir/R4/search.html#composite): one row per tuple of
-- component values taken from the same element, so `component-code-value-quantity` pairs a
-- component's code with that component's value and not another's. Component 1 is a token
-- (or a reference as `Type/id` in c1_code); component 2 a token (c2_system, c2_code), a string
-- (c2_code, normalised), a date (c2_lo..c2_hi in microseconds) or a quantity/number (c2_lo =
-- c2_hi = value; c2_cvalue/c2_ccode canonical UCUM); component 3 a number (c3).
create table search_composite (
    res_type  text not null,
    res_id    text not null,
    param     text not null,
    c1_system text,
    c1_code   text not null,
    c2_system text,
    c2_code   text,
    c2_lo     real,
    c2_hi     real,
    c2_cvalue real,
    c2_ccode  text,
    c3        real
);
create index search_composite_lookup on search_composite (res_type, param, c1_code);
create index search_composite_owner on search_composite (res_type, res_id, param);
