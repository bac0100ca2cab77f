"""The README and docs/ link to each other by page and heading anchor; every such link resolves.

Design decisions:
- Anchors are computed the way GitHub renders headings (lower case, punctuation other than ``-``
  and ``_`` removed, spaces to hyphens, ``-1``, ``-2``... for repeats), since GitHub is where the
  pages are read. Headings inside fenced code blocks are not headings (``# terminal 1``).
- Only relative links are checked; external URLs are not fetched (tests stay offline).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.server import REPO_ROOT

PAGES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")])
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def outside_code(text: str) -> list[str]:
    """The lines of a markdown page that are not inside a fenced code block."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in outside_code(page.read_text()):
        match = HEADING.match(line)
        if match is None:
            continue
        slug = github_anchor(match.group(2))
        repeat = seen.get(slug, 0)
        seen[slug] = repeat + 1
        found.add(slug if repeat == 0 else f"{slug}-{repeat}")
    return found


def broken_links(page: Path) -> list[str]:
    broken: list[str] = []
    for line in outside_code(page.read_text()):
        for target in LINK.findall(line):
            if EXTERNAL.match(target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{target}: no file {linked}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return broken


def test_github_anchor_matches_githubs_rendering() -> None:
    assert github_anchor("Security: who may subscribe and publish") == (
        "security-who-may-subscribe-and-publish"
    )
    assert github_anchor("`POST /api/admin/ticket` and `GET /api/admin/stream`") == (
        "post-apiadminticket-and-get-apiadminstream"
    )
    assert github_anchor("`POST /events/{channel}` — publish") == "post-eventschannel--publish"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO_ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_readme_links_every_docs_page() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    linked = {Path(target.partition("#")[0]) for target in LINK.findall(readme)}
    pages = {page.relative_to(REPO_ROOT) for page in (REPO_ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_every_docs_page_links_back_to_the_readme() -> None:
    for page in (REPO_ROOT / "docs").glob("*.md"):
        assert "](../README.md)" in page.read_text(), page.name
