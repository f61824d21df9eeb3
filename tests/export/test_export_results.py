"""`aigc results`: the README table of exported variants, written between markers."""

from __future__ import annotations

import pytest

from aigc.errors import ConfigError
from export.results import replace_between_markers

START, END = "<!-- results:start -->", "<!-- results:end -->"


def test_only_the_first_marked_section_is_replaced_and_the_rest_kept():
    text = f"intro\n{START}\nold table\n{END}\nmiddle\n{START}\nsecond\n{END}\n"
    out = replace_between_markers(text, START, END, "| new | table |")
    assert out == f"intro\n{START}\n| new | table |\n{END}\nmiddle\n{START}\nsecond\n{END}\n"
    # writing again gives the same text: the section is replaced, not appended to
    assert replace_between_markers(out, START, END, "| new | table |") == out


def test_missing_markers_are_named():
    with pytest.raises(
        ConfigError, match="markers <!-- results:start --> ... <!-- results:end --> not found"
    ):
        replace_between_markers(f"no end here {START}", START, END, "x")
