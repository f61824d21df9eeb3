"""The peers `aigc bench` knows (`PEERS`, by engine family in `FAMILIES`, the `--quick` ones
in `QUICK`) and `resolve`, which turns `--peers` names into peer names."""

from __future__ import annotations

from aigc.errors import ConfigError
from benchmarks.peers import ctranslate2_generator, llamacpp, openvino_genai
from benchmarks.peers.peer import Peer


def _openvino(bits: int, group_size: int) -> Peer:
    # optimum-intel's CLI defaults (`prepare_wc_config`, `_DEFAULT_4BIT_WQ_CONFIG`): asymmetric,
    # int8 per output channel, int4 in groups of 128, ratio 1.0; the embedding and head get
    # NNCF's int8 asymmetric backup precision under int4
    compression = {"bits": bits, "group_size": group_size, "symmetric": False, "all_layers": False}
    return Peer(
        name=f"openvino_int{bits}",
        family="openvino",
        label=f"OpenVINO GenAI `LLMPipeline` int{bits}",
        package="openvino-genai",
        modules=("openvino", "openvino_genai", "openvino_tokenizers", "optimum.intel", "nncf"),
        install="`pip install -e .[peers]`",
        weights=(
            f"int{bits} asym, per channel (embedding/head int8 asym)"
            if group_size == -1
            else f"int{bits} asym, groups of {group_size} (embedding/head int8 asym)"
        ),
        settings={
            "tool": "export.openvino.convert_ir (optimum-intel OVModelForCausalLM, stateful IR, NNCF)",
            "equivalent": f"optimum-cli export openvino --weight-format int{bits}",
            "compression": compression,
            "ratio": 1.0,
        },
        convert=openvino_genai.convert,
        load=openvino_genai.OpenVINORunner,
        files=("openvino_model.bin",),
        versions=("openvino", "optimum-intel", "nncf", "openvino-tokenizers"),
    )


def _llamacpp(quant: str) -> Peer:
    return Peer(
        name=f"llamacpp_{quant}",
        family="llamacpp",
        label=f"llama.cpp (llama-cpp-python) {quant}",
        package="llama-cpp-python",
        modules=("llama_cpp", "gguf"),
        install="`pip install -e .[llamacpp]` builds it from source; see the README",
        weights=f"GGUF {quant} (llama.cpp's default tensor types for this file type)",
        settings={
            # recorded in each cached conversion's settings: changing the text converts again
            "tool": "benchmarks.peers.write_gguf (f32 GGUF, arch gpt2) + llama_model_quantize",
            "quantize": quant,
            "ftype": llamacpp.LLAMA_FTYPES[quant],
        },
        convert=llamacpp.convert,
        load=llamacpp.LlamaCppRunner,
        files=(llamacpp.GGUF_FILE,),
        versions=("gguf",),
    )


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        _openvino(8, -1),
        _openvino(4, 128),
        _llamacpp("q8_0"),
        _llamacpp("q4_0"),
        Peer(
            name="ctranslate2_int8",
            family="ctranslate2",
            label="CTranslate2 `Generator` int8",
            package="ctranslate2",
            modules=("ctranslate2",),
            install="`pip install -e .[peers]`",
            weights="int8 (weights; int8_float32 compute on CPU)",
            settings={"tool": "ctranslate2.converters.TransformersConverter", "quantization": "int8"},
            convert=ctranslate2_generator.convert,
            load=ctranslate2_generator.CTranslate2Runner,
            files=("model.bin",),
            versions=("transformers",),
        ),
    )
}
FAMILIES = {
    f: tuple(n for n, p in PEERS.items() if p.family == f) for f in ("openvino", "llamacpp", "ctranslate2")
}
# --quick: the 4-bit peers (the fastest of each engine here) and CTranslate2's one
QUICK = ("openvino_int4", "llamacpp_q4_0", "ctranslate2_int8")


def resolve(names: tuple[str, ...] | None, quick: bool = False) -> tuple[str, ...]:
    """`--peers` names (peers, engine families, `all`, `none`) as peer names in registry order."""
    if names is None:
        return QUICK if quick else tuple(PEERS)
    wanted: set[str] = set()
    allowed = ("all", "none", *FAMILIES, *PEERS)
    for n in names:
        if n == "all":
            wanted |= set(PEERS)
        elif n == "none":
            continue
        elif n in FAMILIES:
            wanted |= set(FAMILIES[n])
        elif n in PEERS:
            wanted.add(n)
        else:
            raise ConfigError(f"--peers: unknown peer {n!r}; allowed: {', '.join(allowed)}")
    if "none" in names and wanted:
        raise ConfigError("--peers: `none` cannot be combined with peer names")
    return tuple(n for n in PEERS if n in wanted)
