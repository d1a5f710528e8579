//! The search parameter registry: every R4 SearchParameter, per resource type, with its
//! FHIRPath expression compiled and restricted to that resource type.
//!
//! The official definitions are embedded (gzipped) and loaded once per process by
//! [`SearchParams::get`]. Registries with custom SearchParameters are built with
//! [`SearchParams::with_custom`] / [`SearchParams::add_resource`].

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, OnceLock};

use flate2::read::GzDecoder;
use serde::Deserialize;
use serde_json::Value;

use crate::fhir::definitions::Definitions;
use crate::fhirpath::{self, Ast, Expr};

const SEARCH_PARAMETERS_GZ: &[u8] =
    include_bytes!("../../fhir-profiles/r4/search-parameters.json.gz");

/// `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn from_code(code: &str) -> Option<ParamType> {
        Some(match code {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }

    /// The modifiers the R4 search specification allows for this type; used when a
    /// SearchParameter does not list its own (the official R4 ones never do).
    pub fn default_modifiers(self) -> &'static [&'static str] {
        match self {
            ParamType::String => &["missing", "exact", "contains"],
            ParamType::Token => &[
                "missing", "text", "not", "above", "below", "in", "not-in", "of-type",
            ],
            ParamType::Reference => &["missing", "type", "identifier", "above", "below"],
            ParamType::Uri => &["missing", "above", "below"],
            _ => &["missing"],
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One component of a composite parameter.
#[derive(Debug, Clone)]
pub struct Component {
    /// Canonical URL of the component's SearchParameter.
    pub definition: String,
    /// Expression evaluated relative to each node of the composite's main expression.
    pub expression: Expr,
    /// Type of the referenced SearchParameter (`None` when it is not in the registry).
    pub param_type: Option<ParamType>,
}

/// A search parameter as it applies to one resource type.
#[derive(Debug, Clone)]
pub struct SearchParamDef {
    /// Shared so index entries can carry it without copying.
    pub code: Arc<str>,
    pub url: String,
    pub param_type: ParamType,
    /// `SearchParameter.base` as declared (may list several types).
    pub base: Vec<String>,
    /// The expression restricted to the parts rooted in this resource type (or in
    /// `Resource`/`DomainResource`). `None` for parameters without one (`_text`,
    /// `_content`, `_query`), which the server implements specially.
    pub expression: Option<Expr>,
    /// Allowed target resource types of a reference parameter.
    pub targets: Vec<String>,
    /// Declared modifiers, or the specification's defaults for the type.
    pub modifiers: Vec<String>,
    /// Declared comparators (`eq`, `ne`, `gt`...); empty when none are declared.
    pub comparators: Vec<String>,
    pub components: Vec<Component>,
    /// Top-level element names the expression starts from (`subject` for
    /// `Observation.subject.where(...)`); when none is present in a resource the expression
    /// yields nothing and extraction skips it. `None` when that cannot be known statically.
    pub(crate) top_level: Option<Vec<String>>,
}

/// Errors building a registry.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("cannot read embedded search parameters: {0}")]
    Embedded(String),
    #[error("invalid SearchParameter: {0}")]
    Invalid(String),
    #[error("SearchParameter {code}: {source}")]
    Expression {
        code: String,
        source: fhirpath::Error,
    },
}

#[derive(Deserialize)]
struct RawBundle {
    #[serde(default)]
    entry: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    resource: RawSearchParameter,
}

/// The fields of a SearchParameter resource the registry uses.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct RawSearchParameter {
    #[serde(default)]
    resource_type: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    base: Vec<String>,
    #[serde(rename = "type", default)]
    kind: String,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    modifier: Vec<String>,
    #[serde(default)]
    comparator: Vec<String>,
    #[serde(default)]
    component: Vec<RawComponent>,
}

#[derive(Deserialize, Debug, Clone)]
struct RawComponent {
    #[serde(default)]
    definition: String,
    #[serde(default)]
    expression: String,
}

