-- People who sign in on the built-in authorization server's login page (SMART App Launch 2,
-- authorization code flow, https://hl7.org/fhir/smart-app-launch/app-launch.html).
-- Passwords are kept only as argon2 PHC strings. `failed_logins` and `locked_until` (unix
-- seconds) lock an account after repeated wrong passwords.
create table auth_user (
    username      text    primary key,
    password_hash text    not null,
    -- the role and organization the user acts with (DESIGN.md "Tenancy")
    role          text    not null,
    organization  text,
    -- the FHIR resource the user is (`Patient/…`, `Practitioner/…`): the `fhirUser` claim,
    -- and for a patient the patient in context
    fhir_user     text,
    failed_logins bigint  not null default 0,
    locked_until  bigint,
    created_at    bigint  not null
);

-- Authorization codes, single use, kept by the SHA-256 of the code (the code itself is
-- never stored) until they are exchanged or expire.
create table auth_code (
    code_hash      text   primary key,
    client_id      text   not null,
    redirect_uri   text   not null,
    scope          text   not null,
    username       text   not null,
    patient        text,
    code_challenge text   not null,
    nonce          text,
    expires_at     bigint not null
);

-- Refresh tokens (`offline_access`), by SHA-256; each is used once and replaced by a new one.
create table auth_refresh (
    token_hash text    primary key,
    client_id  text    not null,
    username   text    not null,
    scope      text    not null,
    patient    text,
    expires_at bigint  not null,
    revoked    boolean not null default false
);
