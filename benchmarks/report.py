"""A benchmark run's output: results.json, results.md and the plots, and the README section.

The figures come from `benchmarks.environment` (the machine), `benchmarks.ratios` (what is
compared and gated), `benchmarks.tables` (Markdown) and `benchmarks.plots`; the gate is
`benchmarks.gate`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from aigc.errors import ConfigError
from benchmarks.plots import plots
from benchmarks.tables import markdown

logger = logging.getLogger(__name__)

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results) + "\n")
    for p in plots(results, out):
        logger.info("plot: %s", p)


# -- README --------------------------------------------------------------------------------


def check_readme(readme: Path) -> None:
    """Fail before a run when the README cannot take the table."""
    try:
        text = Path(readme).read_text()
    except OSError as exc:
        raise ConfigError(f"--write-readme {readme}: unreadable ({exc.strerror or exc})") from exc
    if README_START not in text or README_END not in text.split(README_START, 1)[-1]:
        raise ConfigError(f"--write-readme {readme}: markers {README_START} ... {README_END} not found")


def readme_section(results: dict, plot_links: list[str]) -> str:
    """The README's benchmark section: the Markdown table and the plots."""
    return markdown(results) + ("\n\n" + "\n".join(plot_links) if plot_links else "") + "\n"


def write_readme(results: dict, out: Path, readme: Path) -> None:
    """Replace the text between the bench markers of `readme` (a document) with this run's
    table; the plots go to an `images/` folder beside it, linked relative to it."""
    check_readme(readme)
    readme = Path(readme)
    images = readme.parent / "images"
    links = []
    for name, title in (
        ("gpt2.png", "GPT-2 tokens/s and latency"),
        ("gpt2-workloads.png", "GPT-2 decode step by cache length, and the mixed workload"),
        ("images.png", "Image models through Triton"),
    ):
        if (Path(out) / name).is_file():
            images.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(out) / name, images / f"bench-{name}")
            links.append(f"![{title}](images/bench-{name})")
    from export.results import replace_between_markers

    body = readme_section(results, links).removesuffix("\n")
    readme.write_text(replace_between_markers(readme.read_text(), README_START, README_END, body))
    logger.info("benchmark table written to %s", readme)
