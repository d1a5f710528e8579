//! The subscriptions that receive events, compiled for matching, per server.
//!
//! Every resource write asks the registry which subscriptions it triggers ([`Registry::
//! decide`]), inside the write's own transaction, so an event is recorded exactly when the
//! change commits. A subscription is *live* (gets events) while its status is `requested`,
//! `active` or `error`; events are kept for a subscription that cannot be reached, so that
//! nothing is lost when it comes back.
//!
//! Matching uses the search semantics. Plain token, reference, `_id` and `_type` values
//! (what topic filters and most classic criteria use) are decided in memory from the
//! index entries of the new version; anything else (modifiers, dates, quantities, chains)
//! is returned as search criteria for the caller to run against the stored row
//! ([`Decision::Probe`]), so every filter matches exactly as the same search would.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value as Json;
use tokio::sync::Notify;

use super::topics::{Interaction, Topics, ANY_RESOURCE};
use crate::fhirpath::{self, Env, Expr, Node};
use crate::search::criteria::split_values;
use crate::search::extract::{extract_where, IndexEntry};
use crate::search::params::SearchParams;

/// Statuses of a subscription that still collects events.
pub fn is_live(status: &str) -> bool {
    matches!(status, "requested" | "active" | "error")
}

/// One `name=value` search criterion, with its in-memory form when it has one.
#[derive(Debug, Clone)]
struct Criterion {
    name: String,
    value: String,
    memory: Option<MemoryTest>,
}

#[derive(Debug, Clone)]
enum MemoryTest {
    /// `_id=a,b`
    Id(Vec<String>),
    /// `_type=Observation,Device`
    Type(Vec<String>),
    /// Token alternatives as `(system, code)`: `Some("")` system means "no system".
    Token(Vec<(Option<String>, Option<String>)>),
    /// Reference alternatives: `Type/id`, a plain id, or an absolute URL.
    Reference(Vec<String>),
}

impl Criterion {
    fn new(resource_type: &str, name: &str, value: &str) -> Criterion {
        Criterion {
            name: name.to_string(),
            value: value.to_string(),
            memory: memory_test(resource_type, name, value),
        }
    }
}

fn memory_test(resource_type: &str, name: &str, value: &str) -> Option<MemoryTest> {
    if name.contains(':') || name.contains('.') {
        return None;
    }
    let alternatives = split_values(value);
    match name {
        "_id" => return Some(MemoryTest::Id(alternatives)),
        "_type" => return Some(MemoryTest::Type(alternatives)),
        _ => {}
    }
    let def = SearchParams::get().param(resource_type, name)?;
    match def.param_type {
        crate::search::params::ParamType::Token => Some(MemoryTest::Token(
            alternatives
                .iter()
                .map(
                    |v| match crate::search::criteria::split_unescaped(v, '|').as_slice() {
                        [system, code] if system.is_empty() => {
                            (Some(String::new()), Some(code.clone()))
                        }
                        [system, code] if code.is_empty() => (Some(system.clone()), None),
                        [system, code, ..] => (Some(system.clone()), Some(code.clone())),
                        parts => (None, parts.first().cloned()),
                    },
                )
                .collect(),
        )),
        crate::search::params::ParamType::Reference => Some(MemoryTest::Reference(alternatives)),
        _ => None,
    }
}

/// The triggers of a subscription: resource type (or any), interactions, and criteria.
#[derive(Debug, Clone)]
struct Trigger {
    resource_type: String,
    interactions: Vec<Interaction>,
    criteria: Vec<Criterion>,
    fhirpath: Option<Arc<Expr>>,
}

/// A live subscription, ready to match writes against.
#[derive(Debug, Clone)]
pub struct LiveSubscription {
    pub id: String,
    /// R4 `Subscription.end` (microseconds): no events after it.
    ends_at: Option<i64>,
    triggers: Vec<Trigger>,
    /// Filters (all must hold), each for one resource type (or any).
    filters: Vec<(String, Criterion)>,
}

/// What a write means for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    No,
    Yes,
    /// It matches when the stored row matches these search criteria (`name`, `value`).
    Probe(Vec<(String, String)>),
}

