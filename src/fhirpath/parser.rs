//! FHIRPath lexer and Pratt parser producing the [`Ast`] the evaluator walks.
//!
//! The grammar follows the FHIRPath N1 specification (the version R4 search parameters are
//! written in). Function names are resolved to [`Func`] here, once, so that evaluation never
//! compares strings to pick a function and unknown functions fail at compile time.

use super::Error;

use serde_json::Value;

/// Binary operators, by FHIRPath semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Union,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Xor,
    Implies,
    In,
    Contains,
    Add,
    Sub,
    Mul,
    Div,
    IntDiv,
    Mod,
    Concat,
}

/// Functions the evaluator implements. Anything else is a compile error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Where,
    Select,
    All,
    Exists,
    Empty,
    Not,
    First,
    Last,
    Tail,
    Skip,
    Take,
    Single,
    Count,
    Distinct,
    HasValue,
    Extension,
    Resolve,
    OfType,
    As,
    Is,
    Iif,
    StartsWith,
    EndsWith,
    ContainsStr,
    Matches,
    Lower,
    Upper,
    Length,
    ToString,
    Trace,
    Children,
    Descendants,
    AllTrue,
    AnyTrue,
    Union,
    Combine,
    Intersect,
    Exclude,
    SubsetOf,
    SupersetOf,
    IsDistinct,
    Substring,
    IndexOf,
    Replace,
    ToInteger,
    ToDecimal,
    Today,
    Now,
}

impl Func {
    fn from_name(name: &str) -> Option<(Func, usize, usize)> {
        // (function, min args, max args)
        Some(match name {
            "where" => (Func::Where, 1, 1),
            "select" => (Func::Select, 1, 1),
            "all" => (Func::All, 1, 1),
            "exists" => (Func::Exists, 0, 1),
            "empty" => (Func::Empty, 0, 0),
            "not" => (Func::Not, 0, 0),
            "first" => (Func::First, 0, 0),
            "last" => (Func::Last, 0, 0),
            "tail" => (Func::Tail, 0, 0),
            "skip" => (Func::Skip, 1, 1),
            "take" => (Func::Take, 1, 1),
            "single" => (Func::Single, 0, 0),
            "count" => (Func::Count, 0, 0),
            "distinct" => (Func::Distinct, 0, 0),
            "hasValue" => (Func::HasValue, 0, 0),
            "extension" => (Func::Extension, 1, 1),
            "resolve" => (Func::Resolve, 0, 0),
            "ofType" => (Func::OfType, 1, 1),
            "as" => (Func::As, 1, 1),
            "is" => (Func::Is, 1, 1),
            "iif" => (Func::Iif, 2, 3),
            "startsWith" => (Func::StartsWith, 1, 1),
            "endsWith" => (Func::EndsWith, 1, 1),
            "contains" => (Func::ContainsStr, 1, 1),
            "matches" => (Func::Matches, 1, 1),
            "lower" => (Func::Lower, 0, 0),
            "upper" => (Func::Upper, 0, 0),
            "length" => (Func::Length, 0, 0),
            "toString" => (Func::ToString, 0, 0),
            "trace" => (Func::Trace, 1, 2),
            "children" => (Func::Children, 0, 0),
            "descendants" => (Func::Descendants, 0, 0),
            "allTrue" => (Func::AllTrue, 0, 0),
            "anyTrue" => (Func::AnyTrue, 0, 0),
            "union" => (Func::Union, 1, 1),
            "combine" => (Func::Combine, 1, 1),
            "intersect" => (Func::Intersect, 1, 1),
            "exclude" => (Func::Exclude, 1, 1),
            "subsetOf" => (Func::SubsetOf, 1, 1),
            "supersetOf" => (Func::SupersetOf, 1, 1),
            "isDistinct" => (Func::IsDistinct, 0, 0),
            "substring" => (Func::Substring, 1, 2),
            "indexOf" => (Func::IndexOf, 1, 1),
            "replace" => (Func::Replace, 2, 2),
            "toInteger" => (Func::ToInteger, 0, 0),
            "toDecimal" => (Func::ToDecimal, 0, 0),
            "today" => (Func::Today, 0, 0),
            "now" => (Func::Now, 0, 0),
            _ => return None,
        })
    }
}

