"""Native (CPython) tests of the pure parts: python3 -m unittest test_tag_filter"""

import unittest

from batch_format import BatchError, check_offsets, encode, parse_record, record_tag
from tag_expr import TagExpr, TagExprError


class TagExprTest(unittest.TestCase):
    def test_star_and_lists(self):
        for e in ["*", " * ", ""]:
            self.assertTrue(TagExpr.parse(e).matches(None))
        t = TagExpr.parse("TagA||TagB ||  TagC")
        self.assertTrue(t.matches(b"TagA") and t.matches(b"TagC"))
        self.assertFalse(t.matches(b"TagD") or t.matches(b"taga") or t.matches(None))

    def test_errors(self):
        for e in ["TagA ||", "|| TagA", "A |||| B", "A || *"]:
            with self.assertRaises(TagExprError):
                TagExpr.parse(e)


class BatchTest(unittest.TestCase):
    def test_round_trip(self):
        batch, offsets = encode([
            {"topic": "orders", "tag": "TagA", "keys": ["k1", "k2"], "props": {"a": "1"}, "queue_offset": 7, "body": b"x"},
            {"topic": "t"},
        ])
        self.assertEqual(check_offsets(batch, offsets), 2)
        self.assertEqual(record_tag(batch, offsets[0], offsets[1]), b"TagA")
        self.assertIsNone(record_tag(batch, offsets[1], offsets[2]))
        m = parse_record(batch, offsets[0], offsets[1])
        self.assertEqual((m.topic, m.tag, m.keys, m.properties, m.queue_offset, m.body),
                         ("orders", "TagA", ["k1", "k2"], {"a": "1"}, 7, b"x"))

    def test_bad_batches(self):
        batch, offsets = encode([{"tag": "TagA"}])
        for bad in ([], [0, len(batch) + 1], [3, 2]):
            with self.assertRaises(BatchError):
                check_offsets(batch, bad)
        with self.assertRaises(BatchError):
            record_tag(batch, 0, 5)
        with self.assertRaises(BatchError):
            parse_record(batch + b"\0", 0, len(batch) + 1)


if __name__ == "__main__":
    unittest.main()
