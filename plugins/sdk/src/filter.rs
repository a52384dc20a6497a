//! The `filter-plugin` world: deliver or skip, a batch at a time.

pub use crate::batch::{Batch, BatchError, MessageView, Properties};
use crate::host::{Level, log};

#[doc(hidden)]
#[allow(clippy::all, unsafe_op_in_unsafe_fn)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "filter-plugin",
        runtime_path: "wasmq_plugin_sdk::__wit_bindgen::rt",
        pub_export_macro: true,
        default_bindings_module: "wasmq_plugin_sdk::filter::bindings",
        with: { "wasmq:policy/host@0.1.0": crate::host::bindings::wasmq::policy::host },
    });
}

use bindings::exports::wasmq::policy::filter as wit;

/// The subscription's expression language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpressionKind {
    /// `*`, `TagA`, `TagA || TagB`.
    Tag,
    /// SQL92-like expression over properties (and `TAGS`).
    Sql92,
}

impl From<wit::ExpressionKind> for ExpressionKind {
    fn from(k: wit::ExpressionKind) -> Self {
        match k {
            wit::ExpressionKind::Tag => ExpressionKind::Tag,
            wit::ExpressionKind::Sql92 => ExpressionKind::Sql92,
        }
    }
}

/// What a batch is filtered for: the consumer group and its subscription expression.
#[derive(Debug, Clone, Copy)]
pub struct FilterContext<'a> {
    pub group: &'a str,
    pub kind: ExpressionKind,
    pub expression: &'a str,
}

/// A filter plugin. `prepare` runs once per distinct (group, kind, expression) — the SDK
/// keeps the [`PREPARED_ENTRIES_MAX`] most recently used ones, so a group polling with one
/// subscription has its expression parsed once — and `deliver` once per message.
pub trait Filter: Sized + 'static {
    /// Compiles the subscription. `Err` (e.g. a syntax error) means no message of the batch
    /// is delivered, as RocketMQ does for an invalid expression; the text is logged once.
    fn prepare(ctx: &FilterContext<'_>) -> Result<Self, String>;

    /// Whether to deliver `msg` to the group.
    fn deliver(&self, ctx: &FilterContext<'_>, msg: &MessageView<'_>) -> bool;
}

/// Subscriptions prepared per instance and kept for reuse: a broker polls many groups
/// through one instance, each with its own expression.
pub const PREPARED_ENTRIES_MAX: usize = 16;

struct PreparedEntry<F> {
    group: String,
    kind: ExpressionKind,
    expression: String,
    prepared: Result<F, String>,
}

/// The most recently used prepared subscriptions, most recent first, at most
/// [`PREPARED_ENTRIES_MAX`].
pub struct PreparedCache<F> {
    entries: Vec<PreparedEntry<F>>,
}

