//! A FHIRPath subset: everything the official R4 search parameter expressions use, plus the
//! common functions and operators subscription topic triggers and filters need.
//!
//! ```ignore
//! let expr = fhirpath::compile("Observation.value.ofType(Quantity).value")?;
//! for node in expr.evaluate(&observation) { /* node.value, node.type_name */ }
//! let active = fhirpath::compile("status = 'active'")?.evaluate_bool(&resource);
//! ```
//!
//! Compile once ([`compile`]) and evaluate many times; evaluation never fails: run-time
//! conditions FHIRPath treats as errors yield an empty collection.

mod eval;
mod parser;

use serde_json::Value;

pub use eval::{reference_type_id, to_bool, type_derives_from, Env, Node};
pub use parser::{Ast, BinOp, Func};

/// FHIRPath compilation error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("FHIRPath syntax error: {0}")]
    Parse(String),
}

/// A compiled FHIRPath expression.
#[derive(Debug, Clone)]
pub struct Expr {
    source: String,
    ast: Ast,
}

/// Parses `source` into a reusable [`Expr`].
pub fn compile(source: &str) -> Result<Expr, Error> {
    Ok(Expr {
        source: source.to_string(),
        ast: parser::parse(source)?,
    })
}

impl Expr {
    /// Builds an expression from an already parsed tree (e.g. one branch of a union).
    pub fn from_ast(ast: Ast, source: impl Into<String>) -> Expr {
        Expr {
            source: source.into(),
            ast,
        }
    }

    /// The expression text it was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn ast(&self) -> &Ast {
        &self.ast
    }

    /// Evaluates against a resource (which is also `%resource` and `%context`).
    pub fn evaluate<'a>(&'a self, resource: &'a Value) -> Vec<Node<'a>> {
        let env = Env::new(resource);
        let focus = [env.resource.clone()];
        eval::eval(&self.ast, &env, &focus, 0)
    }

    /// Evaluates with an explicit environment and input collection: used for composite
    /// search parameter components, which are relative to a node of the main expression.
    pub fn evaluate_on<'a>(&'a self, env: &Env<'a>, focus: &[Node<'a>]) -> Vec<Node<'a>> {
        eval::eval(&self.ast, env, focus, 0)
    }

    /// Evaluates as a boolean condition: true when the result is a single `true` (or a
    /// single non-boolean item, per FHIRPath singleton evaluation); false otherwise,
    /// including for an empty result.
    pub fn evaluate_bool(&self, resource: &Value) -> bool {
        to_bool(&self.evaluate(resource)) == Some(true)
    }

    /// [`Expr::evaluate_bool`] with an explicit environment (e.g. `%previous` set).
    pub fn evaluate_bool_in<'a>(&'a self, env: &Env<'a>) -> bool {
        let focus = [env.context.clone()];
        to_bool(&self.evaluate_on(env, &focus)) == Some(true)
    }
}

#[cfg(test)]
mod tests;
