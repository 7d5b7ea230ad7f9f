"""The one table printer: first column left-aligned, the others right-aligned, a rule under the header."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    fmt: str = "{:,.0f}"  # for numbers; strings show as they are, None as "-"

    def cell(self, value: Any) -> str:
        if value is None:
            return "-"
        return value if isinstance(value, str) else self.fmt.format(value)


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return " | ".join(
            text.ljust(width) if i == 0 else text.rjust(width)
            for i, (text, width) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([line(header), "-+-".join("-" * w for w in widths), *(line(row) for row in rows)])


def render_rows(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` of values by column key, formatted by each column."""
    return render([c.label for c in columns], [[c.cell(row.get(c.key)) for c in columns] for row in rows])
