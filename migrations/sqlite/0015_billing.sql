-- Monthly billing (issue 7). The run of a month is done for a recipient (the Organization
-- invoiced) when its invoices are stored; the scheduler inside `serve` looks here to run each
-- recipient's month once, also for recipients that had nothing to invoice. The invoices
-- themselves are FHIR resources: this table only says the run has happened.
create table billing_run (
    recipient text   not null,
    -- YYYY-MM
    month     text   not null,
    -- microseconds since the epoch
    done_at   bigint not null,
    primary key (recipient, month)
);

-- Named leases: one server process at a time does the work a lease names (the billing
-- scheduler); another takes over when the holder stops renewing it.
create table lease (
    name        text   primary key,
    holder      text   not null,
    lease_until bigint not null
);
