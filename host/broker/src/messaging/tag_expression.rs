//! RocketMQ tag expressions: `*` (everything) or `TagA || TagB || ...`.
//!
//! Matched in the front end because every subscription has one and it is cheap;
//! anything else (SQL92) goes to the filter plugins through the backend.

use std::collections::BTreeSet;

/// Longest expression accepted (RocketMQ has no hard limit; ours bounds the set).
pub const EXPRESSION_BYTES_MAX: usize = 4096;
/// Most tags in one expression.
pub const TAGS_MAX: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagExpression {
    All,
    AnyOf(BTreeSet<String>),
}

impl TagExpression {
    /// Empty or `*` means all messages, as in RocketMQ.
    pub fn parse(expression: &str) -> Result<Self, String> {
        if expression.len() > EXPRESSION_BYTES_MAX {
            return Err(format!("tag expression longer than {EXPRESSION_BYTES_MAX} bytes"));
        }
        let trimmed = expression.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(TagExpression::All);
        }
        let mut tags = BTreeSet::new();
        for part in trimmed.split("||") {
            let tag = part.trim();
            if tag.is_empty() {
                return Err(format!("tag expression {expression:?} has an empty tag"));
            }
            if tag == "*" {
                return Ok(TagExpression::All);
            }
            if tag.contains('|') {
                return Err(format!("tag expression {expression:?}: use `||` between tags"));
            }
            tags.insert(tag.to_string());
            if tags.len() > TAGS_MAX {
                return Err(format!("tag expression has more than {TAGS_MAX} tags"));
            }
        }
        Ok(TagExpression::AnyOf(tags))
    }

    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagExpression::All => true,
            TagExpression::AnyOf(tags) => tag.is_some_and(|t| tags.contains(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_empty_match_everything() {
        for e in ["", "*", "  *  ", "A || *"] {
            let t = TagExpression::parse(e).unwrap();
            assert!(t.matches(None) && t.matches(Some("x")), "{e:?}");
        }
    }

    #[test]
    fn alternatives() {
        let t = TagExpression::parse("TagA || TagB").unwrap();
        assert!(t.matches(Some("TagA")));
        assert!(t.matches(Some("TagB")));
        assert!(!t.matches(Some("TagC")));
        assert!(!t.matches(Some("taga")));
        assert!(!t.matches(None));
        let single = TagExpression::parse("TagA").unwrap();
        assert!(single.matches(Some("TagA")) && !single.matches(Some("TagA ")));
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for e in ["||", "A ||", "|| A", "A | B", "A |||| B"] {
            assert!(TagExpression::parse(e).is_err(), "{e:?}");
        }
        assert!(TagExpression::parse(&"a".repeat(EXPRESSION_BYTES_MAX + 1)).is_err());
        let many: Vec<String> = (0..=TAGS_MAX).map(|i| format!("t{i}")).collect();
        assert!(TagExpression::parse(&many.join("||")).is_err());
    }
}
