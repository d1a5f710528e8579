//! What a client may ask for in a `Subscription`, checked when it is written (REST or
//! Bundle entry), so that an unsupported channel, payload, topic or filter is a clear 400
//! or 422 at creation instead of a subscription that never delivers.
//!
//! Two forms are accepted: the Subscriptions R5 Backport IG's topic-based subscription
//! (`criteria` is a topic's canonical URL, filters in `_criteria.extension`, payload
//! content and timing in extensions on `channel`) and classic R4 criteria
//! (`criteria: "Observation?code=…"`). `Subscription.status` belongs to the server: a new
//! subscription is `requested`; a client may only switch it `off` or ask for it again
//! (`requested`), see [`server_status`].

use axum::http::StatusCode;
use serde_json::Value as Json;

use super::topics::Topics;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;
use crate::search::criteria::condition;

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

/// The payload content of a notification (Backport IG `backport-payload-content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadContent {
    Empty,
    IdOnly,
    FullResource,
}

/// The extension value `name` (Backport IG) among `extensions`, if present.
fn backport_extension<'a>(extensions: Option<&'a Json>, name: &str) -> Option<&'a Json> {
    let url = format!("{BACKPORT}{name}");
    extensions?
        .as_array()?
        .iter()
        .find(|e| e["url"].as_str() == Some(url.as_str()))
}

/// The extension with this full URL among `extensions`.
fn backport_extension_at<'a>(extensions: Option<&'a Json>, url: &str) -> Option<&'a Json> {
    extensions?
        .as_array()?
        .iter()
        .find(|e| e["url"].as_str() == Some(url))
}

