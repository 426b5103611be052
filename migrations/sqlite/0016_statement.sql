-- Statements (issue 7): each invoice the billing run issues is e-mailed to the recipient's
-- billing contact. The run queues it here in the transaction that issues the invoice, so a
-- statement is never lost to a crash or an unreachable mail relay; the billing scheduler sends
-- what is due and retries with back-off.
create table statement_outbox (
    invoice_id text   primary key,
    queued_at  bigint not null,
    -- when to try next (microseconds); null once sent
    next_at    bigint,
    sent_at    bigint,
    attempts   integer not null default 0,
    last_error text
);
create index statement_outbox_due on statement_outbox (next_at);
