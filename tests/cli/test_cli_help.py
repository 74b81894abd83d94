"""Every CLI option documents its format and default (issue 14, item 7); `make help` lists every
Makefile target with what it does."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess

import pytest

from flows.cli import _date, build_parser

from conftest import REPO


def options():
    parser = build_parser()
    yield "prodassoc", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from ((f"prodassoc {name}", sub) for name, sub in action.choices.items())


def test_every_option_says_its_default_and_every_value_its_format():
    checked = 0
    for command, parser in options():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = f"{command} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{name}: no help"
            text = parser._get_formatter()._expand_help(action)
            if action.option_strings:  # an option: required, or what happens without it
                assert action.required or "default" in text, f"{name}: says neither 'required' nor its default"
                if action.required:
                    assert "required" in text, f"{name}: required but its help does not say so"
            if action.nargs != 0 and not action.choices:  # takes a value: its format is shown
                assert action.metavar, f"{name}: no metavar showing the value's format"
            if action.type is _date:
                assert action.metavar == "YYYY-MM-DD", name
            checked += 1
    assert checked >= 30


def test_top_help_names_product_and_run_date():
    top = dict(options())["prodassoc top"].format_help()
    assert "--product ID|TEXT" in top and "--run-date YYYY-MM-DD" in top and "(default: 10)" in top


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_help_lists_every_target_with_a_description():
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=30, check=True).stdout
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.MULTILINE))
    assert {"install", "demo", "test", "bench", "clean", "help"} <= targets
    listed = dict(re.findall(r"^\s+make (\S+)\s+(.*)$", out, re.MULTILINE))
    assert set(listed) == targets
    assert all(listed[t].strip() for t in targets), listed
