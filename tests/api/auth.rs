//! SMART Backend Services: clients mint real assertions (RS384 and ES384) and exchange
//! them at `/auth/token`; every way an assertion can be wrong is refused with the OAuth
//! error that says why.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::helpers::*;

/// A client's key pair: what it signs with, and its public JWK.
pub struct ClientKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The private key as PKCS#8 PEM (what an agent's `private_key` file holds).
    pub pem: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn rsa_key(kid: &str) -> ClientKey {
    use rsa::pkcs8::EncodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let pem = private.to_pkcs8_pem(Default::default()).unwrap();
    ClientKey {
        kid: kid.into(),
        alg: Algorithm::RS384,
        encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        jwk: json!({
            "kty": "RSA", "kid": kid, "alg": "RS384", "use": "sig",
            "n": b64(&private.n().to_bytes_be()), "e": b64(&private.e().to_bytes_be())
        }),
        pem: pem.to_string(),
    }
}

pub fn ec_key(kid: &str) -> ClientKey {
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    use p384::pkcs8::EncodePrivateKey;
    let secret = p384::SecretKey::random(&mut rand_core::OsRng);
    let pem = secret.to_pkcs8_pem(Default::default()).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    ClientKey {
        kid: kid.into(),
        alg: Algorithm::ES384,
        encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        jwk: json!({
            "kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384", "use": "sig",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())
        }),
        pem: pem.to_string(),
    }
}

/// A signed client assertion with these claims.
pub fn assertion(key: &ClientKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn claims(client: &str, token_url: &str, expires_in: i64) -> Value {
    json!({
        "iss": client, "sub": client, "aud": token_url,
        "exp": now() + expires_in, "jti": uuid::Uuid::new_v4().to_string()
    })
}

/// Registers a client directly in the test database.
pub async fn register(
    app: &TestApp,
    id: &str,
    keys: &[&ClientKey],
    scopes: &str,
    patient: Option<&str>,
) {
    register_in(&app.database_url, id, keys, scopes, patient).await
}

pub async fn register_in(
    database_url: &str,
    id: &str,
    keys: &[&ClientKey],
    scopes: &str,
    patient: Option<&str>,
) {
    use fhirgate::auth::clients::{add, Client, KeySource};
    let db = fhirgate::db::connect(database_url).await.unwrap();
    add(
        &db,
        &Client {
            id: id.into(),
            keys: KeySource::Jwks(
                json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}),
            ),
            scopes: scopes.into(),
            patient: patient.map(str::to_string),
        },
    )
    .await
    .unwrap();
    let _ = db.close().await;
}

