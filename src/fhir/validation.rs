//! Structural validation of FHIR R4 JSON resources against the official definitions.
//!
//! [`validate`] walks the JSON once, in step with the type model of
//! [`crate::fhir::definitions`], and reports every problem it finds (not just the first),
//! each located by a FHIRPath expression with array indices such as
//! `Observation.component[1].valueQuantity.value`.
//!
//! Checked: resource type, unknown elements (with "did you mean" hints), JSON shapes
//! (object/array/primitive, arrays exactly for repeating elements), primitive lexical
//! forms, cardinality, choice types, required bindings, FHIR JSON rules (no `null`, empty
//! objects/arrays/strings; `_x` primitive extensions), nested resources (`contained`,
//! `Bundle.entry.resource`, `Parameters.parameter.resource`) and the contained-resource
//! rules dom-2 / dom-4 / dom-5. Other invariants (FHIRPath constraints) are not evaluated,
//! except ele-1, which the "no empty objects" rule covers.
//!
//! At most [`MAX_ISSUES`] issues are returned (plus one saying how many were dropped).

#[path = "primitives.rs"]
pub mod primitives;

use serde_json::{Map, Value};

use crate::fhir::definitions::{CodeSet, Definitions, Node, TypeKind};
use crate::fhir::outcome::{Issue, IssueCode};
use primitives::{check_primitive, PrimitiveError, MAX_STRING_BYTES};

/// Value sets with at most this many codes are listed in binding error messages.
const MAX_CODES_IN_MESSAGE: usize = 12;
/// Object nesting depth beyond which validation stops descending (bounds stack use).
/// serde_json refuses documents nested deeper than 128 levels when parsing, so this only
/// matters for values built in code.
const MAX_DEPTH: usize = 128;
/// At most this many issues are reported; a huge broken payload (say, 100 000 invalid
/// array entries) must not turn into an even bigger OperationOutcome.
pub const MAX_ISSUES: usize = 1000;

/// Validates a resource of any type; returns every problem found (empty when valid).
pub fn validate(resource: &Value) -> Vec<Issue> {
    let mut v = Validator::new(Definitions::get());
    v.resource(resource, None, ResourceRole::Root);
    v.finish()
}

/// Validates a resource that must be of type `expected_type` (e.g. the type in the URL of
/// a `PUT /Patient/1`). A different `resourceType` is reported, and the resource is then
/// still validated as what it claims to be.
pub fn validate_as(resource: &Value, expected_type: &str) -> Vec<Issue> {
    let mut v = Validator::new(Definitions::get());
    v.resource(resource, Some(expected_type), ResourceRole::Root);
    v.finish()
}

/// True when `issues` contains an error or fatal issue (warnings do not block writes).
pub fn has_errors(issues: &[Issue]) -> bool {
    issues.iter().any(Issue::is_error)
}

/// Where a resource sits, for the rules that differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResourceRole {
    /// The resource being validated.
    Root,
    /// In `contained`: dom-2 / dom-4 apply.
    Contained,
    /// Any other resource-typed element (`Bundle.entry.resource`, `Parameters...resource`).
    Nested,
}

/// What kind of JSON object is being walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectRole {
    /// A resource: `resourceType` is allowed.
    Resource,
    /// A datatype or backbone element.
    Complex,
    /// The `_x` companion of a primitive: only `id` and `extension`.
    PrimitiveExtension,
}

/// The object being walked by [`Validator::object`], shared by its properties.
struct ObjectScope<'v, 'd> {
    obj: &'v Map<String, Value>,
    node: Node<'d>,
    role: ObjectRole,
    has_shadows: bool,
    /// (element index, chosen type) of every element present, for the choice and
    /// required-element checks.
    present: Vec<(usize, &'d str)>,
}

struct Validator<'d> {
    defs: &'d Definitions,
    issues: Vec<Issue>,
    /// FHIRPath of the current position; segments are pushed and truncated in place so
    /// that no string is built unless an issue is reported.
    path: String,
    /// Reused buffer for `_name` lookups.
    key_buf: String,
    depth: usize,
    /// Issues not recorded because [`MAX_ISSUES`] was reached.
    suppressed: usize,
}

impl<'d> Validator<'d> {
    fn new(defs: &'d Definitions) -> Self {
        Validator {
            defs,
            issues: Vec::new(),
            path: String::with_capacity(128),
            key_buf: String::with_capacity(64),
            depth: 0,
            suppressed: 0,
        }
    }

