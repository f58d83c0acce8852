//! Webhook secrets in the Standard Webhooks form: `whsec_` followed by the base64 of the key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A signing key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The shortest key accepted, in bytes (Standard Webhooks: 24 to 64).
pub const MIN_KEY_BYTES: usize = 24;
/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 64;

/// Why a secret was refused. The messages never quote the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error("a secret is \"whsec_\" followed by the base64 of the key")]
    Prefix,
    /// What follows `whsec_` is not base64.
    #[error("the part after \"whsec_\" is not base64")]
    Base64,
    /// The key is too short or too long.
    #[error("the key is {0} bytes; it must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES}")]
    Length(usize),
}

impl Secret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Self(key))
    }

    /// The key's bytes.
    pub fn key(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_whsec_and_base64_of_24_to_64_bytes() {
        let rows: [(&str, Result<usize, SecretError>); 6] = [
            ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Ok(24)),
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Err(SecretError::Prefix)),
            ("secret", Err(SecretError::Prefix)),
            ("whsec_not base64!", Err(SecretError::Base64)),
            ("whsec_c2hvcnQ=", Err(SecretError::Length(5))),
            ("  whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ", Ok(24)),
        ];
        for (text, want) in rows {
            assert_eq!(Secret::parse(text).map(|s| s.key().len()), want, "{text}");
        }
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(***)");
    }
}
