//! Extraction of search index values from a resource, per the R4 search specification
//! (<http://hl7.org/fhir/R4/search.html>).
//!
//! For every search parameter of the resource's type, the parameter's FHIRPath expression
//! is evaluated and each resulting node is converted according to the parameter type and
//! the node's FHIR type (a token from a CodeableConcept is one entry per coding, a string
//! from a HumanName one entry per name part, a date is a microsecond range...).
//! Extraction never fails: values that cannot be converted (malformed dates, wrong JSON
//! shapes) are skipped.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::params::{ParamType, SearchParamDef, SearchParams};
use crate::fhir::definitions::Definitions;
use crate::fhirpath::{self, Env, Node};

/// One index value of one search parameter.
///
/// Strings are owned so entries can outlive the resource (they are written to the index).
#[derive(Debug, Clone, PartialEq)]
pub enum IndexEntry {
    /// Token: `system|code`. A CodeableConcept yields one entry per coding plus, when it has
    /// `text`, an entry with only `display` = text (for `:text`). Coding `display` is kept for
    /// `:text` too. Identifiers carry their `type`'s first coding (for `:of-type`). A `code`
    /// element with a required binding gets the implicit system of its value set.
    Token {
        param: Arc<str>,
        system: Option<String>,
        code: Option<String>,
        display: Option<String>,
        /// `Identifier.type.coding[0].system`, for `:of-type`.
        type_system: Option<String>,
        /// `Identifier.type.coding[0].code`, for `:of-type`.
        type_code: Option<String>,
    },
    /// String: `normalized` is lower-cased, accent-free, whitespace-collapsed (the default
    /// prefix match runs on it); `exact` is the original text (for `:exact`).
    String {
        param: Arc<str>,
        normalized: String,
        exact: String,
    },
    /// Date: inclusive range in microseconds since the Unix epoch (UTC). Open ends are
    /// `i64::MIN` / `i64::MAX`.
    Date {
        param: Arc<str>,
        low: i64,
        high: i64,
    },
    /// Reference: the literal `url` as written; type/id (and `_history` version) parsed from
    /// relative and absolute references; canonicals keep the URL with the `|version` split off.
    Reference {
        param: Arc<str>,
        target_type: Option<String>,
        target_id: Option<String>,
        version: Option<String>,
        url: String,
    },
    /// `Reference.identifier`, for the `:identifier` modifier.
    ReferenceIdentifier {
        param: Arc<str>,
        system: Option<String>,
        code: Option<String>,
    },
    /// Number: `low..high` is the range implied by the significant digits (5.4 → 5.35..5.45).
    Number {
        param: Arc<str>,
        value: f64,
        low: f64,
        high: f64,
    },
    /// Quantity (also Age, Duration, Money with the currency as `code`, Range). A Range has
    /// `value` None and `low..high` from its bounds (`f64::MIN`/`f64::MAX` when open).
    Quantity {
        param: Arc<str>,
        value: Option<f64>,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri {
        param: Arc<str>,
        value: String,
    },
    /// One combination of component values of a composite parameter, in component order.
    Composite {
        param: Arc<str>,
        components: Vec<IndexEntry>,
    },
}

impl IndexEntry {
    /// The search parameter code the entry belongs to.
    pub fn param(&self) -> &str {
        match self {
            IndexEntry::Token { param, .. }
            | IndexEntry::String { param, .. }
            | IndexEntry::Date { param, .. }
            | IndexEntry::Reference { param, .. }
            | IndexEntry::ReferenceIdentifier { param, .. }
            | IndexEntry::Number { param, .. }
            | IndexEntry::Quantity { param, .. }
            | IndexEntry::Uri { param, .. }
            | IndexEntry::Composite { param, .. } => param,
        }
    }
}

/// Most combinations one composite node may produce (guards against a cartesian blow-up
/// from resources with many codings and values).
const MAX_COMPOSITE_COMBINATIONS: usize = 64;

/// Extracts the index entries of every official search parameter of the resource's type.
pub fn extract(resource: &Value) -> Vec<IndexEntry> {
    extract_with(SearchParams::get(), resource)
}

/// [`extract`] with a given registry (e.g. one holding custom SearchParameters).
pub fn extract_with(params: &SearchParams, resource: &Value) -> Vec<IndexEntry> {
    extract_where(params, resource, |_| true)
}

/// [`extract_with`] for the parameters `wanted` accepts (the others are not evaluated).
pub fn extract_where(
    params: &SearchParams,
    resource: &Value,
    wanted: impl Fn(&SearchParamDef) -> bool,
) -> Vec<IndexEntry> {
    let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let env = Env::new(resource);
    let mut out = Vec::with_capacity(64);
    for def in params.params_for(rt).iter().filter(|def| wanted(def)) {
        extract_into(def, &env, &mut out);
    }
    out
}

/// The entries of one parameter.
pub fn extract_param(def: &SearchParamDef, resource: &Value) -> Vec<IndexEntry> {
    let env = Env::new(resource);
    let mut out = Vec::new();
    extract_into(def, &env, &mut out);
    out
}

fn extract_into<'a>(def: &'a SearchParamDef, env: &Env<'a>, out: &mut Vec<IndexEntry>) {
    let Some(expr) = &def.expression else {
        return;
    };
    // Skip the evaluation when none of the elements the expression starts from is present
    // (most parameters of a resource type are absent from any one resource).
    if let (Some(tops), Some(Value::Object(obj))) = (&def.top_level, env.resource.json()) {
        let present = |name: &str| {
            obj.keys().any(|k| {
                k.strip_prefix(name).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_uppercase())
                })
            })
        };
        if !tops.iter().any(|t| present(t)) {
            return;
        }
    }
    let nodes = expr.evaluate_on(env, std::slice::from_ref(&env.resource));
    for node in &nodes {
        if def.param_type == ParamType::Composite {
            composite(def, env, node, out);
        } else {
            convert(def.param_type, &def.code, node, env, out);
        }
    }
}

