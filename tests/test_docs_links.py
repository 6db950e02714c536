"""Every relative link in the README and the docs resolves: the file exists and, for a ``#fragment``,
so does the heading (GitHub's anchor rules). Links to other sites are not fetched (no network)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .helpers import ROOT

DOCUMENTS = sorted([ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "examples" / "README.md",
                    *(ROOT / "docs").glob("*.md")])
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """``text`` without code: a ``[x](y)`` inside a code block is code, not a link."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    return [target for target in _LINK.findall(prose(text)) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but ``-`` and ``_``), spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = anchor(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(document: Path) -> list[str]:
    problems = []
    for target in links(document.read_text()):
        path, _, fragment = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.exists():
            problems.append(f"{target}: {resolved} does not exist")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved.read_text()):
            problems.append(f"{target}: no heading #{fragment} in {resolved.name}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(document):
    assert broken_links(document) == []


def test_the_docs_link_their_install_and_protocol_pages():
    readme = links((ROOT / "README.md").read_text())
    assert "docs/install.md" in readme
    assert "protocol.md" in links((ROOT / "docs" / "migration.md").read_text())


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Why not `this`?\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[ok](other.md#why-not-this) [ok](#page) [web](https://example.com/x.md) `[code](nope.md)`\n"
        "[gone](missing.md) [no heading](other.md#nothing) [no local heading](#nowhere)\n"
        "```\n[in a block](nope.md)\n```\n"
    )

    assert broken_links(page) == [
        f"missing.md: {tmp_path / 'missing.md'} does not exist",
        "other.md#nothing: no heading #nothing in other.md",
        "#nowhere: no heading #nowhere in page.md",
    ]
