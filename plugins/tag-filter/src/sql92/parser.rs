//! Recursive-descent parser producing [`Expr`]. `AND` / `OR` chains are n-ary nodes, so
//! only parentheses and `NOT` add nesting, and [`DEPTH_MAX`](super::DEPTH_MAX) bounds it.

use super::lexer::{Tok, Token};
use super::{DEPTH_MAX, IN_LIST_MAX, ParseError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A user property, by name.
    Property(Box<str>),
    /// The message tag (`TAGS`).
    Tags,
    Str(Box<str>),
    Num(Number),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrOp {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Non-empty; two or more operands after parsing.
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Cmp(CmpOp, Operand, Operand),
    IsNull { operand: Operand, negated: bool },
    Between { operand: Operand, low: Operand, high: Operand, negated: bool },
    In { operand: Operand, list: Vec<Operand>, negated: bool },
    StrMatch { op: StrOp, operand: Operand, pattern: Box<str>, negated: bool },
    /// An operand in a boolean position: `TRUE`, `FALSE`, or a property read as a boolean.
    Truth(Operand),
}

pub struct Parser<'t> {
    tokens: &'t [Token],
    next: usize,
    depth: usize,
}

fn err(position: usize, message: impl Into<String>) -> ParseError {
    ParseError { position, message: message.into() }
}

impl<'t> Parser<'t> {
    pub fn new(tokens: &'t [Token]) -> Self {
        assert!(matches!(tokens.last(), Some(Token { tok: Tok::Eof, .. })), "token stream ends with Eof");
        Parser { tokens, next: 0, depth: 0 }
    }

    pub fn parse(mut self) -> Result<Expr, ParseError> {
        if self.peek() == &Tok::Eof {
            return Err(err(0, "empty expression"));
        }
        let expr = self.or_expr()?;
        if self.peek() != &Tok::Eof {
            return Err(self.unexpected("AND, OR or the end"));
        }
        assert_eq!(self.depth, 0);
        Ok(expr)
    }

    fn peek(&self) -> &Tok {
        &self.tokens[self.next].tok
    }

    fn position(&self) -> usize {
        self.tokens[self.next].position
    }

    fn bump(&mut self) -> &'t Token {
        let t = &self.tokens[self.next];
        if t.tok != Tok::Eof {
            self.next += 1;
        }
        t
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == tok {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<(), ParseError> {
        if self.eat(tok) { Ok(()) } else { Err(self.unexpected(what)) }
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        let found = match self.peek() {
            Tok::Eof => "the end".to_owned(),
            t => format!("{t:?}"),
        };
        err(self.position(), format!("expected {expected}, found {found}"))
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > DEPTH_MAX {
            return Err(err(self.position(), format!("nested deeper than {DEPTH_MAX}")));
        }
        Ok(())
    }

    fn leave(&mut self) {
        assert!(self.depth > 0);
        self.depth -= 1;
    }

    fn or_expr(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.and_expr()?];
        while self.eat(&Tok::Or) {
            items.push(self.and_expr()?);
        }
        Ok(if items.len() == 1 { items.pop().expect("one item") } else { Expr::Or(items) })
    }

