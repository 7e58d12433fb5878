"""docs/reliability.md names the test of each promise: every test and case it names must exist."""

import re

from tests.reliability.runs import REPO
from tests.reliability.test_bad_inputs import USER_ERRORS
from tests.reliability.test_interrupted_runs import INTERRUPTIONS

DOC = REPO / "docs" / "reliability.md"


def _defines(path: str, test: str) -> bool:
    source = REPO / path
    return source.is_file() and re.search(rf"^def {test}\(", source.read_text(), re.MULTILINE) is not None


def test_every_test_named_in_the_doc_exists():
    named = set(re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", DOC.read_text()))
    assert len(named) > 20, "the doc names the test of every promise"
    assert [f"{path}::{test}" for path, test in sorted(named) if not _defines(path, test)] == []


def test_every_case_in_the_doc_tables_is_tested():
    text = DOC.read_text()
    assert set(INTERRUPTIONS) <= set(re.findall(r"`([a-z0-9-]+)`", text))
    assert set(re.findall(r"CLI case `([a-z-]+)`", text)) == set(USER_ERRORS)