/// Builds the composite entries of one node of the main expression: the cartesian product
/// of the component values, each component evaluated relative to the node.
fn composite<'a>(
    def: &'a SearchParamDef,
    env: &Env<'a>,
    node: &Node<'a>,
    out: &mut Vec<IndexEntry>,
) {
    let mut combos: Vec<Vec<IndexEntry>> = vec![Vec::new()];
    for comp in &def.components {
        let mut values = Vec::new();
        for n in comp.expression.evaluate_on(env, std::slice::from_ref(node)) {
            let ty = comp.param_type.unwrap_or_else(|| guess_type(&n));
            convert(ty, &def.code, &n, env, &mut values);
        }
        // Reference identifiers and CodeableConcept text entries are not composite values.
        values.retain(|v| {
            !matches!(v, IndexEntry::ReferenceIdentifier { .. })
                && !matches!(v, IndexEntry::Token { code: None, .. })
        });
        if values.is_empty() {
            return;
        }
        let mut next = Vec::with_capacity(combos.len() * values.len());
        'outer: for c in combos {
            // The last value takes the combination itself; only extra values copy it.
            let (last, rest) = match values.split_last() {
                Some(x) => x,
                None => break,
            };
            for v in rest {
                if next.len() >= MAX_COMPOSITE_COMBINATIONS {
                    break 'outer;
                }
                let mut copy = c.clone();
                copy.push(v.clone());
                next.push(copy);
            }
            if next.len() >= MAX_COMPOSITE_COMBINATIONS {
                break;
            }
            let mut c = c;
            c.push(last.clone());
            next.push(c);
        }
        combos = next;
    }
    out.extend(combos.into_iter().map(|components| IndexEntry::Composite {
        param: def.code.clone(),
        components,
    }));
}

/// Parameter type for a component whose definition is unknown, from the value's type.
fn guess_type(n: &Node) -> ParamType {
    match n.type_str() {
        "Quantity" | "Age" | "Duration" | "Money" | "Range" | "SimpleQuantity" => {
            ParamType::Quantity
        }
        "date" | "dateTime" | "instant" | "Period" | "Timing" => ParamType::Date,
        "integer" | "decimal" | "positiveInt" | "unsignedInt" => ParamType::Number,
        "Reference" => ParamType::Reference,
        _ => ParamType::Token,
    }
}

