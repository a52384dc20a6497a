"""Loads every component in plugins/dist into a real wasmtime (wasmtime-py) and calls it.

Checks what native unit tests cannot: the components instantiate against the
wasmq:policy host interface, decode the flat batch format the host writes, return
the right verdicts/decisions, and fail the way the host's failure tests expect
(fuel exhaustion, memory cap, trap, wrong world).

Run: plugins/tests/run.sh (installs the pinned wasmtime-py into the tools venv).
"""

import os
import struct
import sys
import time
import unittest
from types import SimpleNamespace

import wasmtime
from wasmtime import component as wc

DIST = os.environ.get("WASMQ_PLUGIN_DIST", os.path.join(os.path.dirname(__file__), "..", "dist"))
FUEL_PER_CALL = 50_000_000
MEMORY_BYTES_MAX = 32 << 20


def encode_batch(messages):
    """Writes a batch exactly as wit/policy.wit documents it."""
    buf = bytearray()
    offsets = [0]
    for m in messages:
        topic = m.get("topic", "t").encode()
        tag = (m.get("tag") or "").encode()
        keys = " ".join(m.get("keys", [])).encode()
        props = b"".join(k.encode() + b"\x01" + v.encode() + b"\x02" for k, v in m.get("props", {}).items())
        body = m.get("body", b"")
        buf += struct.pack("<H", len(topic)) + topic
        buf += struct.pack("<H", len(tag)) + tag
        buf += struct.pack("<H", len(keys)) + keys
        buf += struct.pack("<I", len(props)) + props
        buf += struct.pack("<Q", m.get("queue_offset", 0))
        buf += struct.pack("<I", len(body)) + body
        offsets.append(len(buf))
    return bytes(buf), offsets


class Plugin:
    """One instantiated component with the host interface (and empty WASI p2) linked."""

    engine = None

    def __init__(self, name, config=None, fuel=FUEL_PER_CALL, memory_bytes_max=MEMORY_BYTES_MAX):
        if Plugin.engine is None:
            cfg = wasmtime.Config()
            cfg.consume_fuel = True
            Plugin.engine = wasmtime.Engine(cfg)
        path = os.path.join(DIST, name + ".wasm")
        self.component = wc.Component.from_file(Plugin.engine, path)
        self.logs = []
        self.config = dict(config or {})
        self.fuel = fuel
        linker = wc.Linker(Plugin.engine)
        linker.add_wasip2()
        with linker.root() as root:
            with root.add_instance("wasmq:policy/host@0.1.0") as host:
                host.add_func("log", lambda _s, level, message: self.logs.append((level, message)))
                host.add_func("config-get", lambda _s, key: self.config.get(key))
                host.add_func("config-keys", lambda _s: list(self.config))
        self.store = wasmtime.Store(Plugin.engine)
        self.store.set_wasi(wasmtime.WasiConfig())
        self.store.set_limits(memory_size=memory_bytes_max)
        self.store.set_fuel(fuel)
        self.instance = linker.instantiate(self.store, self.component)

    def func(self, interface, name):
        iface = self.instance.get_export_index(self.store, f"wasmq:policy/{interface}@0.1.0")
        if iface is None:
            return None
        idx = self.instance.get_export_index(self.store, name, iface)
        return self.instance.get_func(self.store, idx)

    def call(self, interface, name, *args):
        self.store.set_fuel(self.fuel)
        f = self.func(interface, name)
        assert f is not None, f"no export {interface}#{name}"
        result = f(self.store, *args)
        return result


MESSAGES = [
    {"tag": "TagA", "props": {"a": "1", "region": "eu"}},
    {"tag": "TagB", "props": {"a": "2", "region": "us"}},
    {"props": {"a": "x"}},
    {"tag": "TagC", "props": {}},
]


