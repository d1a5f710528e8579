//! The subscription topics the server offers, defined as data in
//! `fhir-profiles/subscriptions/topics.json` as R4B `SubscriptionTopic` resources (the
//! form the Backport IG uses for topic definitions): what triggers a notification
//! (`resourceTrigger`: a resource type, the interactions, optional query or FHIRPath
//! criteria) and which search parameters a subscriber may filter by (`canFilterBy`).
//! A subscription's filters are the Backport IG's `Type?param=value` strings, checked here
//! against the topic and parsed with the search criteria, so a filter matches exactly as
//! the same search would.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value as Json;

use crate::fhir::definitions::Definitions;
use crate::search::criteria::condition;

const TOPICS_JSON: &str = include_str!("../../fhir-profiles/subscriptions/topics.json");

/// The pseudo-type of a topic that triggers on every resource type.
pub const ANY_RESOURCE: &str = "Resource";

/// A change to a resource that may trigger a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interaction {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryCriteria {
    /// Search parameters the resource must match after the change.
    pub current: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// Canonical URL of the resource's StructureDefinition.
    pub resource: String,
    pub supported_interaction: Vec<Interaction>,
    pub query_criteria: Option<QueryCriteria>,
    pub fhir_path_criteria: Option<String>,
}

impl Trigger {
    /// The resource type (`Observation`), or [`ANY_RESOURCE`].
    pub fn resource_type(&self) -> &str {
        self.resource.rsplit('/').next().unwrap_or(&self.resource)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterDefinition {
    pub resource: String,
    pub filter_parameter: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topic {
    pub url: String,
    pub title: String,
    #[serde(rename = "resourceTrigger")]
    pub triggers: Vec<Trigger>,
    #[serde(rename = "canFilterBy", default)]
    pub filters: Vec<FilterDefinition>,
}

/// One parameter of a subscription filter, checked against its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub resource_type: String,
    pub name: String,
    pub value: String,
}

impl Topic {
    /// The topic fires for this change of a resource of this type (before any criteria).
    pub fn triggers_on(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.triggers.iter().any(|t| {
            (t.resource_type() == resource_type || t.resource_type() == ANY_RESOURCE)
                && t.supported_interaction.contains(&interaction)
        })
    }

    /// Checks a filter criteria string of the Backport IG, `Type?param=value[&…]`: the type
    /// and every parameter (modifiers allowed) must be offered by the topic, and every
    /// value must be a valid search value. The error says what to change.
    pub fn check_filter(&self, criteria: &str) -> Result<Vec<Filter>, String> {
        let Some((resource_type, query)) = criteria.split_once('?') else {
            return Err(format!(
                "the filter {criteria:?} must have the form Type?parameter=value, e.g. {}",
                self.example_filter()
            ));
        };
        let offered: Vec<&FilterDefinition> = self
            .filters
            .iter()
            .filter(|f| f.resource == resource_type)
            .collect();
        if offered.is_empty() {
            return Err(format!(
                "the topic {} cannot be filtered by {resource_type} parameters; it offers {}",
                self.url,
                self.offered_filters()
            ));
        }
        let mut filters = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let code = name.split(':').next().unwrap_or(&name);
            if !offered.iter().any(|f| f.filter_parameter == code) {
                return Err(format!(
                    "the topic {} cannot be filtered by {resource_type}.{code}; it offers {}",
                    self.url,
                    self.offered_filters()
                ));
            }
            // `_type` names resource types; every other value is a search value.
            if code == "_type" {
                for t in value.split(',') {
                    if !Definitions::get().is_resource_type(t) {
                        return Err(format!("{criteria:?}: {t:?} is not a resource type"));
                    }
                }
            } else {
                condition(resource_type, &name, &value).map_err(|e| {
                    format!(
                        "the filter {criteria:?} is not a valid search: {}",
                        e.message()
                    )
                })?;
            }
            filters.push(Filter {
                resource_type: resource_type.to_string(),
                name: name.into_owned(),
                value: value.into_owned(),
            });
        }
        if filters.is_empty() {
            return Err(format!(
                "the filter {criteria:?} has no parameter; e.g. {}",
                self.example_filter()
            ));
        }
        Ok(filters)
    }

    fn offered_filters(&self) -> String {
        self.filters
            .iter()
            .map(|f| format!("{}.{}", f.resource, f.filter_parameter))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn example_filter(&self) -> String {
        self.filters
            .first()
            .map(|f| format!("{}?{}=…", f.resource, f.filter_parameter))
            .unwrap_or_else(|| "Observation?patient=Patient/123".into())
    }
}

/// Every topic, by canonical URL, and their definitions as published.
pub struct Topics {
    by_url: BTreeMap<String, Topic>,
    definitions: Vec<Json>,
}

impl Topics {
    pub fn get() -> &'static Topics {
        static TOPICS: OnceLock<Topics> = OnceLock::new();
        TOPICS.get_or_init(|| {
            Topics::parse(TOPICS_JSON).expect("fhir-profiles/subscriptions/topics.json")
        })
    }

    fn parse(text: &str) -> Result<Topics, String> {
        let definitions: Vec<Json> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut by_url = BTreeMap::new();
        for definition in &definitions {
            let topic: Topic =
                serde_json::from_value(definition.clone()).map_err(|e| e.to_string())?;
            if by_url.insert(topic.url.clone(), topic).is_some() {
                return Err("two topics share one URL".into());
            }
        }
        Ok(Topics {
            by_url,
            definitions,
        })
    }

    /// The topic with this canonical URL (a `|version` suffix is ignored).
    pub fn find(&self, canonical: &str) -> Option<&Topic> {
        let url = canonical.split('|').next().unwrap_or(canonical);
        self.by_url.get(url)
    }

    pub fn all(&self) -> impl Iterator<Item = &Topic> {
        self.by_url.values()
    }

    /// The SubscriptionTopic resources as defined, for discovery.
    pub fn definitions(&self) -> &[Json] {
        &self.definitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::params::SearchParams;

    const OBSERVATION: &str = "http://fhirgate.dev/fhir/SubscriptionTopic/observation";

    #[test]
    fn topics_are_consistent_with_the_r4_definitions() {
        let topics = Topics::get();
        let urls: Vec<&str> = topics.all().map(|t| t.url.as_str()).collect();
        assert_eq!(urls.len(), 5);
        for topic in topics.all() {
            assert!(!topic.triggers.is_empty(), "{}", topic.url);
            for trigger in &topic.triggers {
                let t = trigger.resource_type();
                assert!(
                    t == ANY_RESOURCE || Definitions::get().is_resource_type(t),
                    "{}: {t}",
                    topic.url
                );
                assert!(!trigger.supported_interaction.is_empty());
                if let Some(current) = trigger
                    .query_criteria
                    .as_ref()
                    .and_then(|q| q.current.as_ref())
                {
                    for (name, value) in form_urlencoded::parse(current.as_bytes()) {
                        assert!(
                            condition(t, &name, &value).is_ok(),
                            "{}: {current}",
                            topic.url
                        );
                    }
                }
            }
            for filter in &topic.filters {
                let known = matches!(filter.filter_parameter.as_str(), "_id" | "_type")
                    || SearchParams::get()
                        .param(&filter.resource, &filter.filter_parameter)
                        .is_some();
                assert!(
                    known,
                    "{}: {}.{}",
                    topic.url, filter.resource, filter.filter_parameter
                );
            }
        }
        assert_eq!(topics.definitions().len(), 5);
        assert!(topics.find(&format!("{OBSERVATION}|1")).is_some());
        assert!(topics.find("http://example.org/unknown").is_none());
    }

    #[test]
    fn triggers() {
        let topics = Topics::get();
        let observation = topics.find(OBSERVATION).unwrap();
        assert!(observation.triggers_on("Observation", Interaction::Create));
        assert!(!observation.triggers_on("Observation", Interaction::Delete));
        assert!(!observation.triggers_on("Patient", Interaction::Create));
        let any = topics
            .find("http://fhirgate.dev/fhir/SubscriptionTopic/resource-change")
            .unwrap();
        assert!(any.triggers_on("Encounter", Interaction::Delete));
    }

    #[test]
    fn filters_are_checked_against_the_topic_and_the_search_syntax() {
        let observation = Topics::get().find(OBSERVATION).unwrap();
        let filters = observation
            .check_filter("Observation?patient=Patient/123&code=http://loinc.org|8867-4")
            .unwrap();
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[1].value, "http://loinc.org|8867-4");
        for (bad, says) in [
            ("patient=Patient/123", "Type?parameter=value"),
            ("Encounter?patient=Patient/123", "Observation.patient"),
            ("Observation?status=final", "Observation.status"),
            ("Observation?code=", "not a valid search"),
            ("Observation?device:above=Device/1", "not a valid search"),
            ("Observation?", "no parameter"),
        ] {
            let error = observation.check_filter(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        let any = Topics::get()
            .find("http://fhirgate.dev/fhir/SubscriptionTopic/resource-change")
            .unwrap();
        assert!(any
            .check_filter("Resource?_type=Encounter,DeviceMetric")
            .is_ok());
        assert!(any.check_filter("Resource?_type=Nonsense").is_err());
    }
}
