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


def test_the_table_names_each_exports_commit_date_and_machine(tmp_path):
    import json

    from export.api import FORMAT_VERSION, REPORT_NAME
    from export.results import render_table

    variant = {
        "target": "cpu",
        "size_bytes": 2e6,
        "fidelity": {},
        "latency_ms": {"gpt2": 1.5},
        "passed": True,
    }
    stamped, old = tmp_path / "export-a", tmp_path / "export-b"
    for folder, extra in (
        (
            stamped,
            {"created": "2026-12-06T16:00:00+00:00", "commit": "abc1234", "machine": "AMD EPYC, 2 cores"},
        ),
        (old, {}),
    ):
        folder.mkdir()
        report = {"format_version": FORMAT_VERSION, "model": "gpt2", "variants": {"int8": variant}, **extra}
        (folder / REPORT_NAME).write_text(json.dumps(report))
    lines = render_table([stamped, old]).splitlines()
    assert lines[2] == "| gpt2 | int8 | cpu | 2.00 | - | gpt2 1.50 | pass |"
    assert lines[-2:] == [
        "- `export-a` (gpt2): exported 2026-12-06T16:00:00+00:00 at commit abc1234 on AMD EPYC, 2 cores",
        "- `export-b` (gpt2): exported at an unrecorded time at commit not recorded on an unrecorded machine",
    ]
