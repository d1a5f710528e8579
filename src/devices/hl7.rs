//! HL7 v2 ER7 ("pipe and hat") parsing for messages sent by bedside devices.
//!
//! This is written in-house rather than taken from a crate because the crates
//! we evaluated either panicked on non-ASCII text followed by an escape
//! sequence or silently mis-parsed LF-separated messages. Messages arrive from
//! an untrusted network, so every function here must return a value or an
//! error for any input and never panic: there is no indexing and every slice
//! is taken at a boundary returned by `str` searching.
//!
//! Segments keep their fields raw; splitting into repetitions, components and
//! subcomponents happens lazily, and unescaping is applied only to the final
//! piece. Doing it in that order is what makes an escaped `\S\` inside a
//! component a literal `^` instead of a component break.

use std::fmt;

/// The delimiters of a message, read from MSH-1 and MSH-2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    /// The delimiters recommended by the standard, so callers building a
    /// message from scratch need not spell them out.
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// Reads MSH-1 and MSH-2 from the first segment. The delimiters are
    /// validated up front because every later split depends on them: a
    /// duplicated or alphanumeric delimiter would make the whole message
    /// ambiguous, and rejecting it is better than guessing.
    fn from_msh(line: &str) -> Result<Delimiters, ParseError> {
        let Some(rest) = line.strip_prefix("MSH") else {
            return Err(ParseError::new(format!(
                "first segment must be MSH, found {:?}",
                preview(line)
            )));
        };
        let mut chars = rest.chars();
        let Some(field) = chars.next() else {
            return Err(ParseError::new(
                "MSH segment too short: no field separator (MSH-1) after \"MSH\"",
            ));
        };
        // Bounded so that a huge line without a second separator costs nothing.
        let enc: Vec<char> = chars.take_while(|&c| c != field).take(6).collect();
        let (component, repetition, escape, subcomponent, truncation) = match enc.as_slice() {
            [c, r, e, s] => (*c, *r, *e, *s, None),
            [c, r, e, s, t] => (*c, *r, *e, *s, Some(*t)),
            other => {
                let (n, more) = (other.len(), if other.len() > 5 { " or more" } else { "" });
                let msg = format!("MSH-2 must hold 4 or 5 encoding characters, found {n}{more}");
                return Err(ParseError::new(msg));
            }
        };
        let all: Vec<char> = [field, component, repetition, escape, subcomponent]
            .into_iter()
            .chain(truncation)
            .collect();
        if let Some(bad) = all
            .iter()
            .find(|c| c.is_alphanumeric() || c.is_whitespace() || c.is_control())
        {
            return Err(ParseError::new(format!(
                "MSH-1/MSH-2 delimiter {bad:?} is not allowed (letter, digit, space or control)"
            )));
        }
        let distinct = all
            .iter()
            .enumerate()
            .all(|(i, c)| !all.iter().skip(i + 1).any(|d| d == c));
        if !distinct {
            return Err(ParseError::new(
                "MSH-1/MSH-2 delimiters must all be different from each other",
            ));
        }
        Ok(Delimiters {
            field,
            component,
            repetition,
            escape,
            subcomponent,
            truncation,
        })
    }
}

/// A parsed message. Segments own their text so a message can outlive the
/// network buffer it was read from.
#[derive(Debug, Clone)]
pub struct Message {
    pub delimiters: Delimiters,
    segments: Vec<Segment>,
}

/// One segment. The delimiters are copied in so that [`Segment::field`] can
/// hand out self-contained [`Field`]s without a reference to the message.
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    fields: Vec<String>,
    position: usize,
    delimiters: Delimiters,
}

/// Why a message was rejected; the text is meant for logs and for the
/// ACK/NAK sent back to the device, so it names the segment when it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
}

