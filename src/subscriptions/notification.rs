//! Notification Bundles of the Subscriptions R5 Backport IG for R4: a `history` Bundle
//! whose first entry is the subscription status (`Parameters`, profile
//! `backport-subscription-status-r4`), followed by the events' resources as the payload
//! content allows (`empty`: none; `id-only`: a reference per event; `full-resource`: the
//! resource itself). Used for handshakes, heartbeats, event notifications and the
//! `$status` / `$events` operations.

use serde_json::{json, Value as Json};

use super::request::PayloadContent;
use crate::store::time::instant;

const STATUS_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

/// Why a notification is sent (`Parameters.parameter:type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationType {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl NotificationType {
    pub fn code(self) -> &'static str {
        match self {
            NotificationType::Handshake => "handshake",
            NotificationType::Heartbeat => "heartbeat",
            NotificationType::EventNotification => "event-notification",
            NotificationType::QueryStatus => "query-status",
            NotificationType::QueryEvent => "query-event",
        }
    }
}

/// The change an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Deleted,
}

/// One event of a subscription: its number (1, 2, 3… per subscription), when it
/// happened, and the resource version it is about.
#[derive(Debug, Clone)]
pub struct Event {
    pub number: i64,
    pub timestamp_micros: i64,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub change: Change,
    /// The version's content, for `full-resource` (none for a deletion).
    pub resource: Option<Json>,
}

/// The subscription a notification is about, as the status entry reports it.
#[derive(Debug, Clone)]
pub struct SubscriptionState<'a> {
    pub id: &'a str,
    /// The topic's canonical URL; `None` for classic criteria.
    pub topic: Option<&'a str>,
    /// `requested`, `active`, `error` or `off`.
    pub status: &'a str,
    pub events_since_start: i64,
    /// The last delivery error, reported as `error`.
    pub error: Option<&'a str>,
}

/// The notification Bundle for `state`, carrying `events` (none for a handshake or a
/// heartbeat). `base` is the server's FHIR base URL.
pub fn notification_bundle(
    base: &str,
    state: &SubscriptionState,
    kind: NotificationType,
    events: &[Event],
    content: PayloadContent,
    now_micros: i64,
) -> Json {
    let status = status_parameters(base, state, kind, events, content);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "resource": status,
        "request": {"method": "GET", "url": format!("Subscription/{}/$status", state.id)},
        "response": {"status": "200"}
    })];
    if content != PayloadContent::Empty {
        for event in events {
            entries.push(event_entry(base, event, content));
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "history",
        "timestamp": instant(now_micros),
        "entry": entries
    })
}