/// Parsed expression tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    /// `{}`
    Empty,
    /// A literal, pre-built as JSON so evaluation can borrow it, with its FHIR type name
    /// (`boolean`, `string`, `integer`, `decimal`, `date`, `dateTime`, `time`).
    Literal(Value, &'static str),
    /// `$this`
    This,
    /// `$index`
    Index,
    /// `%name` (`%resource`, `%context`, user-supplied variables...)
    Variable(String),
    /// An identifier evaluated against the current focus: a member name, or at the start of a
    /// path a type name (`Observation` in `Observation.code`) that filters the focus.
    Ident(String),
    /// `target.name`
    Member(Box<Ast>, String),
    /// `target.func(args)`; a call without a target (`resolve()` inside `where`) has
    /// `This`-like focus, represented by `None`.
    Call(Option<Box<Ast>>, Func, Vec<Ast>),
    /// `target[index]`
    Indexer(Box<Ast>, Box<Ast>),
    Binary(BinOp, Box<Ast>, Box<Ast>),
    /// `expr is Type`
    Is(Box<Ast>, String),
    /// `expr as Type`
    As(Box<Ast>, String),
    Neg(Box<Ast>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// Backtick-delimited identifier: never a keyword.
    Delimited(String),
    Str(String),
    Num(String),
    DateTime(String),
    Var(String),
    Special(String),
    Sym(&'static str),
}

const SYMBOLS: [&str; 22] = [
    "!=", "!~", "<=", ">=", ".", ",", "(", ")", "[", "]", "{", "}", "|", "=", "~", "<", ">", "+",
    "-", "*", "/", "&",
];

fn lex(src: &str) -> Result<Vec<Tok>, Error> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let err = |pos: usize, msg: &str| Error::Parse(format!("{msg} at offset {pos} in `{src}`"));
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // Comments: `//` to end of line, `/* */`.
        if src[i..].starts_with("//") {
            i = src[i..].find('\n').map_or(b.len(), |p| i + p);
            continue;
        }
        if src[i..].starts_with("/*") {
            i = src[i + 2..]
                .find("*/")
                .map(|p| i + 2 + p + 2)
                .ok_or_else(|| err(i, "unterminated comment"))?;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_string()));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            // A dot followed by a digit is a decimal point, otherwise it is member access.
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            out.push(Tok::Num(src[start..i].to_string()));
            continue;
        }
        match c {
            b'\'' | b'`' => {
                let (s, next) = lex_quoted(src, i).ok_or_else(|| err(i, "unterminated string"))?;
                i = next;
                out.push(if c == b'\'' {
                    Tok::Str(s)
                } else {
                    Tok::Delimited(s)
                });
            }
            b'@' => {
                let start = i + 1;
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'-' | b':' | b'.' | b'+'))
                {
                    i += 1;
                }
                out.push(Tok::DateTime(src[start..i].to_string()));
            }
            b'%' => {
                i += 1;
                if i < b.len() && (b[i] == b'\'' || b[i] == b'`') {
                    let (s, next) =
                        lex_quoted(src, i).ok_or_else(|| err(i, "unterminated variable name"))?;
                    i = next;
                    out.push(Tok::Var(s));
                } else {
                    let start = i;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    if start == i {
                        return Err(err(start, "empty variable name"));
                    }
                    out.push(Tok::Var(src[start..i].to_string()));
                }
            }
            b'$' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i].is_ascii_alphabetic() {
                    i += 1;
                }
                out.push(Tok::Special(src[start..i].to_string()));
            }
            _ => {
                let sym = SYMBOLS
                    .iter()
                    .find(|s| src[i..].starts_with(**s))
                    .ok_or_else(|| err(i, "unexpected character"))?;
                i += sym.len();
                out.push(Tok::Sym(sym));
            }
        }
    }
    Ok(out)
}