class TagFilters(unittest.TestCase):
    def check_tag_filter(self, name, sql):
        p = Plugin(name)
        batch, offsets = encode_batch(MESSAGES)
        f = lambda kind, expr: list(p.call("filter", "filter", "g", kind, expr, batch, offsets))
        self.assertEqual(f("tag", "*"), [1, 1, 1, 1])
        self.assertEqual(f("tag", "TagA || TagC"), [1, 0, 0, 1])
        self.assertEqual(f("tag", " TagB "), [0, 1, 0, 0])
        self.assertEqual(f("tag", "TagA ||"), [0, 0, 0, 0])
        empty, empty_offsets = encode_batch([])
        self.assertEqual(list(p.call("filter", "filter", "g", "tag", "*", empty, empty_offsets)), [])
        if sql:
            self.assertEqual(f("sql92", "a >= 2 OR TAGS = 'TagA'"), [1, 1, 0, 0])
            self.assertEqual(f("sql92", "region IN ('eu', 'ap') AND a BETWEEN 0 AND 1"), [1, 0, 0, 0])
            self.assertEqual(f("sql92", "a IS NULL"), [0, 0, 0, 1])
            self.assertEqual(f("sql92", "a = "), [0, 0, 0, 0])
        # A malformed batch (offsets past the end) is a host bug: the call must trap.
        with self.assertRaises(Exception):
            p.call("filter", "filter", "g", "tag", "*", batch[:10], [0, 20])
        return p

    def test_rust_tag_filter(self):
        p = self.check_tag_filter("tag-filter", sql=True)
        self.assertTrue(any("invalid" in m for _, m in p.logs), p.logs)

    @unittest.skipUnless(os.path.exists(os.path.join(DIST, "tag-filter-py.wasm")), "Python plugin not built")
    def test_python_tag_filter(self):
        self.check_tag_filter("tag-filter-py", sql=False)

    @unittest.skipUnless(os.path.exists(os.path.join(DIST, "tag-filter-js.wasm")), "JS plugin not built")
    def test_js_tag_filter(self):
        self.check_tag_filter("tag-filter-js", sql=False)


class FailurePlugins(unittest.TestCase):
    def call_one(self, p):
        batch, offsets = encode_batch(MESSAGES[:1])
        return p.call("filter", "filter", "g", "tag", "*", batch, offsets)

    def test_loop_filter_runs_out_of_fuel(self):
        p = Plugin("loop-filter", fuel=5_000_000)
        with self.assertRaises(Exception) as e:
            self.call_one(p)
        self.assertIn("fuel", str(e.exception).lower())

    def test_alloc_filter_hits_memory_cap(self):
        p = Plugin("alloc-filter", fuel=2_000_000_000, memory_bytes_max=16 << 20)
        with self.assertRaises(Exception) as e:
            self.call_one(p)
        self.assertNotIn("fuel", str(e.exception).lower(), "must stop at the memory cap, not the fuel limit")

    def test_trap_filter_traps_and_logs_why(self):
        p = Plugin("trap-filter")
        with self.assertRaises(Exception):
            self.call_one(p)
        self.assertTrue(any(level == "error" and "deliberate panic" in m for level, m in p.logs), p.logs)

    def test_wrong_world_router_has_no_filter_export(self):
        p = Plugin("wrong-world-router")
        self.assertIsNone(p.func("filter", "filter"))
        self.assertIsNotNone(p.func("router", "route"))


def meta(topic, keys=(), group=None, queue_count=8):
    m = SimpleNamespace()
    for k, v in {
        "topic": topic,
        "tag": None,
        "keys": list(keys),
        "properties": [],
        "message-group": group,
        "body-size": 0,
        "queue-count": queue_count,
    }.items():
        setattr(m, k, v)
    return m


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class Router(unittest.TestCase):
    def test_key_hash_router(self):
        p = Plugin("key-hash-router", config={"override.fixed": "3", "reject.closed": "closed!", "redirect.old": "new"})
        route = lambda m: p.call("router", "route", m, None)
        self.assertFalse(p.call("router", "wants-body"))
        d = route(meta("t", ["order-7", "x"]))
        self.assertEqual((d.tag, d.payload), ("queue", fnv1a64(b"order-7") % 8))
        d = route(meta("t", ["k"], group="g1"))
        self.assertEqual((d.tag, d.payload), ("queue", fnv1a64(b"g1") % 8))
        self.assertEqual(route(meta("t")).tag, "default-queue")
        d = route(meta("fixed", ["k"]))
        self.assertEqual((d.tag, d.payload), ("queue", 3))
        d = route(meta("closed"))
        self.assertEqual((d.tag, d.payload), ("reject", "closed!"))
        d = route(meta("old"))
        self.assertEqual((d.tag, d.payload), ("redirect", "new"))

    def test_bad_router_config_traps(self):
        p = Plugin("key-hash-router", config={"overide.t": "1"})
        with self.assertRaises(Exception):
            p.call("router", "route", meta("t"), None)
        self.assertTrue(any("unknown rule" in m for _, m in p.logs), p.logs)


