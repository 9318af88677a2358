//! Docker registry tokens: JWTs whose `access` claim lists the granted [`Scope`]s.
//! [`Signer`] issues them (Berth's own token service) with an ES256 key whose `kid` is
//! the libtrust key id Distribution 2.8 looks keys up by, so a `registry:2` that trusts
//! Berth's certificate verifies Berth's tokens. [`Verifier`] checks tokens from Berth or
//! from an external issuer (Distribution's `auth.token`): signature by a trusted key
//! only (a `kid` of a configured key, or an `x5c` chain ending in the configured roots;
//! a key the token carries itself is never trusted), allowed algorithms only (`none`
//! never), issuer, audience, expiry and not-before with a small leeway.

use super::scope::Scope;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::Mutex;

/// How far clocks may disagree (expiry and not-before).
pub const LEEWAY_SECS: u64 = 60;

/// The claims of a registry token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The principal's name (empty for anonymous).
    #[serde(default)]
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    #[serde(default)]
    pub nbf: i64,
    #[serde(default)]
    pub iat: i64,
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Scope>,
}

/// `aud`: one string or a list, as the JWT spec allows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0:?} is not allowed (auth.token.signingalgorithms)")]
    Algorithm(Algorithm),
    #[error("the token is not signed by a trusted key: {0}")]
    UntrustedKey(String),
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("cannot make a signing key: {0}")]
    KeyGeneration(String),
}

/// The libtrust key id of a public key (its DER SubjectPublicKeyInfo): the first 240
/// bits of its SHA-256 in base32, in groups of four joined by `:`. Distribution 2.8
/// finds the key of a token without `x5c` by this id in its `kid` header.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = sha2::Sha256::digest(spki_der);
    let bytes = &hash[..30];
    let mut out = String::with_capacity(59);
    let mut buffer = 0u32;
    let mut bits = 0;
    let mut chars = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            if chars > 0 && chars % 4 == 0 {
                out.push(':');
            }
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
            chars += 1;
        }
    }
    out
}

/// A freshly made signing key: PKCS#8 PEM, a self-signed certificate PEM, and its kid.
pub struct NewKey {
    pub kid: String,
    pub private_pem: String,
    pub cert_pem: String,
}

/// Make an ECDSA P-256 key and a self-signed certificate of it (valid for 10 years: it
/// only anchors trust in the key, as Harbor's token certificate does).
pub fn generate_key(common_name: &str) -> Result<NewKey, TokenError> {
    let err = |e: rcgen::Error| TokenError::KeyGeneration(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 24 * 3600)).into();
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(NewKey {
        kid: libtrust_key_id(&key.public_key_der()),
        private_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
    })
}

/// Issues tokens with one key.
pub struct Signer {
    kid: String,
    /// The key's certificate (base64 DER), sent as `x5c`: Distribution 2.8 finds keys by
    /// libtrust `kid`, 3.x by `x5c` chain (its `kid` lookup wants RFC 7638 thumbprints).
    x5c: Vec<String>,
    key: EncodingKey,
    issuer: String,
    service: String,
}

/// An issued token, as the token endpoint returns it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: i64,
    pub claims: Claims,
}

impl Signer {
    pub fn new(
        kid: &str,
        private_pem: &str,
        cert_pem: &str,
        issuer: &str,
        service: &str,
    ) -> Result<Signer, TokenError> {
        let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(|e| {
            TokenError::KeyGeneration(format!("the stored signing key is unusable: {e}"))
        })?;
        Ok(Signer {
            kid: kid.to_string(),
            x5c: pem_blocks(cert_pem, "CERTIFICATE"),
            key,
            issuer: issuer.to_string(),
            service: service.to_string(),
        })
    }

    /// Sign a token for `subject` granting `access`, valid `ttl_secs` from `now`.
    pub fn issue(
        &self,
        subject: &str,
        access: Vec<Scope>,
        now: i64,
        ttl_secs: u64,
    ) -> Result<Issued, TokenError> {
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_string(),
            aud: Audience::One(self.service.clone()),
            exp: now + ttl_secs as i64,
            nbf: now - 1,
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".into());
        header.kid = Some(self.kid.clone());
        if !self.x5c.is_empty() {
            header.x5c = Some(self.x5c.clone());
        }
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::KeyGeneration(e.to_string()))?;
        Ok(Issued {
            token,
            expires_in: ttl_secs,
            issued_at: now,
            claims,
        })
    }
}

/// The algorithms accepted when `signingalgorithms` is not set: every asymmetric one
/// (a shared-secret HMAC key cannot come from certificates).
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// Parse an algorithm name of `signingalgorithms`.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    let alg: Algorithm = name.trim().parse().ok()?;
    DEFAULT_ALGORITHMS.contains(&alg).then_some(alg)
}

