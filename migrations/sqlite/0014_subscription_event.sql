-- Subscriptions (issue 6): every event of every subscription, delivered or not, kept for
-- `Subscription/$events` (Subscriptions R5 Backport IG) for a retention period
-- (`VB_SUBSCRIPTION_EVENTS_DAYS`). Written with the notification, in the same transaction
-- (store::notify::enqueue); the notification queue itself forgets what it delivered.
create table subscription_event (
    subscription_id text not null,
    event_number    bigint not null,
    res_type        text not null,
    res_id          text not null,
    version_id      bigint not null,
    method          text   not null,
    created_at      bigint not null,
    primary key (subscription_id, event_number)
);
create index subscription_event_time on subscription_event (created_at);

-- Since when a notification has been failing: its retry window runs from here (null: it has
-- not failed, or its subscription was resumed since), not from when it was queued.
alter table notification add column failing_since bigint;
