//! Who a subscription delivers to, as far as access goes: notifications carry only the
//! events whose resource the subscription's owner may read, judged when the notification
//! is sent, on the version the event is about (the version deleted, for a deletion).
//!
//! The owner is the client that wrote the Subscription, with the scopes (and patient) its
//! token had then (`subscription_state.owner_access`). A `patient/` scope admits the
//! resources of its patient's compartment; a query-restricted scope those matching its
//! query. Both are decided on the event's version in memory where the index entries of
//! that version tell (compartment references, token, reference, `_id` criteria), and on
//! the resource as it is now otherwise. An event the owner may not read is left out of the
//! notification (its number is passed over, as `$events` shows too); nothing about it
//! reaches the endpoint.

use serde_json::Value as Json;

use super::outbox::StoredEvent;
use crate::auth::principal::Principal;
use crate::auth::scopes::{Context, Permission};
use crate::error::FhirResult;
use crate::search::compartment::Compartments;
use crate::search::extract::{extract_where, IndexEntry};
use crate::search::params::SearchParams;
use crate::search::visibility::{Sight, Visible};
use crate::store::Store;

/// The owner of one subscription (`None`: unlimited, e.g. written with authentication off).
pub struct Audience {
    owner: Option<Principal>,
}

impl Audience {
    /// From `subscription_state.owner_access`.
    pub fn from_record(owner_access: Option<&str>) -> Audience {
        Audience {
            owner: owner_access.map(|record| {
                // A record that cannot be read grants nothing (fail closed).
                Principal::from_record(record).unwrap_or_else(|| Principal {
                    client_id: String::new(),
                    scopes: Vec::new(),
                    patient: None,
                })
            }),
        }
    }

    /// The events of `events` the owner may receive.
    pub async fn keep(
        &self,
        store: &Store,
        events: &[StoredEvent],
    ) -> FhirResult<Vec<StoredEvent>> {
        let Some(owner) = &self.owner else {
            return Ok(events.to_vec());
        };
        let sight = Sight::new(Some(owner), Permission::Read);
        if !sight.is_limited() {
            return Ok(events.to_vec());
        }
        let mut kept = Vec::with_capacity(events.len());
        for event in events {
            if may_receive(store, owner, sight, event).await? {
                kept.push(event.clone());
            }
        }
        Ok(kept)
    }
}

async fn may_receive(
    store: &Store,
    owner: &Principal,
    sight: Sight<'_>,
    event: &StoredEvent,
) -> FhirResult<bool> {
    let resource_type = event.resource_type.as_str();
    match sight.visible(resource_type, 0) {
        Visible::All => return Ok(true),
        Visible::Nothing => return Ok(false),
        Visible::Where(_) => {}
    }
    // The version the event is about: the one written, or the one a deletion removed.
    let version = match event.change.as_str() {
        "delete" => event.version_id - 1,
        _ => event.version_id,
    };
    let Some(content) = store
        .vread(resource_type, &event.resource_id, version)
        .await?
        .and_then(|stored| stored.content)
    else {
        return Ok(false);
    };
    for scope in owner
        .scopes
        .iter()
        .filter(|s| s.covers(resource_type, Permission::Read))
    {
        let mut admitted = true;
        if scope.context == Context::Patient {
            admitted = owner
                .patient
                .as_deref()
                .is_some_and(|patient| in_compartment(patient, resource_type, &content));
        }
        if let (true, Some(query)) = (admitted, &scope.query) {
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                let holds = match super::registry::holds_in_memory(
                    resource_type,
                    &name,
                    &value,
                    &content,
                ) {
                    Some(holds) => holds,
                    // Not decidable from the version alone: the resource as it is now.
                    None => {
                        let criteria = form_urlencoded::Serializer::new(String::new())
                            .append_pair("_id", &event.resource_id)
                            .append_pair(&name, &value)
                            .finish();
                        !crate::store::matching::find_matches(
                            store.connection(),
                            resource_type,
                            &criteria,
                            Sight::ALL,
                        )
                        .await
                        .unwrap_or_default()
                        .is_empty()
                    }
                };
                if !holds {
                    admitted = false;
                    break;
                }
            }
        }
        if admitted {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `content` (of `resource_type`) is in `Patient/patient`'s compartment.
fn in_compartment(patient: &str, resource_type: &str, content: &Json) -> bool {
    if resource_type == "Patient" && content["id"] == patient {
        return true;
    }
    let params = Compartments::get().params("Patient", resource_type);
    if params.is_empty() {
        return false;
    }
    extract_where(SearchParams::get(), content, |def| {
        params.iter().any(|p| *p == *def.code)
    })
    .iter()
    .any(|entry| {
        matches!(entry, IndexEntry::Reference { target_type: Some(t), target_id: Some(id), .. }
            if t == "Patient" && id == patient)
    })
}
