//! Test components built from core-module WAT, wrapped into components for a
//! world of `wit/policy.wit` by `wit-component` (what `wasm-tools component
//! new` does). They follow the canonical ABI by hand, so each is small and
//! does exactly one thing.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};
use std::sync::Once;

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "wasmq_plugin=info".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

pub fn wit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit/policy.wit")
}

/// Just enough of WASI 0.2 for a guest that sleeps, plus a filter world
/// that imports it (what a Python/JS guest calling `sleep` looks like).
const SLEEPY_WIT: [&str; 3] = [
    "package wasi:io@0.2.0;
     interface poll { resource pollable { block: func(); } }",
    "package wasi:clocks@0.2.0;
     interface monotonic-clock {
       use wasi:io/poll@0.2.0.{pollable};
       type duration = u64;
       subscribe-duration: func(when: duration) -> pollable;
     }",
    "package test:sleepy;
     world sleepy-filter {
       import wasi:clocks/monotonic-clock@0.2.0;
       export wasmq:policy/filter@0.1.0;
     }",
];

/// Wraps a core module (WAT) into a component of `world` (of
/// `wit/policy.wit`, or `sleepy-filter` above).
pub fn component(world: &str, core_wat: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let mut package = resolve.push_file(wit_path()).expect("parse wit/policy.wit");
    if world == "sleepy-filter" {
        for (i, text) in SLEEPY_WIT.iter().enumerate() {
            package = resolve.push_str(format!("sleepy{i}.wit"), text).expect("test WIT");
        }
    }
    let world = resolve.select_world(&[package], Some(world)).expect("world");
    let mut module = wat::parse_str(core_wat).unwrap_or_else(|e| panic!("bad test WAT: {e}\n{core_wat}"));
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)
        .expect("embed component type");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("component encoder accepts the module")
        .validate(true)
        .encode()
        .expect("encode component")
}

/// `n` as a WAT data-string little-endian u32.
fn le32(n: u32) -> String {
    n.to_le_bytes().iter().map(|b| format!("\\{b:02x}")).collect()
}

/// Bump allocator shared by every test module: `cabi_realloc` allocates from
/// `$heap`, post-return resets it (the host reuses instances).
const ALLOCATOR: &str = r#"
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func $alloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (local.get $p))
"#;

/// What a WAT filter does on each call.
#[derive(Debug, Clone, Copy)]
pub enum FilterMode {
    /// Deliver iff expression is `*` or equals the message tag exactly.
    TagEquals,
    /// Every verdict is this byte (0, 1, or an invalid value).
    Constant(u8),
    /// Verdict = first char of config `verdict` minus '0' (1 if unset);
    /// logs one line per call.
    FromConfig,
    /// One verdict too many.
    WrongLength,
    LoopForever,
    GrowMemoryForever,
    Trap,
    /// Sleeps this many seconds through WASI (`subscribe-duration` +
    /// `block`), then delivers everything.
    SleepSeconds(u64),
}

