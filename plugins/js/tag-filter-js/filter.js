// wasmq filter plugin in JavaScript (componentize-js): RocketMQ tag expressions.
// Implements the `wasmq:policy/filter` export of the `filter-plugin` world. Only the `tag`
// expression kind is supported; `sql92` subscriptions deliver nothing (logged once).
// The pure modules it imports also run under plain Node (test.mjs).
import { log } from 'wasmq:policy/host@0.1.0';
import { checkOffsets, tagRange } from './batch-format.js';
import { TagExpr, TagExprError } from './tag-expr.js';

// The last prepared subscription: consumers poll with the same expression again and again.
let cacheKind = null;
let cacheExpression = null;
let cacheValue = null;

function prepare(kind, expression) {
  if (kind !== cacheKind || expression !== cacheExpression) {
    cacheValue = null;
    if (kind !== 'tag') {
      log('warn', `tag-filter-js: ${kind} expressions are not supported; delivering nothing`);
    } else {
      try {
        cacheValue = TagExpr.parse(expression);
      } catch (e) {
        if (!(e instanceof TagExprError)) throw e;
        log('warn', `tag-filter-js: invalid tag expression ${JSON.stringify(expression)}: ${e.message}; delivering nothing`);
      }
    }
    cacheKind = kind;
    cacheExpression = expression;
  }
  return cacheValue;
}

export const filter = {
  filter(group, kind, expression, batch, offsets) {
    const n = checkOffsets(batch, offsets);
    const expr = prepare(kind, expression);
    const verdicts = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const [start, end] = tagRange(batch, offsets[i], offsets[i + 1]);
      if (expr !== null && expr.matches(batch, start, end)) verdicts[i] = 1;
    }
    return verdicts;
  },
};
