"""One ONNX Runtime call for a step's decode rows and its prompt chunk: a KV-slot graph
rewritten so that everything but attention runs on all the step's tokens at once.

ONNX Runtime's CPU `GroupQueryAttention` takes one sequence length per call, so a step's
decode rows (one token each) and a prompt's chunk (many tokens) cannot share its batch. But
attention is the only operator of the graph that cares which row a token belongs to: the
embeddings, layer norms, matrix multiplications and activations act on each token alone. The
mixed graph therefore takes the step's tokens as one sequence of a batch of one (the decode
rows' tokens first, then the chunk's rows one after another) and splits them only around
attention, where each layer runs two `GroupQueryAttention` nodes:

- the decode rows, reshaped to (rows, 1): the cache inputs `past_key_<i>`/`past_value_<i>`
  (slots 0..rows-1, bound in place as in a decode call), `seqlens_k`, `total_sequence_length`;
- the chunk, reshaped to (chunk rows, chunk length): `chunk_past_key_<i>`/`chunk_past_value_<i>`
  (the chunk's consecutive slots, bound in place), `chunk_seqlens_k`,
  `chunk_total_sequence_length`;

and their outputs are joined back into one sequence. `logits_indices` picks the positions of
that sequence whose logits come back: each decode row's token and each chunk row's last.

What this buys on a CPU: a separate prefill call reads every weight again and pays the call's
fixed cost; in the mixed call a chunk costs its tokens and about 1.3 ms for the split (GPT-2
124M int8 on a 2-core EPYC, 4 decode rows: 16 prompt tokens added ~12 ms to the call where a
prefill call of their own cost ~18 ms; benchmarks/many-users.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHUNK_PREFIX = "chunk_"
# a graph larger than this is written with external data, and not rewritten in memory (a
# protocol buffer holds at most 2 GiB)
PROTO_MAX_BYTES = 1_800_000_000
# what a KV-slot graph must have for the rewrite
_NEEDED_INPUTS = ("input_ids", "position_ids", "seqlens_k", "total_sequence_length")


def mixed_graph(model):
    """The mixed-call graph of the KV-slot graph `model` (an `onnx.ModelProto`, changed in
    place and returned). Raises ValueError where `model` is not a KV-slot graph."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    missing = [n for n in _NEEDED_INPUTS if n not in inputs]
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if missing or not attention:
        raise ValueError(
            "not a KV-slot graph: "
            + (f"no input {', '.join(missing)}" if missing else "no GroupQueryAttention node")
        )
    if "logits_indices" not in inputs:
        raise ValueError("a graph of an older export (no logits_indices input): re-run `aigc export`")
    # the last listed position's logits: a Gather of `logits` (or of its fp16 form) at -1
    last = [n for n in graph.node if n.op_type == "Gather" and n.input[1] == "last_index"]
    if len(last) != 1:
        raise ValueError("no Gather of `last_index` picking the last listed position's logits")
    for node in attention:
        if node.input[1] or node.input[2]:
            raise ValueError(f"{node.name}: the rewrite takes packed query/key/value, not separate ones")

    def const(name: str, value) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def cache_input(src: str, name: str):
        value = graph.input.add()
        value.CopyFrom(inputs[src])
        value.name = name
        return value

    # The step's tokens, one sequence: (1, tokens) ids and positions.
    for name in ("input_ids", "position_ids"):
        dims = inputs[name].type.tensor_type.shape.dim
        dims[0].dim_value = 1
        dims[1].dim_param = "tokens"
    chunk_seqlens = cache_input("seqlens_k", CHUNK_PREFIX + "seqlens_k")
    chunk_seqlens.type.tensor_type.shape.dim[0].dim_param = "chunk_rows"
    cache_input("total_sequence_length", CHUNK_PREFIX + "total_sequence_length")

    zero, big = const("mixed_zero", [0]), const("mixed_end", [np.iinfo(np.int64).max])
    axis1 = const("mixed_axis1", [1])
    new_nodes = [
        helper.make_node("Shape", ["seqlens_k"], ["mixed_rows"], name="mixed_rows"),
        helper.make_node(
            "Shape", [CHUNK_PREFIX + "seqlens_k"], ["mixed_chunk_rows"], name="mixed_chunk_rows"
        ),
    ]
    outputs = {o.name: o for o in graph.output}
    rewritten = []
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            rewritten.append(node)
            continue
        packed, attn = node.input[0], node.output[0]
        hidden = const(f"{node.name}_mixed_width", [-1])
        # decode rows: the first `rows` tokens, (rows, 1, width)
        rewritten += [
            helper.make_node("Slice", [packed, zero, "mixed_rows", axis1], [f"{packed}_decode_flat"]),
            helper.make_node(
                "Reshape",
                [f"{packed}_decode_flat", const(f"{node.name}_decode_shape", [-1, 1, 0])],
                [f"{packed}_decode"],
            ),
            helper.make_node("Slice", [packed, "mixed_rows", big, axis1], [f"{packed}_chunk_flat"]),
            helper.make_node(
                "Concat",
                ["mixed_chunk_rows", hidden, const(f"{node.name}_chunk_tail", [0])],
                [f"{packed}_chunk_shape"],
                axis=0,
            ),
            helper.make_node(
                "Reshape", [f"{packed}_chunk_flat", f"{packed}_chunk_shape"], [f"{packed}_chunk"]
            ),
        ]
        decode = helper.make_node(
            "GroupQueryAttention",
            [f"{packed}_decode", *node.input[1:]],
            [f"{attn}_decode", *node.output[1:]],
            name=f"{node.name}_decode",
            domain=node.domain,
        )
        decode.attribute.extend(node.attribute)
        chunk_inputs = list(node.input)
        chunk_inputs[0] = f"{packed}_chunk"
        for k in (3, 4, 5, 6):  # past key/value, seqlens_k, total_sequence_length
            chunk_inputs[k] = CHUNK_PREFIX + node.input[k]
        chunk_outputs = [f"{attn}_chunk", *(CHUNK_PREFIX + o for o in node.output[1:])]
        chunk = helper.make_node(
            "GroupQueryAttention", chunk_inputs, chunk_outputs, name=f"{node.name}_chunk", domain=node.domain
        )
        chunk.attribute.extend(node.attribute)
        for past in node.input[3:5]:
            cache_input(past, CHUNK_PREFIX + past).type.tensor_type.shape.dim[0].dim_param = "chunk_rows"
        for present in node.output[1:]:
            value = graph.output.add()
            value.CopyFrom(outputs[present])
            value.name = CHUNK_PREFIX + present
            value.type.tensor_type.shape.dim[0].dim_param = "chunk_rows"
        flat = const(f"{node.name}_flat_shape", [1, -1, 0])
        rewritten += [
            decode,
            chunk,
            helper.make_node("Reshape", [f"{attn}_decode", flat], [f"{attn}_decode_seq"]),
            helper.make_node("Reshape", [f"{attn}_chunk", flat], [f"{attn}_chunk_seq"]),
            helper.make_node("Concat", [f"{attn}_decode_seq", f"{attn}_chunk_seq"], [attn], axis=1),
        ]
    # `logits_indices` picks the positions whose logits come back, (1, picked, vocab): each
    # row's last is the row itself, so `last_logits` is that, (picked, vocab)
    at = rewritten.index(last[0])
    rewritten[at] = helper.make_node(
        "Squeeze", [last[0].input[0], const("mixed_axis0", [0])], [last[0].output[0]]
    )
    del graph.node[:]
    graph.node.extend(new_nodes + rewritten)
    graph.output.remove(outputs["logits"])  # a mixed call returns each row's last position's only
    _prune(graph)
    return model


def _prune(graph) -> None:
    """Drop the nodes and initializers no graph output needs."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    for init in [i for i in graph.initializer if i.name not in needed]:
        graph.initializer.remove(init)


def write_mixed_graph(src, dst) -> None:
    """The mixed-call graph of the KV-slot graph file `src`, written to `dst` (what `aigc
    build` puts in a version folder as `mixed.onnx`; ValueError where `src` cannot take the
    rewrite)."""
    import onnx

    model = mixed_graph(onnx.load(str(src)))
    large = model.ByteSize() > PROTO_MAX_BYTES
    onnx.save_model(model, str(dst), save_as_external_data=large, location=f"{Path(dst).name}.data")
