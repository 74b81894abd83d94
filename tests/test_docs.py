"""The docs point at things that exist: every relative link of the README and the pages under
docs/, infra/ and deployments/, and every test file they name (tests moved into folders once, and
a dozen references went stale without a word)."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

from conftest import REPO

PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "infra" / "README.md",
                REPO / "deployments" / "README.md"])
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")  # [text](target), [text](target#anchor), [text](#anchor)
TEST_PATH = re.compile(r"\btests/[\w/*]+\.py\b")


def anchors(page: Path) -> set[str]:
    """GitHub's ids for a page's headings (lower case, punctuation dropped, spaces as hyphens)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '# comment' in a code block is no heading
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_and_test_paths_exist(page: Path):
    text = page.read_text()
    links = [(t, a) for t, a in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
    broken = [t for t, _ in links if t and not (page.parent / t).exists()]
    no_anchor = [f"{t}#{a}" for t, a in links if a and (page.parent / t if t else page).suffix == ".md"
                 and (page.parent / t if t else page).exists() and a not in anchors(page.parent / t if t else page)]
    stale = [p for p in TEST_PATH.findall(text) if not glob.glob(str(REPO / p))]
    assert not broken and not no_anchor and not stale, (
        f"{page.name}: broken links {broken}, missing sections {no_anchor}, missing test files {stale}")
