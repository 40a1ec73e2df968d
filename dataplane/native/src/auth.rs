//! `--auth jwt` on the router (SPEC section 5, "Auth"): the same tokens, keys and rules as
//! the control plane (controlplane/auth.py), with the same words for every refusal;
//! tests/vectors/jwt.json is checked by both (cargo test here, pytest there) so the two
//! cannot drift.
//!
//! - Algorithms are pinned to RS256 and ES256 (SPEC section 4), and the key decides which
//!   of them it verifies: `none`, HS* (an HMAC keyed with the public key's bytes) and an
//!   algorithm the key's type does not fit fail before any signature check.
//! - One public key (PEM: SubjectPublicKeyInfo, PKCS#1 RSA or an X.509 certificate) or a
//!   JWKS file (public keys only; `use: enc` keys and algorithms we never accept are
//!   skipped; with several keys each needs its own `kid` and tokens name theirs).
//! - `exp` required; `nbf`/`iat` in the future and `exp` in the past refused with a leeway
//!   (at most 30 s); `iss` and `aud` enforced when configured; `sub` and `org_id`
//!   non-empty strings; `role` a string, `roles` a list of strings.
//!
//! A verified token is cached (by its whole text) until it expires, so a call with a known
//! token costs a hash lookup, not a signature check. The cache is bounded: when full, the
//! expired entries go, and if none has expired it starts over.
//!
//! Signatures are checked with `jsonwebtoken` 9's `crypto::verify` on ring (ring's RSA and
//! ECDSA verification; jsonwebtoken's PEM, SPKI and certificate parsing). Only its
//! signature check is used: the header, the algorithm pinning and every claim are checked
//! here, so the rules and the words are the control plane's, not the crate's. (jsonwebtoken
//! 10 and later make the user pick aws-lc-rs, a C/cmake build, or RustCrypto's `rsa`,
//! slower to verify and a larger tree; 9.3 on ring is neither.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};

pub const MAX_LEEWAY_S: u64 = 30;
pub const MAX_TOKEN_LENGTH: usize = 16 * 1024;
/// The pinned algorithms, in the order the control plane names them.
pub const ALGORITHMS: [&str; 2] = ["RS256", "ES256"];
const DEFAULT_CACHE_ENTRIES: usize = 16_384;

fn default_leeway() -> u64 {
    MAX_LEEWAY_S
}
fn default_cache_entries() -> usize {
    DEFAULT_CACHE_ENTRIES
}

/// The router's JWT settings (JSON from dataplane/server.py; the control plane's flags).
#[derive(Deserialize, Clone, Debug, Default)]
pub struct AuthConfig {
    #[serde(default)]
    pub public_key_path: Option<String>,
    #[serde(default)]
    pub jwks_path: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

/// Who a verified token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub org_id: String,
    pub roles: Vec<String>,
}

/// Why a token is refused (401 / UNAUTHENTICATED): our words, never the token's contents at
/// length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthError(pub String);

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse(reason: impl Into<String>) -> AuthError {
    AuthError(reason.into())
}

struct Key {
    kid: Option<String>,
    /// The pinned algorithms this key verifies (one: RSA keys RS256, P-256 keys ES256).
    algorithm: Algorithm,
    name: &'static str,
    key: DecodingKey,
}

struct Entry {
    principal: Arc<Principal>,
    /// Unix seconds after which the token is expired (its exp plus the leeway).
    until: f64,
}

pub struct Verifier {
    keys: Vec<Key>,
    from_jwks: bool,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: f64,
    cache: Mutex<HashMap<Box<str>, Entry>>,
    cache_entries: usize,
    /// Tokens checked by signature (not served from the cache), refused ones too.
    signature_checks: AtomicU64,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

fn pinned_list() -> String {
    format!("[{}]", ALGORITHMS.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", "))
}