    /// The issues found, with a note when some were dropped because of [`MAX_ISSUES`].
    fn finish(mut self) -> Vec<Issue> {
        if self.suppressed > 0 {
            self.issues.push(Issue::error(
                IssueCode::TooCostly,
                format!(
                    "{} further issues were found but not reported (limit {MAX_ISSUES})",
                    self.suppressed
                ),
            ));
        }
        self.issues
    }

    // ----- issue reporting ---------------------------------------------------------

    fn report(&mut self, code: IssueCode, msg: String) {
        if self.issues.len() >= MAX_ISSUES {
            self.suppressed += 1;
            return;
        }
        let mut issue = Issue::error(code, msg);
        if !self.path.is_empty() {
            issue = issue.at(self.path.clone());
        }
        self.issues.push(issue);
    }

    /// Reports at `path.segment` without moving the cursor.
    fn report_child(&mut self, segment: &str, code: IssueCode, msg: String) {
        let len = self.path.len();
        self.push_segment(segment);
        self.report(code, msg);
        self.path.truncate(len);
    }

    fn push_segment(&mut self, segment: &str) {
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(segment);
    }

    fn push_index(&mut self, i: usize) {
        use std::fmt::Write;
        let _ = write!(self.path, "[{i}]");
    }

    // ----- resources ---------------------------------------------------------------

    /// Validates a resource at the current path (empty for the root, where the path then
    /// starts with the resource type).
    fn resource(&mut self, value: &Value, expected: Option<&str>, role: ResourceRole) {
        let Some(obj) = value.as_object() else {
            self.report(
                IssueCode::Structure,
                format!("A resource must be a JSON object, not {}", describe(value)),
            );
            return;
        };
        let Some(type_name) = self.resource_type(obj) else {
            return;
        };
        if let Some(expected) = expected.filter(|e| *e != type_name) {
            self.report(
                IssueCode::Invalid,
                format!("Expected a {expected} resource but resourceType is '{type_name}'"),
            );
        }
        let Some(root) = self.defs.root(type_name) else {
            return;
        };
        let len = self.path.len();
        if self.path.is_empty() {
            self.path.push_str(type_name);
        }
        if role == ResourceRole::Contained {
            self.contained_rules(obj);
        }
        self.object(obj, root, ObjectRole::Resource);
        self.path.truncate(len);
    }

