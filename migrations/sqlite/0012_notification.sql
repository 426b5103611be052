-- Subscriptions (issue 6): where the subscription engine stands in the change log, and the
-- notifications waiting for delivery. The engine writes the notifications of a run of changes
-- and its new position in one transaction, so a crash between commit and delivery loses
-- nothing and matches nothing twice (DESIGN.md rule 3).

-- The engine's position (store::changes::ChangeCursor): every seq below next_seq is matched,
-- except those in gaps (a JSON array), which are still awaited.
create table subscription_engine (
    id        integer primary key check (id = 1),
    next_seq  bigint  not null,
    gaps      text    not null
);

-- Per subscription: how many events it has had (the Backport IG's eventsSinceSubscriptionStart;
-- each notification's eventNumber is the count after it).
create table subscription_events (
    subscription_id text primary key,
    events          bigint not null
);

-- Notifications in order per subscription: only the lowest event_number of a subscription is
-- ever delivered, so a later one never overtakes one being retried.
create table notification (
    id              integer primary key autoincrement,
    subscription_id text not null,
    event_number    bigint  not null,
    res_type        text not null,
    res_id          text not null,
    version_id      bigint  not null,
    method          text    not null,
    created_at      bigint  not null,
    -- not taken before (a retry's back-off, or another worker's lease)
    due_at          bigint  not null,
    attempts        integer not null default 0,
    last_error      text,
    unique (subscription_id, event_number)
);
create index notification_due on notification (due_at);
