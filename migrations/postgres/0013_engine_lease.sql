-- Subscriptions (issue 6): one server process at a time matches the change log. The others
-- would only compute the same notifications and lose the race to queue them
-- (store::notify::enqueue); the leader renews its lease on every run, and another process
-- takes over when it lapses (a crashed or stopped leader).
alter table subscription_engine add column leader text;
alter table subscription_engine add column lease_until bigint not null default 0;

-- Wakes the engine when changes commit (store::changes::ChangeWaiter): NOTIFY is delivered at
-- commit, to every process, and repeats of it within one transaction are folded into one.
create function change_log_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('vb_change_log', '');
    return null;
end
$$;
create trigger change_log_notify after insert on change_log
    for each statement execute function change_log_notify();
