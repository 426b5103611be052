-- The audit trail in partitions whose entity index is built once they are full (issue 4,
-- item 7: the trail must cost less than 5 % of throughput).
--
-- Measured (COPY of 1,200-row batches into a 300,000-row table, ids of 200,000 entities,
-- PostgreSQL 15, backend CPU per row): 7.3-9.4 us with the btree on `entity_id`, 3.0-3.4 us
-- without it, because every row inserts a random text key there; the primary key (ids only
-- grow) and the BRIN on `recorded` cost little. Building the same index in one pass over a full
-- partition costs 2.2-2.8 us per row, once. So the partition being written has no entity index
-- (a search by entity reads it in full, at most `audit_partition_size.ids` rows), and the
-- writer indexes each partition once a newer one exists (`CREATE INDEX CONCURRENTLY`, off the
-- request path: src/store/audit.rs). Partitions also make retention cheap: dropping the oldest
-- is one statement.
--
-- Ids come in blocks of 4,096 (one `nextval` per written batch instead of one per row); a
-- partition holds whole blocks. https://www.postgresql.org/docs/15/ddl-partitioning.html

drop view audit_event;
alter table audit_log rename to audit_log_0;
alter index audit_log_pkey rename to audit_log_0_pkey;
alter index audit_log_recorded rename to audit_log_0_recorded;
alter index audit_log_entity rename to audit_log_0_entity;
alter table audit_log_0 alter column id drop default;

create table audit_log (
    id          bigint   not null default nextval('audit_log_id_seq'),
    recorded    bigint   not null,
    agent       integer,
    interaction smallint not null,
    status      smallint not null,
    entity_type text,
    entity_id   text,
    address     text,
    request_id  text,
    primary key (id)
) partition by range (id);
create index audit_log_recorded on audit_log using brin (recorded);
alter sequence audit_log_id_seq owned by audit_log.id increment by 4096;

-- Ids per new partition; a multiple of the 4,096-id block. Tests make it small.
create table audit_partition_size (
    one boolean primary key default true check (one),
    ids bigint  not null check (ids >= 4096 and ids % 4096 = 0)
);
insert into audit_partition_size (ids) values (16777216);

-- The partitions, kept by the writer: `audit_log_<lower>` holds ids in [lower, upper).
create table audit_partition (
    name           text    primary key,
    lower          bigint  not null,
    upper          bigint  not null,
    entity_indexed boolean not null default false,
    check (lower < upper)
);

-- The rows so far become the first partition (with the entity index they have), and new ids
-- start at the next multiple of the partition size.
do $$
declare
    size bigint := (select ids from audit_partition_size);
    upper bigint;
begin
    select (coalesce(max(id), 0) / size + 1) * size into upper from audit_log_0;
    execute format(
        'alter table audit_log attach partition audit_log_0 for values from (minvalue) to (%s)',
        upper);
    insert into audit_partition (name, lower, upper, entity_indexed)
    values ('audit_log_0', -9223372036854775808, upper, true);
    perform setval('audit_log_id_seq', upper, false);
end
$$;

create view audit_event as
select l.id, l.recorded, i.kind, i.subtype, i.action,
       case when l.status < 400 then '0' when l.status < 500 then '4' else '8' end as outcome,
       l.status::integer as status, a.client_id, a.subject, a.role, a.organization, a.issuer,
       l.entity_type, l.entity_id, l.address, l.request_id
from audit_log l
left join audit_interaction i on i.id = l.interaction
left join audit_agent a on a.id = l.agent;