impl LiveSubscription {
    /// Compiles a stored Subscription that was accepted at creation; `None` when it is
    /// not live or cannot be read (an earlier server version's, say).
    pub fn compile(subscription: &Json) -> Option<LiveSubscription> {
        let id = subscription["id"].as_str()?.to_string();
        if !is_live(subscription["status"].as_str()?) {
            return None;
        }
        let ends_at = subscription["end"]
            .as_str()
            .and_then(crate::search::extract::parse_date_range)
            .map(|(low, _)| low);
        let criteria = subscription["criteria"].as_str()?;
        if criteria.starts_with("http://") || criteria.starts_with("https://") {
            let topic = Topics::get().find(criteria)?;
            let triggers = topic
                .triggers
                .iter()
                .map(|t| {
                    let resource_type = t.resource_type().to_string();
                    let criteria = t
                        .query_criteria
                        .as_ref()
                        .and_then(|q| q.current.as_deref())
                        .map(|query| parse_query(&resource_type, query))
                        .unwrap_or_default();
                    Trigger {
                        interactions: t.supported_interaction.clone(),
                        criteria,
                        fhirpath: t
                            .fhir_path_criteria
                            .as_deref()
                            .and_then(|source| fhirpath::compile(source).ok())
                            .map(Arc::new),
                        resource_type,
                    }
                })
                .collect();
            let filters = super::request::filter_criteria(subscription)
                .into_iter()
                .filter_map(|text| {
                    let (resource_type, query) = text.split_once('?')?;
                    Some(
                        parse_query(resource_type, query)
                            .into_iter()
                            .map(|c| (resource_type.to_string(), c))
                            .collect::<Vec<_>>(),
                    )
                })
                .flatten()
                .collect();
            Some(LiveSubscription {
                id,
                ends_at,
                triggers,
                filters,
            })
        } else {
            // Classic criteria: a resource of the type that matches the search after a
            // create or an update.
            let (resource_type, query) = criteria.split_once('?').unwrap_or((criteria, ""));
            Some(LiveSubscription {
                id,
                ends_at,
                triggers: vec![Trigger {
                    resource_type: resource_type.to_string(),
                    interactions: vec![Interaction::Create, Interaction::Update],
                    criteria: parse_query(resource_type, query),
                    fhirpath: None,
                }],
                filters: Vec::new(),
            })
        }
    }

    /// The resource types this subscription can trigger on ([`ANY_RESOURCE`] for all).
    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.triggers.iter().map(|t| t.resource_type.as_str())
    }

    /// Whether `change` triggers this subscription. `current` is the new content (`None`
    /// for a deletion); `previous` the content before (for deletions and `%previous`).
    pub fn decide(&self, change: &Change, entries: &mut EntryCache) -> Decision {
        if self
            .ends_at
            .is_some_and(|end| end <= crate::store::time::now_micros())
        {
            return Decision::No;
        }
        let mut probe: Vec<(String, String)> = Vec::new();
        let mut triggered = false;
        for trigger in &self.triggers {
            if !(trigger.resource_type == change.resource_type
                || trigger.resource_type == ANY_RESOURCE)
                || !trigger.interactions.contains(&change.interaction)
            {
                continue;
            }
            if let Some(expr) = &trigger.fhirpath {
                if !fhirpath_holds(expr, change) {
                    continue;
                }
            }
            match decide_all(trigger.criteria.iter(), change, entries) {
                Decision::No => continue,
                Decision::Yes => {}
                Decision::Probe(more) => probe.extend(more),
            }
            triggered = true;
            break;
        }
        if !triggered {
            return Decision::No;
        }
        let filters = self
            .filters
            .iter()
            .filter(|(t, _)| *t == change.resource_type || t == ANY_RESOURCE)
            .map(|(_, c)| c);
        match decide_all(filters, change, entries) {
            Decision::No => Decision::No,
            Decision::Yes if probe.is_empty() => Decision::Yes,
            Decision::Yes => Decision::Probe(probe),
            Decision::Probe(more) => {
                probe.extend(more);
                Decision::Probe(probe)
            }
        }
    }
}

fn parse_query(resource_type: &str, query: &str) -> Vec<Criterion> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| Criterion::new(resource_type, &name, &value))
        .collect()
}

/// `%current` is the new content, `%previous` the one before (empty when created).
fn fhirpath_holds(expr: &Expr, change: &Change) -> bool {
    let Some(current) = change.current else {
        return false;
    };
    let previous: Vec<Node> = change.previous.map(Node::resource).into_iter().collect();
    let env = Env::new(current)
        .with_var("current", vec![Node::resource(current)])
        .with_var("previous", previous);
    expr.evaluate_bool_in(&env)
}

/// A resource change as the subscriptions see it.
pub struct Change<'a> {
    pub resource_type: &'a str,
    pub interaction: Interaction,
    pub current: Option<&'a Json>,
    pub previous: Option<&'a Json>,
}

