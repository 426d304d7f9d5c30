//! A throw-away JWT issuer for tests: fresh RSA / EC keys (aws-lc-rs), their JWKS, signed
//! tokens, and the classic bad tokens (alg `none`, HS256 keyed with the public key, a tampered
//! payload, wrong `kid`).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use egret_testkit::jwt::{TestIssuer, claims};
//! let issuer = TestIssuer::rsa("key-1")?;
//! let jwks = issuer.jwks_json(); // inline `jwks:` of a RequestAuthentication, or serve it
//! let token = issuer.sign(&claims("https://issuer.test", "alice"))?;
//! # Ok(()) }
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use aws_lc_rs::{hmac, rsa};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

enum Key {
    Rsa(rsa::KeyPair),
    Ec {
        pair: EcdsaKeyPair,
        crv: &'static str,
        alg: &'static str,
        coord: usize,
    },
}

/// A signing key with a `kid`, and its public JWKS.
pub struct TestIssuer {
    kid: String,
    key: Key,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish()
    }
}

/// base64url without padding, as JWS uses.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Typical claims: `iss`, `sub`, `iat` now, `exp` in one hour.
pub fn claims(iss: &str, sub: &str) -> Value {
    let now = now_secs();
    json!({ "iss": iss, "sub": sub, "iat": now, "exp": now + 3600 })
}

/// A token whose payload segment is replaced by `claims`, keeping the original header and
/// signature (so the signature no longer matches).
pub fn tamper_payload(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().unwrap_or_default();
    let _ = parts.next();
    let sig = parts.next().unwrap_or_default();
    format!("{header}.{}.{sig}", b64url(claims.to_string().as_bytes()))
}

/// An unsigned token: `{"alg": "none"}` and an empty signature.
pub fn sign_with_alg_none(claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT" });
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// An HS256 token with `secret` as the HMAC key.
pub fn sign_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": "HS256", "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = kid.into();
    }
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