/// Reads a quoted string starting at `start` (the quote), handling FHIRPath escapes.
/// Returns the unescaped text and the offset after the closing quote.
fn lex_quoted(src: &str, start: usize) -> Option<(String, usize)> {
    let quote = src.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            c if c == quote => return Some((out, start + 1 + off + 1)),
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String =
                            (0..4).filter_map(|_| chars.next().map(|x| x.1)).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    other => out.push(other),
                }
            }
            c => out.push(c),
        }
    }
    None
}

struct Parser<'s> {
    toks: Vec<Tok>,
    pos: usize,
    src: &'s str,
    /// Current nesting of sub-expressions; bounded so hostile input (`((((...`) cannot
    /// overflow the stack here or in the (equally recursive) evaluator.
    depth: usize,
}

/// Deepest sub-expression nesting accepted.
const MAX_DEPTH: usize = 64;

/// Binding power of infix operators (higher binds tighter), per the FHIRPath precedence table.
fn infix(tok: &Tok) -> Option<(u8, Infix)> {
    let op = |b| Some(Infix::Bin(b));
    let (bp, kind) = match tok {
        Tok::Sym(s) => match *s {
            "*" | "/" => (10, op(if *s == "*" { BinOp::Mul } else { BinOp::Div })),
            "+" => (9, op(BinOp::Add)),
            "-" => (9, op(BinOp::Sub)),
            "&" => (9, op(BinOp::Concat)),
            "|" => (7, op(BinOp::Union)),
            "<" => (6, op(BinOp::Lt)),
            "<=" => (6, op(BinOp::Le)),
            ">" => (6, op(BinOp::Gt)),
            ">=" => (6, op(BinOp::Ge)),
            "=" => (5, op(BinOp::Eq)),
            "!=" => (5, op(BinOp::Ne)),
            "~" => (5, op(BinOp::Equiv)),
            "!~" => (5, op(BinOp::NotEquiv)),
            _ => return None,
        },
        Tok::Ident(s) => match s.as_str() {
            "div" => (10, op(BinOp::IntDiv)),
            "mod" => (10, op(BinOp::Mod)),
            "is" => (8, Some(Infix::Is)),
            "as" => (8, Some(Infix::As)),
            "in" => (4, op(BinOp::In)),
            "contains" => (4, op(BinOp::Contains)),
            "and" => (3, op(BinOp::And)),
            "or" => (2, op(BinOp::Or)),
            "xor" => (2, op(BinOp::Xor)),
            "implies" => (1, op(BinOp::Implies)),
            _ => return None,
        },
        _ => return None,
    };
    kind.map(|k| (bp, k))
}

enum Infix {
    Bin(BinOp),
    Is,
    As,
}

