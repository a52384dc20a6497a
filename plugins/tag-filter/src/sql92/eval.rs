//! Three-valued evaluation of [`Expr`] against one message.

use std::cmp::Ordering;

use super::parser::{CmpOp, Expr, Number, Operand, StrOp};

/// What the evaluator needs from a message.
pub trait Lookup {
    fn property(&self, name: &str) -> Option<&str>;
    fn tag(&self) -> Option<&str>;
}

/// SQL's three-valued logic; only `True` delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn from_bool(b: bool) -> Truth {
        if b { Truth::True } else { Truth::False }
    }

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }

    fn negate_if(self, negated: bool) -> Truth {
        if negated { self.not() } else { self }
    }

    fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::False, _) | (_, Truth::False) => Truth::False,
            (Truth::True, Truth::True) => Truth::True,
            _ => Truth::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Null,
    Str(&'a str),
    Num(Number),
    Bool(bool),
}

fn resolve<'a, L: Lookup>(operand: &'a Operand, msg: &'a L) -> Value<'a> {
    match operand {
        Operand::Property(name) => msg.property(name).map_or(Value::Null, Value::Str),
        Operand::Tags => msg.tag().map_or(Value::Null, Value::Str),
        Operand::Str(s) => Value::Str(s),
        Operand::Num(n) => Value::Num(*n),
        Operand::Bool(b) => Value::Bool(*b),
    }
}

/// Reads a property value as a number: an optional sign, digits, an optional fraction and
/// exponent. No whitespace, no `inf` / `nan` (Rust's float parser would take them).
fn parse_number(s: &str) -> Option<Number> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(Number::Int(i));
    }
    let plausible = s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !plausible {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite()).map(Number::Float)
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn number(v: Value<'_>) -> Option<Number> {
    match v {
        Value::Num(n) => Some(n),
        Value::Str(s) => parse_number(s),
        Value::Null | Value::Bool(_) => None,
    }
}

fn compare_numbers(a: Number, b: Number) -> Option<Ordering> {
    match (a, b) {
        (Number::Int(a), Number::Int(b)) => Some(a.cmp(&b)),
        (a, b) => as_f64(a).partial_cmp(&as_f64(b)),
    }
}

fn as_f64(n: Number) -> f64 {
    match n {
        Number::Int(i) => i as f64,
        Number::Float(f) => f,
    }
}

/// `=`: strings compare as strings, anything against a number compares numerically, booleans
/// against booleans (or the strings "true"/"false"). A failed conversion is unknown.
fn equals(a: Value<'_>, b: Value<'_>) -> Truth {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => Truth::Unknown,
        (Value::Str(x), Value::Str(y)) => Truth::from_bool(x == y),
        (Value::Bool(x), Value::Bool(y)) => Truth::from_bool(x == y),
        (Value::Bool(x), Value::Str(s)) | (Value::Str(s), Value::Bool(x)) => {
            parse_bool(s).map_or(Truth::Unknown, |y| Truth::from_bool(x == y))
        }
        (Value::Bool(_), Value::Num(_)) | (Value::Num(_), Value::Bool(_)) => Truth::Unknown,
        (a, b) => order(a, b).map_or(Truth::Unknown, |o| Truth::from_bool(o == Ordering::Equal)),
    }
}

/// Ordering comparisons are numeric only, as in RocketMQ.
fn order(a: Value<'_>, b: Value<'_>) -> Option<Ordering> {
    compare_numbers(number(a)?, number(b)?)
}

fn compare(op: CmpOp, a: Value<'_>, b: Value<'_>) -> Truth {
    let test = |accept: fn(Ordering) -> bool| order(a, b).map_or(Truth::Unknown, |o| Truth::from_bool(accept(o)));
    match op {
        CmpOp::Eq => equals(a, b),
        CmpOp::Ne => equals(a, b).not(),
        CmpOp::Lt => test(|o| o == Ordering::Less),
        CmpOp::Le => test(|o| o != Ordering::Greater),
        CmpOp::Gt => test(|o| o == Ordering::Greater),
        CmpOp::Ge => test(|o| o != Ordering::Less),
    }
}