impl ParseError {
    fn new(message: impl Into<String>) -> Self {
        ParseError {
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid HL7 message: {}", self.message)
    }
}

impl std::error::Error for ParseError {}

/// Shortens untrusted text quoted in error messages so a garbage line cannot
/// flood the logs.
fn preview(text: &str) -> String {
    text.chars().take(20).collect()
}

impl Message {
    /// Parses a message; segments end with \r, \n or \r\n (any mix); empty
    /// lines are skipped; a leading UTF-8 BOM and leading whitespace are
    /// ignored. The first segment must be MSH (else Err saying so), with MSH-1
    /// the character after "MSH" and MSH-2 the following 4 or 5 encoding
    /// characters (component, repetition, escape, subcomponent[, truncation])
    /// up to the next field separator. Segment names must be 3 uppercase
    /// letters/digits, else Err naming the segment number (1-based) and what
    /// was found.
    ///
    /// The standard only allows \r, but devices and test tools routinely send
    /// \n or \r\n, and treating those as segment content would silently merge
    /// segments; accepting all of them is the safe reading. Lines holding only
    /// whitespace are skipped too, since they are framing noise, not segments.
    pub fn parse(text: &str) -> Result<Message, ParseError> {
        let text = text.trim_start_matches(|c: char| c == '\u{FEFF}' || c.is_whitespace());
        let mut lines = text
            .split(['\r', '\n'])
            .filter(|line| !line.trim().is_empty());
        let first = lines
            .next()
            .ok_or_else(|| ParseError::new("empty message"))?;
        let delimiters = Delimiters::from_msh(first)?;
        let segments = std::iter::once(first)
            .chain(lines)
            .enumerate()
            .map(|(i, line)| Segment::parse(line, i + 1, &delimiters))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Message {
            delimiters,
            segments,
        })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The first segment with this name.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    /// Lazy so that callers scanning for OBX segments do not allocate.
    pub fn segments_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.name == name)
    }

    /// MSH-9 components (e.g. ("ORU","R01")), MSH-10, MSH-12 (decoded, empty
    /// string when absent). Missing values are empty strings rather than
    /// errors because the caller decides which ones it needs (e.g. for the ACK).
    pub fn message_type(&self) -> (String, String) {
        (
            self.msh(9, |f| f.component(1)),
            self.msh(9, |f| f.component(2)),
        )
    }

    pub fn control_id(&self) -> String {
        self.msh(10, |f| f.text())
    }

    /// MSH-12 is a VID; only its first component is the version number.
    pub fn version(&self) -> String {
        self.msh(12, |f| f.component(1))
    }

    fn msh(&self, n: usize, read: impl Fn(Field<'_>) -> String) -> String {
        let msh = self.segment("MSH");
        msh.map(|s| read(s.field(n))).unwrap_or_default()
    }
}

impl Segment {
    fn parse(line: &str, position: usize, delimiters: &Delimiters) -> Result<Segment, ParseError> {
        let mut parts = line.split(delimiters.field);
        let name = parts.next().unwrap_or("");
        let valid = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit();
        if name.len() != 3 || !name.bytes().all(valid) {
            return Err(ParseError::new(format!(
                "segment {position}: invalid segment name {:?}, expected 3 uppercase letters or digits",
                preview(name)
            )));
        }
        let mut fields = Vec::new();
        // In MSH the separator after the name is itself field 1, so storing it
        // keeps `field(n)` aligned with HL7 numbering for every segment.
        if name == "MSH" {
            fields.push(delimiters.field.to_string());
        }
        fields.extend(parts.map(str::to_owned));
        Ok(Segment {
            name: name.to_owned(),
            fields,
            position,
            delimiters: delimiters.clone(),
        })
    }

    /// Field `n` in HL7 numbering (1-based). For MSH, MSH-1 is the field
    /// separator itself and MSH-2 the encoding characters (returned raw, never
    /// unescaped), so MSH-3 is the first field after them — exactly as HL7
    /// numbers them. A field beyond the end (or `n == 0`) is empty, because
    /// HL7 senders routinely omit trailing empty fields.
    pub fn field(&self, n: usize) -> Field<'_> {
        let raw = n
            .checked_sub(1)
            .and_then(|i| self.fields.get(i))
            .map_or("", String::as_str);
        Field {
            raw,
            delimiters: &self.delimiters,
            literal: self.name == "MSH" && (n == 1 || n == 2),
        }
    }

    /// Number of fields present (HL7 numbering, i.e. the highest n with a
    /// field, even empty).
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// 1-based position of this segment in the message (for error locations
    /// such as OBX^4^3). Skipped blank lines do not count, matching how the
    /// sender numbers its segments.
    pub fn position(&self) -> usize {
        self.position
    }
}

