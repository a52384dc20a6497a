//! RocketMQ tag expressions: `*` (or empty) matches everything, otherwise tags separated by
//! `||` with optional whitespace (`TagA || TagB`); a message matches when its tag is one of
//! them. A message without a tag matches only `*`.

/// Bounds the work `prepare` and `matches` do for a hostile expression.
pub const TAGS_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagExpr {
    All,
    /// Distinct, non-empty tags in expression order.
    AnyOf(Vec<Box<str>>),
}

impl TagExpr {
    pub fn parse(expression: &str) -> Result<TagExpr, String> {
        let trimmed = expression.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(TagExpr::All);
        }
        let mut tags: Vec<Box<str>> = Vec::new();
        for part in trimmed.split("||") {
            let tag = part.trim();
            if tag.is_empty() {
                return Err(format!("empty tag in {expression:?}"));
            }
            if tag == "*" {
                // RocketMQ treats `*` only as the whole expression; inside a list it would
                // never match a real tag, which is surely not what the consumer meant.
                return Err(format!("`*` must be the whole expression, not part of {expression:?}"));
            }
            if !tags.iter().any(|t| &**t == tag) {
                if tags.len() == TAGS_MAX {
                    return Err(format!("more than {TAGS_MAX} tags"));
                }
                tags.push(tag.into());
            }
        }
        assert!(!tags.is_empty());
        Ok(TagExpr::AnyOf(tags))
    }

    /// Whether a message with this tag (raw bytes: no UTF-8 check needed to compare)
    /// matches.
    #[inline]
    pub fn matches(&self, tag: Option<&[u8]>) -> bool {
        match self {
            TagExpr::All => true,
            TagExpr::AnyOf(tags) => match tag {
                Some(tag) => tags.iter().any(|t| t.as_bytes() == tag),
                None => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_empty_match_everything() {
        for e in ["*", " * ", "", "   "] {
            let t = TagExpr::parse(e).unwrap();
            assert_eq!(t, TagExpr::All);
            assert!(t.matches(Some(b"x")));
            assert!(t.matches(None));
        }
    }

    #[test]
    fn lists_are_whitespace_tolerant() {
        let t = TagExpr::parse("TagA||TagB ||  TagC").unwrap();
        assert_eq!(t, TagExpr::AnyOf(vec!["TagA".into(), "TagB".into(), "TagC".into()]));
        assert!(t.matches(Some(b"TagA")));
        assert!(t.matches(Some(b"TagC")));
        assert!(!t.matches(Some(b"TagD")));
        assert!(!t.matches(Some(b"taga")), "tags are case-sensitive");
        assert!(!t.matches(None));
        assert!(TagExpr::parse(" TagA ").unwrap().matches(Some(b"TagA")));
        assert_eq!(TagExpr::parse("A || A").unwrap(), TagExpr::AnyOf(vec!["A".into()]));
    }

    #[test]
    fn malformed_lists_are_errors() {
        for e in ["TagA ||", "|| TagA", "A |||| B", "A || *"] {
            assert!(TagExpr::parse(e).is_err(), "{e}");
        }
        let many = (0..=TAGS_MAX).map(|i| format!("t{i}")).collect::<Vec<_>>().join("||");
        assert!(TagExpr::parse(&many).is_err());
    }
}