/// The subscription status resource (`Parameters`, profile
/// `backport-subscription-status-r4`) reporting `events`.
pub fn status_parameters(
    base: &str,
    state: &SubscriptionState,
    kind: NotificationType,
    events: &[Event],
    content: PayloadContent,
) -> Json {
    let mut parameters = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{base}/Subscription/{}", state.id)}}),
    ];
    if let Some(topic) = state.topic {
        parameters.push(json!({"name": "topic", "valueCanonical": topic}));
    }
    parameters.push(json!({"name": "status", "valueCode": state.status}));
    parameters.push(json!({"name": "type", "valueCode": kind.code()}));
    // A string: event numbers are 64-bit, beyond what JSON numbers carry safely.
    parameters.push(json!({
        "name": "events-since-subscription-start",
        "valueString": state.events_since_start.to_string()
    }));
    for event in events {
        let mut parts = vec![
            json!({"name": "event-number", "valueString": event.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": instant(event.timestamp_micros)}),
        ];
        if content != PayloadContent::Empty {
            parts.push(
                json!({"name": "focus", "valueReference": {"reference": focus_url(base, event)}}),
            );
        }
        parameters.push(json!({"name": "notification-event", "part": parts}));
    }
    if let Some(error) = state.error {
        parameters.push(json!({"name": "error", "valueCodeableConcept": {"text": error}}));
    }
    json!({
        "resourceType": "Parameters",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters
    })
}

/// The versioned URL of the resource an event is about.
fn focus_url(base: &str, event: &Event) -> String {
    format!(
        "{base}/{}/{}/_history/{}",
        event.resource_type, event.id, event.version_id
    )
}

/// A history entry for the event's resource version: the request that changed it and
/// its outcome, with the resource itself for `full-resource`.
fn event_entry(base: &str, event: &Event, content: PayloadContent) -> Json {
    let (method, url, status) = match event.change {
        Change::Created => ("POST", event.resource_type.clone(), "201"),
        Change::Updated => (
            "PUT",
            format!("{}/{}", event.resource_type, event.id),
            "200",
        ),
        Change::Deleted => (
            "DELETE",
            format!("{}/{}", event.resource_type, event.id),
            "204",
        ),
    };
    let mut entry = json!({
        "fullUrl": format!("{base}/{}/{}", event.resource_type, event.id),
        "request": {"method": method, "url": url},
        "response": {"status": status, "location": focus_url(base, event)}
    });
    if content == PayloadContent::FullResource {
        if let Some(resource) = &event.resource {
            entry["resource"] = resource.clone();
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::validation::validate;

    const BASE: &str = "https://fhirgate.example/fhir";

    fn heart_rate_event(number: i64, change: Change) -> Event {
        Event {
            number,
            timestamp_micros: 1_709_287_200_000_000 + number,
            resource_type: "Observation".into(),
            id: format!("o{number}"),
            version_id: 1,
            change,
            resource: (change != Change::Deleted).then(|| {
                json!({
                    "resourceType": "Observation", "id": format!("o{number}"),
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
                })
            }),
        }
    }

    fn state(events: i64) -> SubscriptionState<'static> {
        SubscriptionState {
            id: "s1",
            topic: Some("http://fhirgate.dev/fhir/SubscriptionTopic/observation"),
            status: "active",
            events_since_start: events,
            error: None,
        }
    }

    fn parameter<'a>(bundle: &'a Json, name: &str) -> Vec<&'a Json> {
        bundle["entry"][0]["resource"]["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == name)
            .collect()
    }

    #[test]
    fn notifications_are_valid_r4_history_bundles() {
        let events = [
            heart_rate_event(7, Change::Created),
            heart_rate_event(8, Change::Deleted),
        ];
        for content in [
            PayloadContent::Empty,
            PayloadContent::IdOnly,
            PayloadContent::FullResource,
        ] {
            let bundle = notification_bundle(
                BASE,
                &state(8),
                NotificationType::EventNotification,
                &events,
                content,
                1_709_287_300_000_000,
            );
            let errors: Vec<_> = validate(&bundle)
                .into_iter()
                .filter(|i| i.is_error())
                .collect();
            assert!(errors.is_empty(), "{content:?}: {errors:?}");
            assert_eq!(bundle["type"], "history");
            assert_eq!(
                parameter(&bundle, "type")[0]["valueCode"],
                "event-notification"
            );
            assert_eq!(
                parameter(&bundle, "events-since-subscription-start")[0]["valueString"],
                "8"
            );
            let notified = parameter(&bundle, "notification-event");
            assert_eq!(notified.len(), 2);
            assert_eq!(notified[0]["part"][0]["valueString"], "7");
            let entries = bundle["entry"].as_array().unwrap();
            match content {
                PayloadContent::Empty => {
                    assert_eq!(entries.len(), 1);
                    assert_eq!(notified[0]["part"].as_array().unwrap().len(), 2, "no focus");
                }
                PayloadContent::IdOnly => {
                    assert_eq!(entries.len(), 3);
                    assert!(entries[1].get("resource").is_none());
                    assert_eq!(
                        notified[0]["part"][2]["valueReference"]["reference"],
                        format!("{BASE}/Observation/o7/_history/1")
                    );
                }
                PayloadContent::FullResource => {
                    assert_eq!(entries[1]["resource"]["id"], "o7");
                    assert!(
                        entries[2].get("resource").is_none(),
                        "a deletion has no body"
                    );
                    assert_eq!(entries[2]["request"]["method"], "DELETE");
                }
            }
        }
    }

    #[test]
    fn handshakes_and_errors() {
        let mut errored = state(0);
        errored.status = "error";
        errored.error = Some("the endpoint answered 503");
        let bundle = notification_bundle(
            BASE,
            &errored,
            NotificationType::Handshake,
            &[],
            PayloadContent::FullResource,
            0,
        );
        assert!(validate(&bundle).iter().all(|i| !i.is_error()));
        assert_eq!(bundle["entry"].as_array().unwrap().len(), 1);
        assert_eq!(parameter(&bundle, "type")[0]["valueCode"], "handshake");
        assert_eq!(
            parameter(&bundle, "error")[0]["valueCodeableConcept"]["text"],
            "the endpoint answered 503"
        );
        assert_eq!(
            parameter(&bundle, "subscription")[0]["valueReference"]["reference"],
            format!("{BASE}/Subscription/s1")
        );
    }
}
