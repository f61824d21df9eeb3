"""The OpenVINO GenAI peer: converting the checkpoint to a weight-compressed IR with its
tokenizer models, and generating with `LLMPipeline`."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np

from benchmarks.peers.peer import Runner

# OpenVINO's CPU plugin computes in bf16 on AMX CPUs unless told otherwise, which generates
# slower than f32 for this model (benchmarks/choices.md)
OPENVINO_PRECISION = "f32"

HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def convert(checkpoint: Path, out: Path, settings: dict, threads: int) -> dict:
    import openvino as ov
    import openvino_tokenizers
    from transformers import AutoTokenizer

    from export.openvino import Compression, convert_ir

    convert_ir(checkpoint, out, Compression(**settings["compression"]))
    # GenAI's pipeline loads the tokenizer models from the same folder (ids are fed directly,
    # but it will not start without them)
    tokenizer, detokenizer = openvino_tokenizers.convert_tokenizer(
        AutoTokenizer.from_pretrained(checkpoint), with_detokenizer=True
    )
    ov.save_model(tokenizer, str(out / "openvino_tokenizer.xml"))
    ov.save_model(detokenizer, str(out / "openvino_detokenizer.xml"))
    for name in HF_TOKENIZER_FILES:
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, out / name)
    # what NNCF applied, as it recorded in the IR (the group size may have been adjusted to
    # a small model's hidden size)
    rt = ov.Core().read_model(str(out / "openvino_model.xml")).get_rt_info()
    applied = {}
    with contextlib.suppress(Exception):  # an IR without compression has no such entry
        wc = rt["nncf"]["weight_compression"]
        for key in ("mode", "group_size", "ratio", "all_layers", "backup_mode", "awq", "scale_estimation"):
            applied[key] = wc[key].astype(str)
    return {"nncf_weight_compression": applied}


class OpenVINORunner(Runner):
    def __init__(self, folder: Path, checkpoint: Path, threads: int) -> None:
        import openvino_genai

        self.properties = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION}
        # LLMPipeline's own scheduler keeps a prefix cache across calls: a repeated prompt's
        # full 32-token blocks would skip their prefill (benchmarks/choices.md). Off, so that
        # every request prefills its prompt as the served path and the other peers do.
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        self.pipe = openvino_genai.LLMPipeline(
            str(folder), "CPU", scheduler_config=scheduler, **self.properties
        )
        self.properties["enable_prefix_caching"] = False

    def generate(self, ids: list[int], n: int, timer) -> list[int]:
        import openvino as ov
        import openvino_genai

        class Stamps(openvino_genai.StreamerBase):
            """Stamps every token as the pipeline hands it over (a text streamer would hold
            back or merge tokens that do not decode to whole characters)."""

            def __init__(self) -> None:
                super().__init__()
                self.tokens: list[int] = []

            def write(self, token):
                for t in [token] if isinstance(token, int) else list(token):
                    timer.put(t)
                    self.tokens.append(int(t))
                return openvino_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        arr = np.asarray([ids], dtype=np.int64)
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(arr), ov.Tensor(np.ones_like(arr)))
        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = n
        config.min_new_tokens = n
        config.ignore_eos = True
        config.do_sample = False
        streamer = Stamps()
        timer.put(ids)
        self.pipe.generate(inputs, config, streamer)
        return streamer.tokens
