//! `POST /auth/token`: SMART Backend Services (client credentials with a signed JWT
//! assertion, RFC 7523 and <https://hl7.org/fhir/smart-app-launch/backend-services.html>).
//!
//! The assertion must be signed (RS256/RS384/ES256/ES384) with a key of the client's
//! registered JWKS chosen by `kid`; `iss` and `sub` name the client, `aud` is this token
//! URL, `exp` is in the future and at most five minutes ahead, and its `jti` is used once.
//! The access token is a JWT signed by the server (ES256, `kid` of `keys`), valid for five
//! minutes, carrying the granted scopes (those asked for, narrowed to those the client is
//! allowed) and the client's patient, if it has one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::clients::{self, Client, KeySource};
use super::keys::SigningKey;
use super::scopes::{granted, parse_scopes, to_string, Context, Scope};
use crate::outbound::OutboundPolicy;
use crate::store::sql::statement;
use crate::store::time::now_micros;
use crate::store::Store;

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of an access token, and the furthest ahead an assertion's `exp` may be.
pub const TOKEN_LIFETIME_SECONDS: i64 = 300;
/// Token requests one client (or one unknown caller) may make per minute.
const REQUESTS_PER_MINUTE: u32 = 60;
/// How long a fetched JWKS is reused.
const JWKS_REUSE: Duration = Duration::from_secs(300);
/// Algorithms accepted for client assertions.
const ASSERTION_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS384,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::ES256,
];

/// An OAuth error response (RFC 6749 §5.2).
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }

    pub fn body(&self) -> Json {
        json!({"error": self.error, "error_description": self.description})
    }
}

/// The form of a token request.
#[derive(Debug, Default, Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    pub scope: Option<String>,
}

/// The claims of an access token issued here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub scope: String,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub patient: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: i64,
    jti: String,
}

/// Issues and checks tokens for one server.
pub struct TokenService {
    keys: Vec<SigningKey>,
    policy: OutboundPolicy,
    /// An identity provider whose tokens are accepted too.
    external: Option<crate::config::ExternalIdp>,
    jwks_cache: Mutex<HashMap<String, (Json, Instant)>>,
    requests: Mutex<HashMap<String, (Instant, u32)>>,
}

impl TokenService {
    pub fn new(keys: Vec<SigningKey>, policy: OutboundPolicy) -> TokenService {
        TokenService {
            keys,
            policy,
            external: None,
            jwks_cache: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
        }
    }

    /// Also accepts the access tokens of `idp`.
    pub fn with_external(mut self, idp: Option<crate::config::ExternalIdp>) -> TokenService {
        self.external = idp;
        self
    }

