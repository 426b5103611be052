//! The authorization server's tables (`0004_auth.sql`): signing keys and OAuth clients.

use super::{Store, StoreError};

/// A registered OAuth client, as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ClientRecord {
    pub client_id: String,
    /// argon2 PHC string; `None` for clients without a secret.
    pub secret_hash: Option<String>,
    pub role: String,
    pub organization: Option<String>,
    /// Space-separated scopes the client may be granted.
    pub scope: String,
    pub name: Option<String>,
    pub jwks: Option<String>,
    pub jwks_url: Option<String>,
    /// JSON array of redirect URIs.
    pub redirect_uris: String,
}

/// PostgreSQL text cannot hold NUL, and a query binding one fails: an id or name from a request
/// that holds one names nothing stored (and must not become a server error).
fn storable(s: &str) -> bool {
    !s.contains('\0')
}

const CLIENT_COLUMNS: &str =
    "client_id, secret_hash, role, organization, scope, name, jwks, jwks_url, redirect_uris";

impl Store {
    /// The oldest signing key (kid, PKCS#8 PEM), if any.
    pub async fn signing_key(&self) -> Result<Option<(String, String)>, StoreError> {
        let sql = "select kid, private_pem from auth_signing_key order by created_at, kid limit 1";
        Ok(on_pool!(self, write, pool => sqlx::query_as(sql).fetch_optional(pool).await?))
    }

    /// Stores a signing key unless one exists, and returns the key every process uses: when two
    /// processes start together, both insert and both then read the same oldest key.
    pub async fn ensure_signing_key(
        &self,
        kid: &str,
        pem: &str,
    ) -> Result<(String, String), StoreError> {
        let sql = "insert into auth_signing_key (kid, private_pem, created_at) values ($1, $2, $3) \
                   on conflict (kid) do nothing";
        let now = super::now_micros();
        on_pool!(self, write, pool => sqlx::query(sql).bind(kid).bind(pem).bind(now).execute(pool).await.map(|_| ())?);
        self.signing_key()
            .await?
            .ok_or(StoreError::Db(sqlx::Error::RowNotFound))
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        if !storable(client_id) {
            return Ok(None);
        }
        let sql = format!("select {CLIENT_COLUMNS} from auth_client where client_id = $1");
        Ok(
            on_pool!(self, write, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(client_id).fetch_optional(pool).await?),
        )
    }