/// Parameters of one resource type, with a code index.
#[derive(Debug, Default, Clone)]
struct TypeParams {
    params: Vec<SearchParamDef>,
    by_code: HashMap<String, usize>,
}

/// A registry of search parameters by resource type.
#[derive(Debug, Clone, Default)]
pub struct SearchParams {
    by_type: HashMap<String, TypeParams>,
    /// Parameter type by canonical URL, to type composite components.
    types_by_url: HashMap<String, ParamType>,
}

static OFFICIAL: OnceLock<SearchParams> = OnceLock::new();

/// The registry in use when custom SearchParameters are installed (null: the official one).
static CURRENT: AtomicPtr<SearchParams> = AtomicPtr::new(std::ptr::null_mut());

impl SearchParams {
    /// The registry in use: the official R4 parameters plus the custom SearchParameter
    /// resources last [installed](SearchParams::install).
    ///
    /// # Panics
    /// Only if the embedded definitions are corrupt, which is a build defect.
    pub fn get() -> &'static SearchParams {
        let current = CURRENT.load(Ordering::Acquire);
        if current.is_null() {
            return SearchParams::official_ref();
        }
        // SAFETY: non-null pointers in CURRENT come from `Box::leak` in `install` and are
        // never freed, so they stay valid for the life of the process.
        unsafe { &*current }
    }

    /// The official R4 registry alone, built on first use.
    pub fn official_ref() -> &'static SearchParams {
        OFFICIAL.get_or_init(|| match SearchParams::official() {
            Ok(p) => p,
            Err(e) => panic!("embedded R4 search parameters are unusable: {e}"),
        })
    }

    /// Makes `registry` the one [`SearchParams::get`] returns. Searches and index writes
    /// in flight may still hold the previous one, so it is kept (leaked) rather than
    /// freed; installs happen only when SearchParameter resources change.
    pub fn install(registry: SearchParams) {
        let leaked: &'static mut SearchParams = Box::leak(Box::new(registry));
        CURRENT.store(leaked, Ordering::Release);
    }

    /// Builds a fresh registry holding the official R4 parameters.
    pub fn official() -> Result<SearchParams, ParamsError> {
        let mut json = Vec::with_capacity(SEARCH_PARAMETERS_GZ.len() * 20);
        GzDecoder::new(SEARCH_PARAMETERS_GZ)
            .read_to_end(&mut json)
            .map_err(|e| ParamsError::Embedded(e.to_string()))?;
        let bundle: RawBundle =
            serde_json::from_slice(&json).map_err(|e| ParamsError::Embedded(e.to_string()))?;
        let mut reg = SearchParams::default();
        let raws: Vec<RawSearchParameter> = bundle.entry.into_iter().map(|e| e.resource).collect();
        reg.add_raw(raws)?;
        Ok(reg)
    }

    /// The official parameters plus `custom` SearchParameter resources (which replace an
    /// official parameter with the same code on the same resource type).
    pub fn with_custom(custom: &[Value]) -> Result<SearchParams, ParamsError> {
        let mut reg = SearchParams::official_ref().clone();
        for r in custom {
            reg.add_resource(r)?;
        }
        Ok(reg)
    }

    /// A registry holding only the given SearchParameter resources.
    pub fn from_resources(resources: &[Value]) -> Result<SearchParams, ParamsError> {
        let mut reg = SearchParams::default();
        for r in resources {
            reg.add_resource(r)?;
        }
        Ok(reg)
    }

    /// Adds one SearchParameter resource (replacing same code + resource type).
    pub fn add_resource(&mut self, resource: &Value) -> Result<(), ParamsError> {
        let raw = RawSearchParameter::deserialize(resource)
            .map_err(|e| ParamsError::Invalid(e.to_string()))?;
        if raw.resource_type != "SearchParameter" {
            return Err(ParamsError::Invalid(format!(
                "expected a SearchParameter, got {:?}",
                raw.resource_type
            )));
        }
        self.add_raw(vec![raw])
    }

    fn add_raw(&mut self, raws: Vec<RawSearchParameter>) -> Result<(), ParamsError> {
        // Register URL → type first so composites can type components defined later.
        for raw in &raws {
            let kind = ParamType::from_code(&raw.kind).ok_or_else(|| {
                ParamsError::Invalid(format!("{}: unknown type {:?}", raw.code, raw.kind))
            })?;
            if raw.code.is_empty() || raw.base.is_empty() {
                return Err(ParamsError::Invalid(format!(
                    "{}: code and base are required",
                    raw.url
                )));
            }
            if !raw.url.is_empty() {
                self.types_by_url.insert(raw.url.clone(), kind);
            }
        }
        let defs = Definitions::get();
        for raw in raws {
            let param_type = ParamType::from_code(&raw.kind).unwrap_or(ParamType::Special);
            let code: Arc<str> = Arc::from(raw.code.as_str());
            let parts = match &raw.expression {
                Some(e) => split_union(e)
                    .into_iter()
                    .map(|p| {
                        let ast = fhirpath::compile(p)
                            .map_err(|source| ParamsError::Expression {
                                code: raw.code.clone(),
                                source,
                            })?
                            .ast()
                            .clone();
                        Ok((p, root_type(&ast), first_member(&ast)))
                    })
                    .collect::<Result<Vec<_>, ParamsError>>()?,
                None => Vec::new(),
            };
            let components = raw
                .component
                .iter()
                .map(|c| {
                    Ok(Component {
                        definition: c.definition.clone(),
                        expression: fhirpath::compile(&c.expression).map_err(|source| {
                            ParamsError::Expression {
                                code: raw.code.clone(),
                                source,
                            }
                        })?,
                        param_type: self.types_by_url.get(&c.definition).copied(),
                    })
                })
                .collect::<Result<Vec<_>, ParamsError>>()?;
            let modifiers = if raw.modifier.is_empty() {
                param_type
                    .default_modifiers()
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                raw.modifier.clone()
            };
            // Which registry keys the parameter applies to: its bases, and for the abstract
            // `Resource`/`DomainResource` bases every concrete resource type deriving from them.
            let mut types: Vec<String> = Vec::new();
            for base in &raw.base {
                types.push(base.clone());
                if base == "Resource" || base == "DomainResource" {
                    types.extend(
                        defs.resource_types()
                            .iter()
                            .filter(|t| fhirpath::type_derives_from(t, base))
                            .cloned(),
                    );
                }
            }
            types.sort();
            types.dedup();
            for rt in types {
                let kept: Vec<&(&str, Option<String>, Option<String>)> = parts
                    .iter()
                    .filter(|(_, root, _)| match root {
                        Some(root) => fhirpath::type_derives_from(&rt, root),
                        None => true,
                    })
                    .collect();
                let top_level: Option<Vec<String>> =
                    kept.iter().map(|(_, _, first)| first.clone()).collect();
                let kept: Vec<&str> = kept.iter().map(|(p, _, _)| *p).collect();
                let expression = if kept.is_empty() {
                    None
                } else {
                    let src = kept.join(" | ");
                    Some(
                        fhirpath::compile(&src).map_err(|source| ParamsError::Expression {
                            code: raw.code.clone(),
                            source,
                        })?,
                    )
                };
                let def = SearchParamDef {
                    code: code.clone(),
                    url: raw.url.clone(),
                    param_type,
                    base: raw.base.clone(),
                    expression,
                    targets: raw.target.clone(),
                    modifiers: modifiers.clone(),
                    comparators: raw.comparator.clone(),
                    components: components.clone(),
                    top_level,
                };
                let tp = self.by_type.entry(rt).or_default();
                match tp.by_code.get(&*def.code) {
                    Some(&i) => tp.params[i] = def,
                    None => {
                        tp.by_code.insert(def.code.to_string(), tp.params.len());
                        tp.params.push(def);
                    }
                }
            }
        }
        Ok(())
    }

    /// All parameters applying to `resource_type` (including the `Resource`/`DomainResource`
    /// ones), in definition order.
    pub fn params_for(&self, resource_type: &str) -> &[SearchParamDef] {
        self.by_type
            .get(resource_type)
            .map_or(&[], |t| t.params.as_slice())
    }

    /// The parameter `code` of `resource_type`.
    pub fn param(&self, resource_type: &str, code: &str) -> Option<&SearchParamDef> {
        let t = self.by_type.get(resource_type)?;
        t.by_code.get(code).map(|&i| &t.params[i])
    }

    /// The type of the parameter with this canonical URL.
    pub fn type_of_url(&self, url: &str) -> Option<ParamType> {
        self.types_by_url.get(url).copied()
    }

    /// Resource types (and abstract bases) that have parameters.
    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }
}

