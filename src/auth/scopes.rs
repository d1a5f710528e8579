//! SMART on FHIR scopes, v1 and v2 (<https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html>):
//!
//! - v1: `patient/Observation.read`, `system/*.write`, `user/Patient.*`
//! - v2: `system/Observation.rs`, `patient/Observation.cruds`, with an optional query
//!   restriction: `patient/Observation.rs?category=http://…|vital-signs`.
//!
//! A v1 `read` is v2 `rs`, `write` is `cud`, `*` is `cruds`. Other scopes (`openid`,
//! `launch/patient`, `offline_access`…) are kept as they are and grant no data access.
//! [`granted`] narrows what a client asks for to what it is allowed.

use std::fmt;

/// Whose data a scope is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// The data of the patient in the token's launch context.
    Patient,
    /// The data the user may see.
    User,
    /// Any data (backend services).
    System,
}

impl Context {
    fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// One permission of SMART v2 (`c`, `r`, `u`, `d`, `s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    const ALL: [Permission; 5] = [
        Permission::Create,
        Permission::Read,
        Permission::Update,
        Permission::Delete,
        Permission::Search,
    ];

    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }

    fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u8);

impl Permissions {
    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn intersect(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }

    /// v2 letters in the required order `cruds`, each at most once.
    fn parse_v2(text: &str) -> Option<Permissions> {
        let mut bits = 0u8;
        let mut last = -1i32;
        for c in text.chars() {
            let index = Permission::ALL.iter().position(|p| p.letter() == c)? as i32;
            if index <= last {
                return None;
            }
            last = index;
            bits |= Permission::ALL[index as usize].bit();
        }
        (bits != 0).then_some(Permissions(bits))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in Permission::ALL {
            if self.contains(p) {
                write!(f, "{}", p.letter())?;
            }
        }
        Ok(())
    }
}

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    pub permissions: Permissions,
    /// A v2 query restriction (`?category=…`), as search parameters.
    pub query: Option<String>,
}

impl ResourceScope {
    /// Whether this scope covers `permission` on `resource_type` (without looking at the
    /// query restriction).
    pub fn covers(&self, resource_type: &str, permission: Permission) -> bool {
        self.permissions.contains(permission)
            && match self.resource_type.as_deref() {
                Some(t) => t == resource_type,
                // The audit trail only with a scope that names it.
                None => resource_type != "AuditEvent",
            }
    }

    /// The part of `self` that `allowed` also grants, if any.
    fn within(&self, allowed: &ResourceScope) -> Option<ResourceScope> {
        if self.context != allowed.context {
            return None;
        }
        let resource_type = match (&self.resource_type, &allowed.resource_type) {
            (None, other) | (other, None) => other.clone(),
            (Some(a), Some(b)) if a == b => Some(a.clone()),
            _ => return None,
        };
        let permissions = self.permissions.intersect(allowed.permissions);
        if permissions.is_empty() {
            return None;
        }
        let query = match (&self.query, &allowed.query) {
            (None, other) | (other, None) => other.clone(),
            (Some(a), Some(b)) if a == b => Some(a.clone()),
            _ => return None,
        };
        Some(ResourceScope {
            context: self.context,
            resource_type,
            permissions,
            query,
        })
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}.{}",
            self.context.as_str(),
            self.resource_type.as_deref().unwrap_or("*"),
            self.permissions
        )?;
        if let Some(query) = &self.query {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// A scope string: a resource scope, or another scope kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Resource(ResourceScope),
    Other(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Resource(scope) => scope.fmt(f),
            Scope::Other(text) => f.write_str(text),
        }
    }
}

/// Parses one scope. A string that looks like a resource scope but is malformed is an
/// error (a client must learn that `system/Observation.rsx` means nothing).
pub fn parse_scope(text: &str) -> Result<Scope, String> {
    let Some((context, rest)) = text.split_once('/') else {
        return Ok(Scope::Other(text.to_string()));
    };
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        // `launch/patient` and the like.
        _ => return Ok(Scope::Other(text.to_string())),
    };
    let (resource, query) = match rest.split_once('?') {
        Some((resource, query)) => (resource, Some(query)),
        None => (rest, None),
    };
    let Some((resource_type, access)) = resource.rsplit_once('.') else {
        return Err(format!(
            "{text:?} is not a SMART scope such as system/Observation.rs or patient/*.read"
        ));
    };
    if resource_type != "*"
        && !crate::fhir::definitions::Definitions::get().is_resource_type(resource_type)
    {
        return Err(format!(
            "{text:?}: {resource_type:?} is not a resource type"
        ));
    }
    let permissions = match access {
        "read" => Permissions(Permission::Read.bit() | Permission::Search.bit()),
        "write" => Permissions(
            Permission::Create.bit() | Permission::Update.bit() | Permission::Delete.bit(),
        ),
        "*" => Permissions(0b11111),
        letters => Permissions::parse_v2(letters).ok_or_else(|| {
            format!(
                "{text:?}: {letters:?} is neither read, write, * nor SMART v2 permissions \
                 (some of c, r, u, d, s in that order)"
            )
        })?,
    };
    if query.is_some() && matches!(access, "read" | "write" | "*") {
        return Err(format!(
            "{text:?}: a query restriction needs SMART v2 permissions (e.g. .rs?category=…)"
        ));
    }
    let query = match query {
        Some("") => None,
        Some(q) => Some(q.to_string()),
        None => None,
    };
    Ok(Scope::Resource(ResourceScope {
        context,
        resource_type: (resource_type != "*").then(|| resource_type.to_string()),
        permissions,
        query,
    }))
}

