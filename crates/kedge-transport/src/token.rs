//! Join tokens, exactly as KubeEdge makes them (protocol.md §4.1).
//!
//! A token is `<caHash>.<JWT>`: the lowercase hex SHA-256 of the CA
//! certificate DER, a dot, and an HS256 JWT whose only claim is `exp` (Unix
//! seconds). The HMAC key is the CA private key's DER bytes as the hub keeps
//! them ([`HubCa::key_der`]: SEC1 when the CA was created by Kedge or
//! KubeEdge). So a token made by either hub verifies at the other when they
//! share the CA Secret.
//!
//! The JWT is written byte for byte as Go's `golang-jwt` writes it: header
//! `{"alg":"HS256","typ":"JWT"}`, claims `{"exp":N}`, unpadded base64url.
//! Verification ([`verify_jwt`]) uses the `jsonwebtoken` crate, accepts
//! HS256 only, requires `exp` and allows no clock leeway (as Go's checks).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::ca::HubCa;

/// How long a new token is valid: twice KubeEdge's `tokenRefreshDuration`
/// (12 h), so that a token read at any time is valid for at least 12 h.
pub const DEFAULT_TOKEN_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

/// The JWT header, as Go writes it (map keys sorted).
const JWT_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Why a token or JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not `<caHash>.<header>.<claims>.<signature>`.
    #[error("the token has {parts} dot-separated parts, 4 expected")]
    WrongPartCount {
        /// How many parts it has.
        parts: usize,
    },
    /// The JWT does not decode (bad base64, JSON, or claims).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The JWT is not signed with HS256.
    #[error("token algorithm {0:?} is not HS256")]
    WrongAlgorithm(String),
    /// The signature does not match: signed with another key.
    #[error("token signature does not verify")]
    BadSignature,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token has no `exp` claim.
    #[error("token has no expiry")]
    NoExpiry,
    /// The verifying key is empty.
    #[error("no key to verify the token with")]
    NoKey,
}

/// The claims of a join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinClaims {
    /// When the token expires, in Unix seconds.
    pub exp: u64,
}

/// A new join token for `ca`, valid for `valid_for` from now.
pub fn make_token(ca: &HubCa, valid_for: Duration) -> String {
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(valid_for);
    format!(
        "{}.{}",
        ca.ca_hash(),
        make_jwt(ca.key_der(), expires.as_secs())
    )
}

