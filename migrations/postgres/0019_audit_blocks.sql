-- The audit trail in blocks: one row per written batch instead of one row per audited request
-- (issue 4, item 7: the trail must cost less than 5 % of throughput).
--
-- Measured on the read benchmark (scripts/bench-interleaved.py, 2-core VM): with one row per
-- request PostgreSQL spent 5.7 us of CPU per audited request on the writer's connection, about
-- 4 % of the whole machine's work for a read, however the rows were shaped (0017, 0018). Almost
-- all of it is per tuple: COPY's parsing of each column, the heap insert, the primary key's
-- btree, the BRIN. A batch stored as one value costs per byte instead: 0.8-0.9 us per entry for
-- 1,200-entry blocks (a micro-benchmark on the same machine; 2.4-3.2 us with the value
-- compressed, hence `storage external`).
--
-- A block holds its entries in COPY's text format, one line each: id, recorded, agent,
-- interaction, status, entity_type, entity_id, address, request_id, tab-separated, `\N` for
-- null, backslash escapes (https://www.postgresql.org/docs/15/sql-copy.html#id-1.9.3.55.9.2).
-- The server decodes blocks for AuditEvent searches (src/store/audit.rs), scanning them newest
-- first by `first_id` and skipping blocks by their id and time ranges; the view `audit_event`
-- below decodes them in SQL for people and tests.
create table audit_block (
    -- entries have ids in [first_id, last_id]; blocks never overlap
    first_id     bigint  primary key,
    last_id      bigint  not null,
    n            integer not null,
    -- microseconds since the epoch, of the block's earliest and latest entry
    recorded_min bigint  not null,
    recorded_max bigint  not null,
    data         bytea   not null,
    check (first_id <= last_id and recorded_min <= recorded_max)
);
alter table audit_block alter column data set storage external;
create index audit_block_recorded on audit_block (recorded_max);

-- A value of a COPY text line, decoded: `\N` is null; `\\`, `\t`, `\n`, `\r` stand for a
-- backslash, tab, newline and carriage return (the writer cleans control characters out of
-- the text it keeps, so U+0001 can stand in for an escaped backslash while the others are
-- replaced).
create function audit_copy_value(v text) returns text
language sql immutable strict parallel safe
as $$
    select case when v = '\N' then null else
        replace(replace(replace(replace(replace(v, '\\', chr(1)), '\t', chr(9)), '\n', chr(10)),
                        '\r', chr(13)), chr(1), '\')
    end
$$;

-- The rows written so far, as blocks of at most 4,096 ids (as the writer takes them).
insert into audit_block (first_id, last_id, n, recorded_min, recorded_max, data)
select min(id), max(id), count(*), min(recorded), max(recorded),
       convert_to(string_agg(
           concat_ws(E'\t', id, recorded, coalesce(agent::text, '\N'), interaction, status,
                     coalesce(replace(replace(replace(replace(entity_type, '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r'), '\N'),
                     coalesce(replace(replace(replace(replace(entity_id, '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r'), '\N'),
                     coalesce(replace(replace(replace(replace(address, '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r'), '\N'),
                     coalesce(replace(replace(replace(replace(request_id, '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r'), '\N'))
           || E'\n', '' order by id), 'UTF8')
from audit_log
group by id / 4096;

-- Ids go on from where they were, in blocks of 4,096.
alter sequence audit_log_id_seq owned by none;
alter sequence audit_log_id_seq rename to audit_id_seq;
drop view audit_event;
drop table audit_log;
drop table audit_partition;
drop table audit_partition_size;

create view audit_event as
select e.id, e.recorded, i.kind, i.subtype, i.action,
       case when e.status < 400 then '0' when e.status < 500 then '4' else '8' end as outcome,
       e.status, a.client_id, a.subject, a.role, a.organization, a.issuer,
       e.entity_type, e.entity_id, e.address, e.request_id
from audit_block b
cross join lateral (
    select c[1]::bigint as id, c[2]::bigint as recorded, audit_copy_value(c[3])::integer as agent,
           c[4]::smallint as interaction, c[5]::integer as status,
           audit_copy_value(c[6]) as entity_type, audit_copy_value(c[7]) as entity_id,
           audit_copy_value(c[8]) as address, audit_copy_value(c[9]) as request_id
    from string_to_table(convert_from(b.data, 'UTF8'), E'\n') as l(line)
    cross join lateral string_to_array(l.line, E'\t') as c
    where l.line <> ''
) e
left join audit_interaction i on i.id = e.interaction
left join audit_agent a on a.id = e.agent;
