"""Write a tiny decoder graph in the Hugging Face Optimum layout, for the ONNX plugin's tests.

    python make_toy_decoder.py OUT_DIR TOKENIZER_DIR

The graph is not a language model: it is a few arithmetic nodes whose output proves how the
caller drives it. Inputs `input_ids`, `attention_mask`, `position_ids` (int64, [1, n] and
[1, past + n]) and one layer of cache `past_key_values.0.key|value` (float32, [1, 1, past, 1]);
outputs `present.0.key|value` (the past with the new ids / positions appended) and `logits`
([1, n, VOCAB]) that make greedy decoding choose

    next = (sum of every token id in the cache + last position id
            + 1000 * (attention mask length - cache length)) mod VOCAB

So the greedy continuation of a prompt is predictable exactly when the caller carries the cache
between steps, passes position ids counting from the cache length, and sizes the mask to past +
new tokens. Tokenizer files are copied from TOKENIZER_DIR (any real tokenizer; the graph ignores
meaning). Uses only the `onnx` package.
"""

import json
import pathlib
import shutil
import sys

import onnx
from onnx import TensorProto, helper

VOCAB = 49152


def main():
    out, tokenizer_dir = map(pathlib.Path, sys.argv[1:])
    out.mkdir(parents=True, exist_ok=True)
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, [1, "n"]),
        helper.make_tensor_value_info("attention_mask", i64, [1, "total"]),
        helper.make_tensor_value_info("position_ids", i64, [1, "n"]),
        helper.make_tensor_value_info("past_key_values.0.key", f32, [1, 1, "past", 1]),
        helper.make_tensor_value_info("past_key_values.0.value", f32, [1, 1, "past", 1]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", f32, [1, "n", VOCAB]),
        helper.make_tensor_value_info("present.0.key", f32, [1, 1, "total", 1]),
        helper.make_tensor_value_info("present.0.value", f32, [1, 1, "total", 1]),
    ]
    const = lambda name, value, dtype=i64: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, dtype, [len(value)], value))
    nodes = [
        const("shape4", [1, 1, -1, 1]),
        const("vocab", [VOCAB]),
        const("thousand", [1000]),
        const("onehot_values", [0.0, 1.0], f32),
        const("axis_all", [0, 1, 2, 3]),
        # present = past ++ new (keys: the ids; values: the positions)
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=f32),
        helper.make_node("Reshape", ["ids_f", "shape4"], ["ids_4"]),
        helper.make_node("Concat", ["past_key_values.0.key", "ids_4"], ["present.0.key"], axis=2),
        helper.make_node("Cast", ["position_ids"], ["pos_f"], to=f32),
        helper.make_node("Reshape", ["pos_f", "shape4"], ["pos_4"]),
        helper.make_node("Concat", ["past_key_values.0.value", "pos_4"], ["present.0.value"], axis=2),
        # sum of ids in the cache, as int64 [1]
        helper.make_node("ReduceSum", ["present.0.key", "axis_all"], ["key_sum_f"], keepdims=0),
        helper.make_node("Cast", ["key_sum_f"], ["key_sum"], to=i64),
        # last position id: the max of position_ids
        helper.make_node("ReduceMax", ["position_ids"], ["last_pos"], keepdims=0),
        # mask length - cache length
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "one_idx"], ["mask_len"]),
        helper.make_node("Shape", ["present.0.key"], ["cache_shape"]),
        helper.make_node("Gather", ["cache_shape", "two_idx"], ["cache_len"]),
        helper.make_node("Sub", ["mask_len", "cache_len"], ["mask_err"]),
        helper.make_node("Mul", ["mask_err", "thousand"], ["mask_penalty"]),
        helper.make_node("Add", ["key_sum", "last_pos"], ["s1"]),
        helper.make_node("Add", ["s1", "mask_penalty"], ["s2"]),
        helper.make_node("Mod", ["s2", "vocab"], ["next"], fmod=0),
        # logits: one-hot of `next` on every row
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Expand", ["next", "ids_shape"], ["next_rows"]),
        helper.make_node("OneHot", ["next_rows", "vocab", "onehot_values"], ["logits"], axis=-1),
    ]
    initializers = [
        helper.make_tensor("one_idx", i64, [1], [1]),
        helper.make_tensor("two_idx", i64, [1], [2]),
    ]
    graph = helper.make_graph(nodes, "toy_decoder", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    (out / "config.json").write_text(json.dumps({
        "model_type": "toy", "num_hidden_layers": 1, "hidden_size": 1, "num_attention_heads": 1,
        "num_key_value_heads": 1, "head_dim": 1, "max_position_embeddings": 256,
        "vocab_size": VOCAB, "eos_token_id": 2, "bos_token_id": 1,
    }, indent=1) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)


if __name__ == "__main__":
    main()
