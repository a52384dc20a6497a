// RocketMQ tag expressions: `*` (or empty) matches all, else `TagA || TagB` (whitespace
// tolerant); a message without a tag matches only `*`. Same rules as the Rust tag-filter.

export const TAGS_MAX = 256;

export class TagExprError extends Error {}

export class TagExpr {
  /** @param {Uint8Array[] | null} tags  null = match everything */
  constructor(tags) {
    this.tags = tags;
  }

  static parse(expression) {
    const trimmed = expression.trim();
    if (trimmed === '' || trimmed === '*') return new TagExpr(null);
    const seen = new Set();
    for (const part of trimmed.split('||')) {
      const tag = part.trim();
      if (tag === '') throw new TagExprError(`empty tag in ${JSON.stringify(expression)}`);
      if (tag === '*') throw new TagExprError(`\`*\` must be the whole expression, not part of ${JSON.stringify(expression)}`);
      seen.add(tag);
      if (seen.size > TAGS_MAX) throw new TagExprError(`more than ${TAGS_MAX} tags`);
    }
    const enc = new TextEncoder();
    return new TagExpr([...seen].map((t) => enc.encode(t)));
  }

  /** Whether the tag bytes batch[start, end) match; start === end means no tag. */
  matches(batch, start, end) {
    if (this.tags === null) return true;
    const len = end - start;
    if (len === 0) return false;
    outer: for (const t of this.tags) {
      if (t.length !== len) continue;
      for (let i = 0; i < len; i++) if (t[i] !== batch[start + i]) continue outer;
      return true;
    }
    return false;
  }
}