impl Parser<'_> {
    fn err(&self, msg: &str) -> Error {
        Error::Parse(format!("{msg} (token {}) in `{}`", self.pos, self.src))
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, sym: &str) -> Result<(), Error> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(self.err(&format!("expected `{sym}`")))
        }
    }

    fn expr(&mut self, min_bp: u8) -> Result<Ast, Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("expression nested too deeply"));
        }
        let result = self.expr_inner(min_bp);
        self.depth -= 1;
        result
    }

    fn expr_inner(&mut self, min_bp: u8) -> Result<Ast, Error> {
        let mut lhs = self.prefix()?;
        while let Some((bp, kind)) = self.peek().and_then(infix) {
            if bp <= min_bp {
                break;
            }
            self.pos += 1;
            lhs = match kind {
                Infix::Bin(op) => {
                    let rhs = self.expr(bp)?;
                    Ast::Binary(op, Box::new(lhs), Box::new(rhs))
                }
                Infix::Is => Ast::Is(Box::new(lhs), self.type_spec()?),
                Infix::As => Ast::As(Box::new(lhs), self.type_spec()?),
            };
        }
        Ok(lhs)
    }

    /// A qualified type name (`Quantity`, `FHIR.Quantity`, `System.String`); the namespace is
    /// dropped because FHIR and System type names are matched case-insensitively anyway.
    fn type_spec(&mut self) -> Result<String, Error> {
        let mut name = self.ident()?;
        while self.eat(".") {
            name = self.ident()?;
        }
        Ok(name)
    }

    fn ident(&mut self) -> Result<String, Error> {
        match self.next() {
            Some(Tok::Ident(s)) | Some(Tok::Delimited(s)) => Ok(s),
            _ => Err(self.err("expected identifier")),
        }
    }

    fn prefix(&mut self) -> Result<Ast, Error> {
        let term = match self.next() {
            Some(Tok::Sym("(")) => {
                let e = self.expr(0)?;
                self.expect(")")?;
                e
            }
            Some(Tok::Sym("{")) => {
                self.expect("}")?;
                Ast::Empty
            }
            Some(Tok::Sym("-")) => Ast::Neg(Box::new(self.expr(10)?)),
            Some(Tok::Sym("+")) => self.expr(10)?,
            Some(Tok::Str(s)) => Ast::Literal(Value::String(s), "string"),
            Some(Tok::Num(n)) => {
                // With `arbitrary_precision` the Number keeps the literal's exact digits.
                let value: Value =
                    serde_json::from_str(&n).map_err(|_| self.err("invalid number"))?;
                Ast::Literal(
                    value,
                    if n.contains('.') {
                        "decimal"
                    } else {
                        "integer"
                    },
                )
            }
            Some(Tok::DateTime(d)) => {
                let ty = if d.starts_with('T') {
                    "time"
                } else if d.contains('T') {
                    "dateTime"
                } else {
                    "date"
                };
                Ast::Literal(Value::String(d.trim_start_matches('T').to_string()), ty)
            }
            Some(Tok::Var(v)) => Ast::Variable(v),
            Some(Tok::Special(s)) => match s.as_str() {
                "this" => Ast::This,
                "index" => Ast::Index,
                _ => return Err(self.err(&format!("unsupported ${s}"))),
            },
            Some(Tok::Ident(s)) if s == "true" || s == "false" => {
                Ast::Literal(Value::Bool(s == "true"), "boolean")
            }
            Some(Tok::Ident(s)) | Some(Tok::Delimited(s)) => {
                if self.eat("(") {
                    self.call(None, &s)?
                } else {
                    Ast::Ident(s)
                }
            }
            _ => return Err(self.err("expected expression")),
        };
        self.postfix(term)
    }

    fn postfix(&mut self, mut term: Ast) -> Result<Ast, Error> {
        loop {
            if self.eat(".") {
                let name = self.ident()?;
                term = if self.eat("(") {
                    self.call(Some(term), &name)?
                } else {
                    Ast::Member(Box::new(term), name)
                };
            } else if self.eat("[") {
                let idx = self.expr(0)?;
                self.expect("]")?;
                term = Ast::Indexer(Box::new(term), Box::new(idx));
            } else {
                return Ok(term);
            }
        }
    }

    /// Parses arguments after `name(`.
    fn call(&mut self, target: Option<Ast>, name: &str) -> Result<Ast, Error> {
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(self.expr(0)?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        let (func, min, max) =
            Func::from_name(name).ok_or_else(|| self.err(&format!("unknown function {name}()")))?;
        if args.len() < min || args.len() > max {
            return Err(self.err(&format!("wrong number of arguments to {name}()")));
        }
        // Type arguments are type specifiers, not expressions: store them as plain names.
        if matches!(func, Func::OfType | Func::As | Func::Is) {
            let ty = type_name(&args[0]).ok_or_else(|| self.err("expected a type name"))?;
            args[0] = Ast::Ident(ty);
        }
        Ok(Ast::Call(target.map(Box::new), func, args))
    }
}

/// The type name in a type-specifier argument (`Quantity`, `FHIR.Quantity`).
fn type_name(ast: &Ast) -> Option<String> {
    match ast {
        Ast::Ident(s) | Ast::Member(_, s) => Some(s.clone()),
        _ => None,
    }
}

