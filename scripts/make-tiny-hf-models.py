#!/usr/bin/env python3
"""Writes the tiny Hugging Face checkpoints of crates/models/tests/data/tiny-hf.

No Qwen2 or Qwen3 checkpoint can be downloaded on the development machine, so
the loader of those architectures is checked against transformers itself on
tiny randomly initialised models: for each architecture this script builds a
2-layer model with random weights (biases and norm weights included, which
transformers would otherwise initialise to 0 and 1 and so hide mistakes),
rounds every weight to bf16, saves it as a Hugging Face directory (config.json
+ model.safetensors in bf16) and records transformers' f32 logits for a fixed
token sequence in expected.json. The sequence is longer than firstrank's
256-token attention block so both attention paths are exercised.

Run with any Python that has torch, transformers and safetensors, e.g.
    ~/.venvs/firstref/bin/python scripts/make-tiny-hf-models.py
The output is small (bf16, ~0.2 MB per model) and committed; re-running the
script reproduces it exactly (fixed seeds, eager attention, f32 math).
"""

import json
import os
import sys

import torch
import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "models", "tests", "data", "tiny-hf"
)
VOCAB = 256
SEQ_LEN = 300
# Positions whose full logits are recorded (the last one is where FIRST reads).
CHECK_POSITIONS = [0, 17, 255, 256, SEQ_LEN - 1]

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    attn_implementation="eager",
)

MODELS = {
    # q/k/v biases, untied head.
    "qwen2": (
        Qwen2ForCausalLM,
        Qwen2Config(**COMMON, rope_theta=1_000_000.0, tie_word_embeddings=False, use_sliding_window=False),
    ),
    # per-head q/k RMSNorm, head_dim larger than hidden / heads, tied embeddings.
    "qwen3": (
        Qwen3ForCausalLM,
        Qwen3Config(**COMMON, head_dim=32, rope_theta=1_000_000.0, tie_word_embeddings=True,
                    attention_bias=False, use_sliding_window=False),
    ),
    # Llama with `attention_bias`: biases on q, k, v and o.
    "llama-bias": (
        LlamaForCausalLM,
        LlamaConfig(**COMMON, rope_theta=10_000.0, attention_bias=True, tie_word_embeddings=False),
    ),
    # Mistral's sliding window, shorter than the sequence.
    "mistral-window": (
        MistralForCausalLM,
        MistralConfig(**COMMON, rope_theta=10_000.0, sliding_window=48, tie_word_embeddings=False),
    ),
    # Gemma 3: sandwich norms, q/k norms, tanh-GELU, scaled embeddings, a
    # sliding layer and a global one with their own RoPE bases. (Appended
    # last: the seeds of the models above stay as they were.)
    "gemma3": (
        Gemma3ForCausalLM,
        Gemma3TextConfig(**COMMON, head_dim=32, query_pre_attn_scalar=32, sliding_window=48,
                         layer_types=["sliding_attention", "full_attention"], rope_theta=1_000_000.0,
                         rope_local_base_freq=10_000.0, tie_word_embeddings=True,
                         hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=None,
                         attn_logit_softcapping=None),
    ),
}


def randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = 1.0 + 0.3 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.5 * torch.randn(p.shape, generator=g)
            else:
                v = 0.15 * torch.randn(p.shape, generator=g)
            # bf16-representable values: the bf16 file holds them exactly.
            p.copy_(v.to(torch.bfloat16).to(torch.float32))


def main() -> None:
    tokens = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (SEQ_LEN,), generator=tokens)
    for i, (name, (cls, cfg)) in enumerate(MODELS.items()):
        torch.manual_seed(0)
        cfg.architectures = [cls.__name__]
        model = cls(cfg).to(torch.float32).eval()
        randomise(model, 1000 + i)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with torch.no_grad():
            logits = model(input_ids=ids[None, :]).logits[0].to(torch.float32)
        model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
        # Only the files the loader reads.
        for extra in os.listdir(d):
            if extra not in ("config.json", "model.safetensors"):
                os.remove(os.path.join(d, extra))
        expected = {
            "generator": f"scripts/make-tiny-hf-models.py, transformers {transformers.__version__}, "
            f"torch {torch.__version__}",
            "tokens": ids.tolist(),
            "logits": {str(p): [float(x) for x in logits[p]] for p in CHECK_POSITIONS},
        }
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(expected, f)
        print(name, "->", d, file=sys.stderr)


if __name__ == "__main__":
    main()