pub fn filter_component(mode: FilterMode) -> Vec<u8> {
    let mut prelude = String::new();
    let mut verdict = String::new();
    let mut out_len = "(local.get $n)".to_owned();
    match mode {
        FilterMode::TagEquals => {
            verdict = r#"
         (local.set $v (i32.const 0))
         (if (i32.and (i32.eq (local.get $el) (i32.const 1)) (i32.eq (i32.load8_u (local.get $ep)) (i32.const 42)))
           (then (local.set $v (i32.const 1)))
           (else
             (if (i32.eq (local.get $tl) (local.get $el))
               (then
                 (local.set $v (i32.const 1))
                 (local.set $j (i32.const 0))
                 (block $ne (loop $cmp
                   (br_if $ne (i32.ge_u (local.get $j) (local.get $tl)))
                   (if (i32.ne (i32.load8_u (i32.add (local.get $tag) (local.get $j)))
                               (i32.load8_u (i32.add (local.get $ep) (local.get $j))))
                     (then (local.set $v (i32.const 0)) (br $ne)))
                   (local.set $j (i32.add (local.get $j) (i32.const 1)))
                   (br $cmp)))))))"#
                .to_owned();
        }
        FilterMode::Constant(byte) => verdict = format!("(local.set $v (i32.const {byte}))"),
        FilterMode::FromConfig => {
            prelude = r#"
     (call $log (i32.const 2) (i32.const 80) (i32.const 13))
     (call $config_get (i32.const 64) (i32.const 7) (i32.const 48))
     (local.set $cv (i32.const 1))
     (if (i32.load8_u (i32.const 48))
       (then (local.set $cv (i32.sub (i32.load8_u (i32.load (i32.const 52))) (i32.const 48)))))"#
                .to_owned();
            verdict = "(local.set $v (local.get $cv))".to_owned();
        }
        FilterMode::WrongLength => {
            verdict = "(local.set $v (i32.const 1))".to_owned();
            out_len = "(i32.add (local.get $n) (i32.const 1))".to_owned();
        }
        FilterMode::LoopForever => prelude = "(loop $forever (br $forever))".to_owned(),
        FilterMode::GrowMemoryForever => {
            prelude = "(loop $more (drop (memory.grow (i32.const 16))) (br $more))".to_owned()
        }
        FilterMode::Trap => prelude = "unreachable".to_owned(),
        FilterMode::SleepSeconds(seconds) => {
            prelude = format!(
                "(local.set $cv (call $subscribe (i64.const {})))
                 (call $block (local.get $cv))
                 (call $drop_pollable (local.get $cv))",
                seconds * 1_000_000_000
            );
            verdict = "(local.set $v (i32.const 1))".to_owned();
        }
    }
    let (world, wasi_imports) = match mode {
        FilterMode::SleepSeconds(_) => (
            "sleepy-filter",
            r#"(import "wasi:clocks/monotonic-clock@0.2.0" "subscribe-duration" (func $subscribe (param i64) (result i32)))
  (import "wasi:io/poll@0.2.0" "[method]pollable.block" (func $block (param i32)))
  (import "wasi:io/poll@0.2.0" "[resource-drop]pollable" (func $drop_pollable (param i32)))"#,
        ),
        _ => ("filter-plugin", ""),
    };
    let host_imports = match mode {
        FilterMode::SleepSeconds(_) => "",
        _ => {
            r#"(import "wasmq:policy/host@0.1.0" "log" (func $log (param i32 i32 i32)))
  (import "wasmq:policy/host@0.1.0" "config-get" (func $config_get (param i32 i32 i32)))"#
        }
    };
    let wat = format!(
        r#"(module
  {host_imports}
  {wasi_imports}
  {ALLOCATOR}
  (data (i32.const 64) "verdict")
  (data (i32.const 80) "filter called")
  (func (export "cabi_post_wasmq:policy/filter@0.1.0#filter") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "wasmq:policy/filter@0.1.0#filter")
    (param $gp i32) (param $gl i32) (param $kind i32) (param $ep i32) (param $el i32)
    (param $bp i32) (param $bl i32) (param $op i32) (param $ol i32) (result i32)
    (local $n i32) (local $out i32) (local $i i32) (local $v i32) (local $rec i32)
    (local $tag i32) (local $tl i32) (local $j i32) (local $cv i32)
    (local.set $n (i32.sub (local.get $ol) (i32.const 1)))
    {prelude}
    (local.set $out (call $alloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.add (local.get $n) (i32.const 1))))
    (local.set $i (i32.const 0))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $rec (i32.add (local.get $bp)
          (i32.load (i32.add (local.get $op) (i32.shl (local.get $i) (i32.const 2))))))
        (local.set $tag (i32.add (i32.add (local.get $rec) (i32.const 2)) (i32.load16_u (local.get $rec))))
        (local.set $tl (i32.load16_u (local.get $tag)))
        (local.set $tag (i32.add (local.get $tag) (i32.const 2)))
        {verdict}
        (i32.store8 (i32.add (local.get $out) (local.get $i)) (local.get $v))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.store8 (i32.add (local.get $out) (local.get $n)) (i32.const 1))
    (i32.store (i32.const 32) (local.get $out))
    (i32.store (i32.const 36) {out_len})
    (i32.const 32))
)"#
    );
    component(world, &wat)
}

/// What a WAT router decides.
#[derive(Debug, Clone)]
pub enum RouterMode {
    Default,
    Queue(u32),
    /// `queue-count - 1`, read from the message-meta record (checks the
    /// host's lowering of the parameter record).
    LastQueue,
    /// Queue = body length % queue-count when the body came, else reject
    /// "no body"; `wants-body` answers true.
    BodyLength,
    Redirect(String),
    Reject(String),
    Trap,
}