/// The DER of a P-256 curve OID (1.2.840.10045.3.1.7) as it appears in an EC key's SPKI.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn load_pem(path: &str) -> Result<Vec<Key>, String> {
    let data = read(path)?;
    let text = String::from_utf8_lossy(&data);
    let not_a_key = || format!("{path} is not a PEM public key or certificate");
    let tag = text.find("-----BEGIN ").and_then(|at| text[at + 11..].split("-----").next()).ok_or_else(not_a_key)?;
    if !matches!(tag, "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE") {
        return Err(not_a_key());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&data) {
        return Ok(vec![Key { kid: None, algorithm: Algorithm::RS256, name: "RS256", key }]);
    }
    let key = DecodingKey::from_ec_pem(&data).map_err(|_| not_a_key())?;
    let der = pem_der(&text).ok_or_else(not_a_key)?;
    if !der.windows(P256_OID.len()).any(|w| w == P256_OID) {
        return Err(format!("the EC key in {path} fits none of the pinned algorithms {}", pinned_list()));
    }
    Ok(vec![Key { kid: None, algorithm: Algorithm::ES256, name: "ES256", key }])
}

/// The base64 body of the first PEM block, decoded.
fn pem_der(text: &str) -> Option<Vec<u8>> {
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END "))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()
}

fn jwk_text<'a>(jwk: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    jwk.get(field).and_then(Value::as_str)
}

/// One JWKS entry as a key; None for keys not meant for our signatures.
fn load_jwk(jwk: &Value, path: &str) -> Result<Option<Key>, String> {
    let jwk = jwk.as_object().ok_or_else(|| format!("{path}: every entry of 'keys' must be an object"))?;
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(format!("{path}: kid {other} must be a string")),
    };
    let shown = kid.as_deref().map_or("None".to_string(), |k| format!("'{k}'"));
    if jwk_text(jwk, "kty") == Some("oct") || jwk.contains_key("d") {
        return Err(format!(
            "{path}: key {shown} is a secret or private key; a JWKS for verifiers holds public keys only"
        ));
    }
    if jwk.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
        return Ok(None);
    }
    let cannot = |why: &str| format!("{path}: key {shown} cannot be loaded ({why})");
    let (algorithm, name, key) = match jwk_text(jwk, "kty") {
        Some("RSA") => {
            let (Some(n), Some(e)) = (jwk_text(jwk, "n"), jwk_text(jwk, "e")) else {
                return Err(cannot("an RSA key needs n and e"));
            };
            let key = DecodingKey::from_rsa_components(n, e).map_err(|_| cannot("n and e must be base64url"))?;
            (Algorithm::RS256, "RS256", key)
        }
        Some("EC") => {
            let (Some(x), Some(y)) = (jwk_text(jwk, "x"), jwk_text(jwk, "y")) else {
                return Err(cannot("an EC key needs crv, x and y"));
            };
            let sizes = (URL_SAFE_NO_PAD.decode(x).map(|v| v.len()), URL_SAFE_NO_PAD.decode(y).map(|v| v.len()));
            if jwk_text(jwk, "crv") != Some("P-256") {
                return Ok(None); // a curve none of the pinned algorithms uses
            }
            if sizes != (Ok(32), Ok(32)) {
                return Err(cannot("x and y must be 32-byte base64url for P-256"));
            }
            let key = DecodingKey::from_ec_components(x, y).map_err(|_| cannot("bad x or y"))?;
            (Algorithm::ES256, "ES256", key)
        }
        Some(_) => return Ok(None), // OKP and others: no pinned algorithm
        None => return Err(cannot("no kty")),
    };
    match jwk.get("alg") {
        Some(alg) if alg.as_str() != Some(name) => Ok(None),
        _ => Ok(Some(Key { kid, algorithm, name, key })),
    }
}

fn load_jwks(path: &str) -> Result<Vec<Key>, String> {
    let data = read(path)?;
    let document: Value = serde_json::from_slice(&data).map_err(|e| format!("{path} is not JSON: {e}"))?;
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{path} is not a JWKS: expected {{\"keys\": [...]}}"))?;
    let mut keys = Vec::new();
    for entry in entries {
        if let Some(key) = load_jwk(entry, path)? {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(format!("{path} has no signature key for the pinned algorithms {}", pinned_list()));
    }
    let mut kids: Vec<Option<&str>> = keys.iter().map(|k| k.kid.as_deref()).collect();
    kids.sort();
    kids.dedup();
    if keys.len() > 1 && (kids.len() != keys.len() || kids.contains(&None)) {
        return Err(format!("{path}: with several keys, each needs its own kid"));
    }
    Ok(keys)
}

/// The name Python gives a JSON value's type (the control plane shows it for a non-string alg).
fn python_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(refuse(format!("token {name} claim must be a number (seconds since the epoch)"))),
    }
}

