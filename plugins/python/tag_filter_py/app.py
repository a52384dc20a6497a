"""wasmq filter plugin in Python (componentize-py): RocketMQ tag expressions.

Implements the `wasmq:policy/filter` export of the `filter-plugin` world. Only the `tag`
expression kind is supported; a `sql92` subscription delivers nothing (and logs once),
which is RocketMQ's behaviour for an expression the filter cannot evaluate.
"""

from typing import List

from wit_world import exports
from wit_world.exports.filter import ExpressionKind
from wit_world.imports import host

from batch_format import check_offsets, record_tag
from tag_expr import TagExpr, TagExprError

# The last prepared subscription: consumers poll with the same expression again and again.
_cache_key = None
_cache_value = None


def _prepare(kind: ExpressionKind, expression: str):
    global _cache_key, _cache_value
    key = (kind, expression)
    if key != _cache_key:
        if kind != ExpressionKind.TAG:
            _cache_value = None
            host.log(host.Level.WARN, f"tag-filter-py: {kind.name} expressions are not supported; delivering nothing")
        else:
            try:
                _cache_value = TagExpr.parse(expression)
            except TagExprError as e:
                _cache_value = None
                host.log(host.Level.WARN, f"tag-filter-py: invalid tag expression {expression!r}: {e}; delivering nothing")
        _cache_key = key
    return _cache_value


class Filter(exports.Filter):
    def filter(self, group: str, kind: ExpressionKind, expression: str, batch: bytes, offsets: List[int]) -> bytes:
        n = check_offsets(batch, offsets)
        expr = _prepare(kind, expression)
        verdicts = bytearray(n)
        for i in range(n):
            tag = record_tag(batch, offsets[i], offsets[i + 1])
            if expr is not None and expr.matches(tag):
                verdicts[i] = 1
        return bytes(verdicts)
