//! Evaluation of a parsed FHIRPath [`Ast`] over `serde_json::Value` resources.
//!
//! Every item of a collection is a [`Node`]: a JSON value plus its FHIR type and its position
//! in the R4 type model ([`crate::fhir::definitions`]), so that navigation resolves choice
//! elements (`Observation.value` → `valueQuantity`, typed `Quantity`) and later steps know
//! whether a value is a CodeableConcept, an Identifier or a ContactPoint.
//!
//! Evaluation is lenient by design: where the FHIRPath specification raises a run-time
//! error (a multi-item operand to `=`, `single()` on several items, ...) we return an empty
//! collection instead, so indexing arbitrary client data can never fail or panic.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use super::parser::{Ast, BinOp, Func};
use crate::fhir::definitions::{self as defs, Definitions};

/// One item of a FHIRPath collection.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    /// The value: borrowed from the resource (or the expression's literals), or computed
    /// (`exists()` results, arithmetic, string functions).
    pub value: Cow<'a, Value>,
    /// The FHIR type name (`CodeableConcept`, `dateTime`, `Patient`, `BackboneElement`...),
    /// `None` when unknown (data outside the model, computed values without a FHIR type).
    pub type_name: Option<&'a str>,
    /// Position in the type model, used to navigate further and to type children.
    def: Option<defs::Node<'static>>,
}

impl<'a> Node<'a> {
    /// A resource (or any JSON object carrying `resourceType`) as a root node.
    pub fn resource(value: &'a Value) -> Node<'a> {
        let rt = value.get("resourceType").and_then(Value::as_str);
        match rt.and_then(|t| Definitions::get().root(t)) {
            Some(def) => Node {
                value: Cow::Borrowed(value),
                type_name: Some(def.type_code),
                def: Some(def),
            },
            None => Node {
                value: Cow::Borrowed(value),
                type_name: rt,
                def: None,
            },
        }
    }

    /// A value of a known FHIR type (`Quantity`, `string`...), e.g. to evaluate an expression
    /// against a datatype rather than a resource.
    pub fn typed(value: &'a Value, type_name: &str) -> Node<'a> {
        let def = Definitions::get().root(type_name);
        Node {
            value: Cow::Borrowed(value),
            type_name: def.map(|d| d.type_code),
            def,
        }
    }

    fn computed(value: Value, type_name: &'static str) -> Node<'a> {
        Node {
            value: Cow::Owned(value),
            type_name: Some(type_name),
            def: None,
        }
    }

    fn boolean(b: bool) -> Node<'a> {
        Node::computed(Value::Bool(b), "boolean")
    }

    /// The JSON value when it is borrowed from the input (only those have children).
    pub fn json(&self) -> Option<&'a Value> {
        match self.value {
            Cow::Borrowed(v) => Some(v),
            Cow::Owned(_) => None,
        }
    }

    /// The FHIR type name, or `""` when unknown.
    pub fn type_str(&self) -> &'a str {
        self.type_name.unwrap_or("")
    }

    /// The model element the node was reached through (its binding, cardinality...);
    /// `None` for computed values and data outside the model.
    pub fn element(&self) -> Option<&'static defs::ElementDef> {
        self.def.map(|d| d.element)
    }

    /// True when the node's type is `wanted` or derives from it (`Age` is a `Quantity`,
    /// `code` is a `string`, `Patient` is a `Resource`). FHIRPath System types match the
    /// FHIR primitives case-insensitively (`DateTime` ~ `dateTime`).
    pub fn is_type(&self, wanted: &str) -> bool {
        match self.type_name {
            Some(actual) => type_derives_from(actual, wanted),
            None => match &*self.value {
                Value::Bool(_) => wanted.eq_ignore_ascii_case("boolean"),
                Value::String(_) => wanted.eq_ignore_ascii_case("string"),
                Value::Number(n) => {
                    wanted.eq_ignore_ascii_case("decimal")
                        || (wanted.eq_ignore_ascii_case("integer") && !n.to_string().contains('.'))
                }
                _ => false,
            },
        }
    }
}