impl Expr {
    /// Evaluates the expression; deliver only on `Truth::True`.
    pub fn eval<L: Lookup>(&self, msg: &L) -> Truth {
        match self {
            Expr::And(items) => {
                let mut acc = Truth::True;
                for item in items {
                    acc = acc.and(item.eval(msg));
                    if acc == Truth::False {
                        break;
                    }
                }
                acc
            }
            Expr::Or(items) => {
                let mut acc = Truth::False;
                for item in items {
                    acc = acc.not().and(item.eval(msg).not()).not();
                    if acc == Truth::True {
                        break;
                    }
                }
                acc
            }
            Expr::Not(inner) => inner.eval(msg).not(),
            Expr::Cmp(op, a, b) => compare(*op, resolve(a, msg), resolve(b, msg)),
            Expr::IsNull { operand, negated } => {
                Truth::from_bool(matches!(resolve(operand, msg), Value::Null)).negate_if(*negated)
            }
            Expr::Between { operand, low, high, negated } => {
                // BETWEEN is numeric: convert the value once, not once per bound.
                let v = number(resolve(operand, msg)).map_or(Value::Null, Value::Num);
                compare(CmpOp::Ge, v, resolve(low, msg))
                    .and(compare(CmpOp::Le, v, resolve(high, msg)))
                    .negate_if(*negated)
            }
            Expr::In { operand, list, negated } => {
                let v = resolve(operand, msg);
                let mut acc = Truth::False;
                for item in list {
                    match equals(v, resolve(item, msg)) {
                        Truth::True => {
                            acc = Truth::True;
                            break;
                        }
                        Truth::Unknown => acc = Truth::Unknown,
                        Truth::False => {}
                    }
                }
                acc.negate_if(*negated)
            }
            Expr::StrMatch { op, operand, pattern, negated } => match resolve(operand, msg) {
                Value::Str(s) => Truth::from_bool(match op {
                    StrOp::Contains => s.contains(&**pattern),
                    StrOp::StartsWith => s.starts_with(&**pattern),
                    StrOp::EndsWith => s.ends_with(&**pattern),
                })
                .negate_if(*negated),
                _ => Truth::Unknown,
            },
            Expr::Truth(operand) => match resolve(operand, msg) {
                Value::Bool(b) => Truth::from_bool(b),
                Value::Str(s) => parse_bool(s).map_or(Truth::Unknown, Truth::from_bool),
                Value::Null | Value::Num(_) => Truth::Unknown,
            },
        }
    }