/// Parses a space-separated scope list.
pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, String> {
    text.split_whitespace().map(parse_scope).collect()
}

/// What a client asking for `requested` gets, given that it is `allowed` these: each
/// requested resource scope narrowed to what an allowed one also grants (a client
/// allowed `system/Observation.rs` asking for `system/*.read` gets
/// `system/Observation.rs`); other scopes only when allowed as such.
pub fn granted(requested: &[Scope], allowed: &[Scope]) -> Vec<Scope> {
    let mut granted: Vec<Scope> = Vec::new();
    for request in requested {
        match request {
            Scope::Resource(asked) => {
                for permitted in allowed {
                    if let Scope::Resource(permitted) = permitted {
                        if let Some(scope) = asked.within(permitted) {
                            let scope = Scope::Resource(scope);
                            if !granted.contains(&scope) {
                                granted.push(scope);
                            }
                        }
                    }
                }
            }
            Scope::Other(_) => {
                if allowed.contains(request) && !granted.contains(request) {
                    granted.push(request.clone());
                }
            }
        }
    }
    granted
}

/// Scopes as a space-separated string.
pub fn to_string(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(text: &str) -> Vec<Scope> {
        parse_scopes(text).unwrap()
    }

    #[test]
    fn v1_and_v2_forms() {
        let Scope::Resource(read) = parse_scope("patient/Observation.read").unwrap() else {
            panic!()
        };
        assert_eq!(read.to_string(), "patient/Observation.rs");
        assert!(read.covers("Observation", Permission::Search));
        assert!(!read.covers("Observation", Permission::Create));
        assert!(!read.covers("Patient", Permission::Read));
        let Scope::Resource(write) = parse_scope("system/*.write").unwrap() else {
            panic!()
        };
        assert_eq!(write.to_string(), "system/*.cud");
        assert!(write.covers("Device", Permission::Delete));
        assert!(
            !write.covers("AuditEvent", Permission::Create),
            "* leaves out the audit trail"
        );
        assert_eq!(
            parse_scope("system/Observation.cruds").unwrap().to_string(),
            "system/Observation.cruds"
        );
        let Scope::Resource(restricted) = parse_scope(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            restricted.query.as_deref(),
            Some("category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs")
        );
        assert_eq!(
            parse_scope("launch/patient").unwrap(),
            Scope::Other("launch/patient".into())
        );
        assert_eq!(
            parse_scope("openid").unwrap(),
            Scope::Other("openid".into())
        );
        for bad in [
            "system/Observation.rsx",
            "system/Observation.sr",
            "system/Observation.rr",
            "system/Nonsense.read",
            "system/Observation",
            "system/Observation.read?code=1",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_are_narrowed_to_what_is_allowed() {
        let allowed = scopes("system/Observation.rs system/Device.cruds launch/patient");
        let got = to_string(&granted(&scopes("system/*.read"), &allowed));
        assert_eq!(got, "system/Observation.rs system/Device.rs");
        let got = to_string(&granted(&scopes("system/Observation.cruds"), &allowed));
        assert_eq!(got, "system/Observation.rs");
        assert!(granted(&scopes("patient/Observation.rs"), &allowed).is_empty());
        assert!(granted(&scopes("system/Patient.rs openid"), &allowed).is_empty());
        let restricted = scopes("system/Observation.rs?category=vital-signs");
        assert_eq!(
            to_string(&granted(&scopes("system/Observation.rs"), &restricted)),
            "system/Observation.rs?category=vital-signs"
        );
        assert!(granted(
            &scopes("system/Observation.rs?category=laboratory"),
            &restricted
        )
        .is_empty());
    }
}