/// True when type `actual` is `wanted` or one of its base types.
pub fn type_derives_from(actual: &str, wanted: &str) -> bool {
    if actual == wanted || actual.eq_ignore_ascii_case(wanted) {
        return true;
    }
    ancestors()
        .get(actual)
        .is_some_and(|chain| chain.iter().any(|b| b.eq_ignore_ascii_case(wanted)))
}

/// Base-type chains of every type (`Age` → [`Quantity`, `Element`]), computed once: type
/// tests run for every `as`/`ofType`/path root during extraction.
fn ancestors() -> &'static HashMap<&'static str, Vec<&'static str>> {
    static ANCESTORS: OnceLock<HashMap<&'static str, Vec<&'static str>>> = OnceLock::new();
    ANCESTORS.get_or_init(|| {
        let defs = Definitions::get();
        defs.types()
            .map(|t| {
                let mut chain = Vec::new();
                let mut base = t.base.as_deref();
                // The bound guards against a malformed cycle; real chains are < 6 deep.
                while let (Some(b), true) = (base, chain.len() < 16) {
                    chain.push(b);
                    base = defs.type_def(b).and_then(|d| d.base.as_deref());
                }
                (t.name.as_str(), chain)
            })
            .collect()
    })
}

/// Evaluation environment: the root resource (`%resource`, `%rootResource`), `%context`
/// and user-supplied variables (`%previous`, `%current` for subscription triggers...).
#[derive(Debug, Clone)]
pub struct Env<'a> {
    pub resource: Node<'a>,
    pub context: Node<'a>,
    vars: Vec<(String, Vec<Node<'a>>)>,
}

impl<'a> Env<'a> {
    /// An environment whose `%resource` and `%context` are `resource`.
    pub fn new(resource: &'a Value) -> Env<'a> {
        let node = Node::resource(resource);
        Env {
            resource: node.clone(),
            context: node,
            vars: Vec::new(),
        }
    }

    /// Adds (or replaces) `%name`.
    pub fn with_var(mut self, name: &str, value: Vec<Node<'a>>) -> Env<'a> {
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.to_string(), value));
        self
    }

    fn var(&self, name: &str) -> Vec<Node<'a>> {
        match name {
            "resource" | "rootResource" => vec![self.resource.clone()],
            "context" => vec![self.context.clone()],
            "ucum" => vec![Node::computed(
                Value::String("http://unitsofmeasure.org".into()),
                "uri",
            )],
            "sct" => vec![Node::computed(
                Value::String("http://snomed.info/sct".into()),
                "uri",
            )],
            "loinc" => vec![Node::computed(
                Value::String("http://loinc.org".into()),
                "uri",
            )],
            _ => self
                .vars
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        }
    }
}

type Coll<'a> = Vec<Node<'a>>;