fn text_claim(claims: &Map<String, Value>, name: &str) -> Result<String, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Err(refuse(format!("token has no {name} claim"))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(refuse(format!("token {name} claim must be a non-empty string"))),
    }
}

fn roles(claims: &Map<String, Value>) -> Result<Vec<String>, AuthError> {
    let mut roles = Vec::new();
    if let Some(role) = claims.get("role") {
        roles.push(role.as_str().ok_or_else(|| refuse("token role claim must be a string"))?.to_string());
    }
    if let Some(listed) = claims.get("roles") {
        let bad = || refuse("token roles claim must be a list of strings");
        for r in listed.as_array().ok_or_else(bad)? {
            roles.push(r.as_str().ok_or_else(bad)?.to_string());
        }
    }
    roles.sort();
    roles.dedup();
    Ok(roles)
}

impl Verifier {
    /// Load the key(s) once; a bad setting or file fails here, naming the file.
    pub fn new(config: &AuthConfig) -> Result<Verifier, String> {
        if config.leeway_s > MAX_LEEWAY_S {
            return Err(format!("JWT leeway must be 0 to {MAX_LEEWAY_S} s, got {}", config.leeway_s));
        }
        let (keys, from_jwks) = match (&config.public_key_path, &config.jwks_path) {
            (Some(pem), None) => (load_pem(pem)?, false),
            (None, Some(jwks)) => (load_jwks(jwks)?, true),
            _ => {
                return Err("auth needs exactly one of a public key file (--jwt-public-key) or a JWKS file (--jwks)"
                    .to_string())
            }
        };
        Ok(Verifier {
            keys,
            from_jwks,
            issuer: config.issuer.clone().filter(|s| !s.is_empty()),
            audience: config.audience.clone().filter(|s| !s.is_empty()),
            leeway: config.leeway_s as f64,
            cache: Mutex::new(HashMap::new()),
            cache_entries: config.cache_entries.max(1),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// A token's principal: from the cache while the token has not expired, else verified
    /// (and then cached).
    pub fn check(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let at = now();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = cache.get(token) {
                if at < entry.until {
                    return Ok(entry.principal.clone());
                }
            }
        }
        self.signature_checks.fetch_add(1, Relaxed);
        let (principal, exp) = self.verify_at(token, at)?;
        let principal = Arc::new(principal);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.cache_entries {
            cache.retain(|_, e| at < e.until);
            if cache.len() >= self.cache_entries {
                cache.clear();
            }
        }
        cache.insert(token.into(), Entry { principal: principal.clone(), until: exp + self.leeway });
        Ok(principal)
    }

    /// How many verified tokens are cached (tests and the status read it).
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many tokens `check` verified by signature (the rest came from the cache).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Relaxed)
    }