    fn and_expr(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.not_expr()?];
        while self.eat(&Tok::And) {
            items.push(self.not_expr()?);
        }
        Ok(if items.len() == 1 { items.pop().expect("one item") } else { Expr::And(items) })
    }

    fn not_expr(&mut self) -> Result<Expr, ParseError> {
        if self.eat(&Tok::Not) {
            self.enter()?;
            let inner = self.not_expr()?;
            self.leave();
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, ParseError> {
        if self.eat(&Tok::LParen) {
            self.enter()?;
            let inner = self.or_expr()?;
            self.expect(&Tok::RParen, "`)`")?;
            self.leave();
            return Ok(inner);
        }
        let start = self.position();
        let operand = self.operand()?;
        let cmp = match self.peek() {
            Tok::Eq => Some(CmpOp::Eq),
            Tok::Ne => Some(CmpOp::Ne),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Le => Some(CmpOp::Le),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Ge => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = cmp {
            self.bump();
            let right = self.operand()?;
            return Ok(Expr::Cmp(op, operand, right));
        }
        if self.eat(&Tok::Is) {
            let negated = self.eat(&Tok::Not);
            self.expect(&Tok::Null, "NULL")?;
            return Ok(Expr::IsNull { operand, negated });
        }
        let negated = self.eat(&Tok::Not);
        match self.peek() {
            Tok::Between => {
                self.bump();
                let low = self.operand()?;
                self.expect(&Tok::And, "AND of BETWEEN")?;
                let high = self.operand()?;
                Ok(Expr::Between { operand, low, high, negated })
            }
            Tok::In => {
                self.bump();
                self.expect(&Tok::LParen, "`(` after IN")?;
                let mut list = Vec::new();
                loop {
                    if list.len() == IN_LIST_MAX {
                        return Err(err(self.position(), format!("IN list longer than {IN_LIST_MAX}")));
                    }
                    let item = self.operand()?;
                    if matches!(item, Operand::Property(_) | Operand::Tags) {
                        return Err(err(self.position(), "IN list items must be literals"));
                    }
                    list.push(item);
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.expect(&Tok::RParen, "`,` or `)` in IN list")?;
                Ok(Expr::In { operand, list, negated })
            }
            Tok::Contains | Tok::StartsWith | Tok::EndsWith => {
                let op = match self.bump().tok {
                    Tok::Contains => StrOp::Contains,
                    Tok::StartsWith => StrOp::StartsWith,
                    _ => StrOp::EndsWith,
                };
                match &self.bump().tok {
                    Tok::Str(s) => Ok(Expr::StrMatch { op, operand, pattern: s.as_str().into(), negated }),
                    _ => {
                        self.next -= 1;
                        Err(self.unexpected("a string literal"))
                    }
                }
            }
            _ if negated => Err(self.unexpected("BETWEEN, IN, CONTAINS, STARTSWITH or ENDSWITH after NOT")),
            _ => match operand {
                Operand::Property(_) | Operand::Bool(_) => Ok(Expr::Truth(operand)),
                _ => Err(err(start, "expected a condition (a comparison, IS NULL, BETWEEN, IN, ...)")),
            },
        }
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        let position = self.position();
        let token = self.bump();
        let operand = match &token.tok {
            Tok::Ident(name) if name == "TAGS" => Operand::Tags,
            Tok::Ident(name) => Operand::Property(name.as_str().into()),
            Tok::Str(s) => Operand::Str(s.as_str().into()),
            Tok::Int(i) => Operand::Num(Number::Int(*i)),
            Tok::Float(f) => Operand::Num(Number::Float(*f)),
            Tok::True => Operand::Bool(true),
            Tok::False => Operand::Bool(false),
            Tok::Minus => match &self.bump().tok {
                Tok::Int(i) => Operand::Num(Number::Int(-*i)),
                Tok::Float(f) => Operand::Num(Number::Float(-*f)),
                _ => return Err(err(position, "`-` must be followed by a number")),
            },
            Tok::Null => return Err(err(position, "NULL is only allowed in IS [NOT] NULL")),
            Tok::Eof => return Err(err(position, "expected a property, TAGS or a literal, found the end")),
            other => {
                return Err(err(position, format!("expected a property, TAGS or a literal, found {other:?}")));
            }
        };
        Ok(operand)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn prop(n: &str) -> Operand {
        Operand::Property(n.into())
    }

    #[test]
    fn precedence_and_nary_chains() {
        let e = parse("a = 1 OR b = 2 AND c = 3 OR NOT d IS NULL").unwrap();
        assert_eq!(
            e,
            Expr::Or(vec![
                Expr::Cmp(CmpOp::Eq, prop("a"), Operand::Num(Number::Int(1))),
                Expr::And(vec![
                    Expr::Cmp(CmpOp::Eq, prop("b"), Operand::Num(Number::Int(2))),
                    Expr::Cmp(CmpOp::Eq, prop("c"), Operand::Num(Number::Int(3))),
                ]),
                Expr::Not(Box::new(Expr::IsNull { operand: prop("d"), negated: false })),
            ])
        );
        let e = parse("(a = 1 OR b = 2) AND TAGS <> 'x'").unwrap();
        assert!(matches!(e, Expr::And(ref v) if matches!(v[0], Expr::Or(_)) && matches!(v[1], Expr::Cmp(CmpOp::Ne, Operand::Tags, _))));
    }

    #[test]
    fn predicates() {
        assert_eq!(
            parse("x NOT BETWEEN -1 AND 2.5").unwrap(),
            Expr::Between {
                operand: prop("x"),
                low: Operand::Num(Number::Int(-1)),
                high: Operand::Num(Number::Float(2.5)),
                negated: true
            }
        );
        assert_eq!(
            parse("r in ('eu', 'us')").unwrap(),
            Expr::In { operand: prop("r"), list: vec![Operand::Str("eu".into()), Operand::Str("us".into())], negated: false }
        );
        assert_eq!(parse("x IS NOT NULL").unwrap(), Expr::IsNull { operand: prop("x"), negated: true });
        assert_eq!(parse("TRUE").unwrap(), Expr::Truth(Operand::Bool(true)));
        assert_eq!(parse("flag").unwrap(), Expr::Truth(prop("flag")));
        assert_eq!(
            parse("name NOT STARTSWITH 'ab'").unwrap(),
            Expr::StrMatch { op: StrOp::StartsWith, operand: prop("name"), pattern: "ab".into(), negated: true }
        );
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "",
            "a =",
            "a = 1 AND",
            "(a = 1",
            "a = 1)",
            "a BETWEEN 1 2",
            "a IN ()",
            "a IN (b)",
            "a IN ('x',)",
            "a IS 1",
            "a = NULL",
            "5",
            "'x'",
            "a NOT = 1",
            "a CONTAINS 1",
            "- a",
            "a = 1 b = 2",
            "AND",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn limits() {
        let deep = format!("{}a = 1{}", "(".repeat(DEPTH_MAX + 1), ")".repeat(DEPTH_MAX + 1));
        assert!(parse(&deep).unwrap_err().message.contains("nested"));
        let ok = format!("{}a = 1{}", "(".repeat(DEPTH_MAX), ")".repeat(DEPTH_MAX));
        assert!(parse(&ok).is_ok());
        let nots = format!("{}a = 1", "NOT ".repeat(DEPTH_MAX + 1));
        assert!(parse(&nots).is_err());
        // Long flat chains do not nest.
        let chain = vec!["a = 1"; 500].join(" AND ");
        assert!(parse(&chain).is_ok());
        let list = format!("a IN ({})", vec!["'x'"; IN_LIST_MAX + 1].join(","));
        assert!(parse(&list).is_err());
        assert!(parse(&"a".repeat(super::super::EXPRESSION_BYTES_MAX + 1)).is_err());
    }
}
