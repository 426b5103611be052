-- The built-in authorization server (SMART App Launch 2 / SMART Backend Services,
-- https://hl7.org/fhir/smart-app-launch/). Secrets are never stored: only their argon2 hashes.

-- The issuer's RSA signing keys (RS256 access and id tokens). The first process to start
-- generates one; every process of a deployment then signs and verifies with the oldest key, so
-- any of them can check a token another one issued. Kept as PKCS#8 PEM.
create table auth_signing_key (
    kid         text   primary key,
    private_pem text   not null,
    created_at  bigint not null
);

-- OAuth clients: EHRs and backend services (client_credentials), SMART apps (authorization code).
create table auth_client (
    client_id     text   primary key,
    -- argon2 PHC string of the client secret; null for clients that authenticate with
    -- private_key_jwt only
    secret_hash   text,
    -- the role the client acts with (admin, distributor, distributor-user, customer,
    -- customer-user) and the organization it belongs to (null for the platform's admins)
    role          text   not null,
    organization  text,
    -- the scopes it may be granted, space separated; a request can only narrow them
    scope         text   not null,
    name          text,
    -- private_key_jwt: the client's public keys, as a JWKS document or a URL to fetch it from
    jwks          text,
    jwks_url      text,
    -- JSON array of the exact redirect URIs an authorization request may name
    redirect_uris text   not null default '[]',
    created_at    bigint not null
);