    /// Verify a token now, without the cache.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_at(token, now()).map(|(p, _)| p)
    }

    fn key_for(&self, header: &Map<String, Value>, algorithm: &str) -> Result<&Key, AuthError> {
        let key = if self.from_jwks {
            match header.get("kid") {
                None => {
                    if self.keys.len() > 1 {
                        return Err(refuse("token has no kid; the JWKS has several keys"));
                    }
                    &self.keys[0]
                }
                Some(kid) => self
                    .keys
                    .iter()
                    .find(|k| k.kid.is_some() && k.kid.as_deref() == kid.as_str())
                    .ok_or_else(|| refuse("token kid is not in the JWKS"))?,
            }
        } else {
            &self.keys[0]
        };
        if key.name != algorithm {
            return Err(refuse(format!("token algorithm {algorithm} does not fit the verification key")));
        }
        Ok(key)
    }

    /// (principal, exp) of a token at time `at`.
    fn verify_at(&self, token: &str, at: f64) -> Result<(Principal, f64), AuthError> {
        if token.is_empty() {
            return Err(refuse("missing token"));
        }
        if token.len() > MAX_TOKEN_LENGTH {
            return Err(refuse("token is too long"));
        }
        let malformed = || refuse("token is malformed");
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let header_bytes = URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| malformed())?;
        let payload_bytes = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| malformed())?;
        URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| malformed())?;
        let header: Map<String, Value> = serde_json::from_slice(&header_bytes).map_err(|_| malformed())?;
        let algorithm = match header.get("alg") {
            Some(Value::String(a)) if ALGORITHMS.contains(&a.as_str()) => a.as_str(),
            other => {
                let shown = match other {
                    Some(Value::String(a)) => a.chars().take(16).collect::<String>(),
                    Some(v) => python_type(v).to_string(),
                    None => "NoneType".to_string(),
                };
                return Err(refuse(format!(
                    "token algorithm '{shown}' is not accepted (accepted: {})",
                    ALGORITHMS.join(", ")
                )));
            }
        };
        let key = self.key_for(&header, algorithm)?;
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        match jsonwebtoken::crypto::verify(signature_b64, signing_input.as_bytes(), &key.key, key.algorithm) {
            Ok(true) => {}
            _ => return Err(refuse("token signature is invalid")),
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload_bytes).map_err(|_| refuse("token is malformed or invalid"))?;
        self.check_claims(&claims, at)
    }

    fn check_claims(&self, claims: &Map<String, Value>, at: f64) -> Result<(Principal, f64), AuthError> {
        if claims.get("exp").is_none_or(Value::is_null) {
            return Err(refuse("token has no exp claim"));
        }
        let exp = number(claims, "exp")?.unwrap_or(f64::NAN);
        let iat = number(claims, "iat")?;
        let nbf = number(claims, "nbf")?;
        let future = |t: Option<f64>| t.is_some_and(|t| t.trunc() > at + self.leeway);
        if future(iat) || future(nbf) {
            return Err(refuse("token is not valid yet (nbf or iat in the future)"));
        }
        let exp = exp.trunc();
        if exp.is_nan() || exp <= at - self.leeway {
            return Err(refuse("token expired"));
        }
        if let Some(issuer) = &self.issuer {
            match claims.get("iss") {
                None => return Err(refuse("token has no iss claim")),
                Some(Value::String(iss)) if iss == issuer => {}
                Some(_) => return Err(refuse("token issuer is not accepted")),
            }
        }
        if let Some(audience) = &self.audience {
            let accepted = match claims.get("aud") {
                None | Some(Value::Null) => return Err(refuse("token has no aud claim")),
                Some(Value::String(s)) if s.is_empty() => return Err(refuse("token has no aud claim")),
                Some(Value::Array(a)) if a.is_empty() => return Err(refuse("token has no aud claim")),
                Some(Value::String(s)) => s == audience,
                Some(Value::Array(a)) => {
                    a.iter().all(Value::is_string) && a.iter().any(|v| v.as_str() == Some(audience))
                }
                Some(_) => false,
            };
            if !accepted {
                return Err(refuse("token audience is not accepted"));
            }
        }
        let principal =
            Principal { sub: text_claim(claims, "sub")?, org_id: text_claim(claims, "org_id")?, roles: roles(claims)? };
        Ok((principal, exp))
    }
}