pub fn router_component(mode: RouterMode) -> Vec<u8> {
    // Return area at 16: u8 discriminant, payload at 20 (u32, or ptr+len).
    let string_at_256 =
        |s: &str| format!("(data (i32.const 256) \"{}\")", s.bytes().map(|b| format!("\\{b:02x}")).collect::<String>());
    let (data, body, wants_body) = match &mode {
        RouterMode::Default => (String::new(), "(i32.store8 (i32.const 16) (i32.const 0))".to_owned(), 0),
        RouterMode::Queue(q) => (
            String::new(),
            format!("(i32.store8 (i32.const 16) (i32.const 1)) (i32.store (i32.const 20) (i32.const {q}))"),
            0,
        ),
        RouterMode::LastQueue => (
            String::new(),
            "(i32.store8 (i32.const 16) (i32.const 1))
             (i32.store (i32.const 20) (i32.sub (i32.load offset=52 (local.get $args)) (i32.const 1)))"
                .to_owned(),
            0,
        ),
        RouterMode::BodyLength => (
            string_at_256("no body"),
            "(if (i32.load8_u offset=56 (local.get $args))
               (then
                 (i32.store8 (i32.const 16) (i32.const 1))
                 (i32.store (i32.const 20) (i32.rem_u (i32.load offset=64 (local.get $args))
                                                      (i32.load offset=52 (local.get $args)))))
               (else
                 (i32.store8 (i32.const 16) (i32.const 3))
                 (i32.store (i32.const 20) (i32.const 256))
                 (i32.store (i32.const 24) (i32.const 7))))"
                .to_owned(),
            1,
        ),
        RouterMode::Redirect(topic) => (
            string_at_256(topic),
            format!(
                "(i32.store8 (i32.const 16) (i32.const 2)) (i32.store (i32.const 20) (i32.const 256)) (i32.store (i32.const 24) (i32.const {}))",
                topic.len()
            ),
            0,
        ),
        RouterMode::Reject(reason) => (
            string_at_256(reason),
            format!(
                "(i32.store8 (i32.const 16) (i32.const 3)) (i32.store (i32.const 20) (i32.const 256)) (i32.store (i32.const 24) (i32.const {}))",
                reason.len()
            ),
            0,
        ),
        RouterMode::Trap => (String::new(), "unreachable".to_owned(), 0),
    };
    let wat = format!(
        r#"(module
  {ALLOCATOR}
  {data}
  (func (export "wasmq:policy/router@0.1.0#wants-body") (result i32) (i32.const {wants_body}))
  (func (export "cabi_post_wasmq:policy/router@0.1.0#route") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "wasmq:policy/router@0.1.0#route") (param $args i32) (result i32)
    {body}
    (i32.const 16))
)"#
    );
    component("router-plugin", &wat)
}

/// A validator that traps on every call.
pub fn trapping_validator_component() -> Vec<u8> {
    let wat = format!(
        r#"(module
  {ALLOCATOR}
  (func (export "wasmq:policy/upgrade-validator@0.1.0#validate")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    unreachable)
)"#
    );
    component("upgrade-validator-plugin", &wat)
}

/// A validator that refuses adding/replacing a plugin whose name starts with
/// `x` and removing one whose name starts with `k`; accepts anything else.
pub fn validator_component() -> Vec<u8> {
    let code = "refused";
    let text = "plugin name refused by the test validator";
    // Finding at 64: severity (2 = error), code (ptr, len), text (ptr, len).
    let finding =
        format!("\\02\\00\\00\\00{}{}{}{}", le32(128), le32(code.len() as u32), le32(160), le32(text.len() as u32));
    let wat = format!(
        r#"(module
  {ALLOCATOR}
  (data (i32.const 64) "{finding}")
  (data (i32.const 128) "{code}")
  (data (i32.const 160) "{text}")
  (func $refuse
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 64))
    (i32.store (i32.const 24) (i32.const 1)))
  (func (export "cabi_post_wasmq:policy/upgrade-validator@0.1.0#validate") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "wasmq:policy/upgrade-validator@0.1.0#validate")
    (param $kind i32) (param $ocp i32) (param $ocl i32) (param $ncp i32) (param $ncl i32)
    (param $np i32) (param $nl i32) (param $opp i32) (param $opl i32) (param $npp i32) (param $npl i32)
    (result i32)
    (i32.store8 (i32.const 16) (i32.const 1))
    (i32.store (i32.const 20) (i32.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (if (i32.gt_u (local.get $npl) (i32.const 0))
      (then
        (if (i32.eq (i32.load8_u (i32.load (local.get $npp))) (i32.const 120))
          (then (call $refuse))))
      (else
        (if (i32.gt_u (local.get $opl) (i32.const 0))
          (then
            (if (i32.eq (i32.load8_u (i32.load (local.get $opp))) (i32.const 107))
              (then (call $refuse)))))))
    (i32.const 16))
)"#
    );
    component("upgrade-validator-plugin", &wat)
}

/// Writes `NAME.wasm` and `NAME.toml` the way a careful operator does:
/// to a hidden temporary name, then renamed into place.
pub fn install(dir: impl AsRef<Path>, name: &str, wasm: &[u8], manifest: &str) {
    let dir = dir.as_ref();
    write_atomically(&dir.join(format!("{name}.wasm")), wasm);
    write_atomically(&dir.join(format!("{name}.toml")), manifest.as_bytes());
}

pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn remove(dir: impl AsRef<Path>, name: &str) {
    let dir = dir.as_ref();
    let _ = std::fs::remove_file(dir.join(format!("{name}.wasm")));
    let _ = std::fs::remove_file(dir.join(format!("{name}.toml")));
}
