"""RocketMQ tag expressions: `*` (or empty) matches all, else `TagA || TagB` (whitespace
tolerant); a message without a tag matches only `*`. Same rules as the Rust tag-filter."""

from typing import FrozenSet, Optional

TAGS_MAX = 256


class TagExprError(ValueError):
    pass


class TagExpr:
    """A parsed expression; `tags` is None for "match everything"."""

    def __init__(self, tags: Optional[FrozenSet[bytes]]):
        self.tags = tags

    @staticmethod
    def parse(expression: str) -> "TagExpr":
        trimmed = expression.strip()
        if trimmed in ("", "*"):
            return TagExpr(None)
        tags = set()
        for part in trimmed.split("||"):
            tag = part.strip()
            if not tag:
                raise TagExprError(f"empty tag in {expression!r}")
            if tag == "*":
                raise TagExprError(f"`*` must be the whole expression, not part of {expression!r}")
            tags.add(tag.encode())
            if len(tags) > TAGS_MAX:
                raise TagExprError(f"more than {TAGS_MAX} tags")
        return TagExpr(frozenset(tags))

    def matches(self, tag: Optional[bytes]) -> bool:
        if self.tags is None:
            return True
        return tag is not None and tag in self.tags