/// The token of an `authorization: Bearer <jwt>` header (scheme case-insensitive).
pub fn bearer_token(authorization: Option<&[u8]>) -> Result<&str, AuthError> {
    let text = authorization.and_then(|v| std::str::from_utf8(v).ok()).map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Err(refuse("missing bearer token: send the header authorization: Bearer <jwt>"));
    }
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(refuse("the authorization header must be: Bearer <jwt>"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/jwt.json");
        let text = std::fs::read_to_string(path).expect("tests/vectors/jwt.json (tests/vectors/make_jwt.py writes it)");
        serde_json::from_str(&text).unwrap()
    }

    /// The verifiers the vectors name, from their keys written to a temporary folder of
    /// this call's own (tests run in parallel threads of one process: a shared folder let
    /// one test read a key file another was rewriting).
    fn verifiers(v: &Value) -> HashMap<String, Verifier> {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tsplit-jwt-vectors-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = HashMap::new();
        for (name, spec) in v["verifiers"].as_object().unwrap() {
            let mut config = AuthConfig {
                issuer: spec["issuer"].as_str().map(String::from),
                audience: spec["audience"].as_str().map(String::from),
                leeway_s: 30,
                cache_entries: 64,
                ..Default::default()
            };
            let path = dir.join(name);
            if let Some(pem) = spec["public_key_pem"].as_str() {
                std::fs::write(&path, pem).unwrap();
                config.public_key_path = Some(path.display().to_string());
            } else {
                std::fs::write(&path, spec["jwks"].to_string()).unwrap();
                config.jwks_path = Some(path.display().to_string());
            }
            out.insert(name.clone(), Verifier::new(&config).unwrap_or_else(|e| panic!("verifier {name}: {e}")));
        }
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    #[test]
    fn the_shared_token_table_gives_the_control_planes_outcomes() {
        let v = vectors();
        let verifiers = verifiers(&v);
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 8);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let verifier = &verifiers[case["verifier"].as_str().unwrap()];
            let token = case["token"].as_str().unwrap();
            let outcome = verifier.check(token);
            match (&case["expect"]["error"], outcome) {
                (Value::String(words), Err(AuthError(message))) => {
                    assert!(message.contains(words.as_str()), "{name}: {message:?} lacks {words:?}");
                    assert!(message.len() < 120, "{name}: {message}");
                }
                (Value::Null, Ok(principal)) => {
                    let ok = &case["expect"]["ok"];
                    assert_eq!(principal.sub, ok["sub"].as_str().unwrap(), "{name}");
                    assert_eq!(principal.org_id, ok["org_id"].as_str().unwrap(), "{name}");
                    let roles: Vec<String> =
                        ok["roles"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
                    assert_eq!(principal.roles, roles, "{name}");
                    // Access as the router decides it: the deployment's org, else not found.
                    let org = case["deployment_org"].as_str().unwrap_or("");
                    let access = if principal.org_id == org { "ok" } else { "not_found" };
                    assert_eq!(access, case["access"].as_str().unwrap_or("ok"), "{name}");
                }
                (expected, got) => panic!("{name}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn bad_settings_fail_at_start_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("tsplit-jwt-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let v = vectors();
        let rsa_pem = v["verifiers"]["rsa_pem"]["public_key_pem"].as_str().unwrap();
        let cases: Vec<(AuthConfig, String)> = vec![
            (AuthConfig::default(), "exactly one".into()),
            (
                AuthConfig {
                    public_key_path: Some(write("k.pem", rsa_pem)),
                    jwks_path: Some("x".into()),
                    ..Default::default()
                },
                "exactly one".into(),
            ),
            (
                AuthConfig {
                    public_key_path: Some(dir.join("missing.pem").display().to_string()),
                    ..Default::default()
                },
                "missing.pem".into(),
            ),
            (
                AuthConfig {
                    public_key_path: Some(write(
                        "garbage.pem",
                        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
                    )),
                    ..Default::default()
                },
                "garbage.pem".into(),
            ),
            (
                AuthConfig {
                    public_key_path: Some(write(
                        "private.pem",
                        "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
                    )),
                    ..Default::default()
                },
                "private.pem".into(),
            ),
            (
                AuthConfig { public_key_path: Some(write("k2.pem", rsa_pem)), leeway_s: 31, ..Default::default() },
                "leeway".into(),
            ),
            (AuthConfig { jwks_path: Some(write("bad.json", "{not json")), ..Default::default() }, "bad.json".into()),
            (
                AuthConfig { jwks_path: Some(write("empty.json", r#"{"keys": []}"#)), ..Default::default() },
                "no signature key".into(),
            ),
            (
                AuthConfig {
                    jwks_path: Some(write("oct.json", r#"{"keys": [{"kty": "oct", "k": "AAAA", "kid": "s"}]}"#)),
                    ..Default::default()
                },
                "secret or private".into(),
            ),
            (
                AuthConfig {
                    jwks_path: Some(write(
                        "enc.json",
                        r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "use": "enc"}]}"#,
                    )),
                    ..Default::default()
                },
                "no signature key".into(),
            ),
            (
                AuthConfig {
                    jwks_path: Some(write(
                        "dup.json",
                        r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "k"}, {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "k"}]}"#,
                    )),
                    ..Default::default()
                },
                "own kid".into(),
            ),
        ];
        for (config, words) in cases {
            let err = Verifier::new(&config).err().unwrap_or_else(|| panic!("{config:?} should fail"));
            assert!(err.contains(&words), "{config:?}: {err}");
        }
    }

    #[test]
    fn a_known_token_is_served_from_the_cache_until_it_expires() {
        let v = vectors();
        let verifiers = verifiers(&v);
        let good = v["cases"].as_array().unwrap().iter().find(|c| c["name"] == "good rs256").unwrap();
        let verifier = &verifiers[good["verifier"].as_str().unwrap()];
        let token = good["token"].as_str().unwrap();
        assert_eq!(verifier.cached(), 0);
        let first = verifier.check(token).unwrap();
        assert_eq!(verifier.cached(), 1);
        let second = verifier.check(token).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "the second check is the cached principal");
        assert_eq!(verifier.signature_checks(), 1, "the second check verified no signature");
        // The cache keeps only what verified: a refused token is not cached.
        let _ = verifier.check("a.b.c");
        assert_eq!(verifier.cached(), 1);
        // An entry past its expiry is not served: the token is verified again (the vector's
        // token expires in 2100, so it passes and is cached anew).
        let key: Box<str> = token.into();
        verifier.cache.lock().unwrap().get_mut(&key).unwrap().until = now() - 1.0;
        let third = verifier.check(token).unwrap();
        assert!(!Arc::ptr_eq(&first, &third), "an expired entry is verified again");
        assert_eq!(verifier.cached(), 1);
    }

    #[test]
    fn the_cache_is_bounded() {
        let v = vectors();
        let verifiers = verifiers(&v);
        let verifier = &verifiers["rsa_pem"];
        let goods: Vec<&str> = v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["verifier"] == "rsa_pem" && c["expect"]["ok"].is_object())
            .map(|c| c["token"].as_str().unwrap())
            .collect();
        assert!(goods.len() >= 2);
        let small = Verifier {
            cache_entries: 1,
            ..Verifier::new(&AuthConfig {
                public_key_path: Some({
                    let p = std::env::temp_dir().join(format!("tsplit-jwt-small-{}.pem", std::process::id()));
                    std::fs::write(&p, v["verifiers"]["rsa_pem"]["public_key_pem"].as_str().unwrap()).unwrap();
                    p.display().to_string()
                }),
                issuer: verifier.issuer.clone(),
                audience: verifier.audience.clone(),
                ..Default::default()
            })
            .unwrap()
        };
        for token in &goods {
            small.check(token).unwrap();
            assert_eq!(small.cached(), 1);
        }
    }

    #[test]
    fn the_authorization_header() {
        assert_eq!(bearer_token(Some(b"Bearer abc.def.ghi")).unwrap(), "abc.def.ghi");
        assert_eq!(bearer_token(Some(b"bearer abc.def.ghi")).unwrap(), "abc.def.ghi");
        assert_eq!(bearer_token(Some(b"BEARER  abc.def.ghi ")).unwrap(), "abc.def.ghi");
        for bad in [
            None,
            Some(&b""[..]),
            Some(b"Bearer"),
            Some(b"Bearer "),
            Some(b"Basic dXNlcjpwYXNz"),
            Some(b"abc.def.ghi"),
            Some(b"Bearer a b"),
            Some(b"Token abc"),
        ] {
            assert!(bearer_token(bad).unwrap_err().0.contains("Bearer"), "{bad:?}");
        }
    }
}
