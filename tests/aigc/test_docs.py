"""The front door: a short README, every document reachable from docs/README.md, every
relative link resolving, and each generated table in the format its command writes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _links(path: Path) -> list[str]:
    return [m for m in LINK.findall(path.read_text()) if not m.startswith(("http://", "https://", "mailto:"))]


def test_the_readme_is_short_and_links_the_docs_index():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "docs/README.md" in text and "make test-fast" in text and "aigc doctor" in text


def test_every_document_is_reachable_from_the_index():
    listed = {(DOCS / link).resolve() for link in _links(DOCS / "README.md")}
    for doc in DOCS.glob("*.md"):
        assert doc.name == "README.md" or doc.resolve() in listed, f"{doc.name} is not in docs/README.md"


def test_every_relative_link_resolves():
    broken = []
    for doc in [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "benchmarks").glob("*.md")]:
        for link in _links(doc):
            if not (doc.parent / link).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {link}")
    assert broken == []


def _section(doc: Path, start: str, end: str) -> list[str]:
    text = doc.read_text()
    return text.split(start, 1)[1].split(end, 1)[0].strip().splitlines()


def test_the_committed_tables_are_in_the_format_their_commands_write():
    """docs/EXPORT.md's table (aigc results) and docs/BENCHMARKS.md's section (aigc bench):
    a change to a generator's format must come with the table regenerated (make docs)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
    from bench_samples import sample_results

    from benchmarks import tables
    from export import results

    committed = _section(DOCS / "EXPORT.md", "<!-- results:start -->", "<!-- results:end -->")
    assert committed[:2] == results.render_table([]).splitlines()[:2]
    bench = _section(DOCS / "BENCHMARKS.md", "<!-- bench:start -->", "<!-- bench:end -->")
    written = tables.markdown(sample_results()).splitlines()
    assert bench[0].startswith("Machine: ") and written[0].startswith("Machine: ")
    headers = [line for line in written if line.startswith("| path |") or line.startswith("| ratio ")]
    assert headers and all(h in bench for h in headers), "regenerate docs/BENCHMARKS.md (make docs)"
    # each says where its figures come from: the machine, the commit and the date
    assert " Commit " in bench[0], "regenerate docs/BENCHMARKS.md (make docs)"
    stamps = [line for line in committed if line.startswith("- `")]
    assert stamps and all(" at commit " in line and " on " in line for line in stamps), (
        "regenerate docs/EXPORT.md (aigc results --write-readme)"
    )
