"""The model kinds: one entry per kind, and the only place that names them.

An entry carries what every stage needs to know about its kind: the trainer, how its
checkpoint is recognised and rebuilt, the export spec (components, tensors, opset,
tolerances, variants), each served component's role (its Triton interface), and what
`aigc bench` measures. Stages look a kind up here and call the hook the entry names for
their stage, so no stage branches on a kind's name (`tests/aigc/test_registry.py` checks).

Hooks are `"module:attribute"` references, resolved by `hook()` when a stage calls them.
The registry sits below every stage (layer 0, like `aigc.errors`): each reference points
into the package of the stage that resolves it (a training hook into `training`, a build
hook into `serving`), so the references never make a stage import a higher one.

A role groups the components that share a Triton interface: every image generator takes a
latent batch and returns uint8 images, so a new image generator needs no new build, check
or bench code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from aigc.errors import ConfigError

# -- the export spec (what a checkpoint becomes) ------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "uint8", "int64", ...
    shape: tuple[str | int, ...]  # symbolic names for dynamic axes


@dataclass(frozen=True)
class Role:
    """What a served component does, and the hook of each stage that serves it.

    build: `serving` hook (`serving.repository.VersionPlan`, BuildOptions) -> (ModelConfig,
        detail text), adding the role's files to the plan; check:
        `serving` hook (client, component) sending one real request; bench: the `benchmarks`
        module measuring a served component of the role (`variant`, `steps`, `run`,
        `record`; see `benchmarks.api`), None: not benchmarked.
    """

    name: str
    build: str
    check: str
    bench: str | None = None


IMAGE_GENERATOR = Role(
    "image generator (latent batch -> uint8 images)",
    build="serving.model_versions:image_version",
    check="serving.control:check_decoder",
    bench="benchmarks.images",
)
IMAGE_ENCODER = Role(
    "image encoder (uint8 images -> latent mean and log-variance)",
    build="serving.model_versions:image_version",
    check="serving.control:check_encoder",
)
TEXT_GENERATOR = Role(
    "text generator (decoupled, streamed; the vLLM and TensorRT-LLM request schemas)",
    build="serving.model_versions:text_generator_version",
    check="serving.control:check_text",
    bench="benchmarks.text",
)


@dataclass(frozen=True)
class ComponentSpec:
    """A served component. `inputs`/`outputs`: the tensors of an exported image graph (the
    text generator's KV-slot graph is defined by its exporter, `export.gpt2`, and its served
    interface by `serving.model_versions.gpt2_tensors`: none here). `gated_through`: an
    encoder's fidelity is judged on the images this component decodes from its output."""

    name: str  # also the Triton model name
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    role: Role = IMAGE_GENERATOR
    gated_through: str | None = None


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


# -- the kinds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSpec:
    """What `aigc bench` measures of a kind.

    component: the served component measured; variants: what its cached export holds;
    default: `benchmarks` hook `(kind, BenchOptions) -> checkpoint` making one when none is
    given; required: the default model list fails without it (otherwise it is measured
    where available); unasked: without `--models`, the embedded run makes the default
    checkpoint (otherwise the kind is measured only when given).
    """

    component: str
    variants: str
    default: str
    required: bool = False
    unasked: bool = True


@dataclass(frozen=True)
class ModelKind:
    """One model kind, from training to the benchmark.

    train: `training` hook `train(TrainOptions) -> checkpoint folder`.
    hf_model_type: the checkpoint is a Hugging Face folder whose config.json has this
        `model_type`; None: our own format (`training.checkpoint`), rebuilt by
        `image_model` = (config class, model class) references.
    export: the export spec; exporter: `export` hook `(spec, checkpoint, out, variants, rng,
        quant) -> report`; export_modules: `export` hook `module -> {component: nn.Module}`
        (the exportable module of each component, pre/post-processing included).
    bench: what `aigc bench` measures (None: not measured).
    """

    name: str
    title: str  # the name in help text and reports
    summary: str
    train: str
    export: ExportSpec
    exporter: str
    hf_model_type: str | None = None
    image_model: tuple[str, str] | None = None
    export_modules: str | None = None
    bench: BenchSpec | None = None

    @property
    def roles(self) -> tuple[Role, ...]:
        return tuple(c.role for c in self.export.components)

    def component(self, name: str) -> ComponentSpec:
        for c in self.export.components:
            if c.name == name:
                return c
        raise ConfigError(
            f"{self.name} has no component {name!r}; it has {', '.join(self.export.component_names)}"
        )