fn s(v: &Map<String, Value>, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The string fields `keys` of `obj`, found in one pass over its keys (cheaper than one
/// hash lookup per field for the small objects datatypes are).
fn fields<const N: usize>(obj: &Map<String, Value>, keys: [&str; N]) -> [Option<String>; N] {
    let mut out = [const { None }; N];
    for (k, v) in obj {
        if let Some(i) = keys.iter().position(|x| x == k) {
            out[i] = v.as_str().map(str::to_owned);
        }
    }
    out
}

/// Converts one node to entries of the given parameter type.
fn convert(ty: ParamType, param: &Arc<str>, node: &Node, env: &Env, out: &mut Vec<IndexEntry>) {
    let value: &Value = &node.value;
    let type_name = node.type_str();
    match ty {
        ParamType::Token => token(param, node, type_name, value, out),
        ParamType::String => string(param, type_name, value, out),
        ParamType::Date => {
            if let Some((low, high)) = date_range(type_name, value) {
                out.push(IndexEntry::Date {
                    param: param.clone(),
                    low,
                    high,
                });
            }
        }
        ParamType::Reference => reference(param, value, env, out),
        ParamType::Number => {
            if let Some((value, low, high)) = number(value) {
                out.push(IndexEntry::Number {
                    param: param.clone(),
                    value,
                    low,
                    high,
                });
            }
        }
        ParamType::Quantity => quantity(param, type_name, value, out),
        ParamType::Uri => {
            if let Some(v) = value.as_str() {
                out.push(IndexEntry::Uri {
                    param: param.clone(),
                    value: v.to_owned(),
                });
            }
        }
        // Composites are handled by the caller; `near` (Location.position) needs a geo
        // index the specification leaves to the server.
        ParamType::Composite | ParamType::Special => {}
    }
}

fn push_token(
    out: &mut Vec<IndexEntry>,
    param: &Arc<str>,
    system: Option<String>,
    code: Option<String>,
    display: Option<String>,
) {
    if system.is_none() && code.is_none() && display.is_none() {
        return;
    }
    out.push(IndexEntry::Token {
        param: param.clone(),
        system,
        code,
        display,
        type_system: None,
        type_code: None,
    });
}

/// The implicit system of a `code` value: the code system that defines it in the
/// element's required value set (`female` → `http://hl7.org/fhir/administrative-gender`).
fn implicit_system(node: &Node, code: &str) -> Option<String> {
    let vs = node.element()?.required_value_set()?;
    let set = Definitions::get().required_codes(vs)?;
    set.iter()
        .find(|(_, c)| *c == code)
        .map(|(system, _)| system.to_owned())
}

fn token(param: &Arc<str>, node: &Node, type_name: &str, value: &Value, out: &mut Vec<IndexEntry>) {
    let obj = match value {
        Value::Object(o) => o,
        Value::Bool(b) => return push_token(out, param, None, Some(b.to_string()), None),
        Value::String(v) => {
            let system = if type_name == "code" {
                implicit_system(node, v)
            } else {
                None
            };
            return push_token(out, param, system, Some(v.clone()), None);
        }
        Value::Number(n) => return push_token(out, param, None, Some(n.to_string()), None),
        _ => return,
    };
    // Fall back on the JSON shape when the type is unknown (data outside the model).
    let kind = match type_name {
        "" | "Element" | "BackboneElement" => {
            if obj.contains_key("coding") {
                "CodeableConcept"
            } else if obj.contains_key("code") {
                "Coding"
            } else if obj.contains_key("value") {
                "Identifier"
            } else {
                ""
            }
        }
        t => t,
    };
    match kind {
        "Coding" => {
            let [system, code, display] = fields(obj, ["system", "code", "display"]);
            push_token(out, param, system, code, display)
        }
        "CodeableConcept" => {
            if let Some(codings) = obj.get("coding").and_then(Value::as_array) {
                for c in codings.iter().filter_map(Value::as_object) {
                    let [system, code, display] = fields(c, ["system", "code", "display"]);
                    push_token(out, param, system, code, display);
                }
            }
            if let Some(text) = s(obj, "text") {
                push_token(out, param, None, None, Some(text));
            }
        }
        "Identifier" => {
            let ty = obj
                .get("type")
                .and_then(|t| t.get("coding"))
                .and_then(|c| c.get(0))
                .and_then(Value::as_object);
            let (type_system, type_code) = match ty {
                Some(c) => (s(c, "system"), s(c, "code")),
                None => (None, None),
            };
            let (system, code) = (s(obj, "system"), s(obj, "value"));
            if system.is_some() || code.is_some() {
                out.push(IndexEntry::Token {
                    param: param.clone(),
                    system,
                    code,
                    display: None,
                    type_system,
                    type_code,
                });
            }
        }
        "ContactPoint" => push_token(out, param, None, s(obj, "value"), None),
        // Quantities indexed as tokens (rare): unit system and code.
        "Quantity" | "Age" | "Duration" | "Count" | "Distance" => {
            let [system, code, unit] = fields(obj, ["system", "code", "unit"]);
            push_token(out, param, system, code, unit)
        }
        _ => {}
    }
}

fn push_string(out: &mut Vec<IndexEntry>, param: &Arc<str>, v: Option<&Value>) {
    for item in v.into_iter().flat_map(|v| match v {
        Value::Array(a) => a.as_slice(),
        other => std::slice::from_ref(other),
    }) {
        if let Some(text) = item.as_str() {
            if text.trim().is_empty() {
                continue;
            }
            out.push(IndexEntry::String {
                param: param.clone(),
                normalized: normalize(text),
                exact: text.to_owned(),
            });
        }
    }
}

fn string(param: &Arc<str>, type_name: &str, value: &Value, out: &mut Vec<IndexEntry>) {
    let obj = match value {
        Value::Object(o) => o,
        Value::String(_) => return push_string(out, param, Some(value)),
        _ => return,
    };
    let fields: &[&str] = match type_name {
        "HumanName" => &["family", "given", "prefix", "suffix", "text"],
        "Address" => &[
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "text",
        ],
        // Other complex values searched as strings: their human-readable parts.
        "CodeableConcept" => &["text"],
        "Coding" => &["display"],
        "Annotation" => &["text"],
        "ContactPoint" | "Identifier" => &["value"],
        _ => &[],
    };
    for f in fields {
        push_string(out, param, obj.get(*f));
    }
}

/// Lower-cases, strips diacritics from Latin letters and collapses whitespace, so that
/// `"  Zoë  ÅSTRÖM"` matches a search for `zoe astrom`.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            if c.is_ascii() {
                out.push(c.to_ascii_lowercase());
            } else {
                for l in c.to_lowercase() {
                    match fold(l) {
                        Some(f) => out.push_str(f),
                        None => out.push(l),
                    }
                }
            }
        }
    }
    out
}

