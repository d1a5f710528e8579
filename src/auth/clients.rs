//! Registered SMART backend-services clients (`fhirgate clients add|list|remove`): an id,
//! the public keys its assertions are signed with (a JWKS, inline or at a URL), the scopes
//! it may be granted, and optionally the one patient its tokens are about.

use sea_orm::{ConnectionTrait, DbBackend};
use serde_json::Value as Json;

use super::scopes::parse_scopes;
use crate::error::{FhirError, FhirResult};
use crate::store::sql::statement;
use crate::store::time::now_micros;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document (`{"keys": […]}`).
    Jwks(Json),
    /// A URL serving the JWKS (fetched under the outbound-address rules).
    JwksUrl(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub keys: KeySource,
    /// Space-separated scopes the client may be granted.
    pub scopes: String,
    /// Tokens of this client are about this patient only (`patient/` scopes).
    pub patient: Option<String>,
}

impl Client {
    /// Checks what a registration holds: a usable id, a JWKS with keys, valid scopes.
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty()
            || self.id.len() > 128
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        {
            return Err(format!(
                "client id {:?}: 1 to 128 letters, digits, '-', '.', '_' or '~'",
                self.id
            ));
        }
        match &self.keys {
            KeySource::Jwks(jwks) => {
                let keys = jwks["keys"].as_array().filter(|k| !k.is_empty());
                let Some(keys) = keys else {
                    return Err("the JWKS has no keys ({\"keys\": [...]})".into());
                };
                for key in keys {
                    serde_json::from_value::<jsonwebtoken::jwk::Jwk>(key.clone())
                        .map_err(|e| format!("a key of the JWKS is not a valid JWK: {e}"))?;
                    if key.get("d").is_some() {
                        return Err(
                            "the JWKS holds a private key; register public keys only".into()
                        );
                    }
                }
            }
            KeySource::JwksUrl(url) => {
                url::Url::parse(url).map_err(|e| format!("JWKS URL {url:?}: {e}"))?;
            }
        }
        let scopes = parse_scopes(&self.scopes)?;
        if scopes.is_empty() {
            return Err(
                "give the scopes the client may be granted, e.g. \"system/Observation.rs\"".into(),
            );
        }
        Ok(())
    }
}

pub async fn add(conn: &impl ConnectionTrait, client: &Client) -> FhirResult<()> {
    client.check().map_err(FhirError::bad_request)?;
    let backend = conn.get_database_backend();
    let (jwks, jwks_url) = match &client.keys {
        KeySource::Jwks(jwks) => (Some(jwks.to_string()), None),
        KeySource::JwksUrl(url) => (None, Some(url.clone())),
    };
    let upsert = match backend {
        DbBackend::Postgres => {
            "ON CONFLICT (client_id) DO UPDATE SET jwks = EXCLUDED.jwks, \
             jwks_url = EXCLUDED.jwks_url, scopes = EXCLUDED.scopes, patient = EXCLUDED.patient"
        }
        _ => {
            "ON CONFLICT (client_id) DO UPDATE SET jwks = excluded.jwks, \
             jwks_url = excluded.jwks_url, scopes = excluded.scopes, patient = excluded.patient"
        }
    };
    conn.execute_raw(statement(
        backend,
        &format!(
            "INSERT INTO auth_clients (client_id, jwks, jwks_url, scopes, patient, created) \
             VALUES (?, ?, ?, ?, ?, ?) {upsert}"
        ),
        vec![
            client.id.as_str().into(),
            jwks.into(),
            jwks_url.into(),
            client.scopes.as_str().into(),
            client.patient.clone().into(),
            now_micros().into(),
        ],
    ))
    .await?;
    Ok(())
}

pub async fn find(conn: &impl ConnectionTrait, id: &str) -> FhirResult<Option<Client>> {
    let backend = conn.get_database_backend();
    let row = conn
        .query_one_raw(statement(
            backend,
            "SELECT client_id, jwks, jwks_url, scopes, patient FROM auth_clients WHERE client_id = ?",
            vec![id.into()],
        ))
        .await?;
    row.map(|row| from_row(&row)).transpose()
}

pub async fn list(conn: &impl ConnectionTrait) -> FhirResult<Vec<Client>> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(statement(
            backend,
            "SELECT client_id, jwks, jwks_url, scopes, patient FROM auth_clients ORDER BY client_id",
            vec![],
        ))
        .await?;
    rows.iter().map(from_row).collect()
}

/// Removes a client; false when there was none.
pub async fn remove(conn: &impl ConnectionTrait, id: &str) -> FhirResult<bool> {
    let backend = conn.get_database_backend();
    let result = conn
        .execute_raw(statement(
            backend,
            "DELETE FROM auth_clients WHERE client_id = ?",
            vec![id.into()],
        ))
        .await?;
    Ok(result.rows_affected() > 0)
}

fn from_row(row: &sea_orm::QueryResult) -> FhirResult<Client> {
    let jwks: Option<String> = row.try_get("", "jwks")?;
    let jwks_url: Option<String> = row.try_get("", "jwks_url")?;
    let keys = match (jwks, jwks_url) {
        (Some(text), _) => {
            KeySource::Jwks(serde_json::from_str(&text).map_err(FhirError::internal)?)
        }
        (None, Some(url)) => KeySource::JwksUrl(url),
        (None, None) => return Err(FhirError::internal("a client without keys")),
    };
    Ok(Client {
        id: row.try_get("", "client_id")?,
        keys,
        scopes: row.try_get("", "scopes")?,
        patient: row.try_get("", "patient")?,
    })
}