/// Evaluates `ast` with `focus` as the input collection. `index` is `$index` inside
/// `where`/`select`/`all`.
pub fn eval<'a>(ast: &'a Ast, env: &Env<'a>, focus: &[Node<'a>], index: usize) -> Coll<'a> {
    match ast {
        Ast::Empty => Vec::new(),
        Ast::Literal(v, ty) => vec![Node {
            value: Cow::Borrowed(v),
            type_name: Some(ty),
            def: None,
        }],
        Ast::This => focus.to_vec(),
        Ast::Index => vec![Node::computed(Value::from(index as u64), "integer")],
        Ast::Variable(name) => env.var(name),
        Ast::Ident(name) => {
            // At the start of a path an upper-case identifier is a type name filtering the
            // focus (`Observation.code`, `Resource.id`); FHIR element names are lower-case.
            if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                focus.iter().filter(|n| n.is_type(name)).cloned().collect()
            } else {
                let mut out = Vec::new();
                for n in focus {
                    navigate(n, name, &mut out);
                }
                out
            }
        }
        Ast::Member(target, name) => {
            let base = eval(target, env, focus, index);
            let mut out = Vec::new();
            for n in &base {
                navigate(n, name, &mut out);
            }
            out
        }
        Ast::Indexer(target, idx) => {
            let base = eval(target, env, focus, index);
            match to_index(&eval(idx, env, focus, index)) {
                Some(i) => base.into_iter().nth(i).into_iter().collect(),
                None => Vec::new(),
            }
        }
        Ast::Is(target, ty) => match eval(target, env, focus, index).as_slice() {
            [n] => vec![Node::boolean(n.is_type(ty))],
            _ => Vec::new(),
        },
        Ast::As(target, ty) => {
            // Strictly an error on several items; filtering is the useful lenient reading
            // (`Observation.component.value as Quantity`).
            let mut items = eval(target, env, focus, index);
            items.retain(|n| n.is_type(ty));
            items
        }
        Ast::Neg(e) => eval(e, env, focus, index)
            .iter()
            .filter_map(|n| num(n).map(|x| number_node(-x)))
            .collect(),
        Ast::Binary(op, l, r) => binary(*op, l, r, env, focus, index),
        Ast::Call(target, func, args) => {
            let input = match target {
                Some(t) => eval(t, env, focus, index),
                None => focus.to_vec(),
            };
            call(*func, args, input, env)
        }
    }
}

/// Adds the children of `node` called `name` (a FHIRPath member name) to `out`.
fn navigate<'a>(node: &Node<'a>, name: &str, out: &mut Coll<'a>) {
    let Some(Value::Object(obj)) = node.json() else {
        return;
    };
    // One linear pass over the keys finds both the plain element (`code`) and choice
    // variants (`value` → `valueQuantity`, JSON key = name + capitalised type). Resource
    // objects have few keys, so this beats hashing the name (and an absent element costs
    // no model lookup at all).
    for (key, v) in obj {
        let Some(suffix) = key.strip_prefix(name) else {
            continue;
        };
        if suffix.is_empty() {
            push_values(v, node.def.and_then(|d| d.child(name)), out);
            // A plain element never coexists with choice variants of the same name.
            return;
        }
        if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        match node.def {
            Some(d) => {
                // The model decides: `periodMax` is not a `period` choice.
                if let Some(cd) = d.child(key) {
                    if cd.element.is_choice && cd.element.name == name {
                        push_values(v, Some(cd), out);
                    }
                }
            }
            None => {
                // Untyped data (outside the model): accept only suffixes naming a FHIR type
                // (so `periodMax` is never mistaken for a `period` choice).
                let defs = Definitions::get();
                let ty = defs
                    .type_def(suffix)
                    .or_else(|| defs.type_def(&lower_first(suffix)));
                if let Some(t) = ty {
                    let def = defs.root(&t.name);
                    for item in items_of(v) {
                        out.push(Node {
                            value: Cow::Borrowed(item),
                            type_name: def.map(|d| d.type_code),
                            def,
                        });
                    }
                }
            }
        }
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// The items of a JSON property value: array elements (skipping the `null` placeholders
/// that pair with `_x` extension arrays) or the value itself.
fn items_of(v: &Value) -> impl Iterator<Item = &Value> {
    let slice = match v {
        Value::Array(a) => a.as_slice(),
        Value::Null => &[],
        other => std::slice::from_ref(other),
    };
    slice.iter().filter(|v| !v.is_null())
}

fn push_values<'a>(v: &'a Value, def: Option<defs::Node<'static>>, out: &mut Coll<'a>) {
    for item in items_of(v) {
        let node = match def {
            // Elements typed `Resource` (contained, Bundle.entry.resource) hold any resource:
            // the concrete type is the `resourceType`.
            Some(d) if d.is_resource() => Node::resource(item),
            Some(d) => Node {
                value: Cow::Borrowed(item),
                type_name: Some(d.type_code),
                def: Some(d),
            },
            None if item.get("resourceType").is_some() => Node::resource(item),
            None => Node {
                value: Cow::Borrowed(item),
                type_name: None,
                def: None,
            },
        };
        out.push(node);
    }
}

