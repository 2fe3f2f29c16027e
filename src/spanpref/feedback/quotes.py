"""From a quoted passage to character offsets, by exact matching only.

A model names its spans by quoting them, because it cannot count characters. A quote is placed only where it
occurs exactly once in the response; a quote found several times or not at all is reported with its status and
never placed by a guess (the nearest match, the first occurrence), since a wrong span is worse than none when the
spans are compared with human ones or rewritten into a chain.
"""

from __future__ import annotations

from dataclasses import dataclass

OK = "ok"
MISSING = "missing"
AMBIGUOUS = "ambiguous"
EMPTY = "empty"


@dataclass(frozen=True)
class QuoteMatch:
    quote: str  # as given, before surrounding whitespace was removed
    status: str  # ok | missing | ambiguous | empty
    start: int = -1  # Python str offsets into the text, [start, end); -1 unless status is ok
    end: int = -1
    occurrences: int = 0

    @property
    def ok(self) -> bool:
        return self.status == OK


def count_occurrences(text: str, needle: str) -> int:
    """Occurrences of `needle` in `text`, overlapping ones included ("aa" occurs twice in "aaa")."""
    count, at = 0, text.find(needle)
    while at != -1:
        count += 1
        at = text.find(needle, at + 1)
    return count


def locate_quote(text: str, quote: str) -> QuoteMatch:
    """Where `quote` (stripped of surrounding whitespace) occurs in `text`, if it occurs exactly once."""
    needle = quote.strip()
    if not needle:
        return QuoteMatch(quote, EMPTY)
    n = count_occurrences(text, needle)
    if n == 0:
        return QuoteMatch(quote, MISSING)
    if n > 1:
        return QuoteMatch(quote, AMBIGUOUS, occurrences=n)
    start = text.find(needle)
    return QuoteMatch(quote, OK, start, start + len(needle), 1)


__all__ = ["AMBIGUOUS", "EMPTY", "MISSING", "OK", "QuoteMatch", "count_occurrences", "locate_quote"]
