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

#[cfg(test)]
mod robustness {
    use super::*;

    /// Deterministic xorshift: no dependency, same sequence every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    struct Props;
    impl Lookup for Props {
        fn property(&self, name: &str) -> Option<&str> {
            match name {
                "a" => Some("5"),
                "b" => Some("x"),
                "c" => Some("true"),
                _ => None,
            }
        }
        fn tag(&self) -> Option<&str> {
            Some("TagA")
        }
    }

    /// Random token soups never panic the parser, and whatever parses evaluates without
    /// panicking: a consumer's expression is untrusted input.
    #[test]
    fn random_expressions_never_panic() {
        let tokens = [
            "a", "b", "c", "d", "TAGS", "'x'", "'TagA'", "''", "5", "-5", "2.5", "1e3", "TRUE", "FALSE", "NULL", "=", "<>",
            "<", "<=", ">", ">=", "AND", "OR", "NOT", "IS", "BETWEEN", "IN", "(", ")", ",", "CONTAINS", "STARTSWITH",
            "ENDSWITH", "-", "!", "'unterminated", "#", "é",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = 1 + rng.next() % 12;
            let expr: Vec<&str> = (0..len).map(|_| rng.pick(&tokens)).collect();
            let expr = expr.join(" ");
            if let Ok(e) = parse(&expr) {
                parsed += 1;
                let _ = e.eval(&Props);
            }
        }
        assert!(parsed > 100, "the generator also produces valid expressions ({parsed})");
    }
}