/// Base letters of accented lower-case Latin letters (Latin-1 Supplement and Latin
/// Extended-A cover the European languages patients' names are written in).
fn fold(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĳ' => "ij",
        'ĵ' => "j",
        'ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'ŉ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'ș' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' | 'ț' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

/// Inclusive microsecond range of a date-like value.
fn date_range(type_name: &str, value: &Value) -> Option<(i64, i64)> {
    match value {
        Value::String(s) => parse_date_range(s),
        Value::Object(o) => match type_name {
            "Timing" => {
                let events = o.get("event").and_then(Value::as_array);
                let mut range: Option<(i64, i64)> = None;
                for (lo, hi) in events
                    .into_iter()
                    .flatten()
                    .filter_map(|e| parse_date_range(e.as_str()?))
                {
                    range = Some(match range {
                        Some((l, h)) => (l.min(lo), h.max(hi)),
                        None => (lo, hi),
                    });
                }
                range.or_else(|| {
                    let bounds = o.get("repeat")?.get("boundsPeriod")?.as_object()?;
                    period_range(bounds)
                })
            }
            // Period, or any object shaped like one.
            _ => period_range(o),
        },
        _ => None,
    }
}

fn period_range(o: &Map<String, Value>) -> Option<(i64, i64)> {
    let start = o.get("start").and_then(Value::as_str);
    let end = o.get("end").and_then(Value::as_str);
    if start.is_none() && end.is_none() {
        return None;
    }
    let low = match start {
        Some(s) => parse_date_range(s)?.0,
        None => i64::MIN,
    };
    let high = match end {
        Some(e) => parse_date_range(e)?.1,
        None => i64::MAX,
    };
    Some((low, high))
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Parses a FHIR date, dateTime or instant into the inclusive microsecond range its
/// precision implies: `2024` → the whole year, `2024-03` → March, a dateTime with seconds
/// → that second (fractions narrow it further). Offsets are converted to UTC; values
/// without one are taken as UTC.
pub fn parse_date_range(s: &str) -> Option<(i64, i64)> {
    let s = s.trim();
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.splitn(3, '-');
    let year: i32 = parse_digits(parts.next()?, 4)?;
    let month: Option<u32> = match parts.next() {
        Some(m) => Some(parse_digits(m, 2)?),
        None => None,
    };
    let day: Option<u32> = match parts.next() {
        Some(d) => Some(parse_digits(d, 2)?),
        None => None,
    };
    use chrono::NaiveDate;
    let day_micros = |y: i32, m: u32, d: u32| -> Option<i64> {
        let days = NaiveDate::from_ymd_opt(y, m, d)?
            .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?)
            .num_days();
        days.checked_mul(MICROS_PER_DAY)
    };
    let Some(time) = time else {
        return match (month, day) {
            (None, _) => Some((
                day_micros(year, 1, 1)?,
                day_micros(year.checked_add(1)?, 1, 1)? - 1,
            )),
            (Some(m), None) => {
                let (ny, nm) = if m == 12 {
                    (year + 1, 1)
                } else {
                    (year, m + 1)
                };
                Some((day_micros(year, m, 1)?, day_micros(ny, nm, 1)? - 1))
            }
            (Some(m), Some(d)) => {
                let start = day_micros(year, m, d)?;
                Some((start, start + MICROS_PER_DAY - 1))
            }
        };
    };
    let base = day_micros(year, month?, day?)?;
    // Split the offset off: `Z`, `+hh:mm` or `-hh:mm` after the clock time.
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0i64)
    } else if let Some(pos) = time.rfind(['+', '-']) {
        let (c, off) = time.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':')?;
        let secs = parse_digits::<i64>(h, 2)? * 3600 + parse_digits::<i64>(m, 2)? * 60;
        (c, sign * secs)
    } else {
        (time, 0)
    };
    let mut hms = clock.splitn(3, ':');
    let h: i64 = parse_digits(hms.next()?, 2)?;
    let m: i64 = parse_digits(hms.next()?, 2)?;
    if h > 24 || m > 59 {
        return None;
    }
    let (sec, frac, width) = match hms.next() {
        // Minutes precision (not valid R4, tolerated): the whole minute.
        None => (0, 0, 60 * MICROS_PER_SECOND),
        Some(sec_text) => {
            let (whole, frac_text) = match sec_text.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (sec_text, None),
            };
            // A leap second (`:60`) is folded into second 59.
            let sec: i64 = parse_digits::<i64>(whole, 2)?.min(59);
            match frac_text {
                None => (sec, 0, MICROS_PER_SECOND),
                Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                    // Precision beyond microseconds is truncated.
                    let digits = &f[..f.len().min(6)];
                    let scale = 10i64.pow(6 - digits.len() as u32);
                    (sec, digits.parse::<i64>().ok()? * scale, scale)
                }
                Some(_) => return None,
            }
        }
    };
    let low = base
        .checked_add((h * 3600 + m * 60 + sec - offset_secs) * MICROS_PER_SECOND)?
        .checked_add(frac)?;
    Some((low, low.checked_add(width - 1)?))
}