def node(node_id, max_offset, last, ranges):
    n = SimpleNamespace()
    for k, v in {
        "node-id": node_id,
        "address": "127.0.0.1:1",
        "replicated": False,
        "min-offset": 0,
        "max-offset": max_offset,
        "last-index": last[0],
        "last-term": last[1],
        "last-entry-crc32c": last[2],
        "checksums": [SimpleNamespace(start=s, end=e, crc32c=c) for s, e, c in ranges],
    }.items():
        setattr(n, k, v)
    return n


def change(kind, nodes=(), old_config=(), new_config=()):
    c = SimpleNamespace()
    for k, v in {
        "kind": kind,
        "old-config": list(old_config),
        "new-config": list(new_config),
        "nodes": list(nodes),
        "old-plugins": [],
        "new-plugins": [],
    }.items():
        setattr(c, k, v)
    return c


class Validator(unittest.TestCase):
    def test_replication_validator(self):
        p = Plugin("replication-upgrade-validator")
        validate = lambda c: p.call("upgrade-validator", "validate", c)
        same = [(0, 100, 1), (100, 200, 2)]
        ok = validate(change("enable-replication", [node(f"n{i}", 200, (20, 1, 7), same) for i in range(3)]))
        self.assertTrue(ok.accept, [f.text for f in ok.findings])
        bad = validate(change("enable-replication", [
            node("n1", 200, (20, 1, 7), same),
            node("n2", 200, (20, 1, 7), [(0, 100, 1), (100, 200, 9)]),
            node("n3", 200, (20, 1, 7), same),
        ]))
        self.assertFalse(bad.accept)
        texts = [f.text for f in bad.findings if f.severity == "error"]
        self.assertTrue(any("n1 and n2 diverge at commitlog offset 100" in t for t in texts), texts)
        # A rolling config change of an identity key is refused (clients and routes would
        # lose the broker); the same key changing with the upgrade to replication only warns.
        cfg = validate(change("config", old_config=[("brokerClusterName", "A")], new_config=[("brokerClusterName", "B")]))
        self.assertFalse(cfg.accept)
        self.assertEqual([(f.severity, f.code) for f in cfg.findings], [("error", "identity-config-change")])
        upg = validate(change("enable-replication", [node(f"n{i}", 200, (20, 1, 7), same) for i in range(3)],
                              old_config=[("brokerClusterName", "A")], new_config=[("brokerClusterName", "B")]))
        self.assertTrue(upg.accept, [f.text for f in upg.findings])
        self.assertIn(("warning", "identity-config-change"), [(f.severity, f.code) for f in upg.findings])
        tuning = validate(change("config", old_config=[("maxMessageSize", "4194304")],
                                 new_config=[("maxMessageSize", "2097152")]))
        self.assertTrue(tuning.accept)
        self.assertEqual(tuning.findings, [])


class GuestCost(unittest.TestCase):
    """Informative: wasm instructions (fuel) per message at batch 256. Fuel is deterministic,
    unlike wall time through wasmtime-py (which marshals list<u8> element by element in
    Python); the broker's Rust host measures nanoseconds in its own benchmarks."""

    def fuel_per_message(self, p, kind, expression, batch, offsets):
        p.store.set_fuel(FUEL_PER_CALL)
        p.func("filter", "filter")(p.store, "g", kind, expression, batch, offsets)
        return (FUEL_PER_CALL - p.store.get_fuel()) / (len(offsets) - 1)

    def test_report_fuel_per_message(self):
        batch, offsets = encode_batch([MESSAGES[i % 4] for i in range(256)])
        rows = []
        for name, exprs in [
            ("tag-filter", [("tag", "*"), ("tag", "TagA || TagB"), ("sql92", "region = 'eu' AND a > 0")]),
            ("tag-filter-py", [("tag", "TagA || TagB")]),
            ("tag-filter-js", [("tag", "TagA || TagB")]),
        ]:
            if not os.path.exists(os.path.join(DIST, name + ".wasm")):
                continue
            p = Plugin(name, fuel=FUEL_PER_CALL)
            for kind, expr in exprs:
                self.fuel_per_message(p, kind, expr, batch, offsets)  # warm: prepare + caches
                rows.append((name, kind, expr, self.fuel_per_message(p, kind, expr, batch, offsets)))
        print("", file=sys.stderr)
        for name, kind, expr, fuel in rows:
            print(f"  {name:14} {kind:5} {expr!r:30} {fuel:8.0f} fuel/message (batch 256)", file=sys.stderr)
        self.assertTrue(rows)


if __name__ == "__main__":
    unittest.main(verbosity=2)
