//! Per-message cost of the filter logic compiled natively, at batch 256, against a baseline
//! measured in the same run (parsing every record's framing and reading one field). The
//! wasm component runs the same code; its cost on the broker is measured by the host's
//! benchmarks (wasmtime), this one isolates the guest logic.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tag_filter::SubscriptionFilter;
use wasmq_plugin_sdk::batch::{Batch, BatchWriter, MessageSpec};
use wasmq_plugin_sdk::filter::{ExpressionKind, FilterContext, PreparedCache, run_batch};

const BATCH_MESSAGES: usize = 256;
const ROUNDS_MAX: u32 = 200_000;
const DURATION_MAX: Duration = Duration::from_millis(1500);

fn batch() -> BatchWriter {
    let tags = ["TagA", "TagB", "TagC", "TagD"];
    let regions = ["eu", "us", "ap"];
    let mut w = BatchWriter::new();
    for i in 0..BATCH_MESSAGES {
        let price = format!("{}", i % 50);
        let order = format!("order-{i}");
        w.push(&MessageSpec {
            topic: "orders-topic",
            tag: Some(tags[i % tags.len()]),
            keys: &[&order, "customer-42"],
            properties: &[("region", regions[i % regions.len()]), ("price", &price), ("UNIQ_KEY", "7F0000011A2B"), ("channel", "web")],
            queue_offset: i as u64,
            body: b"",
        });
    }
    w
}

/// Nanoseconds per message of `f` over one batch, bounded in rounds and time.
fn measure(mut f: impl FnMut() -> usize) -> f64 {
    for _ in 0..100 {
        black_box(f());
    }
    let start = Instant::now();
    let mut rounds = 0u32;
    while rounds < ROUNDS_MAX && start.elapsed() < DURATION_MAX {
        black_box(f());
        rounds += 1;
    }
    start.elapsed().as_nanos() as f64 / (f64::from(rounds) * BATCH_MESSAGES as f64)
}

fn main() {
    let w = batch();
    let (buf, offsets) = (w.buf(), w.offsets());
    let baseline = measure(|| {
        let batch = Batch::new(black_box(buf), black_box(offsets)).unwrap();
        (0..batch.len()).map(|i| batch.get(i).unwrap().queue_offset() as usize).sum()
    });
    println!("baseline (parse framing, read queue offset): {baseline:.1} ns/message");
    let verdicts_only = measure(|| {
        let batch = Batch::new(black_box(buf), black_box(offsets)).unwrap();
        let mut v = Vec::with_capacity(batch.len());
        for m in batch.iter() {
            v.push((m.unwrap().queue_offset() & 1) as u8);
        }
        v.len()
    });
    println!("parse + verdict vector: {verdicts_only:.1} ns/message = {:.2}x baseline", verdicts_only / baseline);
    for (kind, expression) in [
        (ExpressionKind::Tag, "*"),
        (ExpressionKind::Tag, "TagA || TagB"),
        (ExpressionKind::Sql92, "region = 'eu' AND price > 10"),
        (ExpressionKind::Sql92, "region IN ('eu', 'ap') AND price BETWEEN 10 AND 40 OR TAGS = 'TagD'"),
    ] {
        let ctx = FilterContext { group: "bench-group", kind, expression };
        let mut cache = PreparedCache::new();
        let verdicts = run_batch::<SubscriptionFilter>(&mut cache, &ctx, buf, offsets).unwrap();
        assert_eq!(verdicts.len(), BATCH_MESSAGES);
        let delivered = verdicts.iter().filter(|&&v| v == 1).count();
        let ns = measure(|| run_batch::<SubscriptionFilter>(&mut cache, black_box(&ctx), buf, offsets).unwrap().len());
        println!(
            "{kind:?} {expression:?}: {ns:.1} ns/message = {:.2}x baseline ({delivered}/{BATCH_MESSAGES} delivered)",
            ns / baseline
        );
    }
}
