"""Model-free n-gram (suffix-match) drafter: the fallback when no trained drafter exists.

It looks for the longest suffix (up to `max_n` tokens) of a sequence that occurred
earlier in the same sequence (prompt included) or in earlier sequences of the same
prompt group (GRPO samples several responses per prompt, which share much text), and
proposes the tokens that followed that occurrence. Indexes grow incrementally, so a
proposal costs O(max_n) dictionary look-ups plus the new tokens since the last call.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

_SEPARATOR = -1  # between sequences of a group corpus; never a token, so no n-gram spans it


class _SuffixIndex:
    """Latest end position of every n-gram (min_n..max_n) of a growing token list."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self.table: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # n-grams ending at positions < indexed are in the table

    def index_until(self, end: int) -> None:
        toks, table = self.tokens, self.table
        for stop in range(max(self.indexed, 1), end + 1):
            for n in range(self.min_n, self.max_n + 1):
                start = stop - n
                if start < 0:
                    break
                gram = tuple(toks[start:stop])
                if _SEPARATOR in gram:
                    break
                table[gram] = stop
        self.indexed = max(self.indexed, end + 1)

    def continuation(self, gram: tuple[int, ...], steps: int) -> list[int]:
        stop = self.table.get(gram)
        if stop is None:
            return []
        out = self.tokens[stop: stop + steps]
        if _SEPARATOR in out:
            out = out[: out.index(_SEPARATOR)]
        return out


class NgramDrafter:
    def __init__(self, max_n: int = 4, min_n: int = 1):
        if not 1 <= min_n <= max_n:
            raise ValueError("ngram drafter needs 1 <= min_n <= max_n")
        self.min_n, self.max_n = min_n, max_n
        self._seqs: dict[Hashable, _SuffixIndex] = {}
        self._groups: dict[Hashable, _SuffixIndex] = {}

    def propose(self, key: Hashable, tokens: Sequence[int], steps: int,
                group: Hashable | None = None) -> list[int]:
        """Up to `steps` draft tokens continuing `tokens` (the whole sequence so far,
        which only ever grows between calls for the same `key`)."""
        idx = self._seqs.get(key)
        if idx is None or len(idx.tokens) > len(tokens):
            idx = self._seqs[key] = _SuffixIndex(self.min_n, self.max_n)
        idx.tokens.extend(tokens[len(idx.tokens):])
        length = len(idx.tokens)
        # only occurrences that end before the current end count as "earlier"
        idx.index_until(length - 1)
        corpus = self._groups.get(group) if group is not None else None
        for n in range(min(self.max_n, length), self.min_n - 1, -1):
            gram = tuple(idx.tokens[length - n:])
            out = idx.continuation(gram, steps)
            if not out and corpus is not None:
                out = corpus.continuation(gram, steps)
            if out:
                return out
        return []

    def finish(self, key: Hashable, tokens: Sequence[int] | None = None,
               group: Hashable | None = None) -> None:
        """Forget a sequence; with a group, add its tokens to the group's corpus."""
        idx = self._seqs.pop(key, None)
        if group is None:
            return
        toks = list(tokens) if tokens is not None else (idx.tokens if idx else [])
        corpus = self._groups.setdefault(group, _SuffixIndex(self.min_n, self.max_n))
        corpus.tokens.extend(toks)
        corpus.tokens.append(_SEPARATOR)
        corpus.index_until(len(corpus.tokens))

    def drop_group(self, group: Hashable) -> None:
        self._groups.pop(group, None)
