"""Export of the image models (DCGAN generator, VAE encoder and decoder) to ONNX.

Images leave the graph as uint8 HWC and enter the encoder as uint8 HWC, so that any
client can save or send them as they are; the float conversion lives inside the graph.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aigc import registry
from aigc.errors import ExportError, ShapeError, ToleranceError
from export.ortutil import make_session, max_abs_diff
from export.spec import ComponentSpec, ExportSpec

logger = logging.getLogger(__name__)


class ToUint8Image(nn.Module):
    """Wraps a module that returns NCHW images in [-1, 1]; returns uint8 NHWC."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.module(z)  # (N, C, H, W) in [-1, 1]
        x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1)  # (N, H, W, C)


class FromUint8Image(nn.Module):
    """Wraps an encoder of NCHW images in [-1, 1] so that it takes uint8 NHWC."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, image: torch.Tensor):
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0  # (N, C, H, W)
        return self.module(x)


def wrap_components(model: str, module: nn.Module) -> dict[str, nn.Module]:
    """The exportable (pre/post-processing included) module of each component, by the
    `export_modules` hook of the kind's registry entry."""
    kind = registry.get(model)
    if kind.export_modules is None:
        raise ExportError(f"no image export for model {model!r}")
    return registry.hook(kind.export_modules)(kind.export, module)


def generator_modules(spec: ExportSpec, module: nn.Module) -> dict[str, nn.Module]:
    """A generator served whole: latents in, uint8 images out."""
    (component,) = spec.component_names
    return {component: ToUint8Image(module).eval()}


def vae_modules(spec: ExportSpec, module: nn.Module) -> dict[str, nn.Module]:
    """A VAE served as its encoder (uint8 images in) and its decoder (uint8 images out)."""
    return {
        c.name: (
            FromUint8Image(module.encoder)
            if c.role is registry.IMAGE_ENCODER
            else ToUint8Image(module.decoder)
        ).eval()
        for c in spec.components
    }


def example_inputs(component: ComponentSpec, meta: dict, batch: int, rng: np.random.Generator) -> dict:
    """Fresh random inputs for a component: latents from N(0, I), images uniform uint8."""
    data = meta["data"]
    cfg = meta["config"]
    feeds = {}
    for t in component.inputs:
        if t.name == "z":
            feeds["z"] = rng.standard_normal((batch, int(cfg["latent_dim"]))).astype(np.float32)
        elif t.name == "image":
            shape = (batch, int(data["image_size"]), int(data["image_size"]), int(data["channels"]))
            feeds["image"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:  # pragma: no cover - specs and this function change together
            raise ExportError(f"no example data for input {t.name!r} of {component.name}")
    return feeds


def export_component(
    module: nn.Module, component: ComponentSpec, spec: ExportSpec, meta: dict, out_file: Path
):
    rng = np.random.default_rng(0)
    feeds = example_inputs(component, meta, batch=2, rng=rng)
    args = tuple(torch.from_numpy(feeds[t.name]) for t in component.inputs)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = {t.name: {0: batch} for t in component.inputs}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                args,
                input_names=[t.name for t in component.inputs],
                output_names=[t.name for t in component.outputs],
                dynamic_shapes=dynamic_shapes,
                opset_version=spec.opset,
                dynamo=True,
                verbose=False,
                optimize=True,
            )
            program.save(str(out_file), external_data=False)
        except Exception as exc:  # the exporter raises many types; name the component
            raise ExportError(f"torch.onnx.export of {component.name} failed: {exc}") from exc
    logger.info("exported %s -> %s", component.name, out_file)


def validate_component(
    module: nn.Module,
    component: ComponentSpec,
    spec: ExportSpec,
    meta: dict,
    onnx_file: Path,
    rng: np.random.Generator,
    batches: tuple[int, ...] = (1, 5),
) -> dict:
    """Run ONNX Runtime and PyTorch on fresh random inputs and compare every output.

    Raises ShapeError or ToleranceError with the numbers; returns the fidelity figures.
    """
    session = make_session(onnx_file)
    worst_float = 0.0
    worst_uint8 = 0
    worst_flip = 0.0
    for batch in batches:
        feeds = example_inputs(component, meta, batch, rng)
        with torch.no_grad():
            ref = module(*(torch.from_numpy(feeds[t.name]) for t in component.inputs))
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run([t.name for t in component.outputs], feeds)
        for t, r, g in zip(component.outputs, ref, got, strict=True):
            r = r.numpy()
            if r.shape != g.shape or r.dtype != g.dtype:
                raise ShapeError(
                    f"{component.name}.{t.name}: ONNX Runtime gave {g.dtype}{list(g.shape)}, "
                    f"PyTorch {r.dtype}{list(r.shape)} (batch {batch})"
                )
            diff = max_abs_diff(r, g)
            if g.dtype == np.uint8:
                flip = float(np.mean(r != g))
                worst_uint8, worst_flip = max(worst_uint8, int(diff)), max(worst_flip, flip)
                if diff > spec.atol_uint8 or flip > spec.max_flip_fraction:
                    raise ToleranceError(
                        f"{component.name}.{t.name}: max abs diff {diff:.0f} levels "
                        f"(allowed {spec.atol_uint8}), {flip:.2%} of pixels differ "
                        f"(allowed {spec.max_flip_fraction:.2%}) at batch {batch}"
                    )
            else:
                worst_float = max(worst_float, diff)
                if diff > spec.atol_float:
                    raise ToleranceError(
                        f"{component.name}.{t.name}: max abs diff {diff:.3g} > tolerance "
                        f"{spec.atol_float:.3g} at batch {batch}"
                    )
    result = {"batches": list(batches)}
    if any(t.dtype == "uint8" for t in component.outputs):
        result.update(max_abs_diff=worst_uint8, pixel_flip_fraction=worst_flip, tolerance=spec.atol_uint8)
    else:
        result.update(max_abs_diff=worst_float, tolerance=spec.atol_float)
    return result