    /// Reads and checks `resourceType`; `None` when the resource cannot be validated.
    fn resource_type<'v>(&mut self, obj: &'v Map<String, Value>) -> Option<&'v str> {
        let type_name = match obj.get("resourceType") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                self.report(
                    IssueCode::Structure,
                    format!("resourceType must be a string, not {}", describe(other)),
                );
                return None;
            }
            None => {
                self.report(
                    IssueCode::Required,
                    "Missing resourceType: a resource must say what type it is".to_string(),
                );
                return None;
            }
        };
        if self.defs.is_resource_type(type_name) {
            return Some(type_name);
        }
        let abstract_type = self
            .defs
            .type_def(type_name)
            .is_some_and(|t| t.kind == TypeKind::Resource && t.is_abstract);
        if abstract_type {
            self.report(
                IssueCode::Invalid,
                format!("'{type_name}' is an abstract type; use a concrete resource type"),
            );
        } else {
            self.report(
                IssueCode::NotSupported,
                format!("Unknown resource type '{type_name}' (not an R4 resource type)"),
            );
        }
        None
    }

    /// dom-2 (no nested contained) and dom-4 (no meta.versionId / meta.lastUpdated) for
    /// contained resources: a contained resource has no identity or history of its own.
    fn contained_rules(&mut self, obj: &Map<String, Value>) {
        if obj.contains_key("contained") {
            self.report_child(
                "contained",
                IssueCode::Invariant,
                "A contained resource must not contain other resources (dom-2)".to_string(),
            );
        }
        let Some(meta) = obj.get("meta").and_then(Value::as_object) else {
            return;
        };
        for key in ["versionId", "lastUpdated"] {
            if meta.contains_key(key) {
                self.report_child(
                    &format!("meta.{key}"),
                    IssueCode::Invariant,
                    format!("A contained resource must not have meta.{key} (dom-4)"),
                );
            }
        }
        if meta.contains_key("security") {
            self.report_child(
                "meta.security",
                IssueCode::Invariant,
                "A contained resource must not have security labels (dom-5)".to_string(),
            );
        }
    }

    // ----- objects -----------------------------------------------------------------

    /// Validates the properties of a JSON object against the children of `node`.
    fn object(&mut self, obj: &Map<String, Value>, node: Node<'d>, role: ObjectRole) {
        if self.depth >= MAX_DEPTH {
            self.report(
                IssueCode::TooCostly,
                "Content is nested too deeply to validate".to_string(),
            );
            return;
        }
        if obj.is_empty() && role != ObjectRole::Resource {
            self.report(
                IssueCode::Structure,
                "Empty objects are not allowed: an element must have a value or children (ele-1)"
                    .to_string(),
            );
            return;
        }
        self.depth += 1;
        let mut scope = ObjectScope {
            obj,
            node,
            role,
            // Most objects have no `_x` properties: skip the companion lookups then.
            has_shadows: obj.keys().any(|k| k.starts_with('_')),
            present: Vec::with_capacity(obj.len()),
        };
        for (key, value) in obj {
            if key == "resourceType" && role == ObjectRole::Resource {
                continue;
            }
            self.property(&mut scope, key, value);
        }
        self.required_children(node, &scope.present);
        self.depth -= 1;
    }

    /// One property of an object: resolves it to a child element and validates it
    /// (together with its `_x` companion for primitives).
    fn property(&mut self, scope: &mut ObjectScope<'_, 'd>, key: &str, value: &Value) {
        let (name, is_shadow) = match key.strip_prefix('_') {
            Some(base) => (base, true),
            None => (key, false),
        };
        let child = if scope.role == ObjectRole::PrimitiveExtension && name == "value" {
            None
        } else {
            scope.node.child(name)
        };
        let Some(child) = child else {
            self.unknown_element(scope.node, scope.role, key);
            return;
        };
        if is_shadow && !child.is_primitive() {
            self.report_child(
                key,
                IssueCode::Structure,
                format!(
                    "'{key}' is not allowed: '_' extensions only exist for primitive elements, \
                     and '{name}' is a {}",
                    child.type_code
                ),
            );
            return;
        }
        if is_shadow && scope.obj.contains_key(name) {
            return; // validated together with the value
        }
        self.note_present(child, name, &mut scope.present);
        let (value, shadow) = if is_shadow {
            (None, Some(value))
        } else if scope.has_shadows && child.is_primitive() {
            self.key_buf.clear();
            self.key_buf.push('_');
            self.key_buf.push_str(key);
            (Some(value), scope.obj.get(self.key_buf.as_str()))
        } else {
            (Some(value), None)
        };
        let len = self.path.len();
        self.push_segment(name);
        self.element_value(child, value, shadow);
        self.path.truncate(len);
    }

    /// Records that an element is present; reports a second variant of a choice element.
    fn note_present(
        &mut self,
        child: Node<'d>,
        json_name: &str,
        present: &mut Vec<(usize, &'d str)>,
    ) {
        let index = child.element.index();
        if child.element.is_choice {
            if let Some((_, other)) = present
                .iter()
                .find(|(i, t)| *i == index && *t != child.type_code)
            {
                let other_name = crate::fhir::definitions::choice_name(&child.element.name, other);
                self.report_child(
                    json_name,
                    IssueCode::Structure,
                    format!(
                        "Only one type is allowed for {}[x], but both '{other_name}' and \
                         '{json_name}' are present",
                        child.element.name
                    ),
                );
            }
        }
        present.push((index, child.type_code));
    }

    /// Reports children with `min >= 1` that are absent.
    fn required_children(&mut self, node: Node<'d>, present: &[(usize, &'d str)]) {
        for element in node.required_child_elements() {
            if present.iter().any(|(i, _)| *i == element.index()) {
                continue;
            }
            let shown = if element.is_choice {
                format!("{}[x]", element.name)
            } else {
                element.name.clone()
            };
            let msg = if element.min == 1 {
                format!("Missing required element '{shown}' ({})", element.path)
            } else {
                format!(
                    "Missing required element '{shown}' ({}): at least {} required",
                    element.path, element.min
                )
            };
            self.report_child(&element.name, IssueCode::Required, msg);
        }
    }

    // ----- unknown elements --------------------------------------------------------

    fn unknown_element(&mut self, node: Node<'d>, role: ObjectRole, key: &str) {
        let msg = if role == ObjectRole::PrimitiveExtension {
            format!(
                "Unknown element '{key}': the '_' companion of a primitive may only contain \
                 'id' and 'extension'"
            )
        } else if key == "resourceType" {
            "'resourceType' is only allowed at the root of a resource".to_string()
        } else {
            let mut msg = format!("Unknown element '{key}' in {}", describe_node(node));
            let (prefix, name) = match key.strip_prefix('_') {
                Some(name) => ("_", name),
                None => ("", key),
            };
            if let Some(hint) = suggestion(node, name, prefix) {
                msg.push_str(": ");
                msg.push_str(&hint);
            }
            msg
        };
        self.report_child(key, IssueCode::Structure, msg);
    }

    // ----- element values ----------------------------------------------------------

    /// Validates the value (and `_x` companion) of one element; the path already ends
    /// with the element's JSON name.
    fn element_value(&mut self, child: Node<'d>, value: Option<&Value>, shadow: Option<&Value>) {
        if child.element.is_array() {
            self.repeating(child, value, shadow);
        } else {
            self.single(child, value, shadow);
        }
    }

    /// A non-repeating element (max = 1): no arrays.
    fn single(&mut self, child: Node<'d>, value: Option<&Value>, shadow: Option<&Value>) {
        if child.element.max == Some(0) {
            // Only profiles prohibit elements, but the model supports them.
            self.report(
                IssueCode::Structure,
                format!("{} is not allowed (max = 0)", child.element.path),
            );
            return;
        }
        if let Some(v @ Value::Array(_)) = value {
            self.report(
                IssueCode::Structure,
                format!(
                    "{} allows at most one value, so it must not be an array (found {})",
                    child.element.path,
                    describe(v)
                ),
            );
            return;
        }
        if let Some(Value::Array(_)) = shadow {
            self.report(
                IssueCode::Structure,
                format!(
                    "The '_' companion of {} must be an object, not an array",
                    child.element.path
                ),
            );
            return;
        }
        if child.is_primitive() {
            self.primitive_item(child, value, shadow, false);
        } else if let Some(value) = value {
            self.complex_item(child, value);
        }
    }

    /// A repeating element: arrays only, non-empty, within max; `_x` arrays run parallel.
    fn repeating(&mut self, child: Node<'d>, value: Option<&Value>, shadow: Option<&Value>) {
        let items = match value {
            None => None,
            Some(Value::Array(a)) => Some(a.as_slice()),
            Some(v) => {
                self.report(
                    IssueCode::Structure,
                    format!(
                        "{} can repeat, so its value must be an array, not {}",
                        child.element.path,
                        describe(v)
                    ),
                );
                return;
            }
        };
        let shadows = match shadow {
            None => None,
            Some(Value::Array(a)) => Some(a.as_slice()),
            Some(v) => {
                self.report(
                    IssueCode::Structure,
                    format!(
                        "The '_' companion of {} must be an array, not {}",
                        child.element.path,
                        describe(v)
                    ),
                );
                return;
            }
        };
        if items.is_some_and(<[Value]>::is_empty) || shadows.is_some_and(<[Value]>::is_empty) {
            self.report(
                IssueCode::Structure,
                "Empty arrays are not allowed: omit the element instead".to_string(),
            );
            return;
        }
        if let (Some(a), Some(b)) = (items, shadows) {
            if a.len() != b.len() {
                self.report(
                    IssueCode::Structure,
                    format!(
                        "The '_' companion array has {} entries but the value array has {}; \
                         they must be the same length (use null for gaps)",
                        b.len(),
                        a.len()
                    ),
                );
            }
        }
        let count = items
            .map_or(0, <[Value]>::len)
            .max(shadows.map_or(0, <[Value]>::len));
        self.cardinality(child, count);
        let primitive = child.is_primitive();
        for i in 0..count {
            let item = items.and_then(|a| a.get(i));
            let len = self.path.len();
            self.push_index(i);
            if primitive {
                let shadow_item = shadows.and_then(|a| a.get(i));
                self.primitive_item(child, item, shadow_item, true);
            } else if let Some(item) = item {
                self.complex_item(child, item);
            }
            self.path.truncate(len);
        }
    }

    fn cardinality(&mut self, child: Node<'d>, count: usize) {
        let element = child.element;
        if let Some(max) = element.max {
            if count > max as usize {
                self.report(
                    IssueCode::Structure,
                    format!(
                        "{} allows at most {max} values but {count} are present",
                        element.path
                    ),
                );
            }
        }
        if count < element.min as usize {
            self.report(
                IssueCode::Required,
                format!(
                    "{} requires at least {} values but {count} are present",
                    element.path, element.min
                ),
            );
        }
    }

    /// A datatype, backbone element or resource value.
    fn complex_item(&mut self, child: Node<'d>, value: &Value) {
        let Some(obj) = value.as_object() else {
            let what = if value.is_null() {
                "null is not allowed: omit the element instead".to_string()
            } else {
                format!(
                    "{} must be a JSON object ({}), not {}",
                    child.element.path,
                    child.type_code,
                    describe(value)
                )
            };
            self.report(IssueCode::Structure, what);
            return;
        };
        if child.is_resource() {
            let role = if child.element.base_path == "DomainResource.contained" {
                ResourceRole::Contained
            } else {
                ResourceRole::Nested
            };
            let expected = child
                .value_type
                .filter(|t| !t.is_abstract)
                .map(|t| t.name.as_str());
            self.resource(value, expected, role);
            return;
        }
        self.object(obj, child, ObjectRole::Complex);
        self.coded_binding(child, obj);
    }

    /// A primitive value and/or its `_x` companion. In arrays, `null` stands for "no value"
    /// or "no extension" at that position, but not both.
    fn primitive_item(
        &mut self,
        child: Node<'d>,
        value: Option<&Value>,
        shadow: Option<&Value>,
        in_array: bool,
    ) {
        let value = value.filter(|v| !(in_array && v.is_null()));
        let shadow = shadow.filter(|v| !(in_array && v.is_null()));
        if value.is_none() && shadow.is_none() {
            self.report(
                IssueCode::Structure,
                "null is not allowed: each entry needs a value or an extension".to_string(),
            );
            return;
        }
        if let Some(v) = value {
            self.primitive_value(child, v);
        }
        if let Some(s) = shadow {
            self.primitive_extension(child, s);
        }
    }

    fn primitive_value(&mut self, child: Node<'d>, value: &Value) {
        if value.is_null() {
            self.report(
                IssueCode::Structure,
                "null is not allowed: omit the element instead".to_string(),
            );
            return;
        }
        let Some(ty) = child.value_type else {
            return;
        };
        match check_primitive(ty, value) {
            Ok(()) => self.code_binding(child, value),
            Err(e) => {
                let (code, msg) = primitive_message(child, value, e);
                self.report(code, msg);
            }
        }
    }

    /// The `_x` object of a primitive: `id` and `extension` only.
    fn primitive_extension(&mut self, child: Node<'d>, shadow: &Value) {
        let Some(obj) = shadow.as_object() else {
            let msg = if shadow.is_null() {
                "null is not allowed: omit the '_' companion instead".to_string()
            } else {
                format!(
                    "The '_' companion of {} must be an object with id/extension, not {}",
                    child.element.path,
                    describe(shadow)
                )
            };
            self.report(IssueCode::Structure, msg);
            return;
        };
        let Some(root) = child.value_type.and_then(|t| self.defs.root(&t.name)) else {
            return;
        };
        self.object(obj, root, ObjectRole::PrimitiveExtension);
    }

    // ----- required bindings -------------------------------------------------------

    /// The code set of a required binding, when it can be expanded.
    fn required_set(&self, child: Node<'d>) -> Option<(&'d str, &'d CodeSet)> {
        let url = child.element.required_value_set()?;
        Some((url, self.defs.required_codes(url)?))
    }

    /// `code` (and other string primitives) with a required binding.
    fn code_binding(&mut self, child: Node<'d>, value: &Value) {
        let Some(code) = value.as_str() else { return };
        let Some((url, set)) = self.required_set(child) else {
            return;
        };
        if !set.contains_code(code) {
            let msg = format!(
                "Invalid code '{code}' for {}: it is not in the required value set {url}{}",
                child.element.path,
                allowed_codes(set)
            );
            self.report(IssueCode::CodeInvalid, msg);
        }
    }

    /// Coding / CodeableConcept with a required binding: the coding (or at least one of
    /// the codings) must be in the value set, matching the system when one is given.
    fn coded_binding(&mut self, child: Node<'d>, obj: &Map<String, Value>) {
        let Some((url, set)) = self.required_set(child) else {
            return;
        };
        let ok = match child.type_code {
            "Coding" => Some(coding_in(set, obj)),
            "CodeableConcept" => Some(obj.get("coding").and_then(Value::as_array).is_some_and(
                |codings| {
                    codings
                        .iter()
                        .filter_map(Value::as_object)
                        .any(|c| coding_in(set, c))
                },
            )),
            _ => None,
        };
        if ok == Some(false) {
            let msg = format!(
                "{} must have a coding from the required value set {url}{}",
                child.element.path,
                allowed_codes(set)
            );
            self.report(IssueCode::CodeInvalid, msg);
        }
    }
}

