"""`aigc bench` of an image generator: served latency and throughput against in-process
ONNX Runtime and PyTorch eager on the same latents."""

from __future__ import annotations

import numpy as np

from benchmarks.options import BenchOptions, Subject
from benchmarks.progress import step

# With `--url` and no local files, the served figures alone are measured.
LOCAL_CHECKPOINT = False


def variant(opts: BenchOptions) -> str:
    return opts.image_variant


def steps(opts: BenchOptions) -> int:
    return 3


def record(results: dict, s: Subject, figures: dict) -> None:
    results.setdefault("images", {})[s.model] = figures


def run(opts: BenchOptions, url: str, s: Subject, variant: str | None, bar) -> dict:
    """Served latency against in-process ONNX Runtime and PyTorch eager, then served
    throughput against concurrency and batch size."""
    import torch

    from benchmarks import measure
    from serving.client import AigcClient

    rng = np.random.default_rng(0)
    r: dict = {"variant": variant}
    step(bar, f"{s.model} latency")
    with AigcClient(url, timeout_s=60) as client:
        _, dims = client.input_shape(s.model)
        z = rng.standard_normal((1, *dims)).astype(np.float32)
        r["served_ms"] = measure.percentiles(
            measure.latency_samples(lambda: client.decode(z, model=s.model), opts.image_requests)
        )
    sess = None
    if s.export is not None:
        from export.api import read_report
        from export.ortutil import make_session
        from serving.variant_choice import choose_variant

        report = read_report(s.export)
        local = variant or choose_variant(report, s.model, opts.image_variant, "cpu")[0]
        r["inprocess_variant"] = local
        sess = make_session(s.export / report["variants"][local]["files"][s.model], threads=opts.threads)
        r["onnxruntime_ms"] = measure.percentiles(
            measure.latency_samples(lambda: sess.run(None, {"z": z}), opts.image_requests)
        )
    if s.checkpoint is not None and "eager" in opts.baselines:
        from export.images import wrap_components
        from training.models import load_image_checkpoint

        module, _ = load_image_checkpoint(s.checkpoint, expected=s.kind.name)
        eager = wrap_components(s.kind.name, module)[s.model]
        zt = torch.from_numpy(z)
        with torch.no_grad():
            r["eager_ms"] = measure.percentiles(
                measure.latency_samples(lambda: eager(zt), opts.image_requests)
            )
    bar.update()
    step(bar, f"{s.model} throughput")
    secs = opts.throughput_seconds
    r["throughput_vs_concurrency"] = {
        str(c): measure.served_image_throughput(url, s.model, z, c, secs) for c in opts.concurrency
    }
    bar.update()
    r["throughput_vs_batch"] = {}
    r["onnxruntime_images_per_s_vs_batch"] = {}
    for b in opts.batch_sizes:
        zb = rng.standard_normal((b, *dims)).astype(np.float32)
        r["throughput_vs_batch"][str(b)] = measure.served_image_throughput(url, s.model, zb, 1, secs)
        if sess is not None:
            r["onnxruntime_images_per_s_vs_batch"][str(b)] = measure.inprocess_throughput(
                lambda zb=zb: sess.run(None, {"z": zb}), b, secs
            )
    bar.update()
    return r
