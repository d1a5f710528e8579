//! The FHIR R4 (4.0.1) type model, built from the official StructureDefinitions.
//!
//! The official definitions are embedded in the binary (gzipped) and parsed once per
//! process into a [`Definitions`] value, reachable through [`Definitions::get`]. Everything
//! in it is immutable and `'static`, so references handed out can be kept freely.
//!
//! What it offers:
//! * every type — primitive types, complex datatypes, resources (including the abstract
//!   `Resource`/`DomainResource`/`Element`/`BackboneElement`) — as a [`TypeDef`] holding its
//!   snapshot [`ElementDef`]s keyed by path (`Observation.component.value[x]`);
//! * navigation by JSON property name through [`Node`]: `root("Observation")` →
//!   `child("valueQuantity")` → `child("value")` resolves choice types, backbone elements,
//!   `contentReference` recursion (`Questionnaire.item.item`) and steps into the element's
//!   own datatype;
//! * the list of concrete resource types, primitive-type lexical rules ([`PrimitiveType`],
//!   [`TypeDef::regex`]);
//! * code sets of value sets for required bindings ([`Definitions::required_codes`]),
//!   expanded lazily from the embedded ValueSets/CodeSystems;
//! * `_summary`/`_elements` support ([`TypeDef::summary_elements`],
//!   [`TypeDef::mandatory_elements`], [`TypeDef::top_level_element`]).
//!
//! The embedded package is Medplum's copy of the R4 definitions, which adds one R4B
//! resource (`SubscriptionStatus`, fhirVersion 4.3.0). Definitions whose `fhirVersion` is
//! not 4.0.1 are skipped so that the model is exactly R4.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Read;
use std::sync::OnceLock;

use flate2::read::GzDecoder;
use regex::Regex;
use serde::Deserialize;

const PROFILES_TYPES_GZ: &[u8] = include_bytes!("../../fhir-profiles/r4/profiles-types.json.gz");
const PROFILES_RESOURCES_GZ: &[u8] =
    include_bytes!("../../fhir-profiles/r4/profiles-resources.json.gz");
const VALUESETS_GZ: &[u8] = include_bytes!("../../fhir-profiles/r4/valuesets.json.gz");
const V3_CODESYSTEMS_GZ: &[u8] = include_bytes!("../../fhir-profiles/r4/v3-codesystems.json.gz");

/// The FHIR version the model describes; definitions of other versions are ignored.
pub const FHIR_VERSION: &str = "4.0.1";

/// URL of the StructureDefinition extension carrying a primitive's regex.
const REGEX_EXTENSION: &str = "http://hl7.org/fhir/StructureDefinition/regex";
/// URL of the extension that names the FHIR type of `System.*`-typed elements (`id`, `url`).
const FHIR_TYPE_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
/// Prefix of the FHIRPath system types used for `Element.id`, `Extension.url`, `x.value`.
const FHIRPATH_SYSTEM_PREFIX: &str = "http://hl7.org/fhirpath/";
/// How deep value-set imports may nest before expansion gives up (guards against cycles).
const MAX_VALUESET_DEPTH: u32 = 8;

// ---------------------------------------------------------------------------------------
// Public model
// ---------------------------------------------------------------------------------------

/// Error raised when the embedded definitions cannot be read (a build problem, never a
/// user-data problem).
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    #[error("cannot decompress embedded {file}: {source}")]
    Decompress {
        file: &'static str,
        source: std::io::Error,
    },
    #[error("cannot parse embedded {file}: {source}")]
    Parse {
        file: &'static str,
        source: serde_json::Error,
    },
    #[error("invalid definition: {0}")]
    Invalid(String),
}

/// `StructureDefinition.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    PrimitiveType,
    ComplexType,
    Resource,
    Logical,
}

/// The R4 primitive types, with the JSON representation each one uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrimitiveType {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

/// How a primitive is written in FHIR JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Boolean,
    Number,
    String,
}

impl PrimitiveType {
    /// Maps a FHIR type name (`"dateTime"`) to the primitive, `None` for non-primitives.
    pub fn from_name(name: &str) -> Option<PrimitiveType> {
        use PrimitiveType::*;
        Some(match name {
            "base64Binary" => Base64Binary,
            "boolean" => Boolean,
            "canonical" => Canonical,
            "code" => Code,
            "date" => Date,
            "dateTime" => DateTime,
            "decimal" => Decimal,
            "id" => Id,
            "instant" => Instant,
            "integer" => Integer,
            "markdown" => Markdown,
            "oid" => Oid,
            "positiveInt" => PositiveInt,
            "string" => String,
            "time" => Time,
            "unsignedInt" => UnsignedInt,
            "uri" => Uri,
            "url" => Url,
            "uuid" => Uuid,
            "xhtml" => Xhtml,
            _ => return None,
        })
    }

    /// The FHIR type name, e.g. `"dateTime"`.
    pub fn name(self) -> &'static str {
        use PrimitiveType::*;
        match self {
            Base64Binary => "base64Binary",
            Boolean => "boolean",
            Canonical => "canonical",
            Code => "code",
            Date => "date",
            DateTime => "dateTime",
            Decimal => "decimal",
            Id => "id",
            Instant => "instant",
            Integer => "integer",
            Markdown => "markdown",
            Oid => "oid",
            PositiveInt => "positiveInt",
            String => "string",
            Time => "time",
            UnsignedInt => "unsignedInt",
            Uri => "uri",
            Url => "url",
            Uuid => "uuid",
            Xhtml => "xhtml",
        }
    }

    /// JSON representation: booleans are JSON `true`/`false`, decimal and the integer types
    /// are JSON numbers, everything else is a JSON string.
    pub fn json_kind(self) -> JsonKind {
        use PrimitiveType::*;
        match self {
            Boolean => JsonKind::Boolean,
            Decimal | Integer | PositiveInt | UnsignedInt => JsonKind::Number,
            _ => JsonKind::String,
        }
    }
}

/// One FHIR type: its StructureDefinition reduced to what the server needs.
#[derive(Debug)]
pub struct TypeDef {
    /// Type name (`StructureDefinition.id`), e.g. `Observation`, `Quantity`, `dateTime`,
    /// `SimpleQuantity` (a constraint profile on Quantity).
    pub name: String,
    /// Canonical URL, e.g. `http://hl7.org/fhir/StructureDefinition/Observation`.
    pub url: String,
    pub kind: TypeKind,
    pub is_abstract: bool,
    /// Name of the base type (`DomainResource` for Observation), `None` for `Element`/`Resource`.
    pub base: Option<String>,
    /// True for profiles (`derivation = constraint`, e.g. SimpleQuantity); their element
    /// paths start with the constrained type's name (`Quantity.value`).
    pub is_constraint: bool,
    /// Set for the 20 primitive types.
    pub primitive: Option<PrimitiveType>,
    /// Anchored lexical regex of a primitive type (from the `regex` extension on `x.value`,
    /// or hand-written where the spec's is missing or awkward). `None` for non-primitives
    /// and `xhtml`.
    pub regex: Option<Regex>,
    /// Snapshot elements in snapshot order; index 0 is the root element (path = type name).
    elements: Vec<ElementDef>,
    by_path: FastMap<String, u32>,
    /// Index of this type in `Definitions::types`.
    index: u32,
}

