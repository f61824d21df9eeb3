"""The text role's measuring helpers: prompts of an exact token count, and the bytes a decode
step reads."""

from __future__ import annotations

from benchmarks.text import build_prompt


def test_step_read_bytes_leaves_out_gathered_tables(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.text import step_read_bytes

    wte = numpy_helper.from_array(np.zeros((50, 8), np.float32), "wte")  # gathered only: left out
    head = numpy_helper.from_array(np.zeros((8, 50), np.int8), "head")  # read whole by MatMul
    unused = numpy_helper.from_array(np.zeros(1000, np.float32), "unused")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["wte", "input_ids"], ["h"]),
            helper.make_node("Cast", ["head"], ["head_f"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["h", "head_f"], ["logits"]),
            helper.make_node("Identity", ["past_key_0"], ["present_key_0"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 1]),
            helper.make_tensor_value_info("past_key_0", TensorProto.FLOAT16, [1, 2, 4, 4]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 50]),
            helper.make_tensor_value_info("present_key_0", TensorProto.FLOAT16, [1, 2, 4, 4]),
        ],
        [wte, head, unused],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    assert step_read_bytes(tmp_path / "m.onnx") == (8 * 50, 2)  # int8 head; fp16 cache
    onnx.save(helper.make_model(graph), tmp_path / "ext.onnx", save_as_external_data=True, size_threshold=0)
    assert step_read_bytes(tmp_path / "ext.onnx") == (8 * 50, 2)


def test_prompt_encodes_to_exactly_n_tokens():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = "The quick brown fox jumps over the lazy dog; naïve café déjà vu. " * 20
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    for n in (1, 5, 16, 100, 512):
        assert len(tok.encode(build_prompt(tok, n, text)).ids) == n