/// Parses an all-digit field of exactly `len` digits.
fn parse_digits<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// A decimal value and the range its significant digits imply (`5.4` → 5.35..5.45,
/// `100` → 99.5..100.5).
fn number(v: &Value) -> Option<(f64, f64, f64)> {
    let Value::Number(n) = v else { return None };
    // With `arbitrary_precision` the Number prints its original text.
    let text = n.to_string();
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (text.as_str(), 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32);
    let half = 0.5 * 10f64.powi(exp.saturating_sub(decimals));
    Some((value, value - half, value + half))
}

fn quantity(param: &Arc<str>, type_name: &str, value: &Value, out: &mut Vec<IndexEntry>) {
    let Value::Object(o) = value else { return };
    match type_name {
        "Range" => {
            let bound = |k: &str| o.get(k).and_then(|q| q.get("value")).and_then(number);
            let (low, high) = (bound("low"), bound("high"));
            if low.is_none() && high.is_none() {
                return;
            }
            let unit_src = o
                .get("low")
                .or_else(|| o.get("high"))
                .and_then(Value::as_object);
            out.push(IndexEntry::Quantity {
                param: param.clone(),
                value: None,
                low: low.map_or(f64::MIN, |n| n.1),
                high: high.map_or(f64::MAX, |n| n.2),
                system: unit_src.and_then(|u| s(u, "system")),
                code: unit_src.and_then(|u| s(u, "code")),
                unit: unit_src.and_then(|u| s(u, "unit")),
            });
        }
        "Money" => {
            if let Some((v, low, high)) = o.get("value").and_then(number) {
                out.push(IndexEntry::Quantity {
                    param: param.clone(),
                    value: Some(v),
                    low,
                    high,
                    system: Some("urn:iso:std:iso:4217".to_owned()),
                    code: s(o, "currency"),
                    unit: None,
                });
            }
        }
        // Quantity and its profiles (Age, Duration, Count, Distance, SimpleQuantity...).
        // SampledData has no single value to index.
        "SampledData" => {}
        _ => {
            if let Some((v, mut low, mut high)) = o.get("value").and_then(number) {
                let [system, code, unit, comparator] =
                    fields(o, ["system", "code", "unit", "comparator"]);
                // `<5` means anything below 5, `>5` anything above.
                match comparator.as_deref() {
                    Some("<") | Some("<=") => low = f64::MIN,
                    Some(">") | Some(">=") => high = f64::MAX,
                    _ => {}
                }
                out.push(IndexEntry::Quantity {
                    param: param.clone(),
                    value: Some(v),
                    low,
                    high,
                    system,
                    code,
                    unit,
                });
            }
        }
    }
}

