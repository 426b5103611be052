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

/// Runs `$body` with `$pool` bound to the pool for `$kind` (`read` or `write`) of either backend.
macro_rules! on_pool {
    ($store:expr, read, $pool:ident => $body:expr) => {
        match $store {
            Store::Pg { pool: $pool, .. } => $body,
            Store::Sqlite { read: $pool, .. } => $body,
        }
    };
    ($store:expr, write, $pool:ident => $body:expr) => {
        match $store {
            Store::Pg { pool: $pool, .. } => $body,
            Store::Sqlite { write: $pool, .. } => $body,
        }
    };
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
}