    /// Whether a message with these properties is delivered.
    pub fn matches<L: Lookup>(&self, msg: &L) -> bool {
        self.eval(msg) == Truth::True
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    struct Msg {
        tag: Option<&'static str>,
        props: Vec<(&'static str, &'static str)>,
    }

    impl Lookup for Msg {
        fn property(&self, name: &str) -> Option<&str> {
            self.props.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
        }
        fn tag(&self) -> Option<&str> {
            self.tag
        }
    }

    fn msg() -> Msg {
        Msg {
            tag: Some("TagA"),
            props: vec![
                ("a", "10"),
                ("price", "12.5"),
                ("region", "eu-west"),
                ("flag", "TRUE"),
                ("word", "abc"),
                ("neg", "-3"),
                ("empty", ""),
            ],
        }
    }

    fn truth(expr: &str) -> Truth {
        parse(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}")).eval(&msg())
    }

    #[test]
    fn comparisons() {
        use Truth::*;
        let cases = [
            ("a = 10", True),
            ("a = 10.0", True),
            ("a <> 10", False),
            ("a > 9", True),
            ("a >= 10", True),
            ("a < 10", False),
            ("a <= 10", True),
            ("price > 12", True),
            ("price < 12.6", True),
            ("neg < 0", True),
            ("neg = -3", True),
            ("10 = a", True),
            ("region = 'eu-west'", True),
            ("region <> 'us'", True),
            ("a = '10'", True),
            ("a = '10.0'", False), // string against string: exact text
            ("word > 1", Unknown), // not a number
            ("word = 1", Unknown),
            ("region > 'a'", Unknown), // ordering is numeric only
            ("flag = TRUE", True),
            ("flag = FALSE", False),
            ("flag", True),
            ("word", Unknown),
            ("TRUE", True),
            ("FALSE", False),
            ("missing = 1", Unknown),
            ("missing <> 1", Unknown),
            ("TAGS = 'TagA'", True),
            ("TAGS <> 'TagA'", False),
            ("empty = ''", True),
            ("a = TRUE", Unknown),
        ];
        for (e, want) in cases {
            assert_eq!(truth(e), want, "{e}");
        }
    }

    #[test]
    fn null_handling() {
        use Truth::*;
        for (e, want) in [
            ("missing IS NULL", True),
            ("missing IS NOT NULL", False),
            ("a IS NULL", False),
            ("empty IS NOT NULL", True),
            ("TAGS IS NOT NULL", True),
            ("missing IN ('x')", Unknown),
            ("missing NOT IN ('x')", Unknown),
            ("missing BETWEEN 1 AND 2", Unknown),
            ("missing CONTAINS 'x'", Unknown),
        ] {
            assert_eq!(truth(e), want, "{e}");
        }
        let untagged = Msg { tag: None, props: vec![] };
        assert_eq!(parse("TAGS IS NULL").unwrap().eval(&untagged), Truth::True);
        assert_eq!(parse("TAGS = 'TagA'").unwrap().eval(&untagged), Truth::Unknown);
    }

    #[test]
    fn three_valued_logic() {
        use Truth::*;
        for (e, want) in [
            ("missing = 1 AND a = 10", Unknown),
            ("missing = 1 AND a = 11", False),
            ("missing = 1 OR a = 10", True),
            ("missing = 1 OR a = 11", Unknown),
            ("NOT missing = 1", Unknown),
            ("NOT a = 11", True),
            ("NOT (a = 10 AND region = 'eu-west')", False),
            ("(a = 1 OR a = 10) AND (TAGS = 'TagA' OR TAGS = 'TagB')", True),
            ("a = 1 OR a = 2 OR a = 3 OR a = 10", True),
        ] {
            assert_eq!(truth(e), want, "{e}");
        }
    }

    #[test]
    fn between_in_and_string_matches() {
        use Truth::*;
        for (e, want) in [
            ("a BETWEEN 1 AND 10", True),
            ("a BETWEEN 11 AND 20", False),
            ("a NOT BETWEEN 11 AND 20", True),
            ("price BETWEEN 12.5 AND 12.5", True),
            ("word BETWEEN 1 AND 2", Unknown),
            ("region IN ('us', 'eu-west')", True),
            ("region IN ('us', 'ap')", False),
            ("region NOT IN ('us', 'ap')", True),
            ("a IN (1, 10)", True),
            ("word IN (1, 'abc')", True),
            ("word IN (1, 'x')", Unknown),
            ("TAGS IN ('TagA', 'TagB')", True),
            ("region CONTAINS 'west'", True),
            ("region STARTSWITH 'eu'", True),
            ("region ENDSWITH 'eu'", False),
            ("region NOT ENDSWITH 'eu'", True),
        ] {
            assert_eq!(truth(e), want, "{e}");
        }
    }

    #[test]
    fn number_parsing_rejects_non_numbers() {
        assert_eq!(parse_number("12"), Some(Number::Int(12)));
        assert_eq!(parse_number("-1.5e2"), Some(Number::Float(-150.0)));
        for bad in ["", " 1", "1 ", "inf", "NaN", "1e999", "abc", "+", "1,5"] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
    }
}
