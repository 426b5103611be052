//! Who is calling (DESIGN.md, room `auth`): the built-in OAuth 2.0 authorization server of
//! SMART App Launch 2 (https://hl7.org/fhir/smart-app-launch/) and the bearer-token check every
//! request passes through.
//!
//! - [`keys`]: the issuer's RS256 signing key and its JWKS;
//! - [`token`]: access tokens (JWT, https://www.rfc-editor.org/rfc/rfc9068) issued and verified;
//! - [`secret`]: argon2 hashes of client secrets;
//! - [`routes`]: the token endpoint, the discovery documents and the middleware that turns a
//!   bearer token into a [`Principal`] for the handlers.

pub mod assertion;
pub mod authorize;
pub mod clients;
pub mod federated_login;
pub mod federation;
pub mod introspect;
pub mod keys;
pub mod policy;
pub mod restrict;
pub mod routes;
pub mod scope;
pub mod secret;
pub mod tenancy;
pub mod token;
pub mod users;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use token::Principal;

/// The roles of DESIGN.md "Tenancy". Patient-facing SMART apps act as [`Role::Patient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Admin,
    Distributor,
    DistributorUser,
    Customer,
    CustomerUser,
    Patient,
    /// A Bluetooth hub or vitalbridge gateway of one customer: it posts readings to
    /// `/ingest/hub` and may do nothing on `/fhir` (issue 5, "Three ways in").
    Hub,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Distributor => "distributor",
            Role::DistributorUser => "distributor-user",
            Role::Customer => "customer",
            Role::CustomerUser => "customer-user",
            Role::Patient => "patient",
            Role::Hub => "hub",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "distributor" => Role::Distributor,
            "distributor-user" => Role::DistributorUser,
            "customer" => Role::Customer,
            "customer-user" => Role::CustomerUser,
            "patient" => Role::Patient,
            "hub" => Role::Hub,
            _ => return None,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bootstrap admin client of `VB_BOOTSTRAP_CLIENT_ID` / `VB_BOOTSTRAP_CLIENT_SECRET`.
/// `Debug` never shows the secret.
#[derive(Clone)]
pub struct BootstrapClient {
    pub client_id: String,
    pub secret: String,
}

impl fmt::Debug for BootstrapClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapClient")
            .field("client_id", &self.client_id)
            .field("secret", &"***")
            .finish()
    }
}

/// The scopes of the bootstrap admin client: every resource type, every interaction, as a
/// backend service (SMART v2 `cruds`, https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).
pub const ADMIN_SCOPE: &str = "system/*.cruds";

/// Creates or refreshes the bootstrap admin client. An existing client of that id keeps its
/// secret hash when the secret still verifies, so restarts do not rehash it needlessly.
pub async fn ensure_bootstrap_client(
    store: &crate::store::Store,
    boot: &BootstrapClient,
) -> anyhow::Result<()> {
    let existing = store.client(&boot.client_id).await?;
    let secret_hash = match existing
        .as_ref()
        .and_then(|c| c.secret_hash.clone())
        .filter(|h| secret::verify(&boot.secret, h))
    {
        Some(h) => h,
        None => secret::hash(&boot.secret)?,
    };
    let record = crate::store::auth::ClientRecord {
        client_id: boot.client_id.clone(),
        secret_hash: Some(secret_hash),
        role: Role::Admin.as_str().into(),
        organization: None,
        scope: ADMIN_SCOPE.into(),
        name: Some("bootstrap admin".into()),
        jwks: None,
        jwks_url: None,
        redirect_uris: "[]".into(),
    };
    if existing.as_ref() != Some(&record) {
        store.put_client(&record).await?;
    }
    Ok(())
}
