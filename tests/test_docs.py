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
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target) or [text](target#anchor)
TEST_PATH = re.compile(r"\btests/[\w/*]+\.py\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_and_test_paths_exist(page: Path):
    text = page.read_text()
    links = [t for t in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
    broken = [t for t in links if not (page.parent / t).exists()]
    stale = [p for p in TEST_PATH.findall(text) if not glob.glob(str(REPO / p))]
    assert not broken and not stale, f"{page.name}: broken links {broken}, missing test files {stale}"