/// One element of a type's snapshot.
#[derive(Debug)]
pub struct ElementDef {
    /// Full path, e.g. `Observation.component.value[x]`.
    pub path: String,
    /// Last path segment without `[x]`, e.g. `value`; this is the JSON property name for
    /// non-choice elements.
    pub name: String,
    /// Path of the element this one was inherited from, e.g. `Resource.id` for `Patient.id`.
    pub base_path: String,
    pub min: u32,
    /// `None` means unbounded (`*`).
    pub max: Option<u32>,
    /// Allowed types. Choice elements have several; elements with a `contentReference`
    /// carry the types of the referenced element.
    pub types: Vec<TypeRef>,
    /// Target path of a `contentReference` without the leading `#`, e.g. `Questionnaire.item`.
    pub content_reference: Option<String>,
    pub binding: Option<Binding>,
    pub is_summary: bool,
    pub is_modifier: bool,
    /// True for `[x]` elements: the JSON name is `name` + capitalised type code.
    pub is_choice: bool,
    pub max_length: Option<u32>,
    /// The element's invariants (FHIRPath), for a future invariant checker.
    pub constraints: Vec<Constraint>,
    /// Indices (within the owning type) of the direct children defined inline (backbone
    /// elements, the root); empty for elements whose children come from their type.
    children: Vec<u32>,
    /// Index of the element whose inline children apply here: itself for backbone/root
    /// elements, the target for `contentReference` elements, `None` otherwise.
    child_source: Option<u32>,
    /// JSON property name → child, including one entry per choice variant
    /// (`valueQuantity`). Only filled for elements with inline children.
    lookup: FastMap<Box<str>, ChildSlot>,
    /// Indices of the inline children with `min >= 1` (for required-element checks).
    required_children: Vec<u32>,
    index: u32,
}

/// One allowed type of an element.
#[derive(Debug, Clone)]
pub struct TypeRef {
    /// FHIR type name (`Quantity`, `dateTime`, `BackboneElement`, `Resource`), or
    /// `System.String` etc. for the `value` of primitive types.
    pub code: String,
    /// For `Reference`/`canonical`: allowed target profile URLs.
    pub target_profiles: Vec<String>,
    /// Profiles the value must conform to (e.g. SimpleQuantity).
    pub profiles: Vec<String>,
    /// Index of the TypeDef named by `code`, if any.
    type_index: Option<u32>,
}

/// `ElementDefinition.binding.strength`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingStrength {
    Required,
    Extensible,
    Preferred,
    Example,
}

/// A terminology binding.
#[derive(Debug, Clone)]
pub struct Binding {
    pub strength: BindingStrength,
    /// ValueSet canonical URL without the `|version` suffix.
    pub value_set: Option<String>,
}

/// An invariant (`ElementDefinition.constraint`).
#[derive(Debug, Clone)]
pub struct Constraint {
    pub key: String,
    /// `error` or `warning`.
    pub severity: String,
    pub human: String,
    /// FHIRPath expression; absent on a few purely textual constraints.
    pub expression: Option<String>,
}

/// Where a JSON property name leads inside an element with inline children.
#[derive(Debug, Clone, Copy)]
struct ChildSlot {
    element: u32,
    type_index: u16,
}

/// The set of codes a value set allows, per code system.
#[derive(Debug, Default, Clone)]
pub struct CodeSet {
    by_system: FastMap<String, FastSet<String>>,
    /// (system, code) in expansion order, for messages listing the allowed codes.
    ordered: Vec<(String, String)>,
}

impl CodeSet {
    /// True when `code` from `system` is in the set.
    pub fn contains(&self, system: &str, code: &str) -> bool {
        self.by_system
            .get(system)
            .is_some_and(|codes| codes.contains(code))
    }

    /// True when `code` is in the set under any system (for `code` elements, which carry
    /// no system).
    pub fn contains_code(&self, code: &str) -> bool {
        self.by_system.values().any(|codes| codes.contains(code))
    }

    pub fn len(&self) -> usize {
        self.ordered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ordered.is_empty()
    }

    /// `(system, code)` pairs in expansion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.ordered.iter().map(|(s, c)| (s.as_str(), c.as_str()))
    }

    fn insert(&mut self, system: &str, code: &str) {
        let codes = self.by_system.entry(system.to_string()).or_default();
        if codes.insert(code.to_string()) {
            self.ordered.push((system.to_string(), code.to_string()));
        }
    }

    fn extend(&mut self, other: &CodeSet) {
        for (s, c) in other.iter() {
            self.insert(s, c);
        }
    }

    fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        let mut kept = CodeSet::default();
        for (s, c) in self.iter() {
            if keep(s, c) {
                kept.insert(s, c);
            }
        }
        *self = kept;
    }
}

/// The whole R4 model. Obtain it with [`Definitions::get`].
pub struct Definitions {
    types: Vec<TypeDef>,
    type_index: FastMap<String, u32>,
    resource_types: Vec<String>,
    value_sets: FastMap<String, ValueSetDef>,
    code_systems: FastMap<String, CodeSystemDef>,
}

impl fmt::Debug for Definitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Definitions")
            .field("types", &self.types.len())
            .field("resource_types", &self.resource_types.len())
            .field("value_sets", &self.value_sets.len())
            .field("code_systems", &self.code_systems.len())
            .finish()
    }
}

/// A position in the type model: an element plus the concrete type of the values there.
///
/// Obtained from [`Definitions::root`] and walked with [`Node::child`], which takes JSON
/// property names. For a choice element reached through `valueQuantity`, `element` is
/// `value[x]` and `type_code` is `Quantity`.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    defs: &'a Definitions,
    /// The type whose snapshot defines `element`.
    pub owner: &'a TypeDef,
    pub element: &'a ElementDef,
    /// The FHIR type of values at this node: the chosen type for choice elements, the type
    /// itself at a root, `BackboneElement`/`Element` for inline-defined elements.
    pub type_code: &'a str,
    /// The definition of `type_code` (`None` for `System.*` types).
    pub value_type: Option<&'a TypeDef>,
}

impl fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("owner", &self.owner.name)
            .field("path", &self.element.path)
            .field("type_code", &self.type_code)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Definitions API
// ---------------------------------------------------------------------------------------

static DEFINITIONS: OnceLock<Definitions> = OnceLock::new();

