"""The wasmq filter batch format (wit/policy.wit, interface `filter`), in pure Python.

Record i is batch[offsets[i]:offsets[i+1]]; integers little-endian:
  u16 topic-len, topic | u16 tag-len, tag | u16 keys-len, keys | u32 props-len, props
  u64 queue-offset | u32 body-len, body
"""

import struct
from dataclasses import dataclass
from typing import Dict, List, Optional

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class BatchError(ValueError):
    """The batch does not follow the format: a host bug, so the plugin call fails."""


def check_offsets(batch: bytes, offsets: List[int]) -> int:
    """Validates the offset table; returns the number of records."""
    if not offsets:
        raise BatchError("offset table is empty (it must have n+1 entries)")
    for i in range(1, len(offsets)):
        if offsets[i] < offsets[i - 1]:
            raise BatchError(f"offset table entry {i} ({offsets[i]}) is below the previous entry")
    if offsets[-1] > len(batch):
        raise BatchError(f"offset table ends at {offsets[-1]} but the batch has {len(batch)} bytes")
    return len(offsets) - 1


def record_tag(batch: bytes, start: int, end: int) -> Optional[bytes]:
    """The tag of the record at [start, end) as raw bytes, or None; reads only what it needs."""
    if end - start < 4:
        raise BatchError(f"record at {start} is truncated")
    topic_len = _U16.unpack_from(batch, start)[0]
    pos = start + 2 + topic_len
    if pos + 2 > end:
        raise BatchError(f"record at {start} is truncated in its topic")
    tag_len = _U16.unpack_from(batch, pos)[0]
    pos += 2
    if pos + tag_len > end:
        raise BatchError(f"record at {start} is truncated in its tag")
    return batch[pos:pos + tag_len] if tag_len else None


@dataclass
class Message:
    topic: str
    tag: Optional[str]
    keys: List[str]
    properties: Dict[str, str]
    queue_offset: int
    body: bytes


def parse_record(batch: bytes, start: int, end: int) -> Message:
    """Fully decodes one record (for plugins that need more than the tag)."""
    pos = start

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > end:
            raise BatchError(f"record at {start}: {what} needs {n} bytes, {end - pos} left")
        b = batch[pos:pos + n]
        pos += n
        return b

    topic = take(_U16.unpack(take(2, "topic-len"))[0], "topic").decode()
    tag = take(_U16.unpack(take(2, "tag-len"))[0], "tag").decode()
    keys = take(_U16.unpack(take(2, "keys-len"))[0], "keys").decode()
    props_raw = take(_U32.unpack(take(4, "props-len"))[0], "props").decode()
    queue_offset = _U64.unpack(take(8, "queue-offset"))[0]
    body = take(_U32.unpack(take(4, "body-len"))[0], "body")
    if pos != end:
        raise BatchError(f"record at {start}: {end - pos} trailing bytes")
    properties = {}
    for segment in props_raw.split("\x02"):
        name, sep, value = segment.partition("\x01")
        if sep:  # like RocketMQ, segments without a separator are ignored
            properties.setdefault(name, value)
    return Message(topic, tag or None, [k for k in keys.split(" ") if k], properties, queue_offset, body)


def encode(messages) -> (bytes, List[int]):
    """Writes a batch (for tests): messages are dicts with topic, tag, keys, props, queue_offset, body."""
    buf = bytearray()
    offsets = [0]
    for m in messages:
        topic = m.get("topic", "t").encode()
        tag = (m.get("tag") or "").encode()
        keys = " ".join(m.get("keys", [])).encode()
        props = b"".join(k.encode() + b"\x01" + v.encode() + b"\x02" for k, v in m.get("props", {}).items())
        body = m.get("body", b"")
        buf += _U16.pack(len(topic)) + topic + _U16.pack(len(tag)) + tag + _U16.pack(len(keys)) + keys
        buf += _U32.pack(len(props)) + props + _U64.pack(m.get("queue_offset", 0)) + _U32.pack(len(body)) + body
        offsets.append(len(buf))
    return bytes(buf), offsets
