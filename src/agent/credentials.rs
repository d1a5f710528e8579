//! SMART backend services for the agent: it signs a client assertion with its private key
//! and exchanges it at the server's token endpoint for an access token, kept until shortly
//! before it expires.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value as Json};
use tokio::sync::Mutex;

use super::config::AuthConfig;

/// What the agent asks for when the operator does not say: writing device data (the
/// `s`: conditional creates find what was sent before by searching), finding the
/// patients its sources name by identifier, and creating those an imaging study names
/// (a DICOM instance carries its patient's demographics).
pub const DEFAULT_SCOPE: &str = "system/Observation.crus system/Device.crus system/DeviceMetric.crus system/DetectedIssue.crus system/ImagingStudy.crus system/Patient.crs";

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub struct Credentials {
    client_id: String,
    kid: String,
    token_url: String,
    scope: String,
    key: EncodingKey,
    algorithm: Algorithm,
    current: Mutex<Option<(String, Instant)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The configuration or key is wrong: retrying does not help.
    #[error("{0}")]
    Config(String),
    /// The token endpoint refused the client (unknown, wrong key, scopes not allowed).
    #[error("the token endpoint refused the agent: {0}")]
    Refused(String),
    /// The token endpoint could not be reached.
    #[error("the token endpoint cannot be reached: {0}")]
    Unreachable(String),
}

impl Credentials {
    pub fn load(config: &AuthConfig) -> Result<Credentials, CredentialError> {
        let pem = std::fs::read(&config.private_key).map_err(|e| {
            CredentialError::Config(format!(
                "cannot read the private key {}: {e}",
                config.private_key.display()
            ))
        })?;
        // RSA keys sign RS384, EC keys (P-384) ES384: what SMART backend services require
        // servers to support.
        let (key, algorithm) = match EncodingKey::from_rsa_pem(&pem) {
            Ok(key) => (key, Algorithm::RS384),
            Err(_) => match EncodingKey::from_ec_pem(&pem) {
                Ok(key) => (key, Algorithm::ES384),
                Err(e) => {
                    return Err(CredentialError::Config(format!(
                        "{} is not an RSA or EC private key in PEM: {e}",
                        config.private_key.display()
                    )))
                }
            },
        };
        Ok(Credentials {
            client_id: config.client_id.clone(),
            kid: config.kid.clone(),
            token_url: config.token_url.clone(),
            scope: config
                .scope
                .clone()
                .unwrap_or_else(|| DEFAULT_SCOPE.to_string()),
            key,
            algorithm,
            current: Mutex::new(None),
        })
    }

    /// A valid access token: the one held, or a new one.
    pub async fn token(&self, http: &reqwest::Client) -> Result<String, CredentialError> {
        let mut current = self.current.lock().await;
        if let Some((token, until)) = current.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let (token, lifetime) = self.request(http).await?;
        // Renewed a minute early, so that no request leaves with a token about to expire.
        let until = Instant::now() + lifetime.saturating_sub(Duration::from_secs(60));
        *current = Some((token.clone(), until));
        Ok(token)
    }

    /// Forgets the token held (the server refused it: its keys or the client changed).
    pub async fn forget(&self) {
        *self.current.lock().await = None;
    }

    async fn request(&self, http: &reqwest::Client) -> Result<(String, Duration), CredentialError> {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": self.client_id, "sub": self.client_id, "aud": self.token_url,
            "exp": now + 240, "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| CredentialError::Config(format!("cannot sign the assertion: {e}")))?;
        let response = http
            .post(&self.token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
                ("scope", self.scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| CredentialError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body: Json = response.json().await.unwrap_or(Json::Null);
        if !status.is_success() {
            // The OAuth error says why (never the assertion itself: it is a credential).
            let why = format!(
                "{status}: {} {}",
                body["error"].as_str().unwrap_or_default(),
                body["error_description"].as_str().unwrap_or_default()
            );
            return Err(if status.is_server_error() {
                CredentialError::Unreachable(why)
            } else {
                CredentialError::Refused(why)
            });
        }
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| CredentialError::Refused("the answer has no access_token".into()))?;
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(300));
        Ok((token.to_string(), lifetime))
    }
}
