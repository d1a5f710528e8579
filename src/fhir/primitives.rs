//! Lexical checks of FHIR primitive values in their JSON form.
//!
//! Declared as `crate::fhir::validation::primitives` (a child module of `validation`, so
//! that `src/fhir/mod.rs` does not need to change). The regexes come from
//! [`TypeDef::regex`]; what a regex cannot express (JSON type, integer ranges, calendar
//! validity, the 1 MB string limit, xhtml shape, base64 padding) is checked here.

use serde_json::Value;

use crate::fhir::definitions::{JsonKind, PrimitiveType, TypeDef};

/// FHIR: "strings SHALL NOT exceed 1MB in size".
pub const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Why a primitive value is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimitiveError {
    /// The JSON type is wrong (e.g. a string for a decimal); carries the expected form.
    WrongJsonType { expected: &'static str },
    /// `""` — FHIR forbids empty strings (use absence instead).
    Empty,
    /// Longer than [`MAX_STRING_BYTES`].
    TooLong { bytes: usize },
    /// Lexically invalid; carries a human explanation of the expected format.
    Invalid { hint: String },
}

/// Checks one primitive value (never `null`; callers handle that) against its type.
/// `ty` must be a primitive [`TypeDef`]; other types are accepted without checks.
pub fn check_primitive(ty: &TypeDef, value: &Value) -> Result<(), PrimitiveError> {
    let Some(prim) = ty.primitive else {
        return Ok(());
    };
    match prim.json_kind() {
        JsonKind::Boolean => match value {
            Value::Bool(_) => Ok(()),
            _ => Err(PrimitiveError::WrongJsonType {
                expected: "a JSON boolean (true or false)",
            }),
        },
        JsonKind::Number => match value {
            Value::Number(n) => check_number(prim, ty, n.as_str()),
            _ => Err(PrimitiveError::WrongJsonType {
                expected: "a JSON number",
            }),
        },
        JsonKind::String => match value {
            Value::String(s) => check_string(prim, ty, s),
            _ => Err(PrimitiveError::WrongJsonType {
                expected: "a JSON string",
            }),
        },
    }
}

/// Decimal and integer types: the number's text as written (the crate keeps it with
/// `arbitrary_precision`) must match the type's lexical form, and integers must fit the
/// 32-bit range the spec defines.
fn check_number(prim: PrimitiveType, ty: &TypeDef, text: &str) -> Result<(), PrimitiveError> {
    if !ty.regex.as_ref().is_none_or(|re| re.is_match(text)) {
        return Err(PrimitiveError::Invalid {
            hint: format!("'{text}' is not a valid {}: {}", prim.name(), hint(prim)),
        });
    }
    let (lo, label) = match prim {
        PrimitiveType::Integer => (i64::from(i32::MIN), "-2147483648..2147483647"),
        PrimitiveType::UnsignedInt => (0, "0..2147483647"),
        PrimitiveType::PositiveInt => (1, "1..2147483647"),
        _ => return Ok(()),
    };
    match text.trim_start_matches('+').parse::<i64>() {
        Ok(v) if v >= lo && v <= i64::from(i32::MAX) => Ok(()),
        _ => Err(PrimitiveError::Invalid {
            hint: format!("{text} is out of range for {} ({label})", prim.name()),
        }),
    }
}

fn check_string(prim: PrimitiveType, ty: &TypeDef, s: &str) -> Result<(), PrimitiveError> {
    if s.is_empty() {
        return Err(PrimitiveError::Empty);
    }
    if s.len() > MAX_STRING_BYTES && matches!(prim, PrimitiveType::String | PrimitiveType::Markdown)
    {
        return Err(PrimitiveError::TooLong { bytes: s.len() });
    }
    let ok = match prim {
        // The regex only demands non-empty text, checked above; skip scanning 1 MB strings.
        PrimitiveType::String | PrimitiveType::Markdown => true,
        // Hand-coded equivalents of the (hot) simple regexes.
        PrimitiveType::Uri | PrimitiveType::Url | PrimitiveType::Canonical => {
            !s.bytes().any(is_xml_space)
        }
        PrimitiveType::Code => is_code(s),
        PrimitiveType::Id => {
            s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        PrimitiveType::Xhtml => is_xhtml_div(s),
        PrimitiveType::Base64Binary => is_base64(s),
        PrimitiveType::Date | PrimitiveType::DateTime | PrimitiveType::Instant => {
            ty.regex.as_ref().is_none_or(|re| re.is_match(s)) && is_calendar_date(s)
        }
        _ => ty.regex.as_ref().is_none_or(|re| re.is_match(s)),
    };
    if ok {
        Ok(())
    } else {
        Err(PrimitiveError::Invalid {
            hint: format!(
                "'{}' is not a valid {}: {}",
                abbreviate(s),
                prim.name(),
                hint(prim)
            ),
        })
    }
}

/// What a valid value looks like, for error messages.
fn hint(prim: PrimitiveType) -> &'static str {
    use PrimitiveType::*;
    match prim {
        Base64Binary => "expected base64 text (A-Z a-z 0-9 + /, padded with =)",
        Boolean => "expected true or false",
        Canonical | Uri | Url => "must not contain spaces, tabs or line breaks",
        Code => "must not have leading/trailing whitespace or repeated inner spaces",
        Date => "expected YYYY, YYYY-MM or YYYY-MM-DD (a real calendar date)",
        DateTime => {
            "expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.sss](Z|+hh:mm|-hh:mm)"
        }
        Decimal => "expected a JSON number such as 1, -0.5 or 1.50",
        Id => "expected 1-64 characters from A-Z a-z 0-9 - .",
        Instant => {
            "expected YYYY-MM-DDThh:mm:ss[.sss](Z|+hh:mm|-hh:mm) with seconds and a time zone"
        }
        Integer => "expected a whole JSON number without fraction or exponent",
        Markdown | String => "must not be empty",
        Oid => "expected urn:oid: followed by a dotted OID such as 1.2.3",
        PositiveInt => "expected a whole JSON number >= 1",
        Time => "expected hh:mm:ss[.sss]",
        UnsignedInt => "expected a whole JSON number >= 0",
        Uuid => "expected urn:uuid: followed by a lower-case UUID",
        Xhtml => "expected an XHTML <div xmlns=\"http://www.w3.org/1999/xhtml\"> element",
    }
}

/// Shortens long values quoted in messages.
fn abbreviate(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Whitespace as XML Schema (and so the spec's regexes) defines it.
fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `code`: `[^\s]+(\s[^\s]+)*` — no leading, trailing or doubled whitespace.
fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    !is_xml_space(first)
        && !is_xml_space(last)
        && !b
            .windows(2)
            .any(|w| is_xml_space(w[0]) && is_xml_space(w[1]))
}

/// Narrative `div`: must be an XHTML `<div>` in the XHTML namespace (txt-1/txt-2 are
/// invariants we only check in this basic form: full XHTML parsing is out of scope).
fn is_xhtml_div(s: &str) -> bool {
    let t = s.trim_start();
    let Some(rest) = t.strip_prefix("<div") else {
        return false;
    };
    let tag_end = rest.find('>').unwrap_or(rest.len());
    let open_tag = &rest[..tag_end];
    (rest.starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/'))
        && open_tag.contains("http://www.w3.org/1999/xhtml")
}

/// Base64 with optional whitespace (the spec allows line breaks): characters from the
/// base64 alphabet, a multiple of 4 in total, `=` padding only at the end.
fn is_base64(s: &str) -> bool {
    let mut count = 0usize;
    let mut padding = 0usize;
    for b in s.bytes() {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            b'=' => padding += 1,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if padding == 0 => {}
            _ => return false,
        }
        count += 1;
    }
    count.is_multiple_of(4) && padding <= 2
}

/// The regexes allow day 31 in every month; reject dates that do not exist (2019-02-29).
fn is_calendar_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return true; // partial date (YYYY or YYYY-MM): nothing more to check
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok());
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::definitions::Definitions;
    use serde_json::json;

    fn check(ty: &str, v: Value) -> Result<(), PrimitiveError> {
        check_primitive(Definitions::get().type_def(ty).unwrap(), &v)
    }

    fn num(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn json_types() {
        assert!(check("boolean", json!(true)).is_ok());
        assert!(matches!(
            check("boolean", json!("true")),
            Err(PrimitiveError::WrongJsonType { .. })
        ));
        assert!(matches!(
            check("decimal", json!("1.5")),
            Err(PrimitiveError::WrongJsonType { .. })
        ));
        assert!(matches!(
            check("string", json!(1)),
            Err(PrimitiveError::WrongJsonType { .. })
        ));
        assert!(matches!(
            check("integer", json!("1")),
            Err(PrimitiveError::WrongJsonType { .. })
        ));
    }

    #[test]
    fn numbers() {
        assert!(check("decimal", num("1.50")).is_ok());
        assert!(check("decimal", num("-0.001")).is_ok());
        assert!(check("decimal", num("1e3")).is_ok());
        assert!(check("integer", num("-5")).is_ok());
        assert!(check("integer", num("1.0")).is_err());
        assert!(check("integer", num("2147483648")).is_err());
        assert!(check("integer", num("-2147483648")).is_ok());
        assert!(check("unsignedInt", num("0")).is_ok());
        assert!(check("unsignedInt", num("-1")).is_err());
        assert!(check("positiveInt", num("0")).is_err());
        assert!(check("positiveInt", num("1")).is_ok());
    }

    #[test]
    fn strings() {
        assert_eq!(check("string", json!("")), Err(PrimitiveError::Empty));
        assert!(check("string", json!(" x ")).is_ok());
        let big = "x".repeat(MAX_STRING_BYTES + 1);
        assert!(matches!(
            check("string", json!(big)),
            Err(PrimitiveError::TooLong { .. })
        ));
        assert!(check("code", json!("final")).is_ok());
        assert!(check("code", json!("final ")).is_err());
        assert!(check("uri", json!("http://a b")).is_err());
        assert!(check("id", json!("a_b")).is_err());
        assert!(check("oid", json!("urn:oid:2.16.840")).is_ok());
        assert!(check(
            "uuid",
            json!("urn:uuid:C757873D-EC9A-4326-A141-556F43239520")
        )
        .is_err());
    }

    #[test]
    fn dates() {
        assert!(check("date", json!("2020")).is_ok());
        assert!(check("date", json!("2020-02-29")).is_ok());
        assert!(check("date", json!("2019-02-29")).is_err());
        assert!(check("date", json!("2019-04-31")).is_err());
        assert!(check("date", json!("2019-1-1")).is_err());
        assert!(check("dateTime", json!("2019-01-01T10:00:00Z")).is_ok());
        assert!(check("dateTime", json!("2019-01-01T10:00Z")).is_err());
        assert!(check("dateTime", json!("2019-01-01T10:00:00")).is_err());
        assert!(check("instant", json!("2019-01-01T10:00:00.5+02:00")).is_ok());
        assert!(check("instant", json!("2019-01-01")).is_err());
        assert!(check("time", json!("10:00:00")).is_ok());
        assert!(check("time", json!("25:00:00")).is_err());
    }

    #[test]
    fn base64_and_xhtml() {
        assert!(check("base64Binary", json!("aGVsbG8gd29ybGQ=")).is_ok());
        assert!(check("base64Binary", json!("aGVs\nbG8=")).is_ok());
        assert!(check("base64Binary", json!("aGVsbG8")).is_err());
        assert!(check("base64Binary", json!("aG=sbG8=")).is_err());
        assert!(check(
            "xhtml",
            json!("<div xmlns=\"http://www.w3.org/1999/xhtml\">hi</div>")
        )
        .is_ok());
        assert!(check("xhtml", json!("<p>hi</p>")).is_err());
        assert!(check("xhtml", json!("<div>no namespace</div>")).is_err());
    }
}