def _latent(name: str = "z") -> TensorSpec:
    return TensorSpec(name, "float32", ("batch", "latent"))


def _image(name: str = "image") -> TensorSpec:
    return TensorSpec(name, "uint8", ("batch", "height", "width", "channels"))


KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind(
            name="dcgan",
            title="DCGAN",
            summary="DCGAN image generator",
            train="training.dcgan:train",
            image_model=("training.dcgan:DCGANConfig", "training.dcgan:Generator"),
            export=ExportSpec(
                model="dcgan",
                components=(ComponentSpec("dcgan", (_latent(),), (_image(),), IMAGE_GENERATOR),),
                opset=18,
                atol_float=1e-4,
                variants=("fp32", "fp16", "int8"),
            ),
            exporter="export.api:export_images",
            export_modules="export.images:generator_modules",
            bench=BenchSpec("dcgan", "fp32,int8", default="benchmarks.subjects:tiny_checkpoint"),
        ),
        ModelKind(
            name="vae",
            title="VAE",
            summary="variational autoencoder (encoder and decoder served apart)",
            train="training.vae:train",
            image_model=("training.vae:VAEConfig", "training.vae:VAE"),
            export=ExportSpec(
                model="vae",
                components=(
                    ComponentSpec(
                        "vae_encoder",
                        (_image(),),
                        (_latent("mu"), _latent("logvar")),
                        IMAGE_ENCODER,
                        gated_through="vae_decoder",
                    ),
                    ComponentSpec("vae_decoder", (_latent(),), (_image(),), IMAGE_GENERATOR),
                ),
                opset=18,
                atol_float=1e-4,
                variants=("fp32", "fp16", "int8"),
            ),
            exporter="export.api:export_images",
            export_modules="export.images:vae_modules",
            bench=BenchSpec(
                "vae_decoder", "fp32,int8", default="benchmarks.subjects:tiny_checkpoint", unasked=False
            ),
        ),
        ModelKind(
            name="gpt2",
            title="GPT-2",
            summary="GPT-2 (Hugging Face transformers), served with the generation loop inside Triton",
            train="training.gpt2:train",
            hf_model_type="gpt2",
            export=ExportSpec(
                model="gpt2",
                components=(ComponentSpec("gpt2", role=TEXT_GENERATOR),),
                opset=17,
                atol_float=1e-3,
                variants=("fp32", "fp16", "int8", "int4", "ov-fp32", "ov-int8", "ov-int4"),
            ),
            exporter="export.api:export_gpt2",
            bench=BenchSpec(
                "gpt2",
                # `auto` serves the fastest that passes its gate, on either runtime, or a pair of graphs
                "fp32,int8,int4,ov-int8,ov-int4",
                default="benchmarks.subjects:random_gpt2_checkpoint",
                required=True,
            ),
        ),
    )
}


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def get(name: str, what: str = "model") -> ModelKind:
    """The kind called `name` (ConfigError naming `what` and the kinds otherwise)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"{what} must be one of {', '.join(KINDS)}, got {name!r}") from None


def by_hf_model_type(model_type: object) -> ModelKind | None:
    """The kind whose checkpoints are Hugging Face folders of this `model_type`."""
    return next((k for k in KINDS.values() if k.hf_model_type and k.hf_model_type == model_type), None)


def components(role: Role | None = None) -> tuple[ComponentSpec, ...]:
    """Every served component (of `role`), in registry order."""
    return tuple(c for k in KINDS.values() for c in k.export.components if role is None or c.role is role)


def component(name: str) -> tuple[ModelKind, ComponentSpec]:
    """The kind and spec of the served component `name`."""
    for k in KINDS.values():
        for c in k.export.components:
            if c.name == name:
                return k, c
    raise ConfigError(f"model must be one of {', '.join(c.name for c in components())}, got {name!r}")


def benchmarked() -> tuple[ModelKind, ...]:
    """The kinds `aigc bench` measures, in the order it measures them (required ones first)."""
    return tuple(sorted((k for k in KINDS.values() if k.bench), key=lambda k: not k.bench.required))


def hook(ref: str):
    """The object a `"module:attribute"` reference names, or the module a `"module"` one
    names (imported now)."""
    module, _, attr = ref.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded
