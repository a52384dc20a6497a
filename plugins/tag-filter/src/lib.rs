//! wasmq filter plugin: RocketMQ subscription expressions.
//!
//! - kind `tag`: `*`, `TagA`, `TagA || TagB` ([`tag_expr`]);
//! - kind `sql92`: property expressions such as `region IN ('eu','us') AND price > 10`
//!   ([`sql92`]); an error or NULL result means "do not deliver".
//!
//! The expression is parsed once per subscription (the SDK keeps the most recently used
//! prepared filters), then evaluated per message.

pub mod sql92;
pub mod tag_expr;

use wasmq_plugin_sdk::filter::{ExpressionKind, Filter, FilterContext, MessageView};

use tag_expr::TagExpr;

/// A prepared subscription.
#[derive(Debug)]
pub enum SubscriptionFilter {
    Tag(TagExpr),
    Sql92(sql92::Expr),
}

struct View<'m, 'a>(&'m MessageView<'a>);

impl sql92::Lookup for View<'_, '_> {
    #[inline]
    fn property(&self, name: &str) -> Option<&str> {
        self.0.property(name)
    }
    #[inline]
    fn tag(&self) -> Option<&str> {
        self.0.tag()
    }
}

impl Filter for SubscriptionFilter {
    fn prepare(ctx: &FilterContext<'_>) -> Result<Self, String> {
        match ctx.kind {
            ExpressionKind::Tag => TagExpr::parse(ctx.expression).map(SubscriptionFilter::Tag),
            ExpressionKind::Sql92 => sql92::parse(ctx.expression).map(SubscriptionFilter::Sql92).map_err(|e| e.to_string()),
        }
    }

    #[inline]
    fn deliver(&self, _ctx: &FilterContext<'_>, msg: &MessageView<'_>) -> bool {
        match self {
            SubscriptionFilter::Tag(t) => t.matches(msg.tag_bytes()),
            SubscriptionFilter::Sql92(e) => e.matches(&View(msg)),
        }
    }
}

wasmq_plugin_sdk::export_filter!(SubscriptionFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmq_plugin_sdk::batch::{BatchWriter, MessageSpec};
    use wasmq_plugin_sdk::filter::{PreparedCache, run_batch};

    fn batch() -> BatchWriter {
        let mut w = BatchWriter::new();
        w.push(&MessageSpec { topic: "t", tag: Some("TagA"), properties: &[("a", "1")], ..Default::default() });
        w.push(&MessageSpec { topic: "t", tag: Some("TagB"), properties: &[("a", "2")], ..Default::default() });
        w.push(&MessageSpec { topic: "t", tag: None, properties: &[], ..Default::default() });
        w.push(&MessageSpec { topic: "t", tag: Some("TagC"), properties: &[("a", "x")], ..Default::default() });
        w
    }

    fn verdicts(kind: ExpressionKind, expression: &str) -> Vec<u8> {
        let w = batch();
        let ctx = FilterContext { group: "g", kind, expression };
        run_batch::<SubscriptionFilter>(&mut PreparedCache::new(), &ctx, w.buf(), w.offsets()).unwrap()
    }

    #[test]
    fn tag_subscriptions_over_a_batch() {
        assert_eq!(verdicts(ExpressionKind::Tag, "*"), [1, 1, 1, 1]);
        assert_eq!(verdicts(ExpressionKind::Tag, "TagA || TagC"), [1, 0, 0, 1]);
        assert_eq!(verdicts(ExpressionKind::Tag, "TagA ||"), [0, 0, 0, 0], "invalid: nothing");
    }

    #[test]
    fn sql92_subscriptions_over_a_batch() {
        assert_eq!(verdicts(ExpressionKind::Sql92, "a >= 2 OR TAGS = 'TagA'"), [1, 1, 0, 0]);
        assert_eq!(verdicts(ExpressionKind::Sql92, "a IS NULL"), [0, 0, 1, 0]);
        assert_eq!(verdicts(ExpressionKind::Sql92, "NOT (a = 1)"), [0, 1, 0, 0]);
        assert_eq!(verdicts(ExpressionKind::Sql92, "a = "), [0, 0, 0, 0], "invalid: nothing");
    }
}
