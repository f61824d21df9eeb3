"""One declarative export spec per model (the registry the export stage dispatches on).

A spec says which ONNX components a checkpoint becomes, the tensors of each, the opset
and the tolerance of the fp32 parity check; the export functions themselves are shared.
"""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS = ("fp32", "fp16", "int8", "int4", "ov-fp32", "ov-int8", "ov-int4")
# Variants run by OpenVINO instead of ONNX Runtime (an IR converted from the checkpoint).
OPENVINO_VARIANTS = ("ov-fp32", "ov-int8", "ov-int4")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "uint8", "int64", ...
    shape: tuple[str | int, ...]  # symbolic names for dynamic axes


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # also the Triton model name
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ExportSpec:
    model: str
    components: tuple[ComponentSpec, ...]
    opset: int
    # Max abs difference allowed between ONNX Runtime fp32 and PyTorch, per output kind.
    atol_float: float
    # uint8 images: rounding of x*127.5 may flip by one level where fp32 sums differ in
    # the last bit, so one level is allowed, on at most `max_flip_fraction` of pixels.
    atol_uint8: int = 1
    max_flip_fraction: float = 0.01
    variants: tuple[str, ...] = ("fp32",)

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)


def _image_out(name: str = "image") -> TensorSpec:
    return TensorSpec(name, "uint8", ("batch", "height", "width", "channels"))


SPECS: dict[str, ExportSpec] = {
    "dcgan": ExportSpec(
        model="dcgan",
        components=(
            ComponentSpec("dcgan", (TensorSpec("z", "float32", ("batch", "latent")),), (_image_out(),)),
        ),
        opset=18,
        atol_float=1e-4,
        variants=("fp32", "fp16", "int8"),
    ),
    "vae": ExportSpec(
        model="vae",
        components=(
            ComponentSpec(
                "vae_encoder",
                (TensorSpec("image", "uint8", ("batch", "height", "width", "channels")),),
                (
                    TensorSpec("mu", "float32", ("batch", "latent")),
                    TensorSpec("logvar", "float32", ("batch", "latent")),
                ),
            ),
            ComponentSpec("vae_decoder", (TensorSpec("z", "float32", ("batch", "latent")),), (_image_out(),)),
        ),
        opset=18,
        atol_float=1e-4,
        variants=("fp32", "fp16", "int8"),
    ),
    "gpt2": ExportSpec(
        model="gpt2",
        components=(
            ComponentSpec(
                "gpt2",
                (
                    TensorSpec("input_ids", "int64", ("batch", "seq")),
                    TensorSpec("position_ids", "int64", ("batch", "seq")),
                    TensorSpec("seqlens_k", "int32", ("batch",)),
                    TensorSpec("total_sequence_length", "int32", ()),
                ),
                (TensorSpec("logits", "float32", ("batch", "seq", "vocab")),),
            ),
        ),
        opset=17,
        atol_float=1e-3,
        variants=("fp32", "fp16", "int8", "int4", "ov-fp32", "ov-int8", "ov-int4"),
    ),
}


def get_spec(model: str) -> ExportSpec:
    from aigc.errors import ConfigError

    try:
        return SPECS[model]
    except KeyError:
        raise ConfigError(f"model must be one of {', '.join(SPECS)}, got {model!r}") from None