/// True when the coding's code is in the set (under its system when it names one).
fn coding_in(set: &CodeSet, coding: &Map<String, Value>) -> bool {
    let code = coding.get("code").and_then(Value::as_str);
    let system = coding.get("system").and_then(Value::as_str);
    match (system, code) {
        (_, None) => false,
        (Some(system), Some(code)) => set.contains(system, code),
        (None, Some(code)) => set.contains_code(code),
    }
}

/// ` (allowed: a, b, c)` for small sets, ` (N codes)` otherwise.
fn allowed_codes(set: &CodeSet) -> String {
    if set.len() > MAX_CODES_IN_MESSAGE {
        return format!(" ({} codes)", set.len());
    }
    let codes: Vec<&str> = set.iter().map(|(_, c)| c).collect();
    format!(" (allowed: {})", codes.join(", "))
}

fn primitive_message(child: Node<'_>, value: &Value, e: PrimitiveError) -> (IssueCode, String) {
    let path = &child.element.path;
    let ty = child.type_code;
    match e {
        PrimitiveError::WrongJsonType { expected } => (
            IssueCode::Structure,
            format!(
                "{path} is a {ty}, so it must be {expected}, not {}",
                describe(value)
            ),
        ),
        PrimitiveError::Empty => (
            IssueCode::Value,
            format!("{path}: empty strings are not allowed; omit the element instead"),
        ),
        PrimitiveError::TooLong { bytes } => (
            IssueCode::TooLong,
            format!("{path}: string of {bytes} bytes exceeds the {MAX_STRING_BYTES}-byte limit"),
        ),
        PrimitiveError::Invalid { hint } => (IssueCode::Value, format!("{path}: {hint}")),
    }
}