/// Index entries of the changed resource (of the version the criteria apply to: the new
/// one, or the deleted one for a deletion), extracted once per parameter.
#[derive(Default)]
pub struct EntryCache {
    by_param: HashMap<String, Vec<IndexEntry>>,
}

impl EntryCache {
    fn entries(&mut self, change: &Change, param: &str) -> &[IndexEntry] {
        if !self.by_param.contains_key(param) {
            let entries = change
                .current
                .or(change.previous)
                .map(|resource| {
                    extract_where(SearchParams::get(), resource, |def| &*def.code == param)
                })
                .unwrap_or_default();
            self.by_param.insert(param.to_string(), entries);
        }
        &self.by_param[param]
    }
}

fn decide_all<'c>(
    criteria: impl Iterator<Item = &'c Criterion>,
    change: &Change,
    entries: &mut EntryCache,
) -> Decision {
    let mut probe = Vec::new();
    for criterion in criteria {
        match &criterion.memory {
            Some(test) => {
                if !holds(test, &criterion.name, change, entries) {
                    return Decision::No;
                }
            }
            // A deleted resource has no index rows to probe.
            None if change.current.is_none() => return Decision::No,
            None => probe.push((criterion.name.clone(), criterion.value.clone())),
        }
    }
    if probe.is_empty() {
        Decision::Yes
    } else {
        Decision::Probe(probe)
    }
}

fn holds(test: &MemoryTest, param: &str, change: &Change, entries: &mut EntryCache) -> bool {
    let resource = change.current.or(change.previous);
    match test {
        MemoryTest::Id(ids) => {
            let id = resource.and_then(|r| r["id"].as_str()).unwrap_or_default();
            ids.iter().any(|i| i == id)
        }
        MemoryTest::Type(types) => types.iter().any(|t| t == change.resource_type),
        MemoryTest::Token(alternatives) => entries.entries(change, param).iter().any(|entry| {
            let IndexEntry::Token { system, code, .. } = entry else {
                return false;
            };
            alternatives.iter().any(|(want_system, want_code)| {
                let system_ok = match want_system.as_deref() {
                    None => true,
                    Some("") => system.is_none(),
                    Some(s) => system.as_deref() == Some(s),
                };
                let code_ok = match want_code {
                    None => true,
                    Some(c) => code.as_deref() == Some(c.as_str()),
                };
                system_ok && code_ok
            })
        }),
        MemoryTest::Reference(alternatives) => entries.entries(change, param).iter().any(|entry| {
            let IndexEntry::Reference {
                target_type,
                target_id,
                url,
                ..
            } = entry
            else {
                return false;
            };
            alternatives
                .iter()
                .any(|want| reference_is(want, target_type.as_deref(), target_id.as_deref(), url))
        }),
    }
}

/// Whether `content` (of `resource_type`) matches `name=value`, when that can be told from
/// its own index entries (`_id`, `_type`, token and reference parameters without
/// modifiers); `None` otherwise.
pub fn holds_in_memory(
    resource_type: &str,
    name: &str,
    value: &str,
    content: &Json,
) -> Option<bool> {
    let test = memory_test(resource_type, name, value)?;
    let change = Change {
        resource_type,
        interaction: Interaction::Update,
        current: Some(content),
        previous: None,
    };
    Some(holds(&test, name, &change, &mut EntryCache::default()))
}

/// The reference search semantics of `search::criteria` for one index entry.
fn reference_is(want: &str, target_type: Option<&str>, target_id: Option<&str>, url: &str) -> bool {
    let want = want.split('|').next().unwrap_or(want);
    if want.contains("://") || want.starts_with("urn:") {
        if url == want {
            return true;
        }
        let segments: Vec<&str> = want.trim_end_matches('/').rsplit('/').take(2).collect();
        return match segments.as_slice() {
            [id, resource_type]
                if crate::fhir::definitions::Definitions::get().is_resource_type(resource_type) =>
            {
                target_type == Some(resource_type) && target_id == Some(id)
            }
            _ => false,
        };
    }
    match want.split_once('/') {
        Some((resource_type, id)) => {
            let id = id.split('/').next().unwrap_or(id);
            target_type == Some(resource_type) && target_id == Some(id)
        }
        None => target_id == Some(want),
    }
}