impl TestIssuer {
    /// A fresh 2048-bit RSA key (RS256).
    pub fn rsa(kid: &str) -> Result<TestIssuer> {
        let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048)
            .map_err(|_| anyhow!("RSA key generation failed"))?;
        Ok(TestIssuer {
            kid: kid.to_string(),
            key: Key::Rsa(pair),
        })
    }

    /// A fresh P-256 key (ES256).
    pub fn ec(kid: &str) -> Result<TestIssuer> {
        Self::ec_with(
            kid,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            "P-256",
            "ES256",
            32,
        )
    }

    /// A fresh P-384 key (ES384).
    pub fn ec384(kid: &str) -> Result<TestIssuer> {
        Self::ec_with(
            kid,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            "P-384",
            "ES384",
            48,
        )
    }

    fn ec_with(
        kid: &str,
        alg: &'static signature::EcdsaSigningAlgorithm,
        crv: &'static str,
        name: &'static str,
        coord: usize,
    ) -> Result<TestIssuer> {
        let pair = EcdsaKeyPair::generate(alg).map_err(|_| anyhow!("EC key generation failed"))?;
        Ok(TestIssuer {
            kid: kid.to_string(),
            key: Key::Ec {
                pair,
                crv,
                alg: name,
                coord,
            },
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWS `alg` this issuer signs with.
    pub fn alg(&self) -> &'static str {
        match &self.key {
            Key::Rsa(_) => "RS256",
            Key::Ec { alg, .. } => alg,
        }
    }

    /// The public key as a JWK (with `kid`, `use: sig`, no `alg`).
    pub fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(pair) => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA",
                    "kid": self.kid,
                    "use": "sig",
                    "n": b64url(public.modulus().big_endian_without_leading_zero()),
                    "e": b64url(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Key::Ec {
                pair, crv, coord, ..
            } => {
                // Uncompressed point: 0x04 || x || y.
                let point = pair.public_key().as_ref();
                let x = point.get(1..1 + coord).unwrap_or_default();
                let y = point.get(1 + coord..).unwrap_or_default();
                json!({
                    "kty": "EC",
                    "kid": self.kid,
                    "use": "sig",
                    "crv": crv,
                    "x": b64url(x),
                    "y": b64url(y),
                })
            }
        }
    }

    /// `{"keys": [<this key>]}`.
    pub fn jwks_json(&self) -> String {
        json!({ "keys": [self.jwk()] }).to_string()
    }

    /// `{"keys": [...]}` with the keys of several issuers.
    pub fn jwks_json_of(issuers: &[&TestIssuer]) -> String {
        let keys: Vec<Value> = issuers.iter().map(|i| i.jwk()).collect();
        json!({ "keys": keys }).to_string()
    }

    /// The public key as a SubjectPublicKeyInfo PEM (what the HS256 confusion attack uses as
    /// the HMAC secret).
    pub fn public_key_pem(&self) -> Result<String> {
        let der = match &self.key {
            Key::Rsa(pair) => pair
                .public_key()
                .as_der()
                .map_err(|_| anyhow!("encode RSA public key"))?
                .as_ref()
                .to_vec(),
            Key::Ec { pair, .. } => pair
                .public_key()
                .as_der()
                .map_err(|_| anyhow!("encode EC public key"))?
                .as_ref()
                .to_vec(),
        };
        let b64 = STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).context("base64 is ASCII")?);
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        Ok(pem)
    }

    /// A token signed with this key; header `{"alg", "typ": "JWT", "kid"}`.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({ "alg": self.alg(), "typ": "JWT", "kid": self.kid });
        self.sign_with_header(&header, claims)
    }

    /// A token signed with this key whose header has no `kid`.
    pub fn sign_without_kid(&self, claims: &Value) -> Result<String> {
        let header = json!({ "alg": self.alg(), "typ": "JWT" });
        self.sign_with_header(&header, claims)
    }

    /// A token signed with this key but naming another `kid`.
    pub fn sign_with_kid(&self, kid: &str, claims: &Value) -> Result<String> {
        let header = json!({ "alg": self.alg(), "typ": "JWT", "kid": kid });
        self.sign_with_header(&header, claims)
    }

    /// A token with exactly `header` (its `alg` is not looked at), signed with this key's
    /// algorithm over the JWS signing input.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String> {
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| anyhow!("RSA signing failed"))?;
                sig
            }
            Key::Ec { pair, .. } => pair
                .sign(&rng, input.as_bytes())
                .map_err(|_| anyhow!("ECDSA signing failed"))?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", b64url(&sig)))
    }

    /// `{"alg": "none"}` with this issuer's `kid` and an empty signature.
    pub fn sign_with_alg_none(&self, claims: &Value) -> String {
        let header = json!({ "alg": "none", "typ": "JWT", "kid": self.kid });
        format!(
            "{}.{}.",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        )
    }

    /// The HS/RS confusion attack: HS256 keyed with this issuer's public key (its PEM text),
    /// with this issuer's `kid`. A verifier must reject it.
    pub fn sign_hs256_with_public_key(&self, claims: &Value) -> Result<String> {
        let pem = self.public_key_pem()?;
        Ok(sign_hs256(pem.as_bytes(), Some(&self.kid), claims))
    }

    /// A validly signed token whose payload was then replaced (bad signature).
    pub fn sign_tampered(&self, claims: &Value, tampered: &Value) -> Result<String> {
        Ok(tamper_payload(&self.sign(claims)?, tampered))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_string).collect()
    }

    #[test]
    fn tokens_have_three_parts_and_verify() {
        for issuer in [TestIssuer::rsa("r").unwrap(), TestIssuer::ec("e").unwrap()] {
            let token = issuer.sign(&claims("iss", "sub")).unwrap();
            let p = parts(&token);
            assert_eq!(p.len(), 3);
            let header: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[0]).unwrap()).unwrap();
            assert_eq!(header["alg"], issuer.alg());
            assert_eq!(header["kid"], issuer.kid());
            let sig = URL_SAFE_NO_PAD.decode(&p[2]).unwrap();
            let input = format!("{}.{}", p[0], p[1]);
            let public = issuer.public_key_pem().unwrap();
            assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
            let ok = match &issuer.key {
                Key::Rsa(pair) => signature::UnparsedPublicKey::new(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    pair.public_key().as_ref(),
                )
                .verify(input.as_bytes(), &sig)
                .is_ok(),
                Key::Ec { pair, .. } => signature::UnparsedPublicKey::new(
                    &signature::ECDSA_P256_SHA256_FIXED,
                    pair.public_key().as_ref(),
                )
                .verify(input.as_bytes(), &sig)
                .is_ok(),
            };
            assert!(ok);
        }
    }

    #[test]
    fn bad_token_helpers() {
        let issuer = TestIssuer::rsa("r").unwrap();
        let none = issuer.sign_with_alg_none(&claims("i", "s"));
        assert!(none.ends_with('.'));
        let hs = issuer
            .sign_hs256_with_public_key(&claims("i", "s"))
            .unwrap();
        assert_eq!(parts(&hs).len(), 3);
        let jwk = issuer.jwk();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB");
        let t = issuer
            .sign_tampered(&claims("i", "s"), &claims("i", "admin"))
            .unwrap();
        assert_eq!(parts(&t).len(), 3);
    }
}