fn reference(param: &Arc<str>, value: &Value, env: &Env, out: &mut Vec<IndexEntry>) {
    match value {
        // canonical / uri: the URL, without its `|version`.
        Value::String(url) => {
            let (url, version) = match url.split_once('|') {
                Some((u, v)) => (u, Some(v.to_owned())),
                None => (url.as_str(), None),
            };
            out.push(IndexEntry::Reference {
                param: param.clone(),
                target_type: None,
                target_id: None,
                version,
                url: url.to_owned(),
            });
        }
        // A resource itself (`Bundle.entry[0].resource` for Bundle `composition`/`message`):
        // index it as a reference to that resource, for chained searches.
        Value::Object(o) if o.contains_key("resourceType") => {
            let ty = s(o, "resourceType");
            let id = s(o, "id");
            let url = match (&ty, &id) {
                (Some(t), Some(i)) => format!("{t}/{i}"),
                _ => return,
            };
            out.push(IndexEntry::Reference {
                param: param.clone(),
                target_type: ty,
                target_id: id,
                version: None,
                url,
            });
        }
        Value::Object(o) => {
            if let Some(r) = o.get("reference").and_then(Value::as_str) {
                out.push(literal_reference(param, r, env));
            }
            if let Some(id) = o.get("identifier").and_then(Value::as_object) {
                let (system, code) = (s(id, "system"), s(id, "value"));
                if system.is_some() || code.is_some() {
                    out.push(IndexEntry::ReferenceIdentifier {
                        param: param.clone(),
                        system,
                        code,
                    });
                }
            }
        }
        _ => {}
    }
}

/// Parses `Reference.reference`: `Patient/1`, `Patient/1/_history/2`,
/// `https://x/fhir/Patient/1`, `urn:uuid:...` (URL only), `#contained` (typed by the
/// contained resource).
fn literal_reference(param: &Arc<str>, r: &str, env: &Env) -> IndexEntry {
    let (mut target_type, mut target_id, mut version) = (None, None, None);
    if let Some(local) = r.strip_prefix('#') {
        target_type = env
            .resource
            .json()
            .and_then(|res| res.get("contained")?.as_array())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("id").and_then(Value::as_str) == Some(local))
            })
            .and_then(|c| c.get("resourceType")?.as_str())
            .map(str::to_owned);
    } else if let Some((ty, id)) = fhirpath::reference_type_id(r) {
        target_type = Some(ty.to_owned());
        target_id = Some(id.to_owned());
        if let Some((_, v)) = r.split_once("/_history/") {
            version = Some(v.to_owned());
        }
    }
    IndexEntry::Reference {
        param: param.clone(),
        target_type,
        target_id,
        version,
        url: r.to_owned(),
    }
}

#[cfg(test)]
mod tests;
