-- Client assertions already used (private_key_jwt, SMART Backend Services: "the jti value ...
-- SHALL NOT be reused", RFC 7523 section 3): kept until they expire, so a replayed assertion is
-- refused by every process of a deployment.
create table auth_assertion_jti (
    client_id  text   not null,
    jti        text   not null,
    expires_at bigint not null,
    primary key (client_id, jti)
);
create index auth_assertion_jti_expiry on auth_assertion_jti (expires_at);