fn all_backport_extensions<'a>(extensions: Option<&'a Json>, name: &str) -> Vec<&'a Json> {
    let url = format!("{BACKPORT}{name}");
    extensions
        .and_then(Json::as_array)
        .map(|list| {
            list.iter()
                .filter(|e| e["url"].as_str() == Some(url.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

fn unprocessable(message: String, at: &str) -> FhirError {
    FhirError::unprocessable(IssueCode::Processing, message).at(at)
}

fn not_supported(message: String, at: &str) -> FhirError {
    FhirError::not_supported(StatusCode::BAD_REQUEST, message).at(at)
}

/// Checks a Subscription (already valid against the R4 definitions).
pub fn check(subscription: &Json) -> FhirResult<()> {
    let criteria = subscription["criteria"].as_str().unwrap_or_default();
    if criteria.starts_with("http://") || criteria.starts_with("https://") {
        check_topic(subscription, criteria)?;
    } else {
        check_classic_criteria(criteria)?;
    }
    check_channel(&subscription["channel"])?;
    Ok(())
}

fn check_topic(subscription: &Json, canonical: &str) -> FhirResult<()> {
    let Some(topic) = Topics::get().find(canonical) else {
        let offered: Vec<&str> = Topics::get().all().map(|t| t.url.as_str()).collect();
        return Err(unprocessable(
            format!(
                "{canonical} is not a subscription topic of this server; the topics are {}",
                offered.join(", ")
            ),
            "Subscription.criteria",
        ));
    };
    let extensions = subscription["_criteria"].get("extension");
    for (i, filter) in all_backport_extensions(extensions, "backport-filter-criteria")
        .into_iter()
        .enumerate()
    {
        let at = format!("Subscription.criteria.extension[{i}]");
        let Some(text) = filter["valueString"].as_str() else {
            return Err(unprocessable(
                "a backport-filter-criteria extension holds its filter in valueString, e.g. \
                 Observation?patient=Patient/123"
                    .into(),
                &at,
            ));
        };
        topic
            .check_filter(text)
            .map_err(|e| unprocessable(e, &at))?;
    }
    Ok(())
}

/// Classic criteria, `Type?parameter=value&…`: a type and search parameters the server
/// can evaluate (strictly: an unknown parameter is an error, not ignored).
fn check_classic_criteria(criteria: &str) -> FhirResult<()> {
    let at = "Subscription.criteria";
    let (resource_type, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    if !crate::fhir::definitions::Definitions::get().is_resource_type(resource_type) {
        return Err(unprocessable(
            format!(
                "{criteria:?} is neither a subscription topic URL nor search criteria such as \
                 Observation?code=http://loinc.org|8867-4"
            ),
            at,
        ));
    }
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if !crate::search::criteria::is_known(resource_type, &name) {
            return Err(unprocessable(
                format!("{name:?} in {criteria:?} is not a search parameter of {resource_type}"),
                at,
            ));
        }
        condition(resource_type, &name, &value).map_err(|e| {
            unprocessable(
                format!("{criteria:?} is not a valid search: {}", e.message()),
                at,
            )
        })?;
    }
    Ok(())
}

fn check_channel(channel: &Json) -> FhirResult<()> {
    let channel_type = channel["type"].as_str().unwrap_or_default();
    match channel_type {
        "rest-hook" => {
            if channel["endpoint"].as_str().is_none_or(str::is_empty) {
                return Err(FhirError::bad_request(
                    "a rest-hook subscription needs channel.endpoint, the https URL \
                     notifications are posted to",
                )
                .at("Subscription.channel.endpoint"));
            }
        }
        "websocket" => {}
        other => {
            return Err(not_supported(
                format!("the {other} channel is not supported; use rest-hook or websocket"),
                "Subscription.channel.type",
            ))
        }
    }
    if let Some(mime) = channel["payload"].as_str() {
        if !matches!(mime, "application/fhir+json" | "application/json") {
            return Err(not_supported(
                format!("notifications are sent as application/fhir+json, not {mime}"),
                "Subscription.channel.payload",
            ));
        }
    }
    payload_content(channel)?;
    for (i, header) in channel["header"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let text = header.as_str().unwrap_or_default();
        let valid = text.split_once(':').is_some_and(|(name, value)| {
            axum::http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok()
                && axum::http::HeaderValue::from_str(value.trim()).is_ok()
        });
        if !valid {
            return Err(FhirError::bad_request(format!(
                "channel.header[{i}] must be an HTTP header written as \"Name: value\", e.g. \
                 \"Authorization: Bearer …\""
            ))
            .at(format!("Subscription.channel.header[{i}]")));
        }
    }
    if let Some(secret) = backport_extension_at(channel.get("extension"), SIGNING_SECRET_URL) {
        if secret["valueString"].as_str().is_none_or(|s| s.len() < 16) {
            return Err(FhirError::bad_request(
                "the subscription-signing-secret extension holds the signing secret in \
                 valueString, at least 16 characters long",
            )
            .at("Subscription.channel.extension"));
        }
    }
    for (name, kind) in [
        ("backport-heartbeat-period", "valueUnsignedInt"),
        ("backport-timeout", "valueUnsignedInt"),
        ("backport-max-count", "valuePositiveInt"),
    ] {
        if let Some(extension) = backport_extension(channel.get("extension"), name) {
            if extension.get(kind).and_then(Json::as_u64).is_none() {
                return Err(FhirError::bad_request(format!(
                    "the {name} extension holds a whole number in {kind}"
                ))
                .at("Subscription.channel.extension"));
            }
        }
    }
    Ok(())
}

/// The payload content asked for (`empty` when the channel names none, as the IG says
/// for a subscription without payload).
pub fn payload_content(channel: &Json) -> FhirResult<PayloadContent> {
    let extensions = channel["_payload"].get("extension");
    let Some(extension) = backport_extension(extensions, "backport-payload-content") else {
        return Ok(PayloadContent::Empty);
    };
    match extension["valueCode"].as_str() {
        Some("empty") => Ok(PayloadContent::Empty),
        Some("id-only") => Ok(PayloadContent::IdOnly),
        Some("full-resource") => Ok(PayloadContent::FullResource),
        other => Err(not_supported(
            format!(
                "the payload content {} is not supported; use empty, id-only or full-resource",
                other.unwrap_or("(none)")
            ),
            "Subscription.channel.payload.extension",
        )),
    }
}

/// The status to store: `requested` for a new subscription. On an update the client may
/// switch it `off`, or ask for it again (`requested`, or `active` for one that is in
/// `error` or `off`), which re-activates it through a new handshake; any other status it
/// sends is ignored and the stored one stays.
pub fn server_status(requested: Option<&str>, stored: Option<&str>) -> &'static str {
    match (requested, stored) {
        (_, None) => "requested",
        (Some("off"), _) => "off",
        (Some("requested"), _) => "requested",
        (Some("active"), Some("error" | "off")) => "requested",
        (_, Some("active")) => "active",
        (_, Some("error")) => "error",
        (_, Some("off")) => "off",
        _ => "requested",
    }
}

/// The Backport IG filter criteria strings of a topic-based subscription.
pub fn filter_criteria(subscription: &Json) -> Vec<String> {
    all_backport_extensions(
        subscription["_criteria"].get("extension"),
        "backport-filter-criteria",
    )
    .into_iter()
    .filter_map(|e| e["valueString"].as_str().map(str::to_string))
    .collect()
}

/// The extension a client puts on `Subscription.channel` to have notifications signed:
/// its `valueString` is the shared secret. The server keeps the secret apart and replaces
/// the extension with [`SIGNED_URL`], so the secret is never read back.
pub const SIGNING_SECRET_URL: &str =
    "http://fhirgate.dev/fhir/StructureDefinition/subscription-signing-secret";
/// Marks a subscription whose notifications carry an HMAC-SHA256 signature header.
pub const SIGNED_URL: &str = "http://fhirgate.dev/fhir/StructureDefinition/subscription-signed";

/// Removes a signing secret from `subscription` and returns it: `Some(Some(secret))` for
/// a new secret, `Some(None)` when signing is switched off (neither extension present),
/// `None` when the stored secret stays (the marker is present).
pub fn take_signing_secret(subscription: &mut Json) -> Option<Option<String>> {
    let Some(extensions) = subscription["channel"]
        .get_mut("extension")
        .and_then(Json::as_array_mut)
    else {
        return Some(None);
    };
    let secret = extensions
        .iter()
        .find(|e| e["url"] == SIGNING_SECRET_URL)
        .and_then(|e| e["valueString"].as_str().map(str::to_string));
    let marked = extensions.iter().any(|e| e["url"] == SIGNED_URL);
    extensions.retain(|e| e["url"] != SIGNING_SECRET_URL);
    match secret {
        Some(secret) => {
            if !marked {
                extensions.push(serde_json::json!({"url": SIGNED_URL, "valueCode": "hmac-sha256"}));
            }
            Some(Some(secret))
        }
        None if marked => None,
        None => {
            if extensions.is_empty() {
                if let Some(channel) = subscription["channel"].as_object_mut() {
                    channel.remove("extension");
                }
            }
            Some(None)
        }
    }
}

/// How notifications of a subscription are sent, as its resource says.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `rest-hook` or `websocket`.
    pub channel: String,
    pub endpoint: Option<String>,
    /// `channel.header` entries as name and value.
    pub headers: Vec<(String, String)>,
    pub content: PayloadContent,
    /// The topic URL; `None` for classic criteria.
    pub topic: Option<String>,
    pub heartbeat_seconds: u64,
    pub timeout_seconds: Option<u64>,
    pub max_count: Option<u64>,
}

impl Delivery {
    pub fn of(subscription: &Json) -> Delivery {
        let channel = &subscription["channel"];
        let extension_number = |name: &str, kind: &str| {
            backport_extension(channel.get("extension"), name)
                .and_then(|e| e.get(kind))
                .and_then(Json::as_u64)
        };
        let criteria = subscription["criteria"].as_str().unwrap_or_default();
        Delivery {
            channel: channel["type"].as_str().unwrap_or_default().to_string(),
            endpoint: channel["endpoint"].as_str().map(str::to_string),
            headers: channel["header"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(Json::as_str)
                        .filter_map(|h| h.split_once(':'))
                        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            content: payload_content(channel).unwrap_or(PayloadContent::Empty),
            topic: (criteria.starts_with("http://") || criteria.starts_with("https://"))
                .then(|| criteria.to_string()),
            heartbeat_seconds: extension_number("backport-heartbeat-period", "valueUnsignedInt")
                .unwrap_or(0),
            timeout_seconds: extension_number("backport-timeout", "valueUnsignedInt"),
            max_count: extension_number("backport-max-count", "valuePositiveInt"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backport(criteria: &str, filters: &[&str], payload: &str) -> Json {
        json!({
            "resourceType": "Subscription",
            "status": "active",
            "reason": "test",
            "criteria": criteria,
            "_criteria": {"extension": filters.iter().map(|f| json!({
                "url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f
            })).collect::<Vec<_>>()},
            "channel": {
                "type": "rest-hook",
                "endpoint": "https://ehr.example.org/hook",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{
                    "url": format!("{BACKPORT}backport-payload-content"), "valueCode": payload
                }]}
            }
        })
    }

    const OBSERVATION: &str = "http://fhirgate.dev/fhir/SubscriptionTopic/observation";

    #[test]
    fn topic_subscriptions() {
        assert!(check(&backport(
            OBSERVATION,
            &["Observation?patient=Patient/1"],
            "id-only"
        ))
        .is_ok());
        let error = check(&backport("http://example.org/topic", &[], "empty")).unwrap_err();
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(error.message().contains(OBSERVATION));
        let error = check(&backport(
            OBSERVATION,
            &["Observation?status=final"],
            "empty",
        ))
        .unwrap_err();
        assert!(
            error.message().contains("Observation.status"),
            "{}",
            error.message()
        );
        let error = check(&backport(OBSERVATION, &[], "everything")).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        let mut email = backport(OBSERVATION, &[], "empty");
        email["channel"]["type"] = json!("email");
        assert!(check(&email).unwrap_err().message().contains("email"));
        let mut no_endpoint = backport(OBSERVATION, &[], "empty");
        no_endpoint["channel"]
            .as_object_mut()
            .unwrap()
            .remove("endpoint");
        assert!(check(&no_endpoint)
            .unwrap_err()
            .message()
            .contains("endpoint"));
    }

    #[test]
    fn classic_criteria() {
        let mut classic = backport("Observation?code=http://loinc.org|8867-4", &[], "empty");
        assert!(check(&classic).is_ok());
        classic["criteria"] = json!("Observation?colour=red");
        assert!(check(&classic).unwrap_err().message().contains("colour"));
        classic["criteria"] = json!("Nonsense?x=1");
        assert!(check(&classic).is_err());
    }

    #[test]
    fn the_server_owns_the_status() {
        assert_eq!(server_status(Some("active"), None), "requested");
        assert_eq!(
            server_status(Some("active"), Some("requested")),
            "requested"
        );
        assert_eq!(server_status(Some("active"), Some("error")), "requested");
        assert_eq!(server_status(Some("active"), Some("off")), "requested");
        assert_eq!(
            server_status(Some("requested"), Some("active")),
            "requested"
        );
        assert_eq!(server_status(Some("requested"), Some("error")), "requested");
        assert_eq!(server_status(Some("off"), Some("active")), "off");
        assert_eq!(server_status(Some("error"), Some("active")), "active");
    }
}