/// Most tokens an expression may have (the longest official one has about 400).
const MAX_TOKENS: usize = 8192;
/// Deepest tree accepted: evaluation recurses once per level.
const MAX_TREE_DEPTH: usize = 256;

/// Depth of a tree, computed without recursion.
fn tree_depth(ast: &Ast) -> usize {
    let mut max = 0;
    let mut stack = vec![(ast, 1usize)];
    while let Some((node, d)) = stack.pop() {
        max = max.max(d);
        match node {
            Ast::Member(t, _) | Ast::Is(t, _) | Ast::As(t, _) | Ast::Neg(t) => {
                stack.push((t, d + 1))
            }
            Ast::Indexer(a, b) | Ast::Binary(_, a, b) => {
                stack.push((a, d + 1));
                stack.push((b, d + 1));
            }
            Ast::Call(t, _, args) => {
                stack.extend(t.iter().map(|t| (&**t, d + 1)));
                stack.extend(args.iter().map(|a| (a, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Parses a FHIRPath expression into an [`Ast`].
pub fn parse(src: &str) -> Result<Ast, Error> {
    let toks = lex(src)?;
    if toks.len() > MAX_TOKENS {
        return Err(Error::Parse(format!(
            "expression longer than {MAX_TOKENS} tokens"
        )));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        src,
        depth: 0,
    };
    let ast = p.expr(0)?;
    if p.pos != p.toks.len() {
        return Err(p.err("unexpected trailing input"));
    }
    if tree_depth(&ast) > MAX_TREE_DEPTH {
        return Err(Error::Parse("expression nested too deeply".into()));
    }
    Ok(ast)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Box<Ast> {
        Box::new(Ast::Ident(s.into()))
    }

    #[test]
    fn precedence_as_binds_tighter_than_union() {
        let ast =
            parse("Observation.value as Quantity | Observation.value as SampledData").unwrap();
        match ast {
            Ast::Binary(BinOp::Union, l, r) => {
                assert!(matches!(*l, Ast::As(_, ref t) if t == "Quantity"));
                assert!(matches!(*r, Ast::As(_, ref t) if t == "SampledData"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn where_resolve_is() {
        let ast = parse("Observation.subject.where(resolve() is Patient)").unwrap();
        let expected = Ast::Call(
            Some(Box::new(Ast::Member(id("Observation"), "subject".into()))),
            Func::Where,
            vec![Ast::Is(
                Box::new(Ast::Call(None, Func::Resolve, vec![])),
                "Patient".into(),
            )],
        );
        assert_eq!(ast, expected);
    }

    #[test]
    fn literals_and_misc() {
        assert!(parse("Bundle.entry[0].resource").is_ok());
        assert!(parse("(Observation.value as CodeableConcept).text").is_ok());
        assert!(parse("Patient.deceased.exists() and Patient.deceased != false").is_ok());
        assert!(parse("%resource.referenceSeq.chromosome").is_ok());
        assert!(parse("value.as(FHIR.Quantity)").is_ok());
        assert!(parse("a.b = 'x\\'y' and 1.5 > 1 // comment").is_ok());
        assert!(parse("`div`.contains('a')").is_ok());
        assert_eq!(
            parse("'a\\u0041'").unwrap(),
            Ast::Literal(Value::String("aA".into()), "string")
        );
        assert!(parse("a.unknownFn()").is_err());
        assert!(parse("a.where(").is_err());
        assert!(parse("a b").is_err());
        assert!(parse("'open").is_err());
        assert!(parse("").is_err());
        assert!(parse("a.as(1)").is_err());
        assert!(parse(&"(".repeat(10_000)).is_err());
        assert!(parse("a.".repeat(4000).trim_end_matches('.')).is_err());
        assert!(parse(&vec!["1"; 3000].join("+")).is_err());
        assert!(parse(&format!("{}1{}", "(".repeat(50), ")".repeat(50))).is_ok());
    }
}
