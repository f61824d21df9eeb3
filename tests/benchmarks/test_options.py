"""`aigc bench`'s options: a bad value names its flag, and `--quick` is small."""

from __future__ import annotations

import pytest

from aigc.errors import ConfigError
from benchmarks.options import BenchOptions


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("new_tokens", 0, "--new-tokens"),
        ("concurrency", (0,), "--concurrency"),
        ("batch_sizes", (100,), "--batch-sizes"),
        ("threads", 0, "--threads"),
        ("repeats", 0, "--repeats"),
        ("peer_rounds", 0, "--peer-rounds"),
        ("scaling_rounds", 21, "--scaling-rounds"),
        ("image_requests", 0, "--image-requests"),
        ("throughput_seconds", 0, "--throughput-seconds"),
        ("baselines", ("vllm",), "--baselines"),
        ("models", ("bert",), "--models"),
        ("prompt_tokens", 9999, "--prompt-tokens"),
        ("long_prompt_tokens", -1, "--long-prompt-tokens"),
        ("long_new_tokens", 0, "--long-new-tokens"),
        ("long_concurrency", (), "--long-concurrency"),
        ("mixed_streams", 65, "--mixed-streams"),
        ("many_users", 257, "--many-users"),
        ("mixed_new_tokens", 0, "--mixed-new-tokens"),
        ("mixed_arrivals", 0, "--mixed-arrivals"),
        ("mixed_period_s", 0, "--mixed-period"),
    ],
)
def test_bad_flags_are_named(field, value, flag):
    opts = BenchOptions()
    setattr(opts, field, value)
    with pytest.raises(ConfigError, match=flag):
        opts.validate()


def test_quick_mode_is_small():
    opts = BenchOptions(quick=True).quick_mode()
    assert opts.concurrency == (1, 4, 8) and opts.batch_sizes == (1, 8) and opts.repeats <= 3
    assert opts.long_concurrency == (1, 8) and opts.mixed_arrivals == 4 and opts.many_users == 64
