//! Storage benchmark: commitlog append throughput against raw sequential writes measured in
//! the same run, and restart time of a store holding a large log.
//!
//! `cargo bench -p wasmq-storage --bench storage_bench -- [--mib N] [--restart-mib N]
//!  [--producers N] [--sync-seconds S] [--dir PATH]`
//!
//! Every phase is bounded by its byte count and the group-commit phase also by time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmq_storage::commitlog::{CommitLog, CommitLogConfig, FlushMode};
use wasmq_storage::frame::HEADER_SIZE;
use wasmq_storage::record::{MessageRecord, Record};
use wasmq_storage::store::{MessageStore, MessageStoreConfig};

const MESSAGE_BYTES: usize = 1024;
const MIB: u64 = 1 << 20;

struct Args {
    mib: u64,
    restart_mib: u64,
    producers: usize,
    sync_seconds: u64,
    dir: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args { mib: 1024, restart_mib: 1024, producers: 8, sync_seconds: 10, dir: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--mib" => args.mib = value("--mib").parse().expect("--mib N"),
            "--restart-mib" => args.restart_mib = value("--restart-mib").parse().expect("--restart-mib N"),
            "--producers" => args.producers = value("--producers").parse().expect("--producers N"),
            "--sync-seconds" => args.sync_seconds = value("--sync-seconds").parse().expect("--sync-seconds S"),
            "--dir" => args.dir = Some(PathBuf::from(value("--dir"))),
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    assert!((1..=16 * 1024).contains(&args.mib), "--mib in 1..=16384");
    assert!(args.restart_mib <= 16 * 1024, "--restart-mib at most 16384");
    assert!((1..=256).contains(&args.producers), "--producers in 1..=256");
    assert!((1..=300).contains(&args.sync_seconds), "--sync-seconds in 1..=300");
    args
}

/// Bytes written to the block device holding `dir` so far (/proc/diskstats), to show that
/// each phase really reached the disk. Includes other processes' writes to that device.
fn device_bytes_written(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[0].parse() == Ok(major) && f[1].parse() == Ok(minor))
            .then(|| f[9].parse::<u64>().ok().map(|sectors| sectors * 512))
            .flatten()
    })
}

