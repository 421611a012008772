#!/usr/bin/env python3
"""Writes crates/models/tests/data/tiny-qwen3-reranker: a tiny random
Qwen3ForCausalLM with a small byte-level BPE tokenizer of its own, and the
scores transformers gives it as a pointwise (yes/no) reranker.

No Qwen3-Reranker checkpoint can be downloaded on the development machine,
so `--mode pointwise` is checked against transformers on this stand-in: the
same architecture as Qwen/Qwen3-Reranker-0.6B at toy size (2 layers, random
weights rounded to bf16), a tokenizer trained here on the prompts' words with
Qwen's special tokens, and a ChatML chat template. expected.json holds, for
both built-in pointwise templates, each (query, document) prompt, its token
ids and p(yes) computed as Qwen3-Reranker's model card does (log-softmax
over the logits of "no" and "yes" at the last position).

The prompts are written out here independently of firstrank's templates
(crates/core/templates/qwen3_reranker.toml, yes_no.toml): the Qwen3 one as
the model card builds it, the generic one through transformers'
apply_chat_template.

Run with any Python that has torch, transformers, tokenizers and
safetensors, e.g.
    python3 -m venv venv && venv/bin/pip install -r ../shared/ref/requirements.txt
    venv/bin/python scripts/make-tiny-pointwise.py
Re-running reproduces the files (fixed seeds, eager attention, f32 math).
"""

import json
import os
import sys

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "models", "tests", "data", "tiny-qwen3-reranker",
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen3-Reranker's model card.
QWEN_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
)
QWEN_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

# The generic template's messages.
YES_NO_SYSTEM = "You judge whether a document is relevant to a search query. Answer only \"yes\" or \"no\"."
YES_NO_INSTRUCTION = "Find passages that answer the query"
CUSTOM_INSTRUCTION = "Find passages about insects"

CASES = [
    ("how long do fleas live", [
        "Adult fleas live two to three months on a host.",
        "Paris is the capital of France.",
        "A flea can jump many times its own length.",
    ]),
    ("what is the capital of France", [
        "Paris is the capital of France.",
        "Dogs bark at night.",
    ]),
]


def qwen_prompt(query, doc, instruction=QWEN_INSTRUCTION):
    return f"{QWEN_PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}{QWEN_SUFFIX}"


def yes_no_user(query, doc, instruction=YES_NO_INSTRUCTION):
    return (f"Instruction: {instruction}\nQuery: {query}\nDocument: {doc}\n"
            "Is the document relevant to the query? Answer yes or no.")


def train_tokenizer():
    corpus = [QWEN_PREFIX, QWEN_SUFFIX, QWEN_INSTRUCTION, YES_NO_SYSTEM, YES_NO_INSTRUCTION,
              yes_no_user("q", "d")]
    for q, docs in CASES:
        corpus.append(q)
        corpus.extend(docs)
    corpus.extend(["yes no yes no"] * 50)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = 1.0 + 0.3 * torch.randn(p.shape, generator=g)
            else:
                v = 0.15 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(torch.bfloat16).to(torch.float32))


def main():
    os.makedirs(OUT, exist_ok=True)
    raw = train_tokenizer()
    raw.save(os.path.join(OUT, "tokenizer.json"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer.json"),
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
                   "chat_template": CHATML}, f, indent=1)
    yes_id = tokenizer.convert_tokens_to_ids("yes")
    no_id = tokenizer.convert_tokens_to_ids("no")
    assert yes_id != tokenizer.unk_token_id and no_id != tokenizer.unk_token_id, "yes/no not in the vocabulary"

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=raw.get_vocab_size(), hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                      tie_word_embeddings=True, attention_bias=False, use_sliding_window=False,
                      attn_implementation="eager")
    cfg.architectures = ["Qwen3ForCausalLM"]
    model = Qwen3ForCausalLM(cfg).to(torch.float32).eval()
    randomise(model, 4242)

    def score(prompt):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].to(torch.float32)
        pair = torch.stack([logits[no_id], logits[yes_id]])
        p_yes = torch.nn.functional.log_softmax(pair, dim=0)[1].exp().item()
        return ids, p_yes, logits[yes_id].item(), logits[no_id].item()

    cases = []
    for template in ["qwen3_reranker", "yes_no"]:
        for query, docs in CASES:
            for doc in docs:
                if template == "qwen3_reranker":
                    prompt = qwen_prompt(query, doc)
                else:
                    prompt = tokenizer.apply_chat_template(
                        [{"role": "system", "content": YES_NO_SYSTEM},
                         {"role": "user", "content": yes_no_user(query, doc)}],
                        tokenize=False, add_generation_prompt=True)
                ids, p_yes, ly, ln = score(prompt)
                cases.append({"template": template, "query": query, "document": doc, "prompt": prompt,
                              "input_ids": ids, "p_yes": p_yes, "logit_yes": ly, "logit_no": ln})
    # A request's own instruction (the API's `instruction` field).
    query, docs = CASES[0]
    for doc in docs:
        prompt = qwen_prompt(query, doc, instruction=CUSTOM_INSTRUCTION)
        ids, p_yes, ly, ln = score(prompt)
        cases.append({"template": "qwen3_reranker", "instruction": CUSTOM_INSTRUCTION, "query": query,
                      "document": doc, "prompt": prompt, "input_ids": ids, "p_yes": p_yes,
                      "logit_yes": ly, "logit_no": ln})
    model.to(torch.bfloat16).save_pretrained(OUT, safe_serialization=True)
    for extra in os.listdir(OUT):
        if extra not in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            os.remove(os.path.join(OUT, extra))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"generator": f"scripts/make-tiny-pointwise.py, transformers {transformers.__version__}, "
                                f"torch {torch.__version__}",
                   "yes_id": yes_id, "no_id": no_id, "cases": cases}, f, indent=1)
    print("->", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