    /// Checks an access token: one of this server's, or the external identity
    /// provider's (chosen by the token's `iss`).
    pub async fn verify(&self, token: &str, fhir_base: &str) -> Result<AccessClaims, String> {
        let Some(idp) = &self.external else {
            return self.verify_access_token(token, fhir_base);
        };
        let issuer = unverified_issuer(token).map_err(|_| "not a JWT".to_string())?;
        if issuer != idp.issuer {
            return self.verify_access_token(token, fhir_base);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| "not a JWT".to_string())?;
        if !ASSERTION_ALGORITHMS.contains(&header.alg) {
            return Err(format!("signed with {:?}", header.alg));
        }
        let kid = header.kid.as_deref().unwrap_or_default();
        let find = |jwks: &Json| {
            jwks["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|k| header.kid.is_none() || k["kid"].as_str() == Some(kid))
                .cloned()
        };
        let mut jwk = find(&self.idp_jwks(idp, false).await?);
        if jwk.is_none() {
            // Keys rotate: look again once before refusing.
            jwk = find(&self.idp_jwks(idp, true).await?);
        }
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(jwk.ok_or("signed with an unknown key")?)
                .map_err(|e| format!("the identity provider's key is not a JWK: {e}"))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[idp.audience.as_str()]);
        validation.set_issuer(&[idp.issuer.as_str()]);
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<Json>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "expired".to_string(),
                _ => format!("invalid: {e}"),
            })?
            .claims;
        // Scopes as a space-separated `scope`, or as an `scp` array (some providers).
        let scope = match (&claims["scope"], &claims["scp"]) {
            (Json::String(scope), _) => scope.clone(),
            (_, Json::Array(list)) => list
                .iter()
                .filter_map(Json::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        let text = |name: &str| claims[name].as_str().map(str::to_string);
        let client_id = text("client_id")
            .or_else(|| text("azp"))
            .or_else(|| text("sub"))
            .unwrap_or_default();
        Ok(AccessClaims {
            iss: idp.issuer.clone(),
            sub: text("sub").unwrap_or_else(|| client_id.clone()),
            aud: idp.audience.clone(),
            exp: claims["exp"].as_i64().unwrap_or_default(),
            iat: claims["iat"].as_i64().unwrap_or_default(),
            jti: text("jti").unwrap_or_default(),
            scope,
            client_id,
            patient: text("patient"),
        })
    }

    /// The identity provider's JWKS, cached for five minutes (`fresh`: fetched anew).
    async fn idp_jwks(
        &self,
        idp: &crate::config::ExternalIdp,
        fresh: bool,
    ) -> Result<Json, String> {
        if !fresh {
            if let Ok(cache) = self.jwks_cache.lock() {
                if let Some((jwks, fetched)) = cache.get(&idp.jwks_url) {
                    if fetched.elapsed() < JWKS_REUSE {
                        return Ok(jwks.clone());
                    }
                }
            }
        }
        let jwks = fetch_jwks(&self.policy, &idp.jwks_url)
            .await
            .map_err(|why| {
                format!("not checkable: the identity provider's keys cannot be fetched ({why})")
            })?;
        if let Ok(mut cache) = self.jwks_cache.lock() {
            cache.insert(idp.jwks_url.clone(), (jwks.clone(), Instant::now()));
        }
        Ok(jwks)
    }

    /// The server's public keys as a JWKS document.
    pub fn jwks(&self) -> Json {
        json!({"keys": self.keys.iter().map(|k| k.public_jwk.clone()).collect::<Vec<_>>()})
    }

    /// Counts a request of `caller`; false when it is over its rate.
    fn admit(&self, caller: &str) -> bool {
        let Ok(mut requests) = self.requests.lock() else {
            return true;
        };
        let now = Instant::now();
        if requests.len() > 10_000 {
            requests.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let entry = requests.entry(caller.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= REQUESTS_PER_MINUTE
    }

    /// Handles a token request made to `token_url` for the FHIR server at `fhir_base`.
    pub async fn issue(
        &self,
        store: &Store,
        token_url: &str,
        fhir_base: &str,
        request: TokenRequest,
    ) -> Result<Json, OAuthError> {
        if request.grant_type.as_deref() != Some("client_credentials") {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                "grant_type must be client_credentials (SMART Backend Services)",
            ));
        }
        if request.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
            return Err(OAuthError::new(
                "invalid_client",
                format!("client_assertion_type must be {ASSERTION_TYPE}"),
            ));
        }
        let Some(assertion) = request
            .client_assertion
            .as_deref()
            .filter(|a| !a.is_empty())
        else {
            return Err(OAuthError::new(
                "invalid_client",
                "client_assertion is missing: a JWT signed with the client's key",
            ));
        };
        let claimed = unverified_issuer(assertion)?;
        if !self.admit(&claimed) {
            return Err(OAuthError {
                status: StatusCode::TOO_MANY_REQUESTS,
                error: "slow_down",
                description: format!(
                    "more than {REQUESTS_PER_MINUTE} token requests a minute; wait and reuse tokens until they expire"
                ),
            });
        }
        let client = clients::find(store.connection(), &claimed)
            .await
            .map_err(|_| OAuthError::new("invalid_client", "the client cannot be looked up"))?
            .ok_or_else(|| {
                OAuthError::new(
                    "invalid_client",
                    format!("{claimed:?} is not a registered client"),
                )
            })?;
        let assertion_claims = self.verify_assertion(&client, assertion, token_url).await?;
        self.use_once(store, &client.id, &assertion_claims).await?;
        let requested = parse_scopes(request.scope.as_deref().unwrap_or_default())
            .map_err(|e| OAuthError::new("invalid_scope", e))?;
        if requested.is_empty() {
            return Err(OAuthError::new(
                "invalid_scope",
                "scope is missing: ask for scopes such as system/Observation.rs",
            ));
        }
        let allowed = parse_scopes(&client.scopes).unwrap_or_default();
        let mut scopes = granted(&requested, &allowed);
        if client.patient.is_none() {
            // A patient/ scope needs the patient the client is registered for.
            scopes.retain(|s| !matches!(s, Scope::Resource(r) if r.context == Context::Patient));
        }
        if !scopes.iter().any(|s| matches!(s, Scope::Resource(_))) {
            return Err(OAuthError::new(
                "invalid_scope",
                format!(
                    "none of the scopes asked for is allowed for {}; it may be granted: {}",
                    client.id, client.scopes
                ),
            ));
        }
        let scope = to_string(&scopes);
        let now = now_micros() / 1_000_000;
        let claims = AccessClaims {
            iss: token_url.to_string(),
            sub: client.id.clone(),
            aud: fhir_base.to_string(),
            exp: now + TOKEN_LIFETIME_SECONDS,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: scope.clone(),
            client_id: client.id.clone(),
            patient: client.patient.clone(),
        };
        let key = self
            .keys
            .first()
            .ok_or_else(|| OAuthError::new("server_error", "no signing key"))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|_| OAuthError::new("server_error", "the token cannot be signed"))?;
        let mut response = json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": TOKEN_LIFETIME_SECONDS,
            "scope": scope,
        });
        if let Some(patient) = &client.patient {
            response["patient"] = json!(patient);
        }
        Ok(response)
    }

    /// Checks the assertion's signature and claims against the client's keys.
    async fn verify_assertion(
        &self,
        client: &Client,
        assertion: &str,
        token_url: &str,
    ) -> Result<AssertionClaims, OAuthError> {
        let header = jsonwebtoken::decode_header(assertion).map_err(|e| {
            OAuthError::new("invalid_client", format!("the assertion is not a JWT: {e}"))
        })?;
        if !ASSERTION_ALGORITHMS.contains(&header.alg) {
            return Err(OAuthError::new(
                "invalid_client",
                format!(
                    "the assertion is signed with {:?}; use RS384, ES384, RS256 or ES256",
                    header.alg
                ),
            ));
        }
        let Some(kid) = header.kid.as_deref() else {
            return Err(OAuthError::new(
                "invalid_client",
                "the assertion's header has no kid naming the key of the client's JWKS",
            ));
        };
        let jwks = self.client_jwks(client).await?;
        let jwk = jwks["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["kid"].as_str() == Some(kid))
            .ok_or_else(|| {
                OAuthError::new(
                    "invalid_client",
                    format!("the JWKS of {} has no key with kid {kid:?}", client.id),
                )
            })?;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone())
            .map_err(|e| OAuthError::new("invalid_client", format!("key {kid:?}: {e}")))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
            .map_err(|e| OAuthError::new("invalid_client", format!("key {kid:?}: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[token_url]);
        validation.set_issuer(&[client.id.as_str()]);
        validation.sub = Some(client.id.clone());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud", "jti"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::InvalidSignature => {
                        "the signature does not verify with the registered key".to_string()
                    }
                    ErrorKind::ExpiredSignature => {
                        "the assertion has expired (exp is past)".to_string()
                    }
                    ErrorKind::InvalidAudience => format!("aud must be the token URL {token_url}"),
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => {
                        "iss and sub must both be the client id".to_string()
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        format!("the assertion has no {claim} claim")
                    }
                    _ => format!("the assertion is not valid: {e}"),
                };
                OAuthError::new("invalid_client", why)
            })?
            .claims;
        if claims.iss != claims.sub {
            return Err(OAuthError::new(
                "invalid_client",
                "iss and sub must both be the client id",
            ));
        }
        let now = now_micros() / 1_000_000;
        if claims.exp > now + TOKEN_LIFETIME_SECONDS {
            return Err(OAuthError::new(
                "invalid_client",
                "exp is more than five minutes ahead; assertions must be short-lived",
            ));
        }
        Ok(claims)
    }

    /// The client's JWKS: registered inline, or fetched from its URL (under the
    /// outbound-address rules, reused for five minutes).
    async fn client_jwks(&self, client: &Client) -> Result<Json, OAuthError> {
        let url = match &client.keys {
            KeySource::Jwks(jwks) => return Ok(jwks.clone()),
            KeySource::JwksUrl(url) => url,
        };
        if let Ok(cache) = self.jwks_cache.lock() {
            if let Some((jwks, fetched)) = cache.get(url) {
                if fetched.elapsed() < JWKS_REUSE {
                    return Ok(jwks.clone());
                }
            }
        }
        let jwks = fetch_jwks(&self.policy, url).await.map_err(|why| {
            OAuthError::new(
                "invalid_client",
                format!("the JWKS of {} cannot be fetched: {why}", client.id),
            )
        })?;
        if let Ok(mut cache) = self.jwks_cache.lock() {
            cache.insert(url.clone(), (jwks.clone(), Instant::now()));
        }
        Ok(jwks)
    }

    /// Records the assertion's `jti`; a `jti` seen before (while its assertion could still
    /// be valid) is a replay.
    async fn use_once(
        &self,
        store: &Store,
        client_id: &str,
        claims: &AssertionClaims,
    ) -> Result<(), OAuthError> {
        let (client_id, jti, expires) = (
            client_id.to_string(),
            claims.jti.clone(),
            claims.exp * 1_000_000,
        );
        if jti.is_empty() || jti.len() > 256 {
            return Err(OAuthError::new(
                "invalid_client",
                "jti must be 1 to 256 characters",
            ));
        }
        let fresh = store
            .writer()
            .write(move |txn| {
                Box::pin(async move {
                    use sea_orm::ConnectionTrait;
                    let backend = txn.get_database_backend();
                    txn.execute_raw(statement(
                        backend,
                        "DELETE FROM auth_client_assertions WHERE expires < ?",
                        vec![now_micros().into()],
                    ))
                    .await?;
                    let ignore = if backend == sea_orm::DbBackend::Postgres {
                        "ON CONFLICT (client_id, jti) DO NOTHING"
                    } else {
                        "ON CONFLICT DO NOTHING"
                    };
                    let inserted = txn
                        .execute_raw(statement(
                            backend,
                            &format!(
                                "INSERT INTO auth_client_assertions (client_id, jti, expires) \
                                 VALUES (?, ?, ?) {ignore}"
                            ),
                            vec![client_id.into(), jti.into(), expires.into()],
                        ))
                        .await?;
                    Ok(inserted.rows_affected() == 1)
                })
            })
            .await
            .map_err(|_| OAuthError::new("server_error", "the assertion cannot be recorded"))?;
        if fresh {
            Ok(())
        } else {
            Err(OAuthError::new(
                "invalid_client",
                "this assertion (its jti) was already used; sign a new one for each request",
            ))
        }
    }

    /// Checks an access token issued by this server: signature, expiry and audience.
    pub fn verify_access_token(
        &self,
        token: &str,
        fhir_base: &str,
    ) -> Result<AccessClaims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "not a JWT".to_string())?;
        let key = self
            .keys
            .iter()
            .find(|k| Some(k.kid.as_str()) == header.kid.as_deref())
            .ok_or("signed with an unknown key")?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[fhir_base]);
        validation.leeway = 0;
        jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "expired".to_string(),
                _ => format!("invalid: {e}"),
            })
    }
}