/// Splits an expression at its top-level `|` operators (outside parentheses, brackets and
/// quotes): `A.x | (B.y as T)` → [`A.x`, `(B.y as T)`].
fn split_union(expr: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in expr.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            '|' if depth == 0 => {
                parts.push(expr[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(expr[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// The type name a path starts with (`Observation` in `(Observation.value as Quantity)`),
/// `None` when it starts otherwise (`%resource`, a lower-case member).
fn root_type(ast: &Ast) -> Option<String> {
    match ast {
        Ast::Ident(name) if name.starts_with(|c: char| c.is_ascii_uppercase()) => {
            Some(name.clone())
        }
        Ast::Member(t, _) | Ast::Indexer(t, _) | Ast::Is(t, _) | Ast::As(t, _) => root_type(t),
        Ast::Call(Some(t), _, _) => root_type(t),
        Ast::Binary(_, l, _) => root_type(l),
        _ => None,
    }
}

/// The first element name after the type root (`subject` in
/// `Observation.subject.where(resolve() is Patient)`), if the path is built only from steps
/// that yield nothing on empty input: then an absent element means no result.
fn first_member(ast: &Ast) -> Option<String> {
    use fhirpath::Func;
    match ast {
        Ast::Member(t, name) => match &**t {
            Ast::Ident(root) if root.starts_with(|c: char| c.is_ascii_uppercase()) => {
                Some(name.clone())
            }
            other => first_member(other),
        },
        Ast::As(t, _) | Ast::Is(t, _) | Ast::Indexer(t, _) => first_member(t),
        Ast::Call(
            Some(t),
            Func::Where
            | Func::Select
            | Func::First
            | Func::Last
            | Func::Tail
            | Func::Skip
            | Func::Take
            | Func::Single
            | Func::Distinct
            | Func::OfType
            | Func::As
            | Func::Is
            | Func::Resolve
            | Func::Extension
            | Func::Children
            | Func::Descendants
            | Func::Trace,
            _,
        ) => first_member(t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_official_expression_parses() {
        let mut json = Vec::new();
        GzDecoder::new(SEARCH_PARAMETERS_GZ)
            .read_to_end(&mut json)
            .unwrap();
        let bundle: RawBundle = serde_json::from_slice(&json).unwrap();
        let mut n = 0;
        for e in &bundle.entry {
            if let Some(x) = &e.resource.expression {
                fhirpath::compile(x).unwrap_or_else(|err| panic!("{}: {err}", e.resource.url));
                n += 1;
            }
            for c in &e.resource.component {
                fhirpath::compile(&c.expression).unwrap();
            }
        }
        assert!(n > 1370, "{n}");
        // Building the registry compiles every per-type restriction too.
        let reg = SearchParams::official().unwrap();
        assert!(reg.params_for("Observation").len() > 40);
    }

    #[test]
    fn registry_lookup_and_restriction() {
        let reg = SearchParams::get();
        let p = reg.param("Observation", "patient").unwrap();
        assert_eq!(p.param_type, ParamType::Reference);
        assert_eq!(
            p.expression.as_ref().unwrap().source(),
            "Observation.subject.where(resolve() is Patient)"
        );
        assert!(p.targets.contains(&"Patient".to_string()));
        let p = reg.param("Patient", "_lastUpdated").unwrap();
        assert_eq!(p.param_type, ParamType::Date);
        assert!(reg.param("Bundle", "_id").is_some());
        assert!(reg.param("Bundle", "_text").is_none()); // DomainResource only
        assert!(reg.param("Patient", "_text").unwrap().expression.is_none());
        assert!(reg.param("Resource", "_id").is_some());
        let p = reg.param("Observation", "value-quantity").unwrap();
        assert_eq!(
            p.comparators,
            ["eq", "ne", "gt", "ge", "lt", "le", "sa", "eb", "ap"]
        );
        let p = reg
            .param("Observation", "component-code-value-quantity")
            .unwrap();
        assert_eq!(p.param_type, ParamType::Composite);
        assert_eq!(p.components.len(), 2);
        assert_eq!(p.components[0].param_type, Some(ParamType::Token));
        assert_eq!(p.components[1].param_type, Some(ParamType::Quantity));
        // `Condition.onset.as(Age) | Condition.onset.as(Range)` stays whole for Condition.
        let p = reg.param("Condition", "onset-age").unwrap();
        assert_eq!(
            p.expression.as_ref().unwrap().source(),
            "Condition.onset.as(Age) | Condition.onset.as(Range)"
        );
        let p = reg.param("Practitioner", "email").unwrap();
        assert_eq!(
            p.expression.as_ref().unwrap().source(),
            "Practitioner.telecom.where(system='email')"
        );
        assert!(reg.param("Patient", "nope").is_none());
        assert!(reg.params_for("Nope").is_empty());
        // Every Observation parameter: only Observation-rooted parts are kept.
        for p in reg.params_for("Observation") {
            if let Some(e) = &p.expression {
                assert!(
                    !e.source().contains("Condition."),
                    "{}: {}",
                    p.code,
                    e.source()
                );
            }
        }
    }

    #[test]
    fn custom_parameters() {
        let custom = json!({
            "resourceType": "SearchParameter", "url": "http://example.org/sp/device-serial",
            "code": "serial", "base": ["Device"], "type": "string",
            "expression": "Device.serialNumber"
        });
        let reg = SearchParams::with_custom(std::slice::from_ref(&custom)).unwrap();
        assert_eq!(
            reg.param("Device", "serial").unwrap().param_type,
            ParamType::String
        );
        assert!(SearchParams::get().param("Device", "serial").is_none());
        let only = SearchParams::from_resources(&[custom]).unwrap();
        assert_eq!(only.params_for("Device").len(), 1);
        let bad = json!({"resourceType": "SearchParameter", "code": "x", "base": ["Device"],
            "type": "string", "expression": "Device.("});
        assert!(SearchParams::from_resources(&[bad]).is_err());
        assert!(SearchParams::from_resources(&[json!({"resourceType": "Patient"})]).is_err());
    }

    #[test]
    fn top_level_elements() {
        let reg = SearchParams::get();
        let top = |rt: &str, code: &str| reg.param(rt, code).unwrap().top_level.clone();
        assert_eq!(
            top("Observation", "patient"),
            Some(vec!["subject".to_string()])
        );
        assert_eq!(
            top("Observation", "combo-value-quantity"),
            Some(vec![
                "value".into(),
                "value".into(),
                "component".into(),
                "component".into()
            ])
        );
        assert_eq!(top("Patient", "_tag"), Some(vec!["meta".to_string()]));
        // `exists()`/`and` yield `false` on absent data: never skipped.
        assert_eq!(top("Patient", "deceased"), None);
        assert_eq!(top("Observation", "combo-code-value-quantity"), None);
    }

    #[test]
    fn split_union_respects_nesting() {
        assert_eq!(
            split_union("A.x | (B.y as T) | C.where(a='|')"),
            ["A.x", "(B.y as T)", "C.where(a='|')"]
        );
    }
}
