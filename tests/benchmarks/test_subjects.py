"""The models `aigc bench` measures: what a run against a given server needs."""

from __future__ import annotations

import pytest

from aigc.errors import ConfigError
from benchmarks.options import BenchOptions


def test_url_needs_the_checkpoint_for_the_baselines(tmp_path):
    from benchmarks.subjects import subjects

    opts = BenchOptions(url="127.0.0.1:8001", cache=tmp_path)
    with pytest.raises(ConfigError, match="--gpt2"):
        subjects(opts)
