-- Narrower audit rows: who and what kind of interaction move to dictionaries the writer fills
-- and caches, the outcome follows from the status; the view `audit_event` keeps the columns
-- of 0009 (see the PostgreSQL migration).
create table audit_agent (
    id           integer primary key,
    key          text not null unique,
    client_id    text,
    subject      text,
    role         text,
    organization text,
    issuer       text
);
create table audit_interaction (
    id      integer primary key,
    key     text not null unique,
    kind    text not null,
    subtype text not null,
    action  text not null
);
create table audit_log (
    id          integer primary key autoincrement,
    recorded    bigint  not null,
    agent       integer,
    interaction integer not null,
    status      integer not null,
    entity_type text,
    entity_id   text,
    address     text,
    request_id  text
);

insert into audit_interaction (key, kind, subtype, action)
select distinct kind || ' ' || subtype || ' ' || action, kind, subtype, action from audit_event;
insert or ignore into audit_agent (key, client_id, subject, role, organization, issuer)
select coalesce(client_id, char(30)) || char(31) || coalesce(subject, char(30)) || char(31) ||
       coalesce(role, char(30)) || char(31) || coalesce(organization, char(30)) || char(31) ||
       coalesce(issuer, char(30)),
       client_id, subject, role, organization, issuer
from audit_event
where coalesce(client_id, subject, role, organization, issuer) is not null;
insert into audit_log (id, recorded, agent, interaction, status, entity_type, entity_id, address,
                       request_id)
select e.id, e.recorded, a.id, i.id, e.status, e.entity_type, e.entity_id, e.address, e.request_id
from audit_event e
join audit_interaction i on i.key = e.kind || ' ' || e.subtype || ' ' || e.action
left join audit_agent a
  on a.key = coalesce(e.client_id, char(30)) || char(31) || coalesce(e.subject, char(30)) ||
             char(31) || coalesce(e.role, char(30)) || char(31) ||
             coalesce(e.organization, char(30)) || char(31) || coalesce(e.issuer, char(30));
drop table audit_event;

create index audit_log_recorded on audit_log (recorded);
create index audit_log_entity on audit_log (entity_id) where entity_id is not null;

-- The outcome (http://hl7.org/fhir/audit-event-outcome): success, minor failure (the
-- request's fault), serious failure (ours).
create view audit_event as
select l.id, l.recorded, i.kind, i.subtype, i.action,
       case when l.status < 400 then '0' when l.status < 500 then '4' else '8' end as outcome,
       l.status, a.client_id, a.subject, a.role, a.organization, a.issuer,
       l.entity_type, l.entity_id, l.address, l.request_id
from audit_log l
left join audit_interaction i on i.id = l.interaction
left join audit_agent a on a.id = l.agent;