/// A key a token may be signed with.
struct TrustedKey {
    key: DecodingKey,
}

/// Verifies tokens.
pub struct Verifier {
    issuer: String,
    service: String,
    algorithms: Vec<Algorithm>,
    /// Keys by kid (libtrust ids of the roots' keys, and JWKS kids).
    keys: HashMap<String, TrustedKey>,
    /// The roots an `x5c` chain must end in (DER).
    roots: Vec<Vec<u8>>,
    /// Tokens already verified: token text -> claims (bounded; checked for expiry on
    /// each use). Verification costs a signature check; a client reuses its token for
    /// every request of a pull.
    cache: Mutex<HashMap<String, Claims>>,
}

const CACHE_ENTRIES: usize = 4096;

impl Verifier {
    pub fn new(issuer: &str, service: &str, algorithms: Vec<Algorithm>) -> Verifier {
        Verifier {
            issuer: issuer.to_string(),
            service: service.to_string(),
            algorithms: if algorithms.is_empty() {
                DEFAULT_ALGORITHMS.to_vec()
            } else {
                algorithms
            },
            keys: HashMap::new(),
            roots: Vec::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Trust the certificates of a PEM bundle: as roots of `x5c` chains, and their keys
    /// by libtrust kid. Returns how many certificates it held.
    pub fn add_root_bundle(&mut self, pem: &str) -> Result<usize, TokenError> {
        let mut n = 0;
        for block in pem_blocks(pem, "CERTIFICATE") {
            let der = base64::engine::general_purpose::STANDARD
                .decode(block.as_bytes())
                .map_err(|e| TokenError::Malformed(format!("certificate base64: {e}")))?;
            self.add_root(der)?;
            n += 1;
        }
        Ok(n)
    }

    /// Trust one root certificate (DER).
    pub fn add_root(&mut self, der: Vec<u8>) -> Result<(), TokenError> {
        let cert_der = rustls::pki_types::CertificateDer::from(der.as_slice());
        let anchor = webpki::anchor_from_trusted_cert(&cert_der)
            .map_err(|e| TokenError::Malformed(format!("certificate: {e:?}")))?;
        let spki = wrap_sequence(&anchor.subject_public_key_info);
        let kid = libtrust_key_id(&spki);
        let key = decoding_key_of_cert(&der)?;
        self.keys.insert(kid, TrustedKey { key });
        self.roots.push(der);
        Ok(())
    }

    /// Trust the keys of a JWK set (`auth.token.jwks`), by their `kid`.
    pub fn add_jwks(&mut self, json: &str) -> Result<usize, TokenError> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(json).map_err(|e| TokenError::Malformed(format!("JWKS: {e}")))?;
        let mut n = 0;
        for jwk in &set.keys {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| TokenError::Malformed("a JWKS key has no kid".into()))?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| TokenError::Malformed(format!("JWKS key {kid}: {e}")))?;
            self.keys.insert(kid, TrustedKey { key });
            n += 1;
        }
        Ok(n)
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Verify `token` at `now` and return its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if let Ok(cache) = self.cache.lock() {
            if let Some(c) = cache.get(token) {
                if now <= c.exp + LEEWAY_SECS as i64 {
                    return Ok(c.clone());
                }
            }
        }
        let claims = self.verify_uncached(token, now)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.retain(|_, c| now <= c.exp);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(token.to_string(), claims.clone());
        }
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let chain_key;
        let key = if let Some(chain) = &header.x5c {
            chain_key = self.chain_key(chain, now)?;
            &chain_key
        } else if let Some(kid) = &header.kid {
            &self
                .keys
                .get(kid)
                .ok_or_else(|| TokenError::UntrustedKey(format!("no trusted key has kid {kid:?}")))?
                .key
        } else if header.jwk.is_some() {
            return Err(TokenError::UntrustedKey(
                "it carries its own key (jwk) and names no trusted one".into(),
            ));
        } else {
            return Err(TokenError::UntrustedKey(
                "it names no key (neither kid nor x5c)".into(),
            ));
        };
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.service]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Expiry is checked against `now` below (the library reads the clock itself).
        v.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(token, key, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let c = data.claims;
        if now > c.exp + LEEWAY_SECS as i64 {
            return Err(TokenError::Invalid("it has expired".into()));
        }
        if c.nbf != 0 && now + (LEEWAY_SECS as i64) < c.nbf {
            return Err(TokenError::Invalid("it is not valid yet".into()));
        }
        Ok(c)
    }

    /// The key of an `x5c` chain's leaf, if the chain ends in a configured root.
    fn chain_key(&self, chain: &[String], now: i64) -> Result<DecodingKey, TokenError> {
        let ders: Vec<Vec<u8>> = chain
            .iter()
            .map(|c| {
                base64::engine::general_purpose::STANDARD
                    .decode(c.as_bytes())
                    .map_err(|e| TokenError::Malformed(format!("x5c: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let leaf = ders
            .first()
            .ok_or_else(|| TokenError::Malformed("x5c is empty".into()))?;
        if !self.roots.iter().any(|r| r == leaf) {
            let roots: Vec<rustls::pki_types::CertificateDer<'_>> = self
                .roots
                .iter()
                .map(|r| rustls::pki_types::CertificateDer::from(r.as_slice()))
                .collect();
            let anchors: Vec<_> = roots
                .iter()
                .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
                .collect();
            let intermediates: Vec<rustls::pki_types::CertificateDer<'_>> = ders[1..]
                .iter()
                .map(|d| rustls::pki_types::CertificateDer::from(d.as_slice()))
                .collect();
            let leaf_der = rustls::pki_types::CertificateDer::from(leaf.as_slice());
            let ee = webpki::EndEntityCert::try_from(&leaf_der)
                .map_err(|e| TokenError::Malformed(format!("x5c leaf: {e:?}")))?;
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &intermediates,
                rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                    now.max(0) as u64,
                )),
                AnyUsage,
                None,
                None,
            )
            .map_err(|e| {
                TokenError::UntrustedKey(format!(
                    "its x5c chain does not end in a configured root certificate ({e:?})"
                ))
            })?;
        }
        decoding_key_of_cert(leaf)
    }
}

/// Distribution's `auth.token`: requests carry tokens of an external issuer; a caller
/// holds exactly the scopes its token lists.
pub struct TokenAccess {
    pub verifier: Verifier,
    /// Where clients get tokens.
    pub realm: String,
    /// `autoredirect`: the realm is this path on the host the request came to.
    pub autoredirect_path: Option<String>,
}

#[async_trait::async_trait]
impl super::AccessControl for TokenAccess {
    async fn authorize(
        &self,
        req: super::AccessRequest<'_>,
    ) -> Result<super::Decision, super::AuthError> {
        let super::Credentials::Bearer(token) = req.credentials else {
            return Err(super::AuthError::Unauthenticated);
        };
        let claims = self
            .verifier
            .verify(&token, crate::meta::now())
            .map_err(|e| super::AuthError::InvalidToken(e.to_string()))?;
        let granted = req
            .wanted
            .iter()
            .filter_map(|w| super::scope::intersect(&claims.access, w))
            .collect();
        Ok(super::Decision {
            principal: super::Principal::named(claims.sub),
            granted,
            // What the external issuer would grant is its own business.
            obtainable: Vec::new(),
        })
    }

    fn challenge(
        &self,
        base: &str,
        wanted: &[Scope],
        error: Option<&str>,
        _mirror: Option<&str>,
    ) -> String {
        let realm = match &self.autoredirect_path {
            Some(path) => format!("{}{path}", base.trim_end_matches('/')),
            None => self.realm.clone(),
        };
        super::bearer_challenge(&realm, self.verifier.service(), wanted, error)
    }
}

/// Accepts any extended key usage, as Distribution does (`x509.ExtKeyUsageAny`).
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// The verification key of a certificate (EC, RSA or Ed25519).
fn decoding_key_of_cert(der: &[u8]) -> Result<DecodingKey, TokenError> {
    let pem = to_pem("CERTIFICATE", der);
    DecodingKey::from_ec_pem(pem.as_bytes())
        .or_else(|_| DecodingKey::from_rsa_pem(pem.as_bytes()))
        .or_else(|_| DecodingKey::from_ed_pem(pem.as_bytes()))
        .map_err(|e| TokenError::Malformed(format!("certificate key: {e}")))
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The base64 bodies of the PEM blocks labelled `label`.
fn pem_blocks(pem: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim();
        if line == begin {
            current = Some(String::new());
        } else if line == end {
            if let Some(b) = current.take() {
                out.push(b);
            }
        } else if let Some(b) = current.as_mut() {
            b.push_str(line);
        }
    }
    out
}

/// DER `SEQUENCE { contents }`: webpki hands out a SubjectPublicKeyInfo's contents
/// without its outer tag, libtrust hashes the whole structure.
fn wrap_sequence(contents: &[u8]) -> Vec<u8> {
    let mut out = vec![0x30];
    let n = contents.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        crate::meta::now()
    }

    fn pair() -> (NewKey, Signer, Verifier) {
        let key = generate_key("test").expect("key");
        let signer = Signer::new(
            &key.kid,
            &key.private_pem,
            &key.cert_pem,
            "berth",
            "registry",
        )
        .expect("signer");
        let mut v = Verifier::new("berth", "registry", Vec::new());
        v.add_root_bundle(&key.cert_pem).expect("root");
        (key, signer, v)
    }

    #[test]
    fn libtrust_ids_have_distributions_shape() {
        let id = libtrust_key_id(b"anything");
        assert_eq!(id.len(), 59, "{id}");
        assert_eq!(id.split(':').count(), 12);
        assert!(id.split(':').all(|g| g.len() == 4));
    }

    #[test]
    fn issued_tokens_verify_through_the_root_bundle_by_kid() {
        let (key, signer, v) = pair();
        // The kid the bundle yields is the one the signer writes.
        assert!(v.keys.contains_key(&key.kid));
        let t = signer
            .issue(
                "alice",
                vec![Scope::repository("a/b", ["pull"])],
                now(),
                300,
            )
            .expect("issue");
        let c = v.verify(&t.token, now()).expect("verify");
        assert_eq!(c.sub, "alice");
        assert_eq!(c.access, vec![Scope::repository("a/b", ["pull"])]);
    }

    #[test]
    fn refuses_expired_wrong_audience_issuer_and_foreign_keys() {
        let (_, signer, v) = pair();
        let old = signer.issue("a", vec![], now() - 1000, 300).expect("issue");
        assert!(matches!(
            v.verify(&old.token, now()),
            Err(TokenError::Invalid(_))
        ));
        // Within the leeway it still passes.
        let recent = signer.issue("a", vec![], now() - 330, 300).expect("issue");
        assert!(v.verify(&recent.token, now()).is_ok());

        let key = generate_key("other").expect("key");
        let other = Signer::new(
            &key.kid,
            &key.private_pem,
            &key.cert_pem,
            "berth",
            "registry",
        )
        .expect("s");
        let t = other.issue("a", vec![], now(), 300).expect("issue");
        assert!(matches!(
            v.verify(&t.token, now()),
            Err(TokenError::UntrustedKey(_))
        ));

        let (k2, _, _) = pair();
        let wrong_aud =
            Signer::new(&k2.kid, &k2.private_pem, &k2.cert_pem, "berth", "elsewhere").expect("s");
        let mut v2 = Verifier::new("berth", "registry", Vec::new());
        v2.add_root_bundle(&k2.cert_pem).expect("root");
        let t = wrong_aud.issue("a", vec![], now(), 300).expect("issue");
        assert!(matches!(
            v2.verify(&t.token, now()),
            Err(TokenError::Invalid(_))
        ));
        let wrong_iss = Signer::new(
            &k2.kid,
            &k2.private_pem,
            &k2.cert_pem,
            "mallory",
            "registry",
        )
        .expect("s");
        let t = wrong_iss.issue("a", vec![], now(), 300).expect("issue");
        assert!(matches!(
            v2.verify(&t.token, now()),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn refuses_tampering_none_and_disallowed_algorithms() {
        let (_, signer, v) = pair();
        let t = signer
            .issue("bob", vec![Scope::repository("a/b", ["pull"])], now(), 300)
            .expect("issue");
        let parts: Vec<&str> = t.token.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("json");
        claims["access"][0]["actions"] = serde_json::json!(["pull", "push"]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(claims.to_string()),
            parts[2]
        );
        assert!(v.verify(&forged, now()).is_err());
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(v.verify(&none, now()).is_err());
        let mut only_rsa = Verifier::new("berth", "registry", vec![Algorithm::RS256]);
        only_rsa.keys = std::mem::take(&mut pair().2.keys);
        assert!(matches!(
            only_rsa.verify(&t.token, now()),
            Err(TokenError::Algorithm(Algorithm::ES256))
        ));
        assert_eq!(parse_algorithm("HS256"), None);
        assert_eq!(parse_algorithm("ES256"), Some(Algorithm::ES256));
    }

    #[test]
    fn a_token_carrying_its_own_key_is_not_trusted() {
        let (_, _, v) = pair();
        let key = generate_key("self").expect("key");
        let enc = EncodingKey::from_ec_pem(key.private_pem.as_bytes()).expect("enc");
        let mut header = Header::new(Algorithm::ES256);
        // An x5c of its own self-signed certificate: not one of the roots.
        let cert_b64 = pem_blocks(&key.cert_pem, "CERTIFICATE").remove(0);
        header.x5c = Some(vec![cert_b64]);
        let claims = Claims {
            iss: "berth".into(),
            sub: "eve".into(),
            aud: Audience::One("registry".into()),
            exp: now() + 300,
            nbf: 0,
            iat: now(),
            jti: "x".into(),
            access: vec![Scope::repository("a/b", ["*"])],
        };
        let t = jsonwebtoken::encode(&header, &claims, &enc).expect("encode");
        assert!(matches!(
            v.verify(&t, now()),
            Err(TokenError::UntrustedKey(_))
        ));
    }
}
