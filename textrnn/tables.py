"""Plain-text tables and numbers as the commands print them."""

from __future__ import annotations

import math


def columns(lines: list[tuple]) -> str:
    """Rows of cells as left-aligned text columns."""
    widths = [max(len(str(item)) for item in column) for column in zip(*lines)]
    return "\n".join("  ".join(str(item).ljust(width) for item, width in zip(line, widths)).rstrip() for line in lines)


def number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"