/// A borrowed field. Splitting and unescaping happen on access, so fields a
/// caller never looks at cost nothing.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    delimiters: &'a Delimiters,
    /// MSH-1 and MSH-2 contain the delimiters themselves; splitting or
    /// unescaping them would destroy their value.
    literal: bool,
}

impl<'a> Field<'a> {
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Raw text empty. Note that `""` (HL7 "delete this value") is not empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Repetitions (split on the repetition delimiter); an empty field has
    /// one empty repetition, so callers can treat every field uniformly.
    pub fn repetitions(&self) -> Vec<Field<'a>> {
        let split = self.split(self.raw, self.delimiters.repetition);
        split.map(|raw| Field { raw, ..*self }).collect()
    }

    /// Splits on `sep` unless the field is literal. A closure pattern keeps
    /// MSH-1/MSH-2 on the same code path as every other field.
    fn split(&self, text: &'a str, sep: char) -> impl Iterator<Item = &'a str> {
        let literal = self.literal;
        text.split(move |c: char| !literal && c == sep)
    }

    /// Most data types never repeat, so component access reads the first
    /// repetition rather than forcing every caller through `repetitions()`.
    fn first_repetition(&self) -> &'a str {
        let mut split = self.split(self.raw, self.delimiters.repetition);
        split.next().unwrap_or("")
    }

    fn nth_component(&self, n: usize) -> Option<&'a str> {
        let mut split = self.split(self.first_repetition(), self.delimiters.component);
        split.nth(n.checked_sub(1)?)
    }

    fn decode(&self, piece: &str) -> String {
        if self.literal {
            piece.to_owned()
        } else {
            unescape(piece, self.delimiters)
        }
    }

    /// Component `n` (1-based) of the FIRST repetition, unescaped; "" when
    /// absent.
    pub fn component(&self, n: usize) -> String {
        self.nth_component(n)
            .map_or_else(String::new, |piece| self.decode(piece))
    }

    /// All components of the first repetition, unescaped. PCD waveform (NA)
    /// values separate samples with the component delimiter, so this is also
    /// how samples are read.
    pub fn components(&self) -> Vec<String> {
        let split = self.split(self.first_repetition(), self.delimiters.component);
        split.map(|piece| self.decode(piece)).collect()
    }

    /// Subcomponent `s` of component `c` (both 1-based) of the first
    /// repetition, unescaped.
    pub fn subcomponent(&self, c: usize, s: usize) -> String {
        self.nth_component(c)
            .zip(s.checked_sub(1))
            .and_then(|(comp, i)| self.split(comp, self.delimiters.subcomponent).nth(i))
            .map_or_else(String::new, |piece| self.decode(piece))
    }

    /// The whole first repetition unescaped, with component/subcomponent
    /// delimiters kept as they are (for ST/TX values, where a `^` typed by
    /// the sender without escaping should survive rather than truncate).
    pub fn text(&self) -> String {
        self.decode(self.first_repetition())
    }
}

/// Escapes text for use in a field (delimiters → \F\ \S\ \T\ \R\ \E\,
/// truncation → \P\, CR/LF → \.br\). Line breaks must be escaped because a
/// raw CR would end the segment on the receiving side.
pub fn escape(text: &str, delimiters: &Delimiters) -> String {
    let d = delimiters;
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let code = match c {
            _ if c == d.escape => "E",
            _ if c == d.field => "F",
            _ if c == d.component => "S",
            _ if c == d.subcomponent => "T",
            _ if c == d.repetition => "R",
            _ if Some(c) == d.truncation => "P",
            '\r' | '\n' => {
                if c == '\r' {
                    chars.next_if_eq(&'\n');
                }
                ".br"
            }
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push(d.escape);
        out.push_str(code);
        out.push(d.escape);
    }
    out
}