impl Definitions {
    /// The process-wide model, loaded on first use (a few hundred ms in release builds,
    /// then free).
    ///
    /// # Panics
    /// Only if the embedded definition files are corrupt, which is a build defect.
    pub fn get() -> &'static Definitions {
        DEFINITIONS.get_or_init(|| match Definitions::load() {
            Ok(defs) => defs,
            Err(e) => panic!("embedded FHIR R4 definitions are unusable: {e}"),
        })
    }

    /// Parses the embedded definitions. Prefer [`Definitions::get`]; this is public for
    /// start-up checks that want an error instead of a panic.
    pub fn load() -> Result<Definitions, DefinitionsError> {
        // Structure definitions and terminology are independent: parse them in parallel.
        let (types, terminology) = std::thread::scope(|scope| {
            let terminology = scope.spawn(load_terminology);
            let types = load_types();
            let terminology = terminology
                .join()
                .unwrap_or_else(|_| Err(DefinitionsError::Invalid("loader thread".into())));
            (types, terminology)
        });
        let (value_sets, code_systems) = terminology?;
        let types = types?;
        Ok(Definitions::assemble(types, value_sets, code_systems))
    }

    /// The type called `name` (`Observation`, `Quantity`, `dateTime`, `Resource`, ...).
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.type_index.get(name).map(|&i| &self.types[i as usize])
    }

    /// All types, in load order (datatypes first, then resources).
    pub fn types(&self) -> impl Iterator<Item = &TypeDef> {
        self.types.iter()
    }

    /// The concrete (non-abstract) R4 resource types, sorted.
    pub fn resource_types(&self) -> &[String] {
        &self.resource_types
    }

    /// True for a concrete R4 resource type (`Patient`; not `DomainResource`).
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types
            .binary_search_by(|t| t.as_str().cmp(name))
            .is_ok()
    }

    /// True for the 20 primitive types (`string`, `dateTime`, `xhtml`, ...).
    pub fn is_primitive_type(&self, name: &str) -> bool {
        self.type_def(name)
            .is_some_and(|t| t.kind == TypeKind::PrimitiveType)
    }

    /// The anchored lexical regex of a primitive type.
    pub fn primitive_regex(&self, name: &str) -> Option<&Regex> {
        self.type_def(name).and_then(|t| t.regex.as_ref())
    }

    /// The snapshot element with exactly this path, e.g. `Observation.component.value[x]`
    /// or `Questionnaire.item.item`. Paths do not cross into datatypes; use
    /// [`Definitions::node_at`] for `Observation.valueQuantity.value`.
    pub fn element(&self, path: &str) -> Option<&ElementDef> {
        let type_name = path.split('.').next()?;
        self.type_def(type_name)?.element(path)
    }

    /// The navigation root of a type.
    pub fn root(&self, type_name: &str) -> Option<Node<'_>> {
        let ty = self.type_def(type_name)?;
        Some(Node {
            defs: self,
            owner: ty,
            element: ty.root(),
            type_code: &ty.name,
            value_type: Some(ty),
        })
    }

    /// Follows a dotted path of JSON property names from a type root, e.g.
    /// `Observation.component.valueQuantity.value` or `Questionnaire.item.item.linkId`.
    pub fn node_at(&self, path: &str) -> Option<Node<'_>> {
        let mut parts = path.split('.');
        let mut node = self.root(parts.next()?)?;
        for part in parts {
            node = node.child(part)?;
        }
        Some(node)
    }

    /// The codes of a value set (URL with or without `|version`), expanded on first use.
    /// `None` when the set cannot be expanded from the embedded terminology (SNOMED CT,
    /// UCUM, BCP-47/13, property filters, ...); callers should then skip the check.
    pub fn required_codes(&self, value_set_url: &str) -> Option<&CodeSet> {
        let url = strip_version(value_set_url);
        let vs = self.value_sets.get(url)?;
        vs.expansion
            .get_or_init(|| self.expand_value_set(url, 0))
            .as_ref()
    }

    fn assemble(
        mut types: Vec<TypeDef>,
        value_sets: FastMap<String, ValueSetDef>,
        code_systems: FastMap<String, CodeSystemDef>,
    ) -> Definitions {
        let mut type_index = FastMap::with_capacity_and_hasher(types.len(), Default::default());
        for (i, ty) in types.iter_mut().enumerate() {
            ty.index = i as u32;
            type_index.insert(ty.name.clone(), i as u32);
        }
        for ty in &mut types {
            for el in &mut ty.elements {
                for t in &mut el.types {
                    t.type_index = type_index.get(&t.code).copied();
                }
            }
        }
        let mut resource_types: Vec<String> = types
            .iter()
            .filter(|t| t.kind == TypeKind::Resource && !t.is_abstract && !t.is_constraint)
            .map(|t| t.name.clone())
            .collect();
        resource_types.sort();
        Definitions {
            types,
            type_index,
            resource_types,
            value_sets,
            code_systems,
        }
    }
}

// ---------------------------------------------------------------------------------------
// TypeDef / ElementDef / Node API
// ---------------------------------------------------------------------------------------

impl TypeDef {
    /// The root element (path = type name; for constraint profiles the base type's name).
    pub fn root(&self) -> &ElementDef {
        &self.elements[0]
    }

    /// All snapshot elements in snapshot order.
    pub fn elements(&self) -> &[ElementDef] {
        &self.elements
    }

    /// The element with exactly this snapshot path.
    pub fn element(&self, path: &str) -> Option<&ElementDef> {
        self.by_path.get(path).map(|&i| &self.elements[i as usize])
    }

    /// The inline children of `element` (an element of this type): the members of a
    /// backbone element, the top-level elements for the root, the referenced element's
    /// members for a `contentReference`. Empty for elements typed with a datatype.
    pub fn children<'a>(&'a self, element: &ElementDef) -> impl Iterator<Item = &'a ElementDef> {
        let source = element
            .child_source
            .and_then(|i| self.elements.get(i as usize));
        source
            .into_iter()
            .flat_map(|s| s.children.iter())
            .map(|&i| &self.elements[i as usize])
    }

    /// Top-level elements (children of the root).
    pub fn top_level_elements(&self) -> impl Iterator<Item = &ElementDef> {
        self.children(self.root())
    }

    /// Top-level elements marked `isSummary` (what `_summary=true` returns).
    pub fn summary_elements(&self) -> impl Iterator<Item = &ElementDef> {
        self.top_level_elements().filter(|e| e.is_summary)
    }

    /// Top-level elements with `min >= 1`, which servers return even when `_elements`
    /// does not ask for them.
    pub fn mandatory_elements(&self) -> impl Iterator<Item = &ElementDef> {
        self.top_level_elements().filter(|e| e.min > 0)
    }

    /// The top-level element behind a JSON property of this type: resolves choice variants
    /// (`valueQuantity` → `value[x]`) and primitive-extension siblings (`_birthDate`).
    pub fn top_level_element(&self, json_name: &str) -> Option<&ElementDef> {
        let name = json_name.strip_prefix('_').unwrap_or(json_name);
        let slot = self.root().lookup.get(name)?;
        Some(&self.elements[slot.element as usize])
    }
}

impl ElementDef {
    /// True when the element repeats (max > 1 or `*`): its JSON form is an array.
    pub fn is_array(&self) -> bool {
        self.max != Some(1) && self.max != Some(0)
    }

