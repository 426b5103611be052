-- Subscriptions (issue 6): one server process at a time matches the change log. The others
-- would only compute the same notifications and lose the race to queue them
-- (store::notify::enqueue); the leader renews its lease on every run, and another process
-- takes over when it lapses (a crashed or stopped leader).
alter table subscription_engine add column leader text;
alter table subscription_engine add column lease_until bigint not null default 0;