/// An access token with `scopes` from the server at `root` (e.g. `http://127.0.0.1:1234`),
/// for a client registered for it on the spot.
pub async fn token_from(root: &str, database_url: &str, scopes: &str) -> String {
    let key = ec_key("k");
    let client = format!("client-{}", uuid::Uuid::new_v4().simple());
    register_in(database_url, &client, &[&key], scopes, None).await;
    let token_url = format!("{root}/auth/token");
    let response = reqwest::Client::new()
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            (
                "client_assertion",
                &assertion(&key, &claims(&client, &token_url, 60)),
            ),
            ("scope", scopes),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

pub async fn request_token(
    app: &TestApp,
    assertion: &str,
    scope: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = app
        .client
        .post(app.root("/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

#[tokio::test]
async fn backend_services_clients_get_tokens_with_rs384_and_es384() {
    let app = spawn_app().await;
    let token_url = app.root("/auth/token");
    let rsa = rsa_key("rsa-1");
    let ec = ec_key("ec-1");
    register(
        &app,
        "ehr",
        &[&rsa, &ec],
        "system/Observation.rs system/Device.cruds",
        None,
    )
    .await;

    for key in [&rsa, &ec] {
        let (status, body, headers) = request_token(
            &app,
            &assertion(key, &claims("ehr", &token_url, 120)),
            "system/*.read system/Patient.rs",
        )
        .await;
        assert_eq!(status, 200, "{:?}: {body}", key.alg);
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 300);
        assert_eq!(
            body["scope"], "system/Observation.rs system/Device.rs",
            "narrowed to what is allowed"
        );
        // The access token is a JWT signed with a key the server publishes.
        let token = body["access_token"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwks = json_with_status(
            app.client.get(app.root("/auth/jwks")).send().await.unwrap(),
            200,
        )
        .await;
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"].as_str() == header.kid.as_deref())
            .expect("the token's kid is in the JWKS");
        let key =
            jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap())
                .unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_audience(&[app.base.as_str()]);
        let decoded = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(decoded["sub"], "ehr");
        assert!(decoded["exp"].as_i64().unwrap() <= now() + 300);
    }
}

#[tokio::test]
async fn bad_assertions_are_refused_with_the_reason() {
    let app = spawn_app().await;
    let token_url = app.root("/auth/token");
    let key = ec_key("ec-1");
    let stranger = ec_key("ec-1"); // same kid, another key: a forged signature
    let other_kid = ec_key("ec-2");
    register(
        &app,
        "monitor-gw",
        &[&key],
        "system/Observation.cruds",
        None,
    )
    .await;

    let mut wrong_aud = claims("monitor-gw", &token_url, 60);
    wrong_aud["aud"] = json!("https://elsewhere.example/token");
    let mut expired = claims("monitor-gw", &token_url, 60);
    expired["exp"] = json!(now() - 5);
    let too_long = claims("monitor-gw", &token_url, 600);
    let mut sub_differs = claims("monitor-gw", &token_url, 60);
    sub_differs["sub"] = json!("someone-else");
    let mut no_jti = claims("monitor-gw", &token_url, 60);
    no_jti.as_object_mut().unwrap().remove("jti");
    for (label, signed, says) in [
        ("wrong aud", assertion(&key, &wrong_aud), "aud"),
        ("expired", assertion(&key, &expired), "expired"),
        (
            "exp too far ahead",
            assertion(&key, &too_long),
            "five minutes",
        ),
        ("sub differs", assertion(&key, &sub_differs), "sub"),
        ("no jti", assertion(&key, &no_jti), "jti"),
        (
            "unknown kid",
            assertion(&other_kid, &claims("monitor-gw", &token_url, 60)),
            "kid",
        ),
        (
            "wrong signature",
            assertion(&stranger, &claims("monitor-gw", &token_url, 60)),
            "signature",
        ),
        (
            "unknown client",
            assertion(&key, &claims("nobody", &token_url, 60)),
            "not a registered client",
        ),
        ("not a JWT", "not-a-jwt".to_string(), "JWT"),
    ] {
        let (status, body, _) = request_token(&app, &signed, "system/Observation.rs").await;
        assert_eq!(status, 401, "{label}: {body}");
        assert_eq!(body["error"], "invalid_client", "{label}");
        assert!(
            body["error_description"].as_str().unwrap().contains(says),
            "{label}: {body}"
        );
    }

    // A jti is used once.
    let once = assertion(&key, &claims("monitor-gw", &token_url, 60));
    assert_eq!(
        request_token(&app, &once, "system/Observation.rs").await.0,
        200
    );
    let (status, body, _) = request_token(&app, &once, "system/Observation.rs").await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{body}"
    );

    // Scopes the client may not have.
    let (status, body, _) = request_token(
        &app,
        &assertion(&key, &claims("monitor-gw", &token_url, 60)),
        "system/Patient.rs",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_scope");
    let (status, body, _) = request_token(
        &app,
        &assertion(&key, &claims("monitor-gw", &token_url, 60)),
        "system/Observation.rsx",
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    // patient/ scopes need a patient the client is registered for.
    let (status, _, _) = request_token(
        &app,
        &assertion(&key, &claims("monitor-gw", &token_url, 60)),
        "patient/Observation.rs",
    )
    .await;
    assert_eq!(status, 400);

    let response = app
        .client
        .post(app.root("/auth/token"))
        .form(&[("grant_type", "password"), ("username", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn patient_clients_get_their_patient_in_the_token_response() {
    let app = spawn_app().await;
    let token_url = app.root("/auth/token");
    let key = rsa_key("k1");
    register(
        &app,
        "home-bp-cuff",
        &[&key],
        "patient/Observation.cruds",
        Some("p-42"),
    )
    .await;
    let (status, body, _) = request_token(
        &app,
        &assertion(&key, &claims("home-bp-cuff", &token_url, 60)),
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["patient"], "p-42");
    assert_eq!(
        body["scope"],
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
    );
}

#[tokio::test]
async fn smart_configuration_describes_backend_services() {
    let app = spawn_app().await;
    let config = json_with_status(app.get(".well-known/smart-configuration").await, 200).await;
    assert_eq!(config["token_endpoint"], app.root("/auth/token"));
    assert_eq!(
        config["grant_types_supported"],
        json!(["client_credentials"])
    );
    assert_eq!(
        config["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    for alg in ["RS384", "ES384"] {
        assert!(config["token_endpoint_auth_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(alg)));
    }
    assert!(config["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("client-confidential-asymmetric")));
    assert!(config["scopes_supported"].as_array().unwrap().len() > 1);
}

/// A token for `scopes` from a freshly registered client of `app`.
pub async fn token_for(app: &TestApp, scopes: &str) -> String {
    let key = ec_key("k");
    let client = format!("client-{}", uuid::Uuid::new_v4().simple());
    register(app, &client, &[&key], scopes, None).await;
    let (status, body, _) = request_token(
        app,
        &assertion(&key, &claims(&client, &app.root("/auth/token"), 60)),
        scopes,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn with_auth_on_requests_need_a_token_whose_scopes_cover_them() {
    let app = spawn_app_with(|config| config.auth = fhirgate::config::AuthMode::Smart).await;
    json_with_status(app.get("metadata").await, 200).await;
    json_with_status(app.get(".well-known/smart-configuration").await, 200).await;

    let response = app.client.get(app.url("Observation")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer "));
    assert!(outcome_text(&response.json().await.unwrap()).contains("no access token"));
    let response = app
        .client
        .get(app.url("Observation"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let reader = token_for(&app, "system/Observation.rs").await;
    let writer = token_for(&app, "system/*.cruds").await;
    let created = app
        .client
        .post(app.url("Observation"))
        .bearer_auth(&writer)
        .header("content-type", FHIR_JSON)
        .body(heart_rate("Patient/p1", 70).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (method, path, token, status) in [
        (
            reqwest::Method::GET,
            "Observation".to_string(),
            &reader,
            200,
        ),
        (
            reqwest::Method::GET,
            format!("Observation/{id}"),
            &reader,
            200,
        ),
        (
            reqwest::Method::GET,
            format!("Observation/{id}/_history"),
            &reader,
            200,
        ),
        (
            reqwest::Method::DELETE,
            format!("Observation/{id}"),
            &reader,
            403,
        ),
        (reqwest::Method::GET, "Patient".to_string(), &reader, 403),
        (reqwest::Method::GET, "_history".to_string(), &writer, 200),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(got, status, "{method} {path}: {body}");
        if status == 403 {
            assert!(outcome_text(&body).contains("do not grant"), "{body}");
        }
    }
    // What a search reaches of other types (includes, chains, _has, system history) is
    // limited to what the scopes grant: silently left out, never a leak.
    let mut p1 = patient("MRN-p1");
    p1["id"] = json!("p1");
    let put = app
        .client
        .put(app.url("Patient/p1"))
        .bearer_auth(&writer)
        .header("content-type", FHIR_JSON)
        .body(p1.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let both = token_for(&app, "system/Observation.rs system/Patient.rs").await;
    for (path, token, status, types) in [
        (
            "Observation?_include=Observation:subject:Patient",
            &reader,
            200,
            vec!["Observation"],
        ),
        ("Observation?_include=*", &reader, 200, vec!["Observation"]),
        // Patient/p1 is a Chalmers, but the reader cannot see Patients: no match.
        (
            "Observation?subject:Patient.name=Chalmers",
            &reader,
            200,
            vec![],
        ),
        (
            "Patient?_has:Observation:patient:code=8867-4",
            &reader,
            403,
            vec![],
        ),
        ("_history", &reader, 200, vec!["Observation"]),
        ("?_id=p1", &reader, 200, vec![]),
        (
            "Observation?_include=Observation:subject:Patient",
            &both,
            200,
            vec!["Observation", "Patient"],
        ),
        (
            "Observation?subject:Patient.name=Chalmers",
            &both,
            200,
            vec!["Observation"],
        ),
        (
            "Patient?_has:Observation:patient:code=8867-4",
            &both,
            200,
            vec!["Patient"],
        ),
        ("?_id=p1", &both, 200, vec!["Patient"]),
        ("_history", &both, 200, vec!["Observation", "Patient"]),
    ] {
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(got, status, "{path}: {body}");
        if status == 200 {
            let mut seen: Vec<&str> = body["entry"]
                .as_array()
                .map(|entries| {
                    entries
                        .iter()
                        .filter_map(|e| e["resource"]["resourceType"].as_str())
                        .filter(|t| *t != "OperationOutcome")
                        .collect()
                })
                .unwrap_or_default();
            seen.sort();
            seen.dedup();
            assert_eq!(seen, types, "{path}: {body}");
        }
    }
    // A Bundle: each entry is checked as the request it stands for.
    let reads = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Observation/{id}")}},
        {"request": {"method": "GET", "url": "Observation?code=8867-4"}}
    ]});
    let writes_patient = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Observation?code=8867-4"}},
        {"fullUrl": "urn:uuid:0c1f4e3a-7f43-4b0e-9d3f-3a7b2b2a9f01",
         "resource": patient("MRN-1"), "request": {"method": "POST", "url": "Patient"}}
    ]});
    for (bundle, token, status) in [
        (&reads, &reader, 200),
        (&writes_patient, &reader, 403),
        (&writes_patient, &writer, 200),
    ] {
        let response = app
            .client
            .post(app.url(""))
            .bearer_auth(token)
            .header("content-type", FHIR_JSON)
            .body(bundle.to_string())
            .send()
            .await
            .unwrap();
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(got, status, "{body}");
        if status == 403 {
            assert!(
                outcome_expressions(&body).contains(&"Bundle.entry[1]".to_string()),
                "{body}"
            );
            assert!(
                outcome_text(&body).contains("Create access to Patient"),
                "{body}"
            );
        }
    }
    // A system-level search needs the types it names.
    for (path, status) in [
        ("?_type=Observation", 200),
        ("?_type=Observation,Patient", 403),
    ] {
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
}

#[tokio::test]
async fn tokens_of_a_configured_identity_provider_are_accepted() {
    // The identity provider publishes its keys on a loopback port.
    let idp_key = rsa_key("idp-2026");
    let jwks = json!({"keys": [idp_key.jwk.clone()]});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_addr = listener.local_addr().unwrap();
    let app_router = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app_router).await;
    });
    let issuer = "https://idp.hospital.example/realms/clinical";
    let app = spawn_app_with(|config| {
        config.outbound_allow = vec!["127.0.0.1".into()];
        config.external_idp = Some(fhirgate::config::ExternalIdp {
            issuer: issuer.into(),
            jwks_url: format!("http://{idp_addr}/jwks"),
            audience: "fhirgate".into(),
        });
    })
    .await;
    let idp_token = |claims: Value| assertion(&idp_key, &claims);
    let good = json!({
        "iss": issuer, "sub": "svc-ehr", "aud": "fhirgate", "azp": "ehr-integration",
        "exp": now() + 300, "iat": now(), "scope": "system/Observation.rs"
    });
    let get = |token: String, path: &'static str| {
        let request = app.client.get(app.url(path)).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(idp_token(good.clone()), "Observation").await, 200);
    assert_eq!(
        get(idp_token(good.clone()), "Patient").await,
        403,
        "scopes apply"
    );
    let mut scp = good.clone();
    scp.as_object_mut().unwrap().remove("scope");
    scp["scp"] = json!(["system/Patient.rs"]);
    assert_eq!(
        get(idp_token(scp), "Patient").await,
        200,
        "scopes as an scp array"
    );
    let mut wrong_audience = good.clone();
    wrong_audience["aud"] = json!("another-api");
    assert_eq!(get(idp_token(wrong_audience), "Observation").await, 401);
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 120);
    assert_eq!(get(idp_token(expired), "Observation").await, 401);
    let mut other_issuer = good.clone();
    other_issuer["iss"] = json!("https://evil.example");
    assert_eq!(get(idp_token(other_issuer), "Observation").await, 401);
    let forged = assertion(&rsa_key("idp-2026"), &good);
    assert_eq!(
        get(forged, "Observation").await,
        401,
        "same kid, another key"
    );
}

#[tokio::test]
async fn token_requests_are_rate_limited_per_client() {
    let app = spawn_app_with(|config| config.auth = fhirgate::config::AuthMode::Off).await;
    let token_url = app.root("/auth/token");
    let key = ec_key("k");
    register(&app, "chatty", &[&key], "system/Observation.rs", None).await;
    let mut statuses = Vec::new();
    for _ in 0..61 {
        let (status, _, _) = request_token(
            &app,
            &assertion(&key, &claims("chatty", &token_url, 60)),
            "system/Observation.rs",
        )
        .await;
        statuses.push(status);
    }
    assert!(statuses[..60].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses[60], 429);
}

#[tokio::test]
async fn query_restricted_scopes_see_only_what_matches_the_restriction() {
    let app = spawn_app().await;
    let vital = app.create(&heart_rate("Patient/p1", 70)).await;
    let mut lab = heart_rate("Patient/p1", 5);
    lab["category"][0]["coding"][0]["code"] = json!("laboratory");
    let lab = app.create(&lab).await;
    let restricted = token_for(
        &app,
        "system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
    )
    .await;
    let get = |path: String| {
        let request = app.client.get(app.url(&path)).bearer_auth(&restricted);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, bundle) = get("Observation?subject=Patient/p1".into()).await;
    assert_eq!(status, 200, "{bundle}");
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![vital["id"].as_str().unwrap()], "only vital signs");
    let (status, bundle) = get("Patient/p1/Observation".into()).await;
    assert_eq!(status, 200);
    assert_eq!(
        bundle["entry"].as_array().unwrap().len(),
        1,
        "the compartment too: {bundle}"
    );
    assert_eq!(
        get(format!("Observation/{}", vital["id"].as_str().unwrap()))
            .await
            .0,
        200
    );
    let (status, body) = get(format!("Observation/{}", lab["id"].as_str().unwrap())).await;
    assert_eq!(status, 403);
    assert!(outcome_text(&body).contains("category="), "{body}");
    // Nothing of a type without a scope is included.
    let (status, body) = get("Observation?_revinclude=Provenance:target".into()).await;
    assert_eq!(status, 200);
    assert_eq!(body["entry"].as_array().map(Vec::len), Some(1), "{body}");
    // History shows the versions of what the restriction selects.
    let (status, body) = get("Observation/_history".into()).await;
    assert_eq!(status, 200);
    assert_eq!(body["entry"].as_array().map(Vec::len), Some(1), "{body}");
    let (status, _) = get(format!(
        "Observation/{}/_history",
        lab["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(status, 403);
    // POST _search and $lastn see what the restriction selects too.
    let response = app
        .client
        .post(app.url("Observation/_search"))
        .bearer_auth(&restricted)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("subject=Patient/p1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bundle: Value = response.json().await.unwrap();
    assert_eq!(
        bundle["entry"].as_array().map(Vec::len),
        Some(1),
        "{bundle}"
    );
    let (status, bundle) = get("Observation/$lastn?patient=Patient/p1&code=8867-4".into()).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(
        bundle["entry"].as_array().map(Vec::len),
        Some(1),
        "{bundle}"
    );
    // Writes are not granted by a read scope, restricted or not.
    let response = app
        .client
        .post(app.url("Observation"))
        .bearer_auth(&restricted)
        .header("content-type", FHIR_JSON)
        .body(heart_rate("Patient/p1", 71).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // A restricted write scope writes only what matches its restriction, before and after.
    let writer = token_for(
        &app,
        "system/Observation.cud?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
    )
    .await;
    let send = |method: reqwest::Method, path: String, body: Value| {
        let request = app
            .client
            .request(method, app.url(&path))
            .bearer_auth(&writer)
            .header("content-type", FHIR_JSON)
            .body(body.to_string());
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, created) = send(
        reqwest::Method::POST,
        "Observation".into(),
        heart_rate("Patient/p1", 72),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let mut lab_reading = heart_rate("Patient/p1", 6);
    lab_reading["category"][0]["coding"][0]["code"] = json!("laboratory");
    let (status, body) = send(reqwest::Method::POST, "Observation".into(), lab_reading).await;
    assert_eq!(status, 403, "{body}");
    assert!(outcome_text(&body).contains("category="), "{body}");
    let mut recategorised = created.clone();
    recategorised["category"][0]["coding"][0]["code"] = json!("laboratory");
    let created_path = format!("Observation/{}", created["id"].as_str().unwrap());
    assert_eq!(
        send(reqwest::Method::PUT, created_path.clone(), recategorised)
            .await
            .0,
        403
    );
    let mut lab_as_vital = lab.clone();
    lab_as_vital["category"][0]["coding"][0]["code"] = json!("vital-signs");
    let lab_path = format!("Observation/{}", lab["id"].as_str().unwrap());
    assert_eq!(
        send(reqwest::Method::PUT, lab_path.clone(), lab_as_vital)
            .await
            .0,
        403
    );
    assert_eq!(
        send(reqwest::Method::DELETE, lab_path.clone(), Value::Null)
            .await
            .0,
        403
    );
    let stored = json_with_status(app.get(&lab_path).await, 200).await;
    assert_eq!(
        stored["meta"]["versionId"], "1",
        "the lab result is untouched"
    );
    assert_eq!(
        send(reqwest::Method::DELETE, created_path, Value::Null)
            .await
            .0,
        204
    );
}

#[tokio::test]
async fn patient_tokens_reach_only_their_patients_compartment() {
    let app = spawn_app().await;
    for id in ["p-42", "p-7"] {
        let mut body = patient(id);
        body["id"] = json!(id);
        json_with_status(app.put(&format!("Patient/{id}"), &body).await, 201).await;
    }
    let mine = app.create(&heart_rate("Patient/p-42", 70)).await;
    let theirs = app.create(&heart_rate("Patient/p-7", 80)).await;
    let key = ec_key("k");
    register(
        &app,
        "cuff",
        &[&key],
        "patient/Observation.rs patient/Patient.rs",
        Some("p-42"),
    )
    .await;
    let (status, body, _) = request_token(
        &app,
        &assertion(&key, &claims("cuff", &app.root("/auth/token"), 60)),
        "patient/Observation.rs patient/Patient.rs",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let get = |path: String| {
        let request = app.client.get(app.url(&path)).bearer_auth(&token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let ids = |bundle: &Value| -> Vec<String> {
        bundle["entry"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, bundle) = get("Observation".into()).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(ids(&bundle), vec![mine["id"].as_str().unwrap().to_string()]);
    let (status, bundle) = get("Observation?subject=Patient/p-7".into()).await;
    assert_eq!(
        (status, ids(&bundle).len()),
        (200, 0),
        "no leak through criteria"
    );
    let (status, bundle) = get("Patient".into()).await;
    assert_eq!((status, ids(&bundle)), (200, vec!["p-42".to_string()]));
    assert_eq!(
        get(format!("Observation/{}", mine["id"].as_str().unwrap()))
            .await
            .0,
        200
    );
    assert_eq!(
        get(format!("Observation/{}", theirs["id"].as_str().unwrap()))
            .await
            .0,
        403
    );
    assert_eq!(get("Patient/p-42".into()).await.0, 200);
    assert_eq!(get("Patient/p-7".into()).await.0, 403);
    // Another patient's compartment: only what is in both (nothing here).
    let (status, bundle) = get("Patient/p-7/Observation".into()).await;
    assert_eq!((status, ids(&bundle).len()), (200, 0), "{bundle}");
    assert_eq!(get("Patient/p-42/Observation".into()).await.0, 200);
    let (status, bundle) = get("Observation?_include=Observation:subject:Patient".into()).await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&bundle),
        vec![mine["id"].as_str().unwrap().to_string(), "p-42".to_string()]
    );
    let (status, bundle) = get("Observation?subject:Patient.name=Chalmers".into()).await;
    assert_eq!(
        (status, ids(&bundle)),
        (200, vec![mine["id"].as_str().unwrap().to_string()])
    );
    assert_eq!(
        get("Encounter".into()).await.0,
        403,
        "no scope for Encounter"
    );
    let response = app
        .client
        .post(app.url("Observation"))
        .bearer_auth(&token)
        .header("content-type", FHIR_JSON)
        .body(heart_rate("Patient/p-42", 71).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn patient_tokens_write_only_their_patients_data() {
    let app = spawn_app().await;
    let theirs = app.create(&heart_rate("Patient/p-7", 80)).await;
    let key = ec_key("k");
    register(
        &app,
        "home-cuff",
        &[&key],
        "patient/Observation.cruds",
        Some("p-42"),
    )
    .await;
    let (_, body, _) = request_token(
        &app,
        &assertion(&key, &claims("home-cuff", &app.root("/auth/token"), 60)),
        "patient/Observation.cu",
    )
    .await;
    let token = body["access_token"].as_str().expect("a token").to_string();
    let send = |method: reqwest::Method, path: String, body: Value| {
        let request = app
            .client
            .request(method, app.url(&path))
            .bearer_auth(&token)
            .header("content-type", FHIR_JSON)
            .body(body.to_string());
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, created) = send(
        reqwest::Method::POST,
        "Observation".into(),
        heart_rate("Patient/p-42", 71),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, body) = send(
        reqwest::Method::POST,
        "Observation".into(),
        heart_rate("Patient/p-7", 72),
    )
    .await;
    assert_eq!(status, 403);
    assert!(outcome_text(&body).contains("Patient/p-42"), "{body}");
    let mut update = created.clone();
    update["valueQuantity"]["value"] = json!(73);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        send(reqwest::Method::PUT, format!("Observation/{id}"), update)
            .await
            .0,
        200
    );
    // Taking over another patient's Observation by its id, even re-pointed at p-42.
    let theirs_id = theirs["id"].as_str().unwrap().to_string();
    let mut takeover = theirs.clone();
    takeover["subject"] = json!({"reference": "Patient/p-42"});
    let (status, body) = send(
        reqwest::Method::PUT,
        format!("Observation/{theirs_id}"),
        takeover,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        outcome_text(&body).contains("Patient/p-42's compartment"),
        "{body}"
    );
    // Not granted: reading (the token has c and u only) and deleting.
    let response = app
        .client
        .get(app.url(&format!("Observation/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = app
        .client
        .delete(app.url(&format!("Observation/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn every_interaction_and_token_request_is_audited_and_readable_only_with_an_audit_scope() {
    let app = spawn_app().await;
    let reader = token_for(&app, "system/Observation.rs").await;
    let auditor_key = ec_key("a");
    register(
        &app,
        "auditor",
        &[&auditor_key],
        "system/AuditEvent.rs",
        None,
    )
    .await;
    let (_, body, _) = request_token(
        &app,
        &assertion(
            &auditor_key,
            &claims("auditor", &app.root("/auth/token"), 60),
        ),
        "system/AuditEvent.rs",
    )
    .await;
    let auditor = body["access_token"].as_str().unwrap().to_string();
    let created = app.create(&heart_rate("Patient/p1", 70)).await;
    let id = created["id"].as_str().unwrap();
    let read = |token: &str, path: &str| {
        app.client
            .get(app.url(path))
            .bearer_auth(token.to_string())
            .send()
    };
    assert_eq!(
        read(&reader, &format!("Observation/{id}"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(read(&reader, "Patient").await.unwrap().status(), 403);
    assert_eq!(
        app.client
            .get(app.url("Observation"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // A refused token request (a replay of nothing: an unknown client).
    let stranger = ec_key("s");
    request_token(
        &app,
        &assertion(&stranger, &claims("nobody", &app.root("/auth/token"), 60)),
        "system/Observation.rs",
    )
    .await;

    // Only a scope naming AuditEvent reads the trail; the default token (system/*.cruds) does not.
    assert_eq!(app.get("AuditEvent").await.status(), 403);
    let mut events = Vec::new();
    for _ in 0..100 {
        let bundle =
            json_with_status(read(&auditor, "AuditEvent?_count=1000").await.unwrap(), 200).await;
        events = bundle["entry"].as_array().cloned().unwrap_or_default();
        let has = |needle: &str| events.iter().any(|e| e.to_string().contains(needle));
        if has("\"nobody\"") && events.len() >= 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let resources: Vec<&Value> = events.iter().map(|e| &e["resource"]).collect();
    for event in &resources {
        let errors: Vec<_> = fhirgate::fhir::validation::validate(event)
            .into_iter()
            .filter(|i| i.is_error())
            .collect();
        assert!(errors.is_empty(), "{event}: {errors:?}");
    }
    let find = |predicate: &dyn Fn(&Value) -> bool| resources.iter().any(|e| predicate(e));
    assert!(
        find(&|e| e["subtype"][0]["code"] == "create" && e["outcome"] == "0"),
        "the create"
    );
    assert!(find(&|e| e["subtype"][0]["code"] == "read"
        && e["entity"][0]["what"]["reference"]
            == format!("Observation/{id}")));
    assert!(
        find(&|e| e["outcome"] == "4" && e["outcomeDesc"] == "HTTP 403"),
        "the refusal"
    );
    assert!(
        find(&|e| e["outcomeDesc"] == "HTTP 401"),
        "the missing token"
    );
    assert!(
        find(&|e| e["subtype"][0]["code"] == "110122"
            && e["agent"][0]["who"]["identifier"]["value"] == "nobody"
            && e["outcome"] == "4"),
        "the refused token request"
    );
    assert!(
        !resources.iter().any(|e| e.to_string().contains("eyJ")),
        "no token is recorded"
    );
    let one = resources[0]["id"].as_str().unwrap();
    assert_eq!(
        read(&auditor, &format!("AuditEvent/{one}"))
            .await
            .unwrap()
            .status(),
        200
    );
    // Append-only: nobody writes to the trail.
    let response = app
        .client
        .post(app.url("AuditEvent"))
        .bearer_auth(&auditor)
        .header("content-type", FHIR_JSON)
        .body(resources[0].to_string())
        .send()
        .await
        .unwrap();
    assert!(
        matches!(response.status().as_u16(), 403 | 405),
        "{}",
        response.status()
    );
    let response = app
        .client
        .delete(app.url(&format!("AuditEvent/{one}")))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert!(matches!(response.status().as_u16(), 403 | 405));
}