    /// The JSON property names this element can appear under: `name` for ordinary
    /// elements, `name` + capitalised type for each choice variant.
    pub fn json_names(&self) -> Vec<String> {
        if self.is_choice {
            self.types
                .iter()
                .map(|t| choice_name(&self.name, &t.code))
                .collect()
        } else {
            vec![self.name.clone()]
        }
    }

    /// The binding's value set when the binding strength is `required`.
    pub fn required_value_set(&self) -> Option<&str> {
        match &self.binding {
            Some(Binding {
                strength: BindingStrength::Required,
                value_set: Some(vs),
            }) => Some(vs),
            _ => None,
        }
    }

    /// Position of the element in its type's snapshot.
    pub fn index(&self) -> usize {
        self.index as usize
    }
}

impl<'a> Node<'a> {
    /// The child reached through JSON property `json_name` (no `_` prefix; strip it for
    /// primitive extensions). Returns `None` for unknown names.
    ///
    /// Children come from the element itself for backbone elements and roots, from the
    /// referenced element for `contentReference`s, and otherwise from the root of the
    /// node's type (so `Observation.valueQuantity` continues into `Quantity`).
    pub fn child(&self, json_name: &str) -> Option<Node<'a>> {
        let (owner, parent) = self.children_source()?;
        let slot = parent.lookup.get(json_name)?;
        Some(self.defs.node_for(owner, slot))
    }

    /// All children as nodes, one per choice variant, in snapshot order.
    pub fn children(&self) -> Vec<Node<'a>> {
        let Some((owner, parent)) = self.children_source() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &ci in &parent.children {
            let element = &owner.elements[ci as usize];
            let variants = element.types.len().max(1);
            for ti in 0..variants {
                out.push(self.defs.node_for(
                    owner,
                    &ChildSlot {
                        element: ci,
                        type_index: ti as u16,
                    },
                ));
            }
        }
        out
    }

    /// The child elements (not expanded per choice type).
    pub fn child_elements(&self) -> Vec<&'a ElementDef> {
        self.child_elements_iter().collect()
    }

    /// The child elements with `min >= 1`, without allocating.
    pub fn required_child_elements(&self) -> impl Iterator<Item = &'a ElementDef> + 'a {
        let source = self.children_source();
        source.into_iter().flat_map(|(owner, parent)| {
            parent
                .required_children
                .iter()
                .map(move |&i| &owner.elements[i as usize])
        })
    }

    /// Like [`Node::child_elements`], without allocating.
    pub fn child_elements_iter(&self) -> impl Iterator<Item = &'a ElementDef> + 'a {
        let source = self.children_source();
        source.into_iter().flat_map(|(owner, parent)| {
            parent
                .children
                .iter()
                .map(move |&i| &owner.elements[i as usize])
        })
    }

    /// True when values here are FHIR primitives (JSON string/number/boolean).
    pub fn is_primitive(&self) -> bool {
        self.value_type
            .is_some_and(|t| t.kind == TypeKind::PrimitiveType)
    }

    /// The primitive type of values here, if primitive.
    pub fn primitive(&self) -> Option<PrimitiveType> {
        self.value_type.and_then(|t| t.primitive)
    }

    /// True when values here are resources (`contained`, `Bundle.entry.resource`), whose
    /// actual type is given by their `resourceType`.
    pub fn is_resource(&self) -> bool {
        self.value_type
            .is_some_and(|t| t.kind == TypeKind::Resource)
    }

    /// The model this node belongs to.
    pub fn definitions(&self) -> &'a Definitions {
        self.defs
    }

    /// The element holding the children of this node and the type that owns it.
    fn children_source(&self) -> Option<(&'a TypeDef, &'a ElementDef)> {
        if let Some(src) = self.element.child_source {
            return Some((self.owner, &self.owner.elements[src as usize]));
        }
        let ty = self.value_type?;
        let root = ty.root();
        root.child_source.map(|_| (ty, root))
    }
}

impl Definitions {
    fn node_for<'a>(&'a self, owner: &'a TypeDef, slot: &ChildSlot) -> Node<'a> {
        let element = &owner.elements[slot.element as usize];
        let type_ref = element.types.get(slot.type_index as usize);
        Node {
            defs: self,
            owner,
            element,
            type_code: type_ref.map_or("", |t| t.code.as_str()),
            value_type: type_ref
                .and_then(|t| t.type_index)
                .map(|i| &self.types[i as usize]),
        }
    }
}

/// JSON name of a choice variant: `value` + `Quantity` → `valueQuantity`.
pub fn choice_name(base: &str, type_code: &str) -> String {
    let mut s = String::with_capacity(base.len() + type_code.len());
    s.push_str(base);
    let mut chars = type_code.chars();
    if let Some(first) = chars.next() {
        s.extend(first.to_uppercase());
        s.push_str(chars.as_str());
    }
    s
}

/// A small, fast, non-cryptographic hasher (FxHash) for the hot lookup tables: keys are
/// element names and codes from the embedded definitions, so DoS-resistant hashing is not
/// needed, and SipHash was a fifth of validation time.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
type FastSet<T> = HashSet<T, BuildHasherDefault<FxHasher>>;

/// Removes a `|version` suffix from a canonical URL.
pub fn strip_version(url: &str) -> &str {
    url.split_once('|').map_or(url, |(u, _)| u)
}

// ---------------------------------------------------------------------------------------
// Loading: raw serde shapes (only the fields we use)
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct RawBundle<T> {
    #[serde(default = "Vec::new")]
    entry: Vec<RawEntry<T>>,
}

