//! Client secrets and passwords are kept as argon2id hashes in the PHC string format
//! (https://www.rfc-editor.org/rfc/rfc9106), never in the clear.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// A new argon2id hash of `secret` with a random salt (the crate's default cost: 19 MiB, two
/// passes, the OWASP minimum).
pub fn hash(secret: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the secret: {e}"))
}

/// True when `secret` matches `phc`; false for a malformed hash as well.
pub fn verify(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// [`verify`] off the async workers and a few at a time: argon2 is deliberately slow and takes
/// memory (19 MiB per check with the defaults), so a flood of sign-ins or token requests waits
/// in line instead of filling the blocking pool and the memory.
pub async fn verify_slowly(secret: String, phc: String) -> bool {
    static ARGON2_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
    match ARGON2_SLOTS.acquire().await {
        Ok(_slot) => tokio::task::spawn_blocking(move || verify(&secret, &phc))
            .await
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_secret() {
        let h = hash("s3cret").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("s3cret"));
        assert!(verify("s3cret", &h));
        assert!(!verify("s3cret ", &h));
        assert!(!verify("s3cret", "not a hash"));
        // A fresh salt each time.
        assert_ne!(h, hash("s3cret").expect("hash"));
    }
}
