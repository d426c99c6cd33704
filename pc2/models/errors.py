"""Typed errors for input a user can get wrong: the manifest, the feature files, image sources.

Each error says which column (or file), which rows and what was expected, in one line, so the CLI can
print it and the API can return it as a 422 body (``to_dict()``) without parsing messages.
"""

from __future__ import annotations

from typing import Any, Iterable

MAX_LISTED_ROWS = 20  # enough to find the pattern; a million row numbers help nobody


def _rows_text(rows: list[int], n_rows: int) -> str:
    if not rows:
        return ""
    more = f" and {n_rows - len(rows)} more" if n_rows > len(rows) else ""
    return f"rows {rows}{more}"


class InputError(ValueError):
    """Base of every user-input error: ``column``, ``rows`` (0-based, at most 20), ``n_rows``, ``expected``."""

    kind = "input"

    def __init__(
        self,
        message: str,
        *,
        column: str | None = None,
        rows: Iterable[int] = (),
        n_rows: int | None = None,
        expected: str = "",
    ):
        rows = [int(r) for r in rows]
        self.column = column
        self.n_rows = int(n_rows) if n_rows is not None else len(rows)
        self.rows = rows[:MAX_LISTED_ROWS]
        self.expected = expected
        self.message = message
        super().__init__(self._line())

    def _subject(self) -> str:
        return f"column '{self.column}'" if self.column else ""

    def _line(self) -> str:
        head = " ".join(p for p in (self.kind, self._subject()) if p)
        parts = [self.message]
        rows = _rows_text(self.rows, self.n_rows)
        if rows:
            parts[0] = f"{self.message} at {rows}"
        if self.expected:
            parts.append(f"(expected {self.expected})")
        return f"{head}: {' '.join(parts)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "rows": list(self.rows),
            "n_rows": self.n_rows,
            "expected": self.expected,
            "message": str(self),
        }


class ManifestError(InputError):
    """A manifest problem: a missing/ill-typed column, bad values in some rows, an unreadable file."""

    kind = "manifest"


class FeatureError(InputError):
    """A feature ``.npy`` problem; ``file`` names the shard, ``rows`` are rows inside that shard."""

    kind = "features"

    def __init__(self, message: str, *, file: str, rows: Iterable[int] = (), n_rows: int | None = None, expected: str = ""):
        self.file = str(file)
        super().__init__(message, column=None, rows=rows, n_rows=n_rows, expected=expected)

    def _subject(self) -> str:
        return f"file '{self.file}'"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "file": self.file}


class SourceError(InputError):
    """An image source that may not be read: outside the allowed roots, http off, host not allowed, too big."""

    kind = "source"
