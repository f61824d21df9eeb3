"""The model-kind registry: every hook resolves into its own stage, and no code outside the
registry branches on a kind's or a served component's name."""

from __future__ import annotations

import ast
import importlib

import pytest
from support import PACKAGES, ROOT, name_branches

from aigc import registry
from aigc.errors import CheckpointError, ConfigError

NAMES = frozenset(registry.names()) | frozenset(c.name for c in registry.components())


def _architecture_check(node: ast.AST) -> bool:
    """A third-party config's architecture name (`cfg.model_type`, `meta["model_type"]`),
    which happens to spell like a kind: the GGUF converter checks it is given GPT-2."""
    if isinstance(node, ast.Attribute):
        return node.attr == "model_type"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "model_type"
    return False


def kind_branches(source: str, filename: str = "<source>") -> list[str]:
    """Where `source` compares with a kind's name or enumerates kinds: `x == "gpt2"`,
    `x in ("dcgan", "vae")`, `case "vae":`, `("dcgan", "vae", "gpt2")`, `{"dcgan": ...,
    "vae": ...}`."""
    return name_branches(source, NAMES, "model kind", filename, exempt=_architecture_check)


def test_no_code_outside_the_registry_branches_on_a_model_kind():
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "aigc" / "registry.py":
                continue
            found += kind_branches(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "branch on the registry entry instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        'if model == "gpt2":\n    pass',
        'ok = kind != "vae_decoder"',
        'ok = comp in ("dcgan", "vae_encoder")',
        'match kind:\n    case "vae":\n        pass',
        'MODELS = ("dcgan", "vae", "gpt2")',
        'TABLE = {"dcgan": 1, "vae": 2}',
    ],
)
def test_the_rule_catches_each_form_of_kind_branch(source):
    assert kind_branches(source)


@pytest.mark.parametrize(
    "source",
    [
        'client.generate_images("dcgan", n=4)',  # naming one served model to call it
        'if cfg.model_type != "gpt2":\n    pass',  # a Hugging Face architecture check
        'files = {"gpt2": path}',
    ],
)
def test_the_rule_leaves_calls_and_architecture_checks_alone(source):
    assert not kind_branches(source)


# Which package each hook of an entry resolves into: the stage that calls it.
def _hooks(kind: registry.ModelKind):
    yield "training", kind.train
    for ref in kind.image_model or ():
        yield "training", ref
    yield "export", kind.exporter
    if kind.export_modules:
        yield "export", kind.export_modules
    for comp in kind.export.components:
        yield "serving", comp.role.build
        yield "serving", comp.role.check
        if comp.role.bench:
            yield "benchmarks", comp.role.bench
    if kind.bench:
        yield "benchmarks", kind.bench.default


@pytest.mark.parametrize("name", registry.names())
def test_every_hook_resolves_inside_the_stage_that_calls_it(name):
    kind = registry.get(name)
    for stage, ref in _hooks(kind):
        assert ref.split(":")[0].split(".")[0] == stage, f"{name}: {ref} is not in {stage}/"
        assert registry.hook(ref) is not None
    if kind.bench:
        assert kind.component(kind.bench.component).role.bench, f"{name}: its measured role has no bench"
        for variant in kind.bench.variants.split(","):
            assert variant in kind.export.variants


@pytest.mark.parametrize("role", [registry.IMAGE_GENERATOR, registry.IMAGE_ENCODER, registry.TEXT_GENERATOR])
def test_a_role_bench_module_has_the_interface_the_bench_calls(role):
    if role.bench is None:
        return
    module = importlib.import_module(role.bench)
    for name in ("variant", "steps", "run", "record", "LOCAL_CHECKPOINT"):
        assert hasattr(module, name), f"{role.bench} has no {name}"


def test_unknown_names_are_refused_with_the_allowed_ones():
    with pytest.raises(ConfigError, match="model must be one of dcgan, vae, gpt2, got 'bert'"):
        registry.get("bert")
    with pytest.raises(ConfigError, match="vae_encoder, vae_decoder"):
        registry.component("unet")
    with pytest.raises(ConfigError, match="vae has no component 'dcgan'"):
        registry.get("vae").component("dcgan")


def test_components_by_role_and_hugging_face_lookup():
    assert [c.name for c in registry.components(registry.IMAGE_GENERATOR)] == ["dcgan", "vae_decoder"]
    assert [c.name for c in registry.components(registry.TEXT_GENERATOR)] == ["gpt2"]
    assert registry.by_hf_model_type("gpt2") is registry.get("gpt2")
    assert registry.by_hf_model_type("llama") is None
    assert registry.by_hf_model_type(None) is None
    assert [k.name for k in registry.benchmarked()][0] == "gpt2"  # the required one first


def test_a_checkpoint_naming_an_unregistered_kind_is_refused(tmp_path):
    from training.checkpoint import FORMAT, detect_checkpoint_kind

    (tmp_path / "config.json").write_text(f'{{"format": "{FORMAT}", "model": ["dcgan"]}}')
    with pytest.raises(CheckpointError, match="model_type gpt2"):
        detect_checkpoint_kind(tmp_path)
    (tmp_path / "config.json").write_text(f'{{"format": "{FORMAT}", "model": "gpt2"}}')
    with pytest.raises(CheckpointError, match="neither an aigc checkpoint"):
        detect_checkpoint_kind(tmp_path)  # gpt2 checkpoints are Hugging Face folders