impl<F: Filter> PreparedCache<F> {
    pub const fn new() -> Self {
        PreparedCache { entries: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The prepared filter for `ctx`, preparing it (and logging a failure once) if unknown.
    fn get(&mut self, ctx: &FilterContext<'_>) -> &Result<F, String> {
        let found = self
            .entries
            .iter()
            .position(|e| e.kind == ctx.kind && e.expression == ctx.expression && e.group == ctx.group);
        match found {
            Some(i) => self.entries[..=i].rotate_right(1),
            None => {
                let prepared = F::prepare(ctx);
                if let Err(e) = &prepared {
                    log(
                        Level::Warn,
                        &format!(
                            "group {}: invalid {:?} expression {:?}: {e}; delivering nothing",
                            ctx.group, ctx.kind, ctx.expression
                        ),
                    );
                }
                self.entries.truncate(PREPARED_ENTRIES_MAX - 1);
                self.entries.insert(
                    0,
                    PreparedEntry {
                        group: ctx.group.to_owned(),
                        kind: ctx.kind,
                        expression: ctx.expression.to_owned(),
                        prepared,
                    },
                );
            }
        }
        assert!(self.entries.len() <= PREPARED_ENTRIES_MAX);
        &self.entries[0].prepared
    }
}

impl<F: Filter> Default for PreparedCache<F> {
    fn default() -> Self {
        Self::new()
    }
}

/// Filters one batch: one verdict byte per record (1 = deliver, 0 = skip). Pure: this is what
/// the exported function runs, and what native tests and benchmarks call directly.
pub fn run_batch<F: Filter>(
    cache: &mut PreparedCache<F>,
    ctx: &FilterContext<'_>,
    buf: &[u8],
    offsets: &[u32],
) -> Result<Vec<u8>, BatchError> {
    let batch = Batch::new(buf, offsets)?;
    let prepared = cache.get(ctx);
    let mut verdicts = Vec::with_capacity(batch.len());
    match prepared {
        // Index loops with an inlined `get`: through an iterator's out-of-line `next`, each
        // view travelled through memory and cost more than parsing it (wasm fuel 2x).
        Ok(filter) => {
            for i in 0..batch.len() {
                let msg = batch.get(i)?;
                verdicts.push(filter.deliver(ctx, &msg) as u8);
            }
        }
        Err(_) => {
            // Still parse every record: a malformed batch is a host bug worth a trap.
            for i in 0..batch.len() {
                batch.get(i)?;
            }
            verdicts.resize(batch.len(), 0);
        }
    }
    assert_eq!(verdicts.len(), batch.len());
    Ok(verdicts)
}

/// Glue behind [`export_filter!`](crate::export_filter); not part of the API.
#[doc(hidden)]
pub fn __export_call<F: Filter>(
    cache: &std::cell::RefCell<PreparedCache<F>>,
    group: String,
    kind: wit::ExpressionKind,
    expression: String,
    batch: Vec<u8>,
    offsets: Vec<u32>,
) -> Vec<u8> {
    crate::host::install_panic_hook();
    let ctx = FilterContext { group: &group, kind: kind.into(), expression: &expression };
    let mut cache = cache.borrow_mut();
    match run_batch::<F>(&mut cache, &ctx, &batch, &offsets) {
        Ok(verdicts) => verdicts,
        Err(e) => panic!("malformed filter batch from the host: {e}"),
    }
}

/// Exports a [`Filter`] implementation as the component's `wasmq:policy/filter` interface.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        // Natively (unit tests) there is no component to export, and the export names
        // (`wasmq:policy/...`) are not valid native symbols.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __WasmqFilterComponent;
            ::std::thread_local! {
                static __WASMQ_FILTER_CACHE: ::std::cell::RefCell<$crate::filter::PreparedCache<$filter>> =
                    const { ::std::cell::RefCell::new($crate::filter::PreparedCache::new()) };
            }
            impl $crate::filter::bindings::exports::wasmq::policy::filter::Guest for __WasmqFilterComponent {
                fn filter(
                    group: ::std::string::String,
                    kind: $crate::filter::bindings::exports::wasmq::policy::filter::ExpressionKind,
                    expression: ::std::string::String,
                    batch: ::std::vec::Vec<u8>,
                    offsets: ::std::vec::Vec<u32>,
                ) -> ::std::vec::Vec<u8> {
                    __WASMQ_FILTER_CACHE.with(|cache| {
                        $crate::filter::__export_call::<$filter>(cache, group, kind, expression, batch, offsets)
                    })
                }
            }
            $crate::__export_filter_plugin_impl!(__WasmqFilterComponent with_types_in $crate::filter::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchWriter, MessageSpec};
    use std::cell::Cell;

    thread_local!(static PREPARES: Cell<u32> = const { Cell::new(0) });

    /// Delivers messages whose topic equals the expression; "!" is a syntax error.
    struct TopicIs(String);
    impl Filter for TopicIs {
        fn prepare(ctx: &FilterContext<'_>) -> Result<Self, String> {
            PREPARES.with(|p| p.set(p.get() + 1));
            if ctx.expression == "!" { Err("bad".into()) } else { Ok(TopicIs(ctx.expression.into())) }
        }
        fn deliver(&self, _ctx: &FilterContext<'_>, msg: &MessageView<'_>) -> bool {
            msg.topic() == self.0
        }
    }

    fn ctx(expression: &str) -> FilterContext<'_> {
        FilterContext { group: "g", kind: ExpressionKind::Tag, expression }
    }

    #[test]
    fn verdicts_and_prepare_cache() {
        let mut w = BatchWriter::new();
        for topic in ["a", "b", "a"] {
            w.push(&MessageSpec { topic, ..Default::default() });
        }
        let mut cache = PreparedCache::new();
        let before = PREPARES.with(Cell::get);
        let v = run_batch::<TopicIs>(&mut cache, &ctx("a"), w.buf(), w.offsets()).unwrap();
        assert_eq!(v, [1, 0, 1]);
        let v = run_batch::<TopicIs>(&mut cache, &ctx("a"), w.buf(), w.offsets()).unwrap();
        assert_eq!(v, [1, 0, 1]);
        assert_eq!(PREPARES.with(Cell::get) - before, 1, "same subscription prepared once");
        let v = run_batch::<TopicIs>(&mut cache, &ctx("b"), w.buf(), w.offsets()).unwrap();
        assert_eq!(v, [0, 1, 0]);
        assert_eq!(PREPARES.with(Cell::get) - before, 2);
        let v = run_batch::<TopicIs>(&mut cache, &ctx("!"), w.buf(), w.offsets()).unwrap();
        assert_eq!(v, [0, 0, 0], "invalid expression delivers nothing");
        // Alternating subscriptions stay prepared.
        let before = PREPARES.with(Cell::get);
        for expression in ["a", "b", "!", "a", "b"] {
            run_batch::<TopicIs>(&mut cache, &ctx(expression), w.buf(), w.offsets()).unwrap();
        }
        assert_eq!(PREPARES.with(Cell::get) - before, 0);
        // Bounded: the least recently used entry goes first.
        for i in 0..PREPARED_ENTRIES_MAX + 5 {
            run_batch::<TopicIs>(&mut cache, &ctx(&format!("x{i}")), w.buf(), w.offsets()).unwrap();
        }
        assert_eq!(cache.len(), PREPARED_ENTRIES_MAX);
        let before = PREPARES.with(Cell::get);
        run_batch::<TopicIs>(&mut cache, &ctx(&format!("x{}", PREPARED_ENTRIES_MAX + 4)), w.buf(), w.offsets()).unwrap();
        run_batch::<TopicIs>(&mut cache, &ctx("a"), w.buf(), w.offsets()).unwrap();
        assert_eq!(PREPARES.with(Cell::get) - before, 1, "recent one kept, evicted one prepared again");
    }

    #[test]
    fn malformed_batch_is_an_error_even_for_invalid_expressions() {
        let mut cache = PreparedCache::new();
        let err = run_batch::<TopicIs>(&mut cache, &ctx("!"), b"\x05\x00ab", &[0, 4]);
        assert!(matches!(err, Err(BatchError::Truncated { .. })), "{err:?}");
    }
}
