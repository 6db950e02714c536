"""Output files as a person reads them in a terminal: name, tags, size, and the content when it is text.

Shared by ``boefje-worker run`` and ``python -m boefje_runtime.testing show``, so a file looks the
same whether it came straight from a boefje or back from the test Boefje API.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Longest content shown inline; the rest is cut with a note saying how much was left out.
MAX_SHOWN_BYTES = 64 * 1024


def as_text(content: bytes) -> str | None:
    """``content`` as text when it is UTF-8 without NUL bytes; None for binary content."""
    if b"\0" in content:
        return None
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return None


def file_lines(name: str, tags: Iterable[str] | None, content: bytes, *, max_shown: int = MAX_SHOWN_BYTES,
               saved_to: str | None = None) -> list[str]:
    """A header line (``== file 0: 12 bytes, tags: text/plain, boefje/x``), then the content when it
    is text and not ``saved_to`` a file (cut after ``max_shown`` bytes), else a line saying where it is."""
    header = f"== file {name}: {len(content)} bytes, tags: {', '.join(tags or []) or '(none)'}"
    if saved_to is not None:
        return [header, f"(saved to {saved_to})"]
    shown = content[:max_shown]
    text = as_text(shown) if len(content) <= max_shown else as_text(shown) or _cut_text(shown)
    if text is None:
        return [header, "(binary content, not shown)"]
    lines = [header, *text.splitlines()]
    if len(content) > max_shown:
        lines.append(f"... ({len(content) - max_shown} more bytes not shown)")
    return lines


def _cut_text(shown: bytes) -> str | None:
    """Text cut mid-character at ``max_shown`` still counts as text: drop the partial character."""
    for trim in (1, 2, 3):
        text = as_text(shown[:-trim])
        if text is not None:
            return text
    return None