/// The live subscriptions of one server, and the signal that new events are waiting.
pub struct Registry {
    by_type: RwLock<Arc<HashMap<String, Vec<Arc<LiveSubscription>>>>>,
    /// Where subscription endpoints may point (checked when a Subscription is written).
    pub policy: crate::outbound::OutboundPolicy,
    /// This server instance (in its leases and its announcements to other instances).
    pub instance: String,
    /// Woken after a commit that recorded events, or changed a subscription.
    pub wake: Notify,
    /// Raised after each commit with events (of this instance, or announced by another):
    /// wakes the websocket connections bound to subscriptions.
    pub events_committed: tokio::sync::watch::Sender<u64>,
    /// Websocket binding tokens given out by this instance.
    pub ws_tokens: std::sync::Mutex<HashMap<String, WsToken>>,
}

/// A token for `bind-with-token`, valid for some subscriptions until `expires`.
#[derive(Debug, Clone)]
pub struct WsToken {
    pub subscriptions: Vec<String>,
    /// Microseconds since the Unix epoch.
    pub expires: i64,
}

impl Registry {
    pub fn new(policy: crate::outbound::OutboundPolicy) -> Registry {
        Registry {
            by_type: Default::default(),
            policy,
            instance: uuid::Uuid::new_v4().to_string(),
            wake: Notify::new(),
            events_committed: tokio::sync::watch::Sender::new(0),
            ws_tokens: Default::default(),
        }
    }

    /// Replaces the live subscriptions with `subscriptions` (every stored Subscription).
    pub fn install(&self, subscriptions: &[Json]) {
        let mut by_type: HashMap<String, Vec<Arc<LiveSubscription>>> = HashMap::new();
        for subscription in subscriptions {
            if let Some(live) = LiveSubscription::compile(subscription) {
                let live = Arc::new(live);
                let mut types: Vec<&str> = live.resource_types().collect();
                types.sort_unstable();
                types.dedup();
                for t in types {
                    by_type.entry(t.to_string()).or_default().push(live.clone());
                }
            }
        }
        if let Ok(mut slot) = self.by_type.write() {
            *slot = Arc::new(by_type);
        }
    }

    /// The live subscriptions a change to a resource of this type may trigger.
    pub fn candidates(&self, resource_type: &str) -> Vec<Arc<LiveSubscription>> {
        let Ok(by_type) = self.by_type.read() else {
            return Vec::new();
        };
        let mut found: Vec<Arc<LiveSubscription>> =
            by_type.get(resource_type).cloned().unwrap_or_default();
        if resource_type != ANY_RESOURCE {
            if let Some(any) = by_type.get(ANY_RESOURCE) {
                found.extend(any.iter().cloned());
            }
        }
        found
    }

    /// Whether any live subscription needs `%previous` for this type (so a write must
    /// read the version it replaces).
    pub fn needs_previous(&self, resource_type: &str) -> bool {
        self.candidates(resource_type).iter().any(|s| {
            s.triggers.iter().any(|t| {
                t.fhirpath.is_some()
                    && (t.resource_type == resource_type || t.resource_type == ANY_RESOURCE)
            })
        })
    }
}

