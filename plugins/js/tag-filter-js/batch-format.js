// The wasmq filter batch format (wit/policy.wit, interface `filter`). Record i is
// batch[offsets[i] .. offsets[i+1]]; integers little-endian:
//   u16 topic-len, topic | u16 tag-len, tag | u16 keys-len, keys | u32 props-len, props
//   u64 queue-offset | u32 body-len, body
// Kept free of component imports so it runs under plain Node too (test.mjs).

export class BatchError extends Error {}

/** Validates the offset table; returns the number of records. */
export function checkOffsets(batch, offsets) {
  if (offsets.length === 0) throw new BatchError('offset table is empty (it must have n+1 entries)');
  for (let i = 1; i < offsets.length; i++) {
    if (offsets[i] < offsets[i - 1]) throw new BatchError(`offset table entry ${i} is below the previous entry`);
  }
  if (offsets[offsets.length - 1] > batch.length) {
    throw new BatchError(`offset table ends at ${offsets[offsets.length - 1]} but the batch has ${batch.length} bytes`);
  }
  return offsets.length - 1;
}

/** [start, end) of the tag bytes of the record at [recordStart, recordEnd); empty = no tag. */
export function tagRange(batch, recordStart, recordEnd) {
  if (recordEnd - recordStart < 4) throw new BatchError(`record at ${recordStart} is truncated`);
  const topicLen = batch[recordStart] | (batch[recordStart + 1] << 8);
  let pos = recordStart + 2 + topicLen;
  if (pos + 2 > recordEnd) throw new BatchError(`record at ${recordStart} is truncated in its topic`);
  const tagLen = batch[pos] | (batch[pos + 1] << 8);
  pos += 2;
  if (pos + tagLen > recordEnd) throw new BatchError(`record at ${recordStart} is truncated in its tag`);
  return [pos, pos + tagLen];
}

/** Writes a batch (tests). Messages: { topic, tag, keys, props, queueOffset, body }. */
export function encode(messages) {
  const enc = new TextEncoder();
  const parts = [];
  const offsets = [0];
  let len = 0;
  const push = (bytes) => { parts.push(bytes); len += bytes.length; };
  const u16 = (n) => new Uint8Array([n & 0xff, n >> 8]);
  const u32 = (n) => new Uint8Array([n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24]);
  for (const m of messages) {
    const topic = enc.encode(m.topic ?? 't');
    const tag = enc.encode(m.tag ?? '');
    const keys = enc.encode((m.keys ?? []).join(' '));
    const props = enc.encode(Object.entries(m.props ?? {}).map(([k, v]) => `${k}\x01${v}\x02`).join(''));
    const body = m.body ?? new Uint8Array();
    push(u16(topic.length)); push(topic);
    push(u16(tag.length)); push(tag);
    push(u16(keys.length)); push(keys);
    push(u32(props.length)); push(props);
    const q = BigInt(m.queueOffset ?? 0);
    push(u32(Number(q & 0xffffffffn))); push(u32(Number(q >> 32n)));
    push(u32(body.length)); push(body);
    offsets.push(len);
  }
  const batch = new Uint8Array(len);
  let at = 0;
  for (const p of parts) { batch.set(p, at); at += p.length; }
  return { batch, offsets: Uint32Array.from(offsets) };
}