fn to_index(c: &[Node]) -> Option<usize> {
    match c {
        [n] => n.value.as_u64().map(|i| i as usize),
        _ => None,
    }
}

/// Numeric value of a node (JSON numbers; `arbitrary_precision` keeps them as text).
fn num(n: &Node) -> Option<f64> {
    match &*n.value {
        Value::Number(x) => x.as_f64(),
        _ => None,
    }
}

fn number_node<'a>(x: f64) -> Node<'a> {
    let is_int = x.fract() == 0.0 && x.abs() < 1e15;
    let v = if is_int {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    };
    Node::computed(v, if is_int { "integer" } else { "decimal" })
}

fn string_node<'a>(s: String) -> Node<'a> {
    Node::computed(Value::String(s), "string")
}

/// Singleton evaluation of a collection as a boolean: `None` for empty (or several items).
/// A single non-boolean item counts as `true`, as FHIRPath specifies.
pub fn to_bool(c: &[Node]) -> Option<bool> {
    match c {
        [n] => Some(n.value.as_bool().unwrap_or(true)),
        _ => None,
    }
}

fn single_str<'b>(c: &'b [Node]) -> Option<&'b str> {
    match c {
        [n] => n.value.as_str(),
        _ => None,
    }
}

/// FHIRPath `=` on two single values.
fn value_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.to_string() == y.to_string() || (x.as_f64().is_some() && x.as_f64() == y.as_f64())
        }
        (Value::Object(x), Value::Object(y)) => {
            // Siblings usually list their keys in the same order: compare pairwise first,
            // falling back on lookups only when the orders differ.
            if x.len() != y.len() {
                false
            } else if x.keys().zip(y.keys()).all(|(k, l)| k == l) {
                x.values().zip(y.values()).all(|(v, w)| value_eq(v, w))
            } else {
                x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| value_eq(v, w)))
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| value_eq(v, w))
        }
        _ => a == b,
    }
}

fn node_eq(a: &Node, b: &Node) -> bool {
    if let (Cow::Borrowed(x), Cow::Borrowed(y)) = (&a.value, &b.value) {
        if std::ptr::eq(*x, *y) {
            return true;
        }
    }
    value_eq(&a.value, &b.value)
}

/// FHIRPath `~`: strings compare case- and whitespace-insensitively.
fn value_equiv(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            norm(x) == norm(y)
        }
        _ => value_eq(a, b),
    }
}

fn collection_eq(l: &[Node], r: &[Node], eq: fn(&Value, &Value) -> bool) -> Option<bool> {
    if l.is_empty() || r.is_empty() {
        return None;
    }
    Some(l.len() == r.len() && l.iter().zip(r).all(|(a, b)| eq(&a.value, &b.value)))
}

