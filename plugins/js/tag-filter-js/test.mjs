// Native (Node) tests of the pure modules: node --test plugins/js/tag-filter-js/test.mjs
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BatchError, checkOffsets, encode, tagRange } from './batch-format.js';
import { TagExpr, TagExprError } from './tag-expr.js';

const tagOf = (expr, { batch, offsets }, i) => {
  const [s, e] = tagRange(batch, offsets[i], offsets[i + 1]);
  return expr.matches(batch, s, e);
};

test('tag expressions', () => {
  const b = encode([{ tag: 'TagA' }, { tag: 'TagB' }, {}, { tag: 'TagAB' }]);
  for (const e of ['*', ' * ', '']) {
    assert.deepEqual([0, 1, 2, 3].map((i) => tagOf(TagExpr.parse(e), b, i)), [true, true, true, true]);
  }
  const t = TagExpr.parse('TagA||TagB ||  TagC');
  assert.deepEqual([0, 1, 2, 3].map((i) => tagOf(t, b, i)), [true, true, false, false]);
  for (const e of ['TagA ||', '|| TagA', 'A |||| B', 'A || *']) {
    assert.throws(() => TagExpr.parse(e), TagExprError, e);
  }
});

test('batch format', () => {
  const { batch, offsets } = encode([{ topic: 'orders', tag: 'x', keys: ['k'], props: { a: '1' }, queueOffset: 5 }]);
  assert.equal(checkOffsets(batch, offsets), 1);
  const [s, e] = tagRange(batch, offsets[0], offsets[1]);
  assert.equal(new TextDecoder().decode(batch.subarray(s, e)), 'x');
  assert.throws(() => checkOffsets(batch, []), BatchError);
  assert.throws(() => checkOffsets(batch, [0, batch.length + 1]), BatchError);
  assert.throws(() => checkOffsets(batch, [3, 2]), BatchError);
  assert.throws(() => tagRange(batch, 0, 5), BatchError);
});