#[derive(Deserialize)]
struct RawEntry<T> {
    resource: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStructureDefinition {
    resource_type: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    url: String,
    /// A string for StructureDefinitions, but other resources in the bundles use the name
    /// differently (`OperationDefinition.kind`), hence the lenient type.
    #[serde(default)]
    kind: Option<serde_json::Value>,
    #[serde(default, rename = "abstract")]
    is_abstract: Option<serde_json::Value>,
    base_definition: Option<String>,
    derivation: Option<String>,
    fhir_version: Option<String>,
    snapshot: Option<RawSnapshot>,
}

#[derive(Deserialize)]
struct RawSnapshot {
    element: Vec<RawElement>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawElement {
    path: String,
    min: Option<u32>,
    max: Option<String>,
    base: Option<RawBase>,
    #[serde(default, rename = "type")]
    types: Vec<RawType>,
    content_reference: Option<String>,
    binding: Option<RawBinding>,
    #[serde(default)]
    is_summary: bool,
    #[serde(default)]
    is_modifier: bool,
    max_length: Option<u32>,
    #[serde(default)]
    constraint: Vec<RawConstraint>,
}

#[derive(Deserialize)]
struct RawBase {
    path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawType {
    code: String,
    #[serde(default)]
    target_profile: Vec<String>,
    #[serde(default)]
    profile: Vec<String>,
    #[serde(default)]
    extension: Vec<RawExtension>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawExtension {
    url: String,
    value_url: Option<String>,
    value_string: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBinding {
    strength: String,
    value_set: Option<String>,
}

#[derive(Deserialize)]
struct RawConstraint {
    #[serde(default)]
    key: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    human: String,
    expression: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTerminology {
    resource_type: String,
    url: Option<String>,
    content: Option<String>,
    compose: Option<Compose>,
    #[serde(default)]
    concept: Vec<Concept>,
}

/// `ValueSet.compose`.
#[derive(Deserialize, Debug, Default)]
struct Compose {
    #[serde(default)]
    include: Vec<ComposeInclude>,
    #[serde(default)]
    exclude: Vec<ComposeInclude>,
}

/// `ValueSet.compose.include` / `exclude`.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct ComposeInclude {
    system: Option<String>,
    #[serde(default)]
    concept: Vec<IncludeConcept>,
    #[serde(default)]
    filter: Vec<ComposeFilter>,
    #[serde(default)]
    value_set: Vec<String>,
}

#[derive(Deserialize, Debug)]
struct IncludeConcept {
    code: String,
}

#[derive(Deserialize, Debug)]
struct ComposeFilter {
    #[serde(default)]
    property: String,
    #[serde(default)]
    op: String,
    #[serde(default)]
    value: String,
}

/// `CodeSystem.concept`, kept as the tree the CodeSystem defines (for is-a filters).
#[derive(Deserialize, Debug)]
struct Concept {
    #[serde(default)]
    code: String,
    #[serde(default)]
    concept: Vec<Concept>,
}

#[derive(Debug)]
struct ValueSetDef {
    compose: Option<Compose>,
    expansion: OnceLock<Option<CodeSet>>,
}

#[derive(Debug)]
struct CodeSystemDef {
    /// `CodeSystem.content`: only `complete` systems can be enumerated.
    complete: bool,
    concepts: Vec<Concept>,
}

fn gunzip(file: &'static str, gz: &[u8]) -> Result<Vec<u8>, DefinitionsError> {
    let mut out = Vec::with_capacity(gz.len() * 10);
    GzDecoder::new(gz)
        .read_to_end(&mut out)
        .map_err(|source| DefinitionsError::Decompress { file, source })?;
    Ok(out)
}

fn parse_bundle<T: serde::de::DeserializeOwned>(
    file: &'static str,
    gz: &[u8],
) -> Result<Vec<T>, DefinitionsError> {
    let bytes = gunzip(file, gz)?;
    let bundle: RawBundle<T> = serde_json::from_slice(&bytes)
        .map_err(|source| DefinitionsError::Parse { file, source })?;
    Ok(bundle.entry.into_iter().map(|e| e.resource).collect())
}

/// Loads all StructureDefinitions (datatypes first, then resources).
fn load_types() -> Result<Vec<TypeDef>, DefinitionsError> {
    let (datatypes, resources) = std::thread::scope(|scope| {
        let datatypes = scope.spawn(|| {
            parse_bundle::<RawStructureDefinition>("profiles-types.json", PROFILES_TYPES_GZ)
        });
        let resources = parse_bundle::<RawStructureDefinition>(
            "profiles-resources.json",
            PROFILES_RESOURCES_GZ,
        );
        let datatypes = datatypes
            .join()
            .unwrap_or_else(|_| Err(DefinitionsError::Invalid("loader thread".into())));
        (datatypes, resources)
    });
    let mut types = Vec::new();
    for raw in datatypes?.into_iter().chain(resources?) {
        if let Some(ty) = build_type(raw)? {
            types.push(ty);
        }
    }
    Ok(types)
}

/// Loads ValueSets and CodeSystems from `valuesets.json` and `v3-codesystems.json`.
#[allow(clippy::type_complexity)]
fn load_terminology(
) -> Result<(FastMap<String, ValueSetDef>, FastMap<String, CodeSystemDef>), DefinitionsError> {
    let mut value_sets = FastMap::default();
    let mut code_systems = FastMap::default();
    let files: [(&'static str, &[u8]); 2] = [
        ("valuesets.json", VALUESETS_GZ),
        ("v3-codesystems.json", V3_CODESYSTEMS_GZ),
    ];
    for (file, gz) in files {
        for raw in parse_bundle::<RawTerminology>(file, gz)? {
            let Some(url) = raw.url else { continue };
            match raw.resource_type.as_str() {
                "ValueSet" => {
                    value_sets.insert(
                        url,
                        ValueSetDef {
                            compose: raw.compose,
                            expansion: OnceLock::new(),
                        },
                    );
                }
                "CodeSystem" => {
                    code_systems.insert(
                        url,
                        CodeSystemDef {
                            complete: raw.content.as_deref() == Some("complete"),
                            concepts: raw.concept,
                        },
                    );
                }
                _ => {}
            }
        }
    }
    Ok((value_sets, code_systems))
}

fn parse_kind(kind: Option<&serde_json::Value>) -> Option<TypeKind> {
    Some(match kind?.as_str()? {
        "primitive-type" => TypeKind::PrimitiveType,
        "complex-type" => TypeKind::ComplexType,
        "resource" => TypeKind::Resource,
        "logical" => TypeKind::Logical,
        _ => return None,
    })
}

/// Turns a snapshot into a TypeDef; `None` for non-StructureDefinitions and definitions
/// of other FHIR versions.
fn build_type(raw: RawStructureDefinition) -> Result<Option<TypeDef>, DefinitionsError> {
    if raw.resource_type != "StructureDefinition"
        || raw
            .fhir_version
            .as_deref()
            .is_some_and(|v| v != FHIR_VERSION)
    {
        return Ok(None);
    }
    let (Some(kind), Some(snapshot)) = (parse_kind(raw.kind.as_ref()), raw.snapshot) else {
        return Ok(None);
    };
    let primitive = if kind == TypeKind::PrimitiveType {
        PrimitiveType::from_name(&raw.id)
    } else {
        None
    };
    let mut regex_source = None;
    let mut elements = Vec::with_capacity(snapshot.element.len());
    for (i, el) in snapshot.element.into_iter().enumerate() {
        if primitive.is_some() && el.path.ends_with(".value") {
            regex_source = el
                .types
                .iter()
                .flat_map(|t| &t.extension)
                .find(|e| e.url == REGEX_EXTENSION)
                .and_then(|e| e.value_string.clone());
        }
        elements.push(build_element(el, i as u32, primitive.is_some()));
    }
    if elements.is_empty() {
        return Err(DefinitionsError::Invalid(format!(
            "{} has no elements",
            raw.id
        )));
    }
    let regex = match primitive {
        Some(p) => primitive_regex(p, regex_source.as_deref())?,
        None => None,
    };
    let mut ty = TypeDef {
        name: raw.id,
        url: raw.url,
        kind,
        is_abstract: raw.is_abstract.and_then(|v| v.as_bool()).unwrap_or(false),
        base: raw
            .base_definition
            .as_deref()
            .and_then(|b| b.rsplit('/').next())
            .map(str::to_string),
        is_constraint: raw.derivation.as_deref() == Some("constraint"),
        primitive,
        regex,
        by_path: FastMap::with_capacity_and_hasher(elements.len(), Default::default()),
        elements,
        index: 0,
    };
    link_elements(&mut ty)?;
    Ok(Some(ty))
}

fn build_element(el: RawElement, index: u32, in_primitive: bool) -> ElementDef {
    let last = el.path.rsplit('.').next().unwrap_or(&el.path);
    let is_choice = last.ends_with("[x]");
    let name = last.trim_end_matches("[x]").to_string();
    let base_path = el.base.map(|b| b.path).unwrap_or_else(|| el.path.clone());
    let is_primitive_value = in_primitive && el.path.matches('.').count() == 1 && name == "value";
    let types = el
        .types
        .into_iter()
        .map(|t| TypeRef {
            code: normalize_type_code(&t, &base_path, is_primitive_value),
            target_profiles: t.target_profile,
            profiles: t.profile,
            type_index: None,
        })
        .collect();
    ElementDef {
        name,
        base_path,
        min: el.min.unwrap_or(0),
        max: match el.max.as_deref() {
            Some("*") | None => None,
            Some(n) => n.parse().ok(),
        },
        types,
        content_reference: el
            .content_reference
            .map(|c| c.trim_start_matches('#').to_string()),
        binding: el.binding.and_then(|b| {
            let strength = match b.strength.as_str() {
                "required" => BindingStrength::Required,
                "extensible" => BindingStrength::Extensible,
                "preferred" => BindingStrength::Preferred,
                "example" => BindingStrength::Example,
                _ => return None,
            };
            Some(Binding {
                strength,
                value_set: b.value_set.map(|v| strip_version(&v).to_string()),
            })
        }),
        is_summary: el.is_summary,
        is_modifier: el.is_modifier,
        is_choice,
        max_length: el.max_length,
        constraints: el
            .constraint
            .into_iter()
            .map(|c| Constraint {
                key: c.key,
                severity: c.severity,
                human: c.human,
                expression: c.expression,
            })
            .collect(),
        path: el.path,
        children: Vec::new(),
        child_source: None,
        lookup: FastMap::default(),
        required_children: Vec::new(),
        index,
    }
}

/// Element ids, `Extension.url` and primitive values are typed with FHIRPath system types
/// in R4; map them to the FHIR type named by the `structuredefinition-fhir-type`
/// extension (`string`, `uri`), keep `System.X` for the value of primitives, and make
/// `Resource.id` an `id` (R4 types it as `string`, but the spec requires id syntax).
fn normalize_type_code(t: &RawType, base_path: &str, is_primitive_value: bool) -> String {
    let Some(system) = t.code.strip_prefix(FHIRPATH_SYSTEM_PREFIX) else {
        return t.code.clone();
    };
    if is_primitive_value {
        return system.to_string();
    }
    if base_path == "Resource.id" {
        return "id".to_string();
    }
    t.extension
        .iter()
        .find(|e| e.url == FHIR_TYPE_EXTENSION)
        .and_then(|e| e.value_url.clone())
        .unwrap_or_else(|| "string".to_string())
}

/// Builds the path index, parent→children lists, contentReference targets and the JSON
/// name lookup tables of one type.
fn link_elements(ty: &mut TypeDef) -> Result<(), DefinitionsError> {
    for (i, el) in ty.elements.iter().enumerate() {
        ty.by_path.insert(el.path.clone(), i as u32);
    }
    for i in 1..ty.elements.len() {
        let path = &ty.elements[i].path;
        let Some((parent_path, _)) = path.rsplit_once('.') else {
            continue;
        };
        let parent = *ty.by_path.get(parent_path).ok_or_else(|| {
            DefinitionsError::Invalid(format!("{}: no parent for {path}", ty.name))
        })?;
        ty.elements[parent as usize].children.push(i as u32);
    }
    for i in 0..ty.elements.len() {
        if !ty.elements[i].children.is_empty() {
            ty.elements[i].child_source = Some(i as u32);
        }
    }
    for i in 0..ty.elements.len() {
        let Some(target_path) = ty.elements[i].content_reference.clone() else {
            continue;
        };
        let target = *ty.by_path.get(&target_path).ok_or_else(|| {
            DefinitionsError::Invalid(format!("{}: bad contentReference {target_path}", ty.name))
        })?;
        let target_types = ty.elements[target as usize].types.clone();
        let target_binding = ty.elements[target as usize].binding.clone();
        let el = &mut ty.elements[i];
        el.child_source = Some(target);
        if el.types.is_empty() {
            el.types = target_types;
        }
        if el.binding.is_none() {
            el.binding = target_binding;
        }
    }
    for i in 0..ty.elements.len() {
        if ty.elements[i].children.is_empty() {
            continue;
        }
        let mut lookup = FastMap::with_capacity_and_hasher(
            ty.elements[i].children.len(),
            BuildHasherDefault::default(),
        );
        for &ci in &ty.elements[i].children {
            let child = &ty.elements[ci as usize];
            if child.is_choice {
                for (ti, t) in child.types.iter().enumerate() {
                    lookup.insert(
                        choice_name(&child.name, &t.code).into_boxed_str(),
                        ChildSlot {
                            element: ci,
                            type_index: ti as u16,
                        },
                    );
                }
            } else {
                lookup.insert(
                    child.name.clone().into_boxed_str(),
                    ChildSlot {
                        element: ci,
                        type_index: 0,
                    },
                );
            }
        }
        ty.elements[i].lookup = lookup;
        ty.elements[i].required_children = ty.elements[i]
            .children
            .iter()
            .copied()
            .filter(|&ci| ty.elements[ci as usize].min > 0)
            .collect();
    }
    Ok(())
}

/// The anchored lexical regex of a primitive. The spec's regexes are XML Schema regexes,
/// where `\s` means only space, tab, CR and LF; Rust's `\s`/`\S` are Unicode-aware (a
/// no-break space would count as whitespace), so the string-like patterns are written out
/// with explicit `[ \t\r\n]` classes. Others are hand-written where the published one is
/// missing or awkward for a full-match check:
/// * `string`/`markdown`: `[ \r\n\t\S]+` in XML Schema means "any non-empty text";
/// * `base64Binary`: standard padded base64 with optional whitespace between groups;
/// * `positiveInt`/`unsignedInt`/`integer`: grouped so that alternation is anchored;
/// * `xhtml` has no lexical regex (checked structurally by the validator).
///
/// The date/time regexes are used as published (they contain no whitespace classes).
fn primitive_regex(
    primitive: PrimitiveType,
    published: Option<&str>,
) -> Result<Option<Regex>, DefinitionsError> {
    use PrimitiveType::*;
    let source: &str = match primitive {
        Xhtml => return Ok(None),
        Base64Binary => {
            r"(?:[ \t\r\n]*[0-9a-zA-Z+/]{4})*(?:[ \t\r\n]*[0-9a-zA-Z+/]{2}==|[ \t\r\n]*[0-9a-zA-Z+/]{3}=)?[ \t\r\n]*"
        }
        Integer => r"-?(?:0|[1-9][0-9]*)",
        UnsignedInt => r"(?:0|[1-9][0-9]*)",
        PositiveInt => r"[1-9][0-9]*",
        Id => r"[A-Za-z0-9\-\.]{1,64}",
        Boolean => r"true|false",
        Decimal => r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?",
        Uri | Url | Canonical => r"[^ \t\r\n]*",
        Code => r"[^ \t\r\n]+(?:[ \t\r\n][^ \t\r\n]+)*",
        String | Markdown => r"(?s).+",
        Oid => r"urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+",
        Uuid => r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        Date | DateTime | Instant | Time => match published {
            Some(p) => p,
            None => {
                return Err(DefinitionsError::Invalid(format!(
                    "{} has no regex",
                    primitive.name()
                )))
            }
        },
    };
    Regex::new(&format!("^(?:{source})$"))
        .map(Some)
        .map_err(|e| DefinitionsError::Invalid(format!("regex of {}: {e}", primitive.name())))
}

// ---------------------------------------------------------------------------------------
// Value set expansion
// ---------------------------------------------------------------------------------------

impl Definitions {
    /// Expands a value set from its `compose`; `None` when any part cannot be enumerated.
    /// Imports are expanded recursively (uncached, bounded depth) so that the `OnceLock`
    /// of the requested set is never re-entered.
    fn expand_value_set(&self, url: &str, depth: u32) -> Option<CodeSet> {
        if depth > MAX_VALUESET_DEPTH {
            return None;
        }
        let compose = self.value_sets.get(url)?.compose.as_ref()?;
        if compose.include.is_empty() {
            return None;
        }
        let mut set = CodeSet::default();
        for include in &compose.include {
            set.extend(&self.expand_include(include, depth)?);
        }
        for exclude in &compose.exclude {
            let excluded = self.expand_include(exclude, depth)?;
            set.retain(|s, c| !excluded.contains(s, c));
        }
        Some(set)
    }

    /// One `include`: the system part (all codes / listed concepts / filters), intersected
    /// with every imported value set.
    fn expand_include(&self, include: &ComposeInclude, depth: u32) -> Option<CodeSet> {
        let mut set = match &include.system {
            Some(system) => Some(self.expand_system_part(system, include)?),
            None => None,
        };
        for vs in &include.value_set {
            let imported = self.expand_value_set(strip_version(vs), depth + 1)?;
            set = Some(match set {
                None => imported,
                Some(mut s) => {
                    s.retain(|sys, c| imported.contains(sys, c));
                    s
                }
            });
        }
        set
    }

    fn expand_system_part(&self, system: &str, include: &ComposeInclude) -> Option<CodeSet> {
        let mut set = CodeSet::default();
        if !include.concept.is_empty() {
            for c in &include.concept {
                set.insert(system, &c.code);
            }
            return Some(set);
        }
        let cs = self.code_systems.get(system)?;
        if include.filter.is_empty() {
            if !cs.complete {
                return None;
            }
            walk_concepts(&cs.concepts, &mut |c| set.insert(system, c));
            return Some(set);
        }
        let mut result: Option<CodeSet> = None;
        for filter in &include.filter {
            let part = filter_concepts(system, cs, filter)?;
            result = Some(match result {
                None => part,
                Some(mut r) => {
                    r.retain(|s, c| part.contains(s, c));
                    r
                }
            });
        }
        result
    }
}

/// Applies a `concept` hierarchy filter (`is-a`, `descendent-of`, `is-not-a`); other
/// filters (property `=`, regex) are not supported.
fn filter_concepts(system: &str, cs: &CodeSystemDef, filter: &ComposeFilter) -> Option<CodeSet> {
    if filter.property != "concept" {
        return None;
    }
    let mut set = CodeSet::default();
    match filter.op.as_str() {
        "is-a" | "descendent-of" => {
            let node = find_concept(&cs.concepts, &filter.value)?;
            if filter.op == "is-a" {
                set.insert(system, &node.code);
            }
            walk_concepts(&node.concept, &mut |c| set.insert(system, c));
        }
        "is-not-a" => {
            if !cs.complete {
                return None;
            }
            let mut excluded = CodeSet::default();
            if let Some(node) = find_concept(&cs.concepts, &filter.value) {
                excluded.insert(system, &node.code);
                walk_concepts(&node.concept, &mut |c| excluded.insert(system, c));
            }
            walk_concepts(&cs.concepts, &mut |c| {
                if !excluded.contains(system, c) {
                    set.insert(system, c)
                }
            });
        }
        _ => return None,
    }
    Some(set)
}

fn walk_concepts(concepts: &[Concept], f: &mut dyn FnMut(&str)) {
    for c in concepts {
        f(&c.code);
        walk_concepts(&c.concept, f);
    }
}

fn find_concept<'a>(concepts: &'a [Concept], code: &str) -> Option<&'a Concept> {
    for c in concepts {
        if c.code == code {
            return Some(c);
        }
        if let Some(found) = find_concept(&c.concept, code) {
            return Some(found);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn defs() -> &'static Definitions {
        Definitions::get()
    }

    #[test]
    fn resource_types_are_the_r4_list() {
        let d = defs();
        let types = d.resource_types();
        assert_eq!(types.len(), 146, "R4 4.0.1 has 146 concrete resource types");
        assert!(types.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert!(d.is_resource_type("Patient"));
        assert!(d.is_resource_type("Parameters"));
        assert!(!d.is_resource_type("DomainResource"));
        assert!(!d.is_resource_type("Resource"));
        assert!(
            !d.is_resource_type("SubscriptionStatus"),
            "R4B-only type is excluded"
        );
        assert!(!d.is_resource_type("Quantity"));
    }

    #[test]
    fn type_kinds_and_bases() {
        let d = defs();
        let obs = d.type_def("Observation").unwrap();
        assert_eq!(obs.kind, TypeKind::Resource);
        assert_eq!(obs.base.as_deref(), Some("DomainResource"));
        assert!(!obs.is_abstract);
        assert!(d.type_def("DomainResource").unwrap().is_abstract);
        assert!(d.type_def("Resource").unwrap().is_abstract);
        assert_eq!(d.type_def("Quantity").unwrap().kind, TypeKind::ComplexType);
        let dt = d.type_def("dateTime").unwrap();
        assert_eq!(dt.kind, TypeKind::PrimitiveType);
        assert_eq!(dt.primitive, Some(PrimitiveType::DateTime));
        assert!(d.is_primitive_type("xhtml"));
        let sq = d.type_def("SimpleQuantity").unwrap();
        assert!(sq.is_constraint);
        assert_eq!(sq.base.as_deref(), Some("Quantity"));
    }

    #[test]
    fn element_by_path() {
        let d = defs();
        let e = d.element("Observation.component.value[x]").unwrap();
        assert!(e.is_choice);
        assert_eq!(e.name, "value");
        assert_eq!(e.max, Some(1));
        assert!(e.types.iter().any(|t| t.code == "Quantity"));
        let status = d.element("Observation.status").unwrap();
        assert_eq!(status.min, 1);
        assert!(status.is_summary && status.is_modifier);
        let b = status.binding.as_ref().unwrap();
        assert_eq!(b.strength, BindingStrength::Required);
        assert_eq!(
            b.value_set.as_deref(),
            Some("http://hl7.org/fhir/ValueSet/observation-status")
        );
        let subject = d.element("Observation.subject").unwrap();
        assert_eq!(subject.types[0].code, "Reference");
        assert!(subject.types[0]
            .target_profiles
            .iter()
            .any(|p| p.ends_with("/Patient")));
        assert_eq!(d.element("Observation.identifier").unwrap().max, None);
        assert_eq!(d.element("Patient.id").unwrap().types[0].code, "id");
        assert_eq!(d.element("Element.id").unwrap().types[0].code, "string");
        assert_eq!(d.element("Extension.url").unwrap().types[0].code, "uri");
        assert_eq!(
            d.element("string.value").unwrap().types[0].code,
            "System.String"
        );
    }

    #[test]
    fn navigation_through_choice_and_datatypes() {
        let d = defs();
        let obs = d.root("Observation").unwrap();
        let vq = obs.child("valueQuantity").unwrap();
        assert_eq!(vq.element.path, "Observation.value[x]");
        assert_eq!(vq.type_code, "Quantity");
        let v = vq.child("value").unwrap();
        assert_eq!(v.element.path, "Quantity.value");
        assert_eq!(v.primitive(), Some(PrimitiveType::Decimal));
        assert!(obs.child("value").is_none());
        assert!(obs.child("valueFoo").is_none());
        let c = d
            .node_at("Observation.component.valueCodeableConcept.coding.system")
            .unwrap();
        assert_eq!(c.element.path, "Coding.system");
        assert_eq!(c.type_code, "uri");
        let comp = obs.child("component").unwrap();
        assert_eq!(comp.type_code, "BackboneElement");
        assert!(comp.child("code").is_some());
        assert!(comp.child("modifierExtension").is_some());
        let ext = d.node_at("Patient.extension.valueAddress.city").unwrap();
        assert_eq!(ext.element.path, "Address.city");
        let contained = obs.child("contained").unwrap();
        assert!(contained.is_resource());
    }

    #[test]
    fn navigation_through_content_reference() {
        let d = defs();
        let n = d.node_at("Questionnaire.item.item.item.linkId").unwrap();
        assert_eq!(n.element.path, "Questionnaire.item.linkId");
        let nested = d.node_at("Questionnaire.item.item").unwrap();
        assert_eq!(
            nested.element.content_reference.as_deref(),
            Some("Questionnaire.item")
        );
        assert_eq!(nested.type_code, "BackboneElement");
        let qr = d.node_at("QuestionnaireResponse.item.answer.item.answer.valueString");
        assert!(qr.is_some());
        let plan = d.node_at("PlanDefinition.action.action.title").unwrap();
        assert_eq!(plan.element.path, "PlanDefinition.action.title");
    }

    #[test]
    fn children_expand_choices() {
        let d = defs();
        let q = d.root("Quantity").unwrap();
        let names: Vec<&str> = q
            .children()
            .iter()
            .map(|n| n.element.name.as_str())
            .collect();
        assert!(names.contains(&"value") && names.contains(&"system"));
        let comp = d.node_at("Observation.component").unwrap();
        let variants = comp
            .children()
            .iter()
            .filter(|n| n.element.is_choice)
            .count();
        assert_eq!(variants, 11);
        assert_eq!(
            d.element("Observation.component.value[x]")
                .unwrap()
                .json_names()
                .len(),
            11
        );
    }

    #[test]
    fn primitive_regexes() {
        let d = defs();
        let re = |t: &str| d.primitive_regex(t).unwrap();
        assert!(re("id").is_match("abc-1.2"));
        assert!(!re("id").is_match("abc_1"));
        assert!(!re("id").is_match(&"a".repeat(65)));
        assert!(re("date").is_match("2020-02"));
        assert!(!re("date").is_match("2020-13"));
        assert!(re("dateTime").is_match("2020-01-01T10:00:00+01:00"));
        assert!(!re("dateTime").is_match("2020-01-01T10:00"));
        assert!(re("instant").is_match("2020-01-01T10:00:00.123Z"));
        assert!(!re("instant").is_match("2020-01-01T10:00:00"));
        assert!(re("time").is_match("23:59:59"));
        assert!(re("code").is_match("a b"));
        assert!(!re("code").is_match(" a"));
        assert!(re("uuid").is_match("urn:uuid:c757873d-ec9a-4326-a141-556f43239520"));
        assert!(re("oid").is_match("urn:oid:1.2.3"));
        assert!(re("base64Binary").is_match("aGVsbG8="));
        assert!(!re("base64Binary").is_match("aGVsbG8"));
        assert!(re("unsignedInt").is_match("0"));
        assert!(!re("positiveInt").is_match("0"));
        assert!(d.primitive_regex("xhtml").is_none());
    }

    #[test]
    fn required_value_sets_expand() {
        let d = defs();
        let status = d
            .required_codes("http://hl7.org/fhir/ValueSet/observation-status|4.0.1")
            .unwrap();
        assert!(status.contains_code("final"));
        assert!(status.contains("http://hl7.org/fhir/observation-status", "amended"));
        assert!(!status.contains_code("done"));
        assert_eq!(status.len(), 8);
        // Nested concepts of a complete CodeSystem are included.
        let types = d
            .required_codes("http://hl7.org/fhir/ValueSet/resource-types")
            .unwrap();
        assert!(types.contains_code("Patient"));
        // Imported value sets: all-types = data-types + resource-types.
        let all = d
            .required_codes("http://hl7.org/fhir/ValueSet/all-types")
            .unwrap();
        assert!(all.contains_code("Quantity") && all.contains_code("Patient"));
        // UCUM / BCP-13 cannot be enumerated.
        assert!(d
            .required_codes("http://hl7.org/fhir/ValueSet/mimetypes")
            .is_none());
        assert!(d.required_codes("http://example.org/none").is_none());
    }

    #[test]
    fn is_a_filter_expands() {
        let d = defs();
        // v3 ActEncounterCode is defined with an is-a filter on a nested v3 CodeSystem.
        let set = d
            .required_codes("http://terminology.hl7.org/ValueSet/v3-ActEncounterCode")
            .unwrap();
        assert!(set.contains("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"));
        assert!(!set.contains_code("_ActAccountCode"));
    }

    #[test]
    fn summary_and_mandatory() {
        let d = defs();
        let obs = d.type_def("Observation").unwrap();
        let summary: Vec<&str> = obs.summary_elements().map(|e| e.name.as_str()).collect();
        assert!(summary.contains(&"status") && summary.contains(&"code"));
        assert!(summary.contains(&"id") && summary.contains(&"meta"));
        assert!(!summary.contains(&"note"));
        let mandatory: Vec<&str> = obs.mandatory_elements().map(|e| e.name.as_str()).collect();
        assert_eq!(mandatory, vec!["status", "code"]);
        assert_eq!(
            obs.top_level_element("_effectiveDateTime").unwrap().path,
            "Observation.effective[x]"
        );
        assert!(obs.top_level_element("bogus").is_none());
    }
}