/// Fetches a JWKS from `url`, under the outbound-address rules.
async fn fetch_jwks(policy: &OutboundPolicy, url: &str) -> Result<Json, String> {
    let parsed = policy.check_url(url).map_err(|r| r.0)?;
    let addresses = policy.resolve(&parsed).await.map_err(|r| r.0)?;
    let http = policy
        .client(&parsed, &addresses, Duration::from_secs(10))
        .map_err(|r| r.0)?;
    let response = http
        .get(url)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("it answered {}", response.status()));
    }
    response
        .json()
        .await
        .map_err(|e| format!("not JSON: {}", e.without_url()))
}

/// The client an assertion claims to come from (unverified: for the audit trail of a
/// request that succeeded, or to say who was refused).
pub fn claimed_client(assertion: &str) -> Option<String> {
    unverified_issuer(assertion).ok()
}

/// The `iss` of an assertion, read before it is verified (to find the client and its
/// keys); trusted only once the signature checks.
fn unverified_issuer(assertion: &str) -> Result<String, OAuthError> {
    let payload = assertion.split('.').nth(1).ok_or_else(|| {
        OAuthError::new(
            "invalid_client",
            "client_assertion is not a JWT (header.payload.signature)",
        )
    })?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| {
            OAuthError::new("invalid_client", "the assertion's payload is not base64url")
        })?;
    let claims: Json = serde_json::from_slice(&bytes)
        .map_err(|_| OAuthError::new("invalid_client", "the assertion's payload is not JSON"))?;
    claims["iss"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            OAuthError::new("invalid_client", "the assertion has no iss (the client id)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(service: &TokenService, claims: &AccessClaims) -> String {
        let key = &service.keys[0];
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    #[test]
    fn access_tokens_are_checked_for_signature_expiry_and_audience() {
        let service = TokenService::new(
            vec![super::super::keys::generate().unwrap()],
            OutboundPolicy::default(),
        );
        let now = now_micros() / 1_000_000;
        let mut claims = AccessClaims {
            iss: "https://fhir.example/auth/token".into(),
            sub: "ehr".into(),
            aud: "https://fhir.example/fhir".into(),
            exp: now + 60,
            iat: now,
            jti: "1".into(),
            scope: "system/Observation.rs".into(),
            client_id: "ehr".into(),
            patient: None,
        };
        let good = signed(&service, &claims);
        assert_eq!(
            service
                .verify_access_token(&good, "https://fhir.example/fhir")
                .unwrap()
                .scope,
            "system/Observation.rs"
        );
        assert!(service
            .verify_access_token(&good, "https://other.example/fhir")
            .is_err());
        claims.exp = now - 1;
        let expired = signed(&service, &claims);
        assert_eq!(
            service
                .verify_access_token(&expired, "https://fhir.example/fhir")
                .unwrap_err(),
            "expired"
        );
        let other = TokenService::new(
            vec![super::super::keys::generate().unwrap()],
            OutboundPolicy::default(),
        );
        claims.exp = now + 60;
        assert!(service
            .verify_access_token(&signed(&other, &claims), "https://fhir.example/fhir")
            .is_err());
    }
}