/// Installs every stored Subscription into `registry`.
pub async fn reload(
    conn: &impl sea_orm::ConnectionTrait,
    registry: &Registry,
) -> crate::error::FhirResult<()> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(crate::store::sql::statement(
            backend,
            "SELECT resource_type, id, version_id, last_updated, deleted, content FROM resources \
             WHERE resource_type = ? AND deleted = ?",
            vec!["Subscription".into(), false.into()],
        ))
        .await?;
    let mut subscriptions = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(content) = crate::store::versions::stored_from_row(backend, row)?.content {
            subscriptions.push(content);
        }
    }
    registry.install(&subscriptions);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

    fn topic_subscription(topic: &str, filters: &[&str]) -> Json {
        json!({
            "resourceType": "Subscription", "id": "s1", "status": "active",
            "criteria": format!("http://fhirgate.dev/fhir/SubscriptionTopic/{topic}"),
            "_criteria": {"extension": filters.iter().map(|f| json!({
                "url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f
            })).collect::<Vec<_>>()},
            "channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/hook"}
        })
    }

    fn heart_rate(patient: &str, category: &str) -> Json {
        json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
        })
    }

    fn decide(
        subscription: &Json,
        interaction: Interaction,
        current: Option<&Json>,
        previous: Option<&Json>,
        resource_type: &str,
    ) -> Decision {
        let live = LiveSubscription::compile(subscription).expect("live");
        let change = Change {
            resource_type,
            interaction,
            current,
            previous,
        };
        live.decide(&change, &mut EntryCache::default())
    }

    #[test]
    fn topic_filters_match_in_memory() {
        let observation = heart_rate("p1", "vital-signs");
        let for_p1 = topic_subscription(
            "observation",
            &["Observation?patient=Patient/p1&code=http://loinc.org|8867-4"],
        );
        assert_eq!(
            decide(
                &for_p1,
                Interaction::Create,
                Some(&observation),
                None,
                "Observation"
            ),
            Decision::Yes
        );
        let for_p2 = topic_subscription("observation", &["Observation?patient=p2"]);
        assert_eq!(
            decide(
                &for_p2,
                Interaction::Create,
                Some(&observation),
                None,
                "Observation"
            ),
            Decision::No
        );
        let by_code_only = topic_subscription("observation", &["Observation?code=8310-5,8867-4"]);
        assert_eq!(
            decide(
                &by_code_only,
                Interaction::Update,
                Some(&observation),
                None,
                "Observation"
            ),
            Decision::Yes
        );
        assert_eq!(
            decide(
                &for_p1,
                Interaction::Delete,
                None,
                Some(&observation),
                "Observation"
            ),
            Decision::No,
            "the observation topic does not fire on deletions"
        );
    }

    #[test]
    fn topic_query_criteria_apply() {
        let vitals = topic_subscription("vital-signs", &[]);
        let lab = heart_rate("p1", "laboratory");
        assert_eq!(
            decide(
                &vitals,
                Interaction::Create,
                Some(&lab),
                None,
                "Observation"
            ),
            Decision::No
        );
        let vital = heart_rate("p1", "vital-signs");
        assert_eq!(
            decide(
                &vitals,
                Interaction::Create,
                Some(&vital),
                None,
                "Observation"
            ),
            Decision::Yes
        );
    }

    #[test]
    fn fhirpath_triggers_see_the_previous_version() {
        let device_status = topic_subscription("device-status", &[]);
        let active = json!({"resourceType": "Device", "id": "d1", "status": "active"});
        let inactive = json!({"resourceType": "Device", "id": "d1", "status": "inactive"});
        let renamed =
            json!({"resourceType": "Device", "id": "d1", "status": "active", "lotNumber": "x"});
        assert_eq!(
            decide(
                &device_status,
                Interaction::Create,
                Some(&active),
                None,
                "Device"
            ),
            Decision::Yes
        );
        assert_eq!(
            decide(
                &device_status,
                Interaction::Update,
                Some(&inactive),
                Some(&active),
                "Device"
            ),
            Decision::Yes
        );
        assert_eq!(
            decide(
                &device_status,
                Interaction::Update,
                Some(&renamed),
                Some(&active),
                "Device"
            ),
            Decision::No
        );
    }

    #[test]
    fn any_resource_by_type_and_classic_criteria() {
        let changes = topic_subscription("resource-change", &["Resource?_type=Encounter,Device"]);
        let device = json!({"resourceType": "Device", "id": "d1"});
        assert_eq!(
            decide(&changes, Interaction::Delete, None, Some(&device), "Device"),
            Decision::Yes
        );
        let patient = json!({"resourceType": "Patient", "id": "p1"});
        assert_eq!(
            decide(
                &changes,
                Interaction::Create,
                Some(&patient),
                None,
                "Patient"
            ),
            Decision::No
        );

        let mut classic = topic_subscription("observation", &[]);
        classic["criteria"] = json!("Observation?code=http://loinc.org|8867-4&value-quantity=gt60");
        let observation = heart_rate("p1", "vital-signs");
        assert_eq!(
            decide(
                &classic,
                Interaction::Create,
                Some(&observation),
                None,
                "Observation"
            ),
            Decision::Probe(vec![("value-quantity".into(), "gt60".into())]),
            "a range is checked against the stored row"
        );
        classic["criteria"] = json!("Observation?code=http://loinc.org|1234-5");
        assert_eq!(
            decide(
                &classic,
                Interaction::Create,
                Some(&observation),
                None,
                "Observation"
            ),
            Decision::No
        );
    }

    #[test]
    fn only_live_subscriptions_are_compiled() {
        let mut off = topic_subscription("observation", &[]);
        off["status"] = json!("off");
        assert!(LiveSubscription::compile(&off).is_none());
        let registry = Registry::new(Default::default());
        registry.install(&[
            topic_subscription("observation", &[]),
            topic_subscription("resource-change", &[]),
        ]);
        assert_eq!(registry.candidates("Observation").len(), 2);
        assert_eq!(registry.candidates("Patient").len(), 1);
        assert!(!registry.needs_previous("Observation"));
    }
}