    /// Every client, by id.
    pub async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let sql = format!("select {CLIENT_COLUMNS} from auth_client order by client_id");
        Ok(
            on_pool!(self, write, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?),
        )
    }

    /// Removes a client; false when there was none with that id.
    pub async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError> {
        if !storable(client_id) {
            return Ok(false);
        }
        let sql = "delete from auth_client where client_id = $1";
        let n = on_pool!(self, write, pool => sqlx::query(sql).bind(client_id).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// Creates the client, or replaces every field of the one with its id.
    pub async fn put_client(&self, c: &ClientRecord) -> Result<(), StoreError> {
        let sql = format!(
            "insert into auth_client ({CLIENT_COLUMNS}, created_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             on conflict (client_id) do update set secret_hash = excluded.secret_hash, \
             role = excluded.role, organization = excluded.organization, scope = excluded.scope, \
             name = excluded.name, jwks = excluded.jwks, jwks_url = excluded.jwks_url, \
             redirect_uris = excluded.redirect_uris"
        );
        let now = super::now_micros();
        on_pool!(self, write, pool => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&c.client_id)
            .bind(&c.secret_hash)
            .bind(&c.role)
            .bind(&c.organization)
            .bind(&c.scope)
            .bind(&c.name)
            .bind(&c.jwks)
            .bind(&c.jwks_url)
            .bind(&c.redirect_uris)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The Organizations whose `partOf` names `org` on this server (a distributor's customers,
    /// DESIGN.md "Tenancy"), from the search index of their current versions.
    pub async fn customer_orgs(&self, org: &str, base: &str) -> Result<Vec<String>, StoreError> {
        let sql = "select res_id from search_reference where res_type = 'Organization' \
                   and param = 'partof' and target_type = 'Organization' and target_id = $1 \
                   and (url not like '%://%' or url = $2) order by res_id";
        let absolute = format!("{}/Organization/{org}", base.trim_end_matches('/'));
        let rows: Vec<(String,)> = on_pool!(self, read, pool => sqlx::query_as(sql).bind(org).bind(&absolute).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Records the `jti` of a client assertion valid until `expires_at` (seconds since the
    /// epoch); false when the client used it before. Expired ones are forgotten on the way.
    pub async fn remember_assertion(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        // Kept a minute past expiry: verification tolerates that much clock skew.
        let purge = "delete from auth_assertion_jti where expires_at < $1 - 60";
        let insert = "insert into auth_assertion_jti (client_id, jti, expires_at) values ($1, $2, $3) \
                      on conflict (client_id, jti) do nothing";
        let n = on_pool!(self, write, pool => {
            sqlx::query(purge).bind(now).execute(pool).await?;
            sqlx::query(insert).bind(client_id).bind(jti).bind(expires_at).execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// A user by name.
    pub async fn user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        if !storable(username) {
            return Ok(None);
        }
        let sql = format!("select {USER_COLUMNS} from auth_user where username = $1");
        Ok(
            on_pool!(self, write, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(username).fetch_optional(pool).await?),
        )
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let sql = format!("select {USER_COLUMNS} from auth_user order by username");
        Ok(
            on_pool!(self, write, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?),
        )
    }

    /// Creates a user; false when the name is taken.
    pub async fn insert_user(&self, u: &UserRecord) -> Result<bool, StoreError> {
        self.write_user(u, "do nothing").await
    }

    /// Creates or updates the account of a person who signs in through an external provider
    /// (`u.password_hash` is the provider's marker): role, organization and patient as the
    /// provider says now. False when a local account (another hash) holds the name: it is not
    /// taken over.
    pub async fn upsert_federated_user(&self, u: &UserRecord) -> Result<bool, StoreError> {
        self.write_user(
            u,
            "do update set role = excluded.role, organization = excluded.organization, \
             fhir_user = excluded.fhir_user where auth_user.password_hash = excluded.password_hash",
        )
        .await
    }

    /// Inserts `u`, or does `on_conflict` when the name exists; whether a row was written.
    async fn write_user(&self, u: &UserRecord, on_conflict: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "insert into auth_user ({USER_COLUMNS}, created_at) values ($1, $2, $3, $4, $5, $6, $7, $8) \
             on conflict (username) {on_conflict}"
        );
        let now = super::now_micros();
        let n = on_pool!(self, write, pool => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&u.username)
            .bind(&u.password_hash)
            .bind(&u.role)
            .bind(&u.organization)
            .bind(&u.fhir_user)
            .bind(u.failed_logins)
            .bind(u.locked_until)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n == 1)
    }

    /// Removes a user; false when there was none.
    pub async fn delete_user(&self, username: &str) -> Result<bool, StoreError> {
        let sql = "delete from auth_user where username = $1";
        let n = on_pool!(self, write, pool => sqlx::query(sql).bind(username).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// Records a sign-in attempt: a success clears the failures; a failure counts one more
    /// and, at `max_failures` in a row, locks the account until `lock_until`.
    pub async fn record_login(
        &self,
        username: &str,
        success: bool,
        max_failures: i64,
        lock_until: i64,
    ) -> Result<(), StoreError> {
        if success {
            let sql =
                "update auth_user set failed_logins = 0, locked_until = null where username = $1";
            on_pool!(self, write, pool => sqlx::query(sql).bind(username).execute(pool).await.map(|_| ())?);
        } else {
            let sql = "update auth_user set failed_logins = failed_logins + 1, locked_until = case \
                       when failed_logins + 1 >= $2 then $3 else locked_until end where username = $1";
            on_pool!(self, write, pool => sqlx::query(sql).bind(username).bind(max_failures).bind(lock_until).execute(pool).await.map(|_| ())?);
        }
        Ok(())
    }

    /// Stores an authorization code (by its hash).
    pub async fn put_code(&self, c: &CodeRecord) -> Result<(), StoreError> {
        let sql = "insert into auth_code (code_hash, client_id, redirect_uri, scope, username, \
                   patient, code_challenge, nonce, expires_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(&c.code_hash)
            .bind(&c.client_id)
            .bind(&c.redirect_uri)
            .bind(&c.scope)
            .bind(&c.username)
            .bind(&c.patient)
            .bind(&c.code_challenge)
            .bind(&c.nonce)
            .bind(c.expires_at)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Takes an authorization code: it is gone afterwards, whether or not the exchange
    /// succeeds, so a code works once (RFC 6749 section 4.1.2). Expired codes go on the way.
    pub async fn take_code(
        &self,
        code_hash: &str,
        now: i64,
    ) -> Result<Option<CodeRecord>, StoreError> {
        let purge = "delete from auth_code where expires_at < $1";
        let take = "delete from auth_code where code_hash = $1 returning code_hash, client_id, \
                    redirect_uri, scope, username, patient, code_challenge, nonce, expires_at";
        Ok(on_pool!(self, write, pool => {
            let taken = sqlx::query_as(take).bind(code_hash).fetch_optional(pool).await?;
            sqlx::query(purge).bind(now).execute(pool).await?;
            taken
        }))
    }

    /// Stores a refresh token (by its hash).
    pub async fn put_refresh(&self, r: &RefreshRecord) -> Result<(), StoreError> {
        let sql = "insert into auth_refresh (token_hash, client_id, username, scope, patient, \
                   expires_at) values ($1, $2, $3, $4, $5, $6)";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(&r.token_hash)
            .bind(&r.client_id)
            .bind(&r.username)
            .bind(&r.scope)
            .bind(&r.patient)
            .bind(r.expires_at)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// A refresh token that is neither used nor revoked, without using it.
    pub async fn live_refresh(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let sql = "select token_hash, client_id, username, scope, patient, expires_at from auth_refresh \
                   where token_hash = $1 and revoked = false";
        Ok(
            on_pool!(self, write, pool => sqlx::query_as(sql).bind(token_hash).fetch_optional(pool).await?),
        )
    }

    /// Revokes a refresh token of `client_id`; false when there is none.
    pub async fn revoke_refresh(
        &self,
        token_hash: &str,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        let sql = "update auth_refresh set revoked = true where token_hash = $1 and client_id = $2";
        let n = on_pool!(self, write, pool => sqlx::query(sql).bind(token_hash).bind(client_id).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// Uses a refresh token: marks it revoked and returns it, once; `None` when it is
    /// unknown, used or revoked already.
    pub async fn take_refresh(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let sql = "update auth_refresh set revoked = true where token_hash = $1 and revoked = false \
                   returning token_hash, client_id, username, scope, patient, expires_at";
        Ok(
            on_pool!(self, write, pool => sqlx::query_as(sql).bind(token_hash).fetch_optional(pool).await?),
        )
    }
}

/// A user of the login page, as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRecord {
    pub username: String,
    /// argon2 PHC string.
    pub password_hash: String,
    pub role: String,
    pub organization: Option<String>,
    /// `Patient/…`, `Practitioner/…`.
    pub fhir_user: Option<String>,
    pub failed_logins: i64,
    /// Unix seconds.
    pub locked_until: Option<i64>,
}

const USER_COLUMNS: &str =
    "username, password_hash, role, organization, fhir_user, failed_logins, locked_until";

/// An authorization code waiting for its exchange.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CodeRecord {
    pub code_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub username: String,
    pub patient: Option<String>,
    /// PKCE S256 challenge (RFC 7636).
    pub code_challenge: String,
    pub nonce: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A refresh token's grant.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RefreshRecord {
    pub token_hash: String,
    pub client_id: String,
    pub username: String,
    pub scope: String,
    pub patient: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
}