/// Run `phase`, returning its result and the MiB the device wrote meanwhile.
fn measured<T>(dir: &Path, phase: impl FnOnce() -> T) -> (T, String) {
    let before = device_bytes_written(dir);
    let out = phase();
    let written = match (before, device_bytes_written(dir)) {
        (Some(b), Some(a)) => format!("device wrote {:.0} MiB", (a - b) as f64 / MIB as f64),
        _ => "device writes unknown".to_owned(),
    };
    (out, written)
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

/// Raw baseline: the same bytes through `File::write_all` (1 MiB writes) + `sync_data`.
fn raw_write(dir: &Path, bytes: u64) -> Duration {
    let path = dir.join("raw.bin");
    let chunk = vec![0x5au8; MIB as usize];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_data().unwrap();
    let elapsed = start.elapsed();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    elapsed
}

fn log_config(dir: &Path, mode: FlushMode) -> CommitLogConfig {
    CommitLogConfig { flush_mode: mode, flush_interval_ms: 200, ..CommitLogConfig::new(dir) }
}

/// One producer appending 1 KiB messages one call each, background flush, final flush.
fn async_append(dir: &Path, count: u64) -> Duration {
    let (log, _) = CommitLog::open(log_config(dir, FlushMode::Async)).unwrap();
    let body = vec![0xa5u8; MESSAGE_BYTES];
    let start = Instant::now();
    for _ in 0..count {
        log.append(1, &[&body]).unwrap();
    }
    log.flush().unwrap();
    let elapsed = start.elapsed();
    log.close().unwrap();
    elapsed
}

/// Producers each append one message and wait until it is durable (group commit).
fn sync_group_commit(dir: &Path, count_max: u64, producers: usize, time_max: Duration) -> (u64, Duration, u64) {
    let (log, _) = CommitLog::open(log_config(dir, FlushMode::Sync)).unwrap();
    let log = Arc::new(log);
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let (log, sent, stop) = (log.clone(), sent.clone(), stop.clone());
            std::thread::spawn(move || {
                let body = vec![0x3cu8; MESSAGE_BYTES];
                while !stop.load(Ordering::Relaxed) && sent.fetch_add(1, Ordering::Relaxed) < count_max {
                    let r = log.append(1, &[&body]).unwrap();
                    log.flush_to(r.start).unwrap();
                }
            })
        })
        .collect();
    while !threads.iter().all(|t| t.is_finished()) {
        if start.elapsed() > time_max {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed();
    let appended = log.last_index();
    (appended, elapsed, log.flush_count())
}

fn message_record(n: u64) -> Vec<u8> {
    Record::Message(MessageRecord {
        topic: "BenchTopic".into(),
        queue_id: (n % 8) as u32,
        tag: Some("TagA".into()),
        keys: vec![format!("key-{n}")],
        born_host: "127.0.0.1:10911".into(),
        message_id: format!("{n:032X}"),
        born_timestamp_ms: 1_700_000_000_000 + n as i64,
        store_timestamp_ms: 1_700_000_000_000 + n as i64,
        body: vec![(n % 251) as u8; MESSAGE_BYTES],
        ..Default::default()
    })
    .encode()
    .unwrap()
}

/// Fill a store with `bytes` of messages (applied to consume queues), then time reopening it
/// after a clean close and after a crash that left the last part unapplied and uncheckpointed.
fn restart(dir: &Path, bytes: u64) {
    let mut cfg = MessageStoreConfig::new(dir);
    cfg.commitlog.flush_mode = FlushMode::Async;
    cfg.commitlog.flush_interval_ms = 200;
    let (store, _) = MessageStore::open(cfg.clone()).unwrap();
    let per_entry = (message_record(0).len() + HEADER_SIZE) as u64;
    let count = bytes / per_entry;
    let fill_start = Instant::now();
    let batch = 64u64;
    let mut n = 0;
    while n < count {
        let records: Vec<Vec<u8>> = (n..(n + batch).min(count)).map(message_record).collect();
        let refs: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
        let range = store.log().append(1, &refs).unwrap();
        store.apply_committed(range.end - 1).unwrap();
        n += records.len() as u64;
    }
    let fill = fill_start.elapsed();
    store.close().unwrap();
    println!(
        "restart: store with {count} messages, {:.0} MiB of log (filled in {:.1} s)",
        (count * per_entry) as f64 / MIB as f64,
        fill.as_secs_f64()
    );

    let t = Instant::now();
    let (store, report) = MessageStore::open(cfg.clone()).unwrap();
    let clean = t.elapsed();
    assert_eq!(store.applied_index(), count);
    println!(
        "  clean restart: open {:.3} s (scanned {} log entries, {} queues rebuilt)  target < 2 s: {}",
        clean.as_secs_f64(),
        report.log.scanned_entries,
        report.queues_rebuilt,
        if clean < Duration::from_secs(2) { "met" } else { "MISSED" }
    );

    // Crash: append another ~10% without applying or flushing, then drop without close.
    let extra = (count / 10).max(1);
    for chunk_start in (count..count + extra).step_by(batch as usize) {
        let records: Vec<Vec<u8>> =
            (chunk_start..(chunk_start + batch).min(count + extra)).map(message_record).collect();
        let refs: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
        store.log().append(1, &refs).unwrap();
    }
    drop(store);
    let t = Instant::now();
    let (store, report) = MessageStore::open(cfg).unwrap();
    let open = t.elapsed();
    let t = Instant::now();
    let last = store.log().last_index();
    while store.applied_index() < last {
        store.apply_committed(last).unwrap();
    }
    let apply = t.elapsed();
    println!(
        "  crash restart: open {:.3} s (scanned {} tail entries) + re-apply {} entries {:.3} s  target < 2 s: {}",
        open.as_secs_f64(),
        report.log.scanned_entries,
        last - report.applied_index,
        apply.as_secs_f64(),
        if open + apply < Duration::from_secs(2) { "met" } else { "MISSED" }
    );
    store.close().unwrap();
}

fn main() {
    let args = parse_args();
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let base = tmp.path();
    let count = args.mib * MIB / MESSAGE_BYTES as u64;
    let framed_bytes = count * (MESSAGE_BYTES + HEADER_SIZE) as u64;
    println!(
        "storage_bench: {count} messages of {MESSAGE_BYTES} B ({:.0} MiB framed) in {}",
        framed_bytes as f64 / MIB as f64,
        base.display()
    );

    // The baseline runs before and after the commitlog run (disk speed drifts on a shared
    // machine); ratios use the faster of the two, so they are conservative.
    let (raw1, w1) = measured(base, || raw_write(base, framed_bytes));
    println!(
        "raw write_all(1 MiB)+sync_data #1: {:.3} s  {:.0} MB/s  ({w1})",
        raw1.as_secs_f64(),
        mb_per_s(framed_bytes, raw1)
    );
    let dir = base.join("async");
    let (t, w) = measured(base, || async_append(&dir, count));
    std::fs::remove_dir_all(&dir).unwrap();
    let (raw2, w2) = measured(base, || raw_write(base, framed_bytes));
    println!(
        "raw write_all(1 MiB)+sync_data #2: {:.3} s  {:.0} MB/s  ({w2})",
        raw2.as_secs_f64(),
        mb_per_s(framed_bytes, raw2)
    );
    let raw_mbs = mb_per_s(framed_bytes, raw1.min(raw2));
    let mbs = mb_per_s(framed_bytes, t);
    println!(
        "commitlog async flush, 1 producer:  {:.3} s  {mbs:.0} MB/s  {:.0} msgs/s  ({w})  ratio to raw {:.2} (target >= 0.70: {})",
        t.as_secs_f64(),
        count as f64 / t.as_secs_f64(),
        mbs / raw_mbs,
        if mbs / raw_mbs >= 0.70 { "met" } else { "MISSED" }
    );

    let dir = base.join("sync");
    let (n, t, fsyncs) = sync_group_commit(&dir, count, args.producers, Duration::from_secs(args.sync_seconds));
    let bytes = n * (MESSAGE_BYTES + HEADER_SIZE) as u64;
    let mbs = mb_per_s(bytes, t);
    println!(
        "commitlog sync flush, group commit, {} producers: {n} msgs in {:.3} s  {mbs:.0} MB/s  {:.0} msgs/s  {:.1} msgs/fsync  ratio to raw {:.2}",
        args.producers,
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64(),
        n as f64 / fsyncs.max(1) as f64,
        mbs / raw_mbs
    );
    std::fs::remove_dir_all(&dir).unwrap();

    if args.restart_mib > 0 {
        restart(&base.join("restart"), args.restart_mib * MIB);
    }
}