/// Unescapes one already-split piece: \F\ \S\ \T\ \R\ \E\ \P\ (truncation
/// char) → the delimiter; \Xhh..\ → the bytes (hex pairs) decoded as UTF-8
/// (lossy); \.br\ → "\n"; \H\ and \N\ (highlighting) removed; \Zxx..\,
/// \Cxxxx\, \Mxxxxxx\ and unknown or unterminated escapes kept literally.
///
/// Unknown sequences are kept rather than dropped so no data is lost. An
/// escape char followed by text that cannot be an escape body (anything but
/// ASCII letters, digits, `.`, `+`, `-`) is taken as a stray literal, so a
/// sender that forgot to escape a backslash does not swallow the next real
/// escape sequence.
pub fn unescape(text: &str, delimiters: &Delimiters) -> String {
    let esc = delimiters.escape;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, after)) = rest.split_once(esc) {
        out.push_str(before);
        match after.split_once(esc) {
            Some((body, tail)) if is_escape_body(body) => {
                if !decode_escape(body, delimiters, &mut out) {
                    out.push(esc);
                    out.push_str(body);
                    out.push(esc);
                }
                rest = tail;
            }
            _ => {
                out.push(esc);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_escape_body(body: &str) -> bool {
    !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
}

/// Appends the meaning of a known escape body; false means "keep literally".
fn decode_escape(body: &str, d: &Delimiters, out: &mut String) -> bool {
    let c = match body {
        "F" => d.field,
        "S" => d.component,
        "T" => d.subcomponent,
        "R" => d.repetition,
        "E" => d.escape,
        "P" => match d.truncation {
            Some(t) => t,
            None => return false,
        },
        ".br" => '\n',
        // Highlighting has no meaning in stored values.
        "H" | "N" => return true,
        _ => {
            return match body.strip_prefix('X') {
                Some(hex) => decode_hex(hex, out),
                None => false,
            }
        }
    };
    out.push(c);
    true
}

/// Hex escapes carry raw bytes; they are decoded as UTF-8 lossily because the
/// message text is already UTF-8 and a bad byte must not reject a message.
fn decode_hex(hex: &str, out: &mut String) -> bool {
    if hex.is_empty() {
        return false;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.as_bytes().chunks(2) {
        let [high, low] = pair else {
            return false;
        };
        let (Some(high), Some(low)) = (hex_value(*high), hex_value(*low)) else {
            return false;
        };
        bytes.push((high << 4) | low);
    }
    out.push_str(&String::from_utf8_lossy(&bytes));
    true
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCD01: &[&str] = &[
        "MSH|^~\\&|VSP^080019FFFE1443EC^EUI-64|GE Healthcare|||20230309143900||ORU^R01^ORU_R01|0040971443EC|P|2.6|||NE|AL||UNICODE UTF-8|||PCD_DEC_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
        "PID|||3499999^^^PID^MR||KOKONOVA^TAMARA^^^^^L||19680309000000|",
        "PV1||E|X^^443EC",
        "OBR|1|080019FFFE1443EC20230309143900^VSP^080019FFFE1443EC^EUI-64|080019FFFE1443EC20230309143900^VSP^080019FFFE1443EC^EUI-64|182777000^monitoring of patient^SCT|||20230309143900",
        "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X",
        "OBX|2||69798^MDC_DEV_ECG_VMD^MDC|1.5.0.0|||||||X",
        "OBX|3|NM|147842^MDC_ECG_HEART_RATE^MDC|1.5.1.1|68|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||||||080019FFFE1443EC^B40_GE",
    ];

    fn parse(text: &str) -> Message {
        Message::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn parse_err(text: &str) -> String {
        Message::parse(text).map_or_else(|e| e.message, |_| panic!("no error for {text:?}"))
    }

    /// Segment 2 of a message with default delimiters, e.g. `ZZZ|...`.
    fn second(segment: &str) -> Segment {
        parse(&format!("MSH|^~\\&|A\r{segment}")).segments()[1].clone()
    }

    fn check_unescape(cases: &[(&str, &str)]) {
        for (input, expected) in cases {
            let d = Delimiters::default();
            assert_eq!(unescape(input, &d), *expected, "{input:?}");
        }
    }

    fn check_pcd01(m: &Message) {
        assert_eq!(m.segments().len(), 7);
        assert_eq!(m.delimiters, Delimiters::default());
        assert_eq!(m.message_type(), ("ORU".into(), "R01".into()));
        assert_eq!(m.control_id(), "0040971443EC");
        assert_eq!(m.version(), "2.6");
        let pid = m.segment("PID").expect("PID").field(3);
        assert_eq!(pid.components()[..5], ["3499999", "", "", "PID", "MR"]);
        let obx = m.segments_named("OBX").nth(2).expect("OBX 3");
        assert_eq!(obx.field(3).component(1), "147842");
        assert_eq!(obx.field(3).component(2), "MDC_ECG_HEART_RATE");
        assert_eq!(obx.field(4).raw(), "1.5.1.1");
        assert_eq!(obx.field(5).text(), "68");
        assert_eq!(obx.field(6).component(1), "264864");
        assert_eq!(obx.field(11).text(), "R");
        assert_eq!(obx.field(18).component(1), "080019FFFE1443EC");
        assert_eq!((obx.position(), obx.len()), (7, 18));
    }

    #[test]
    fn pcd01_with_cr() {
        check_pcd01(&parse(&PCD01.join("\r")));
    }

    #[test]
    fn pcd01_with_lf() {
        check_pcd01(&parse(&PCD01.join("\n")));
    }

    #[test]
    fn pcd01_with_crlf() {
        check_pcd01(&parse(&(PCD01.join("\r\n") + "\r\n")));
    }

    #[test]
    fn pcd01_with_bom_whitespace_and_blank_lines() {
        let messy = format!("\u{FEFF} \r\n\t{}\r\r\n \n", PCD01.join("\n\r"));
        check_pcd01(&parse(&messy));
    }

    #[test]
    fn msh_numbering() {
        let m = parse(&PCD01.join("\r"));
        let msh = m.segment("MSH").expect("MSH");
        assert_eq!((msh.field(1).raw(), msh.field(2).raw()), ("|", "^~\\&"));
        let enc = msh.field(2);
        for decoded in [enc.text(), enc.component(1), enc.subcomponent(1, 1)] {
            assert_eq!(decoded, "^~\\&");
        }
        assert_eq!((enc.components().len(), enc.repetitions().len()), (1, 1));
        assert_eq!(msh.field(3).component(3), "EUI-64");
        assert_eq!(msh.field(9).components(), ["ORU", "R01", "ORU_R01"]);
        assert_eq!(msh.field(10).text(), "0040971443EC");
        assert_eq!(msh.len(), 21);
    }

    #[test]
    fn segment_positions_and_lookup() {
        let m = parse(&PCD01.join("\n\n"));
        let obx: Vec<usize> = m.segments_named("OBX").map(Segment::position).collect();
        assert_eq!(obx, [5, 6, 7]);
        assert_eq!(m.segment("OBX").map(Segment::position), Some(5));
        assert!(m.segment("NTE").is_none());
    }

    #[test]
    fn custom_delimiters() {
        let m = parse("MSH#*~!@#APP*FAC#X\rOBX#1#ST#a*b@c~d#x!S!y!F!z!E!!T!!R!");
        let d = &m.delimiters;
        let chars = [d.field, d.component, d.repetition, d.escape, d.subcomponent];
        assert_eq!(chars, ['#', '*', '~', '!', '@']);
        assert_eq!(m.segments()[0].field(2).raw(), "*~!@");
        assert_eq!(m.segments()[0].field(3).component(2), "FAC");
        let obx = m.segment("OBX").expect("OBX");
        assert_eq!(obx.field(3).subcomponent(2, 2), "c");
        assert_eq!(obx.field(3).repetitions()[1].text(), "d");
        assert_eq!(obx.field(4).text(), "x*y#z!@~");
    }

    #[test]
    fn truncation_character() {
        let m = parse("MSH|^~\\&#|A\rZZZ|a\\P\\b|x#y");
        assert_eq!(m.delimiters.truncation, Some('#'));
        assert_eq!(m.segments()[0].field(2).raw(), "^~\\&#");
        assert_eq!(m.segments()[1].field(1).text(), "a#b");
        assert_eq!(m.segments()[1].field(2).text(), "x#y");
        check_unescape(&[("a\\P\\b", "a\\P\\b")]); // no truncation char defined
    }

    #[test]
    fn unescape_delimiters_hex_and_formatting() {
        check_unescape(&[
            ("\\F\\\\S\\\\T\\\\R\\\\E\\", "|^&~\\"),
            ("\\X41C3A9\\", "Aé"),
            ("\\XC3\\", "\u{FFFD}"),
            ("line1\\.br\\line2", "line1\nline2"),
            ("\\H\\bold\\N\\ text", "bold text"),
        ]);
    }

    #[test]
    fn unescape_keeps_unknown_and_malformed() {
        check_unescape(&[
            (
                "\\Zabc\\ \\C2842\\ \\M2442A1\\",
                "\\Zabc\\ \\C2842\\ \\M2442A1\\",
            ),
            ("\\Q\\ \\.sp2\\ \\X4\\", "\\Q\\ \\.sp2\\ \\X4\\"),
            ("\\XZZ\\ \\X\\ \\x41\\", "\\XZZ\\ \\X\\ \\x41\\"),
            ("abc\\S", "abc\\S"),
            ("\\", "\\"),
            ("\\\\", "\\\\"),
            ("C:\\dir name\\S\\x", "C:\\dir name^x"),
        ]);
    }

    #[test]
    fn unescape_non_ascii() {
        check_unescape(&[
            ("éé\\S\\ü", "éé^ü"),
            ("日本\\F\\語\\E\\", "日本|語\\"),
            ("é\\é\\", "é\\é\\"),
            ("é\\", "é\\"),
        ]);
        assert_eq!(second("ZZZ|éé\\S\\ü^ß").field(1).component(1), "éé^ü");
    }

    #[test]
    fn escaped_delimiters_do_not_split() {
        let z = second("ZZZ|a\\S\\b^c\\T\\d&e~f\\R\\g");
        let f = z.field(1);
        assert_eq!(f.components(), ["a^b", "c&d&e"]);
        assert_eq!(f.subcomponent(2, 1), "c&d");
        assert_eq!(f.subcomponent(2, 2), "e");
        assert_eq!(f.repetitions()[1].text(), "f~g");
        assert_eq!(f.text(), "a^b^c&d&e");
    }

    #[test]
    fn empty_and_missing_pieces() {
        let z = second("ZZZ||a&b^c");
        assert_eq!((z.len(), z.field(1).repetitions().len()), (2, 1));
        assert_eq!(z.field(1).components(), [""]);
        for n in [0, 1, 3, 99, usize::MAX] {
            let f = z.field(n);
            assert!(f.is_empty() && f.text().is_empty() && f.component(1).is_empty());
        }
        let f = z.field(2);
        let cases = [
            (0, 1, ""),
            (1, 0, ""),
            (1, 2, "b"),
            (2, 1, "c"),
            (2, 2, ""),
            (3, 1, ""),
        ];
        for (c, s, expected) in cases {
            assert_eq!(f.subcomponent(c, s), expected, "{c}.{s}");
        }
        assert_eq!(f.component(0) + &f.component(3), "");
        assert!(second("PV1").is_empty());
        let m = parse("MSH|^~\\&");
        let (kind, event) = m.message_type();
        assert_eq!(kind + &event + &m.control_id() + &m.version(), "");
    }

    #[test]
    fn waveform_samples_are_components() {
        let obx = second("OBX|1|NA|131329^MDC_ECG_ELEC_POTL_I^MDC|1.1.5.1|80^88^92^-4.5~1^2|");
        assert_eq!(obx.field(5).components(), ["80", "88", "92", "-4.5"]);
        let reps = obx.field(5).repetitions();
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[1].components(), ["1", "2"]);
    }

    #[test]
    fn version_is_first_component_of_vid() {
        let m = parse("MSH|^~\\&|||||||ADT^A01|X1\\F\\|P|2.5.1^DEU");
        assert_eq!(m.version(), "2.5.1");
        assert_eq!(m.control_id(), "X1|");
    }

    fn check_errors(cases: &[(&str, &str)]) {
        for (text, expected) in cases {
            let e = parse_err(text);
            assert!(e.contains(expected), "{text:?} gave {e:?}");
        }
    }

    #[test]
    fn error_empty_input() {
        check_errors(&[
            ("", "empty message"),
            (" \r\n\t\u{FEFF}\r", "empty message"),
        ]);
    }

    #[test]
    fn error_first_segment_not_msh() {
        check_errors(&[(
            "PID|1\rMSH|^~\\&",
            "first segment must be MSH, found \"PID|1\"",
        )]);
    }

    #[test]
    fn error_msh_too_short() {
        check_errors(&[
            ("MSH\rPID|1", "too short"),
            ("MSH|", "found 0"),
            ("MSH|^~\\|A", "found 3"),
            ("MSH|^~\\&#$%|A", "found 6 or more"),
        ]);
    }

    #[test]
    fn error_bad_delimiters() {
        check_errors(&[
            ("MSH|^^\\&|A", "different"),
            ("MSHA^~\\&A", "not allowed"),
            ("MSH|^~a&|", "not allowed"),
        ]);
    }

    #[test]
    fn error_bad_segment_name() {
        check_errors(&[
            (
                "MSH|^~\\&|A\rob|1",
                "segment 2: invalid segment name \"ob\"",
            ),
            (
                "MSH|^~\\&|A\rPID|1\n\nOBXX|1",
                "segment 3: invalid segment name \"OBXX\"",
            ),
            ("MSH|^~\\&|A\rPIé|1", "segment 2"),
        ]);
        assert!(parse_err(&format!("MSH|^~\\&\r{}", "x".repeat(10_000))).len() < 200);
        let e = ParseError::new("boom");
        assert_eq!(e.to_string(), "invalid HL7 message: boom");
    }

    #[test]
    fn escape_and_round_trip() {
        let d = Delimiters::default();
        let escaped = escape("a|b^c&d~e\\f", &d);
        assert_eq!(escaped, "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f");
        assert_eq!(escape("1\r\n2\n3\r4é#", &d), "1\\.br\\2\\.br\\3\\.br\\4é#");
        let m = parse("MSH#*~!@%#A");
        let custom = m.delimiters.clone();
        assert_eq!(escape("a%b", &custom), "a!P!b");
        for d in [d, custom] {
            for text in ["", "plain", "é|^&~\\#*!@%\nü", "\\X41\\", "!S!"] {
                assert_eq!(unescape(&escape(text, &d), &d), text, "{text:?}");
            }
        }
    }

    /// Touches every accessor of every field so a panic anywhere would show.
    fn exercise(text: &str) {
        let Ok(m) = Message::parse(text) else { return };
        let _ = (m.message_type(), m.control_id(), m.version());
        for seg in m.segments() {
            for n in 0..=seg.len() + 1 {
                let f = seg.field(n);
                let _ = (f.text(), f.components(), f.subcomponent(2, 2));
                for rep in f.repetitions() {
                    let _ = (rep.component(1), rep.component(3), rep.text());
                }
            }
        }
    }

    #[test]
    fn robustness_no_panic() {
        // xorshift, so the test needs no crates and is reproducible.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % 1024).unwrap_or(0) % n
        };
        let valid = PCD01.join("\r") + "\rNTE|1||éé\\S\\ü\\X41C3A9\\\\.br\\\\Zx\\end\\";
        for (i, _) in valid.char_indices() {
            exercise(valid.get(..i).unwrap_or(""));
        }
        let d = Delimiters::default();
        let alphabet: Vec<char> = "\\\\|^~&#XS4é日\r\n🦀".chars().collect();
        for _ in 0..500 {
            let bytes: Vec<u8> = (0..rand(200)).map(|_| rand(256).to_le_bytes()[0]).collect();
            let text = String::from_utf8_lossy(&bytes);
            exercise(&text);
            exercise(&format!("MSH|^~\\&|{text}"));
            let body: String = (0..rand(120))
                .map(|_| alphabet[rand(alphabet.len())])
                .collect();
            exercise(&format!("MSH|^~\\&#|{body}"));
            exercise(&format!("MSH|^~\\&|A\rOBX|{body}"));
            let expected = body.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(unescape(&escape(&body, &d), &d), expected);
        }
    }
}