/// A short description of a JSON value for messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 40 => "a string".to_string(),
        Value::String(s) => format!("the string \"{s}\""),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// `Observation`, `Observation.component` or `Quantity` for messages.
fn describe_node(node: Node<'_>) -> String {
    if node.element.path.contains('.') {
        format!("{} ({})", node.element.path, node.type_code)
    } else {
        node.element.path.clone()
    }
}

/// A "did you mean" hint for an unknown property: wrong case, a choice element without
/// its type suffix, or a type suffix the choice does not allow.
fn suggestion(node: Node<'_>, key: &str, prefix: &str) -> Option<String> {
    let children = node.children();
    let names: Vec<String> = children
        .iter()
        .map(|c| {
            if c.element.is_choice {
                crate::fhir::definitions::choice_name(&c.element.name, c.type_code)
            } else {
                c.element.name.clone()
            }
        })
        .collect();
    if let Some(n) = names.iter().find(|n| n.eq_ignore_ascii_case(key)) {
        return Some(format!("did you mean '{prefix}{n}'?"));
    }
    let choice = children
        .iter()
        .filter(|c| c.element.is_choice)
        .map(|c| c.element)
        .find(|e| {
            key.strip_prefix(e.name.as_str()).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_uppercase())
            })
        })?;
    let variants = choice.json_names();
    if key.len() == choice.name.len() {
        Some(format!(
            "'{}' is a choice element ({}[x]); use one of {}",
            choice.name,
            choice.name,
            variants.join(", ")
        ))
    } else {
        Some(format!(
            "type '{}' is not allowed for {}[x]; use one of {}",
            &key[choice.name.len()..],
            choice.name,
            variants.join(", ")
        ))
    }
}

#[cfg(test)]
#[path = "validation_tests.rs"]
mod tests;