fn compare(l: &[Node], r: &[Node]) -> Option<std::cmp::Ordering> {
    match (l, r) {
        ([a], [b]) => match (&*a.value, &*b.value) {
            (Value::Number(_), Value::Number(_)) => num(a)?.partial_cmp(&num(b)?),
            // ISO 8601 dates/times of equal precision order lexically.
            (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
            _ => None,
        },
        _ => None,
    }
}

fn union<'a>(mut l: Coll<'a>, r: Coll<'a>) -> Coll<'a> {
    // Union removes duplicates (FHIRPath `|` is a set union), left side included.
    let mut out: Coll<'a> = Vec::with_capacity(l.len() + r.len());
    for n in l.drain(..).chain(r) {
        if !out.iter().any(|m| node_eq(m, &n)) {
            out.push(n);
        }
    }
    out
}

fn binary<'a>(
    op: BinOp,
    l: &'a Ast,
    r: &'a Ast,
    env: &Env<'a>,
    focus: &[Node<'a>],
    index: usize,
) -> Coll<'a> {
    let lv = eval(l, env, focus, index);
    // Short-circuit the logical operators where the left side decides.
    match (op, to_bool(&lv)) {
        (BinOp::And, Some(false)) => return vec![Node::boolean(false)],
        (BinOp::Or, Some(true)) => return vec![Node::boolean(true)],
        (BinOp::Implies, Some(false)) => return vec![Node::boolean(true)],
        _ => {}
    }
    let rv = eval(r, env, focus, index);
    let bool_out = |b: Option<bool>| b.map(Node::boolean).into_iter().collect::<Coll<'a>>();
    match op {
        BinOp::Union => union(lv, rv),
        BinOp::Eq => bool_out(collection_eq(&lv, &rv, value_eq)),
        BinOp::Ne => bool_out(collection_eq(&lv, &rv, value_eq).map(|b| !b)),
        BinOp::Equiv => bool_out(Some(
            lv.len() == rv.len()
                && lv
                    .iter()
                    .zip(&rv)
                    .all(|(a, b)| value_equiv(&a.value, &b.value)),
        )),
        BinOp::NotEquiv => bool_out(Some(
            !(lv.len() == rv.len()
                && lv
                    .iter()
                    .zip(&rv)
                    .all(|(a, b)| value_equiv(&a.value, &b.value))),
        )),
        BinOp::Lt => bool_out(compare(&lv, &rv).map(|o| o.is_lt())),
        BinOp::Le => bool_out(compare(&lv, &rv).map(|o| o.is_le())),
        BinOp::Gt => bool_out(compare(&lv, &rv).map(|o| o.is_gt())),
        BinOp::Ge => bool_out(compare(&lv, &rv).map(|o| o.is_ge())),
        BinOp::And => bool_out(match (to_bool(&lv), to_bool(&rv)) {
            (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }),
        BinOp::Or => bool_out(match (to_bool(&lv), to_bool(&rv)) {
            (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        }),
        BinOp::Xor => bool_out(match (to_bool(&lv), to_bool(&rv)) {
            (Some(a), Some(b)) => Some(a != b),
            _ => None,
        }),
        BinOp::Implies => bool_out(match (to_bool(&lv), to_bool(&rv)) {
            (_, Some(true)) => Some(true),
            (Some(true), b) => b,
            _ => None,
        }),
        BinOp::In => match lv.as_slice() {
            [a] => bool_out(Some(rv.iter().any(|b| node_eq(a, b)))),
            _ => Vec::new(),
        },
        BinOp::Contains => match rv.as_slice() {
            [b] => bool_out(Some(lv.iter().any(|a| node_eq(a, b)))),
            _ => Vec::new(),
        },
        BinOp::Concat => {
            let s = |c: &[Node]| single_str(c).unwrap_or("").to_string();
            vec![string_node(s(&lv) + &s(&rv))]
        }
        BinOp::Add => match (single_str(&lv), single_str(&rv)) {
            (Some(a), Some(b)) => vec![string_node(format!("{a}{b}"))],
            _ => arith(&lv, &rv, |a, b| Some(a + b)),
        },
        BinOp::Sub => arith(&lv, &rv, |a, b| Some(a - b)),
        BinOp::Mul => arith(&lv, &rv, |a, b| Some(a * b)),
        BinOp::Div => arith(&lv, &rv, |a, b| (b != 0.0).then(|| a / b)),
        BinOp::IntDiv => arith(&lv, &rv, |a, b| (b != 0.0).then(|| (a / b).trunc())),
        BinOp::Mod => arith(&lv, &rv, |a, b| (b != 0.0).then(|| a % b)),
    }
}

fn arith<'a>(l: &[Node], r: &[Node], f: impl Fn(f64, f64) -> Option<f64>) -> Coll<'a> {
    match (l, r) {
        ([a], [b]) => match (num(a), num(b)) {
            (Some(x), Some(y)) => f(x, y).map(number_node).into_iter().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Evaluates an argument once per input item (with that item as `$this`).
fn per_item<'a>(
    arg: &'a Ast,
    env: &Env<'a>,
    input: &[Node<'a>],
    mut f: impl FnMut(usize, &Node<'a>, Coll<'a>),
) {
    for (i, n) in input.iter().enumerate() {
        let r = eval(arg, env, std::slice::from_ref(n), i);
        f(i, n, r);
    }
}

fn type_arg(args: &[Ast]) -> &str {
    match args.first() {
        Some(Ast::Ident(t)) => t,
        _ => "",
    }
}

fn call<'a>(func: Func, args: &'a [Ast], input: Coll<'a>, env: &Env<'a>) -> Coll<'a> {
    // Arguments that are plain values are evaluated against the input collection.
    let arg = |i: usize| -> Coll<'a> {
        match args.get(i) {
            Some(a) => eval(a, env, &input, 0),
            None => Vec::new(),
        }
    };
    let bool_out = |b: bool| vec![Node::boolean(b)];
    // The parser guarantees argument counts; a hand-built tree without them gets `{}`.
    static EMPTY: Ast = Ast::Empty;
    let first = args.first().unwrap_or(&EMPTY);
    match func {
        Func::Where => {
            let mut out = Vec::new();
            per_item(first, env, &input, |_, n, r| {
                if to_bool(&r) == Some(true) {
                    out.push(n.clone());
                }
            });
            out
        }
        Func::Select => {
            let mut out = Vec::new();
            per_item(first, env, &input, |_, _, r| out.extend(r));
            out
        }
        Func::All => {
            let mut all = true;
            per_item(first, env, &input, |_, _, r| {
                all &= to_bool(&r) == Some(true);
            });
            bool_out(all)
        }
        Func::Exists => match args.first() {
            None => bool_out(!input.is_empty()),
            Some(_) => {
                let mut any = false;
                per_item(first, env, &input, |_, _, r| {
                    any |= to_bool(&r) == Some(true);
                });
                bool_out(any)
            }
        },
        Func::Empty => bool_out(input.is_empty()),
        Func::Not => match to_bool(&input) {
            Some(b) => bool_out(!b),
            None => Vec::new(),
        },
        Func::AllTrue => bool_out(input.iter().all(|n| n.value.as_bool() == Some(true))),
        Func::AnyTrue => bool_out(input.iter().any(|n| n.value.as_bool() == Some(true))),
        Func::Union => {
            let other = arg(0);
            union(input, other)
        }
        Func::Combine => {
            let mut out = input.clone();
            out.extend(arg(0));
            out
        }
        Func::Intersect => {
            let other = arg(0);
            let kept = input
                .into_iter()
                .filter(|n| other.iter().any(|m| node_eq(n, m)))
                .collect();
            union(kept, Vec::new())
        }
        Func::Exclude => {
            let other = arg(0);
            input
                .into_iter()
                .filter(|n| !other.iter().any(|m| node_eq(n, m)))
                .collect()
        }
        Func::SubsetOf | Func::SupersetOf => {
            let other = arg(0);
            let (small, big) = if func == Func::SubsetOf {
                (&input, &other)
            } else {
                (&other, &input)
            };
            bool_out(small.iter().all(|n| big.iter().any(|m| node_eq(n, m))))
        }
        Func::IsDistinct => bool_out(union(input.clone(), Vec::new()).len() == input.len()),
        Func::Substring => {
            let (Some(s), Some(start)) = (single_str(&input), to_index(&arg(0))) else {
                return Vec::new();
            };
            let chars = s.chars().skip(start);
            let out: String = match args.get(1) {
                Some(_) => match to_index(&arg(1)) {
                    Some(len) => chars.take(len).collect(),
                    None => return Vec::new(),
                },
                None => chars.collect(),
            };
            if start >= s.chars().count() {
                return Vec::new();
            }
            vec![string_node(out)]
        }
        Func::IndexOf => match (single_str(&input), single_str(&arg(0))) {
            (Some(s), Some(sub)) => {
                let idx = s.find(sub).map_or(-1, |b| s[..b].chars().count() as i64);
                vec![Node::computed(Value::from(idx), "integer")]
            }
            _ => Vec::new(),
        },
        Func::Replace => match (single_str(&input), single_str(&arg(0)), single_str(&arg(1))) {
            (Some(s), Some(from), Some(to)) => vec![string_node(s.replace(from, to))],
            _ => Vec::new(),
        },
        Func::ToInteger => match input.as_slice() {
            [n] => match &*n.value {
                Value::Number(x) if x.as_i64().is_some() => vec![n.clone()],
                Value::String(t) => t
                    .parse::<i64>()
                    .ok()
                    .map(|i| Node::computed(Value::from(i), "integer"))
                    .into_iter()
                    .collect(),
                Value::Bool(b) => vec![Node::computed(Value::from(*b as i64), "integer")],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        Func::ToDecimal => match input.as_slice() {
            [n] => match &*n.value {
                Value::Number(_) => vec![n.clone()],
                Value::String(t) => serde_json::from_str::<serde_json::Number>(t.trim())
                    .ok()
                    .filter(|_| !t.trim().is_empty())
                    .map(|x| Node::computed(Value::Number(x), "decimal"))
                    .into_iter()
                    .collect(),
                Value::Bool(b) => vec![Node::computed(Value::from(*b as i64), "decimal")],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        Func::First => input.into_iter().take(1).collect(),
        Func::Last => input.into_iter().last().into_iter().collect(),
        Func::Tail => input.into_iter().skip(1).collect(),
        Func::Skip => match to_index(&arg(0)) {
            Some(k) => input.into_iter().skip(k).collect(),
            None => Vec::new(),
        },
        Func::Take => match to_index(&arg(0)) {
            Some(k) => input.into_iter().take(k).collect(),
            None => Vec::new(),
        },
        Func::Single => {
            if input.len() == 1 {
                input
            } else {
                Vec::new()
            }
        }
        Func::Count => vec![Node::computed(Value::from(input.len() as u64), "integer")],
        Func::Distinct => union(input, Vec::new()),
        Func::HasValue => {
            bool_out(matches!(input.as_slice(), [n] if !n.value.is_object() && !n.value.is_array()))
        }
        Func::Extension => {
            let url = single_str(&arg(0)).map(str::to_owned);
            let mut exts = Vec::new();
            for n in &input {
                navigate(n, "extension", &mut exts);
            }
            exts.retain(|e| e.value.get("url").and_then(Value::as_str) == url.as_deref());
            exts
        }
        Func::Resolve => input.iter().filter_map(|n| resolve(n, env)).collect(),
        Func::OfType | Func::As => {
            let ty = type_arg(args);
            input.into_iter().filter(|n| n.is_type(ty)).collect()
        }
        Func::Is => match input.as_slice() {
            [n] => bool_out(n.is_type(type_arg(args))),
            _ => Vec::new(),
        },
        Func::Iif => {
            let cond = to_bool(&arg(0));
            if cond == Some(true) {
                arg(1)
            } else {
                arg(2)
            }
        }
        Func::StartsWith | Func::EndsWith | Func::ContainsStr | Func::Matches => {
            let (Some(s), Some(p)) = (single_str(&input), single_str(&arg(0)).map(str::to_owned))
            else {
                return Vec::new();
            };
            let b = match func {
                Func::StartsWith => s.starts_with(&p),
                Func::EndsWith => s.ends_with(&p),
                Func::ContainsStr => s.contains(&p),
                _ => match regex::Regex::new(&p) {
                    Ok(re) => re.is_match(s),
                    Err(_) => return Vec::new(),
                },
            };
            bool_out(b)
        }
        Func::Lower => single_str(&input)
            .map(|s| string_node(s.to_lowercase()))
            .into_iter()
            .collect(),
        Func::Upper => single_str(&input)
            .map(|s| string_node(s.to_uppercase()))
            .into_iter()
            .collect(),
        Func::Length => single_str(&input)
            .map(|s| Node::computed(Value::from(s.chars().count() as u64), "integer"))
            .into_iter()
            .collect(),
        Func::ToString => match input.as_slice() {
            [n] => match &*n.value {
                Value::String(_) => input,
                Value::Number(x) => vec![string_node(x.to_string())],
                Value::Bool(b) => vec![string_node(b.to_string())],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        Func::Trace => input,
        Func::Children => {
            let mut out = Vec::new();
            for n in &input {
                children(n, &mut out);
            }
            out
        }
        Func::Descendants => {
            let mut out = Vec::new();
            let mut frontier = input;
            // Bounded by the depth of the JSON document, which serde_json limits to 128.
            while !frontier.is_empty() {
                let mut next = Vec::new();
                for n in &frontier {
                    children(n, &mut next);
                }
                out.extend(next.iter().cloned());
                frontier = next;
            }
            out
        }
        Func::Today => vec![Node::computed(
            Value::String(chrono::Utc::now().format("%Y-%m-%d").to_string()),
            "date",
        )],
        Func::Now => vec![Node::computed(
            Value::String(
                chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string(),
            ),
            "dateTime",
        )],
    }
}

/// All child values of a node, typed through the model where possible.
fn children<'a>(n: &Node<'a>, out: &mut Coll<'a>) {
    let Some(Value::Object(obj)) = n.json() else {
        return;
    };
    for (key, v) in obj {
        if key == "resourceType" || key.starts_with('_') {
            continue;
        }
        push_values(v, n.def.and_then(|d| d.child(key)), out);
    }
}

/// `resolve()` cannot fetch anything. For a Reference it yields a placeholder node typed by
/// the reference's resource type (so `resolve() is Patient` works) with no content; local
/// `#id` references resolve to the contained resource of `%resource`.
fn resolve<'a>(n: &Node<'a>, env: &Env<'a>) -> Option<Node<'a>> {
    let reference = match n.json()? {
        Value::Object(o) => o.get("reference")?.as_str()?,
        // canonical/uri values resolve like reference strings.
        Value::String(s) => s.as_str(),
        _ => return None,
    };
    if let Some(id) = reference.strip_prefix('#') {
        let contained = env.resource.json()?.get("contained")?.as_array()?;
        let found = contained
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?;
        return Some(Node::resource(found));
    }
    let (ty, _id) = reference_type_id(reference)?;
    let def = Definitions::get().root(ty)?;
    Some(Node {
        value: Cow::Owned(Value::Null),
        type_name: Some(def.type_code),
        def: Some(def),
    })
}

/// Resource type and id of a literal reference: `Patient/1`, `Patient/1/_history/2`,
/// `http://x/fhir/Patient/1`. `None` for `urn:uuid:`/`urn:oid:` and other forms whose type
/// is unknown.
pub fn reference_type_id(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with("urn:") || reference.starts_with('#') {
        return None;
    }
    let reference = reference.split(['?', '#']).next().unwrap_or(reference);
    let mut segs: Vec<&str> = reference.split('/').collect();
    if segs.len() >= 4 && segs[segs.len() - 2] == "_history" {
        segs.truncate(segs.len() - 2);
    }
    match segs.as_slice() {
        [.., ty, id] if !id.is_empty() && Definitions::get().is_resource_type(ty) => Some((ty, id)),
        _ => None,
    }
}
