//! SQL92-like property expressions, RocketMQ style:
//!
//! - comparisons `=  <>  <  <=  >  >=`, `IS [NOT] NULL`, `[NOT] BETWEEN x AND y`,
//!   `[NOT] IN ('a', 'b')`, `[NOT] CONTAINS / STARTSWITH / ENDSWITH 'x'`;
//! - `AND`, `OR`, `NOT`, parentheses; keywords are case-insensitive;
//! - literals: `'strings'` (`''` escapes a quote), integers, decimals, `TRUE`, `FALSE`;
//! - identifiers name user properties; `TAGS` names the message tag.
//!
//! Property values are strings; they are read as numbers where a number is needed. Logic is
//! three-valued: a missing property or a failed conversion is NULL (unknown), and only a TRUE
//! result delivers, so an error or NULL means "do not deliver", as in RocketMQ.

mod eval;
mod lexer;
mod parser;

pub use eval::{Lookup, Truth};
pub use parser::{CmpOp, Expr, Number, Operand, StrOp};

/// Limits that bound parse and evaluation work for hostile expressions.
pub const EXPRESSION_BYTES_MAX: usize = 8 * 1024;
/// Nesting depth (parentheses and NOT): bounds recursion in parser and evaluator.
pub const DEPTH_MAX: usize = 64;
pub const IN_LIST_MAX: usize = 1024;

/// A syntax error with the byte position it was found at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.position, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses an expression into an evaluable tree.
pub fn parse(expression: &str) -> Result<Expr, ParseError> {
    if expression.len() > EXPRESSION_BYTES_MAX {
        return Err(ParseError {
            position: EXPRESSION_BYTES_MAX,
            message: format!("expression longer than {EXPRESSION_BYTES_MAX} bytes"),
        });
    }
    let tokens = lexer::tokenize(expression)?;
    parser::Parser::new(&tokens).parse()
}
