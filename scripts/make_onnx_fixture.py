"""Build the ONNX fixture of SmolLM2-135M-Instruct and its transformers reference.

    python make_onnx_fixture.py GGUF_DIR GGUF_FILE WORK_DIR OUT_DIR

Route A of notes/onnx-fixture.md, with real weights all the way:
1. transformers reads the packaged Q4_1 GGUF (dequantized to float32) and its config, tokenizer
   and weights are written as a Hugging Face folder (safetensors) to WORK_DIR/hf;
2. onnxruntime-genai's model builder exports that folder to ONNX, fp32, for the CPU
   (OUT_DIR: model.onnx + model.onnx.data, genai_config.json, tokenizer files, chat_template.jinja);
3. transformers computes the reference on the same float32 weights: the prompt ids of a fixed
   conversation through the model's chat template, and REFERENCE_TOKENS greedy ids after it, the
   end-of-sequence token ignored (a plain argmax loop with the KV cache). Written to
   OUT_DIR/reference.json.

Runs offline (HF_HUB_OFFLINE=1): nothing is read from a model hub.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

# The conversation the tests use (the e2e test asks r1d the same through its API).
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
REFERENCE_TOKENS = 48


def log(msg):
    print(f"make-onnx-fixture: {msg}", file=sys.stderr, flush=True)


def main():
    gguf_dir, gguf_file, work, out = sys.argv[1:]
    work = pathlib.Path(work)
    out = pathlib.Path(out)
    hf = work / "hf"

    log(f"reading {gguf_file} with transformers {transformers.__version__} (float32)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    model.eval()
    tokenizer.save_pretrained(hf)
    # transformers refuses save_pretrained on a model read from a GGUF; the weights are plain
    # float32 tensors by now, so write them as safetensors beside the config (save_model handles
    # the tied embedding / output head).
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A config read from a GGUF names no architecture; the builder dispatches on it.
    config.architectures = [type(model).__name__]
    config.save_pretrained(hf)
    model.generation_config.save_pretrained(hf)
    safetensors.torch.save_model(model, str(hf / "model.safetensors"))

    log("exporting to ONNX with onnxruntime-genai's builder (fp32, cpu)")
    subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder",
         "-i", str(hf), "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(work / "builder-cache")],
        check=True,
        stdout=sys.stderr,
    )
    # The store recognises an ONNX model directory by model.onnx + config.json; the plugin reads
    # generation_config.json for the end-of-sequence ids. Copy what the builder left out.
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "special_tokens_map.json"):
        if (hf / name).exists() and not (out / name).exists():
            shutil.copy(hf / name, out / name)
    for name in ("model.onnx", "config.json", "tokenizer.json"):
        if not (out / name).exists():
            sys.exit(f"the builder wrote no {name} to {out}")

    log(f"computing {REFERENCE_TOKENS} greedy reference tokens with transformers")
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    # The template writes <|im_start|> itself; the tokenizer adds no BOS (add_bos_token false).
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids])
    generated = []
    past = None
    with torch.no_grad():
        step = ids
        for _ in range(REFERENCE_TOKENS):
            output = model(input_ids=step, past_key_values=past, use_cache=True)
            past = output.past_key_values
            token = int(output.logits[0, -1].argmax())
            generated.append(token)
            step = torch.tensor([[token]])
    text = tokenizer.decode(generated, skip_special_tokens=False)
    log(f"reference answer: {text!r}")
    reference = {
        "messages": MESSAGES,
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "greedy_ids": generated,
        "greedy_text": text,
        "eos_ignored": True,
        "producer": f"transformers {transformers.__version__}, torch {torch.__version__}, float32 "
                    f"weights dequantized from {gguf_file}",
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