/// An HS256 JWT with claims `{"exp":<expires_at>}` signed with `key`, in
/// Go's exact form.
pub fn make_jwt(key: &[u8], expires_at: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(JWT_HEADER);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{expires_at}}}"#));
    let signing_input = format!("{header}.{claims}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Splits a join token into the CA hash and the JWT; exactly four
/// dot-separated parts are required, as KubeEdge's edge requires.
pub fn split_token(token: &str) -> Result<(&str, &str), TokenError> {
    let token = token.trim();
    let parts = token.split('.').count();
    if parts != 4 {
        return Err(TokenError::WrongPartCount { parts });
    }
    token
        .split_once('.')
        .ok_or(TokenError::WrongPartCount { parts })
}

/// Verifies a JWT (a token without its CA hash) against `ca`'s key.
pub fn verify_jwt(ca: &HubCa, jwt: &str) -> Result<JoinClaims, TokenError> {
    verify_jwt_with_key(ca.key_der(), jwt)
}

/// Verifies a JWT against the HMAC key `key`: HS256 only, signature,
/// then `exp` (required, no leeway).
pub fn verify_jwt_with_key(key: &[u8], jwt: &str) -> Result<JoinClaims, TokenError> {
    let header = jwt
        .split('.')
        .next()
        .ok_or_else(|| TokenError::Malformed("empty".to_owned()))?;
    let header = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed("header is not base64url".to_owned()))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|_| TokenError::Malformed("header is not JSON".to_owned()))?;
    let algorithm = header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| TokenError::Malformed("header has no alg".to_owned()))?;
    if algorithm != "HS256" {
        return Err(TokenError::WrongAlgorithm(algorithm.to_owned()));
    }

    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_exp = true;
    validation.set_required_spec_claims(&["exp"]);
    let key = DecodingKey::from_secret(key).map_err(|_| TokenError::NoKey)?;
    let decoded = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation).map_err(
        |err| match err.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm(algorithm.to_owned()),
            ErrorKind::MissingRequiredClaim(_) => TokenError::NoExpiry,
            _ => TokenError::Malformed(err.to_string()),
        },
    )?;
    match decoded.claims.get("exp") {
        None => Err(TokenError::NoExpiry),
        Some(exp) => exp
            .as_u64()
            .map(|exp| JoinClaims { exp })
            .ok_or_else(|| TokenError::Malformed("exp is not a number of seconds".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JWT Python's `hmac` (an implementation independent of this one)
    /// makes for claims `{"exp":1700000000}` and the test key of
    /// [`crate::ca`]'s tests.
    const REFERENCE_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE3MDAwMDAwMDB9.NzcBGLqlRQFvnfp2GBCFBJFiVxT2qIL0Q76qDAp3PDQ";

    fn test_key() -> Vec<u8> {
        crate::ca::tests_support::openssl_sec1()
    }

    #[test]
    fn jwts_are_written_as_go_writes_them() {
        assert_eq!(make_jwt(&test_key(), 1_700_000_000), REFERENCE_JWT);
        // And that one has expired.
        assert_eq!(
            verify_jwt_with_key(&test_key(), REFERENCE_JWT),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_fresh_token_verifies_against_its_ca_only() {
        let ca = HubCa::generate().expect("ca");
        let token = make_token(&ca, DEFAULT_TOKEN_VALIDITY);
        let (hash, jwt) = split_token(&token).expect("four parts");
        assert_eq!(hash, ca.ca_hash());
        let claims = verify_jwt(&ca, jwt).expect("valid");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        assert!(claims.exp > now + 23 * 3600 && claims.exp <= now + 24 * 3600 + 1);

        let other = HubCa::generate().expect("ca");
        assert_eq!(verify_jwt(&other, jwt), Err(TokenError::BadSignature));
    }

    #[test]
    fn refusals_are_told_apart() {
        let key = test_key();
        let far = 4_000_000_000;
        let good = make_jwt(&key, far);
        verify_jwt_with_key(&key, &good).expect("valid");

        // Tampered claims: the signature no longer matches.
        let mut parts: Vec<&str> = good.split('.').collect();
        let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{}}}"#, far + 1));
        parts[1] = &claims;
        assert_eq!(
            verify_jwt_with_key(&key, &parts.join(".")),
            Err(TokenError::BadSignature)
        );

        // alg none and another algorithm.
        for alg in ["none", "HS512", "RS256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let jwt = format!("{header}.{}.", good.split('.').nth(1).expect("claims"));
            assert_eq!(
                verify_jwt_with_key(&key, &jwt),
                Err(TokenError::WrongAlgorithm(alg.to_owned()))
            );
        }

        // No exp at all.
        let header = URL_SAFE_NO_PAD.encode(JWT_HEADER);
        let claims = URL_SAFE_NO_PAD.encode("{}");
        let input = format!("{header}.{claims}");
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            input.as_bytes(),
        );
        let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(verify_jwt_with_key(&key, &jwt), Err(TokenError::NoExpiry));

        for junk in ["", "abc", "a.b.c", "!!!.e30.x"] {
            assert!(
                matches!(
                    verify_jwt_with_key(&key, junk),
                    Err(TokenError::Malformed(_))
                ),
                "{junk}"
            );
        }
    }

    #[test]
    fn tokens_need_four_parts() {
        assert_eq!(
            split_token("abc.def.ghi"),
            Err(TokenError::WrongPartCount { parts: 3 })
        );
        assert_eq!(
            split_token("a.b.c.d.e"),
            Err(TokenError::WrongPartCount { parts: 5 })
        );
        assert_eq!(split_token(" h.x.y.z\n"), Ok(("h", "x.y.z")));
    }
}
