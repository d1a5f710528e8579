//! The server's access-token signing keys (ES256). Generated on the first start and
//! stored in the database, so every instance sharing it signs and accepts the same
//! tokens; the oldest key signs.

use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use sea_orm::{ConnectionTrait, DbBackend};

use crate::error::{FhirError, FhirResult};
use crate::store::sql::statement;
use crate::store::time::now_micros;

/// One signing key: its id (`kid`), the private key and the public key.
pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The public key as a JWK (for a JWKS document).
    pub public_jwk: serde_json::Value,
}

/// The keys, oldest (the one that signs) first; creates one when there is none.
pub async fn load_or_create(conn: &impl ConnectionTrait) -> FhirResult<Vec<SigningKey>> {
    let mut keys = load(conn).await?;
    if keys.is_empty() {
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random)
            .map_err(|_| FhirError::internal("cannot generate a signing key"))?;
        let kid = uuid::Uuid::new_v4().simple().to_string();
        let encoded = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let backend = conn.get_database_backend();
        let ignore = if backend == DbBackend::Postgres {
            "ON CONFLICT (kid) DO NOTHING"
        } else {
            "ON CONFLICT DO NOTHING"
        };
        conn.execute_raw(statement(
            backend,
            &format!(
                "INSERT INTO auth_signing_keys (kid, pkcs8, created) VALUES (?, ?, ?) {ignore}"
            ),
            vec![kid.into(), encoded.into(), now_micros().into()],
        ))
        .await?;
        // Another instance may have created one at the same moment: all agree on the oldest.
        keys = load(conn).await?;
    }
    Ok(keys)
}

async fn load(conn: &impl ConnectionTrait) -> FhirResult<Vec<SigningKey>> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(statement(
            backend,
            "SELECT kid, pkcs8 FROM auth_signing_keys ORDER BY created, kid",
            vec![],
        ))
        .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for row in &rows {
        let kid: String = row.try_get("", "kid")?;
        let encoded: String = row.try_get("", "pkcs8")?;
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(FhirError::internal)?;
        keys.push(signing_key(kid, &pkcs8)?);
    }
    Ok(keys)
}

/// A new key that is not stored (for tests).
pub fn generate() -> FhirResult<SigningKey> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| FhirError::internal("cannot generate a signing key"))?;
    signing_key(uuid::Uuid::new_v4().simple().to_string(), pkcs8.as_ref())
}

fn signing_key(kid: String, pkcs8: &[u8]) -> FhirResult<SigningKey> {
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8,
        &SystemRandom::new(),
    )
    .map_err(|_| FhirError::internal("a stored signing key cannot be read"))?;
    // Uncompressed point: 0x04, then x and y (32 bytes each).
    let point = pair.public_key().as_ref();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (x, y) = (b64.encode(&point[1..33]), b64.encode(&point[33..65]));
    let decoding = DecodingKey::from_ec_components(&x, &y).map_err(FhirError::internal)?;
    Ok(SigningKey {
        encoding: EncodingKey::from_ec_der(pkcs8),
        decoding,
        public_jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y, "use": "sig", "alg": "ES256", "kid": kid
        }),
        kid,
    })
}
