#!/usr/bin/env python3
"""Writes the tiny cross-encoder of crates/models/tests/data/tiny-cross-encoder.

No cross-encoder checkpoint can be downloaded on the development machine, so
the cross-encoder path (pair tokenisation with segment ids, the BERT encoder,
pooler and single-label classifier, padding across a batch, truncation) is
checked against transformers on a tiny randomly initialised
BertForSequenceClassification: 2 layers, hidden size 32, a WordPiece
tokenizer over a small vocabulary with truncation at 48 tokens. Every weight
(norms and biases included) is drawn at random with a fixed seed and kept in
f32; expected.json holds transformers' logits and sigmoid scores for a few
(query, document) pairs, each scored alone (unpadded), one pair long enough
to be truncated.

Run with any Python that has torch, transformers, tokenizers and
safetensors, e.g.
    ~/.venvs/firstref/bin/python scripts/make-tiny-cross-encoder.py
Re-running it reproduces the committed files exactly.
"""

import json
import os

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "models", "tests", "data", "tiny-cross-encoder",
)

WORDS = (
    "the a of to and in is for how long do fleas live paris capital france city "
    "largest adult two three months on host dog cat river bridge old market what "
    "where when year years water boils at degrees sea level"
).split()
PAIRS = [
    ("how long do fleas live", "adult fleas live two to three months on a host"),
    ("how long do fleas live", "paris is the capital and largest city of france"),
    ("capital of france", "paris is the capital of france"),
    ("capital of france", "the old market by the river"),
    ("what is a flea", ""),
    ("where does the water boil", " ".join(["water boils at degrees at sea level"] * 8)),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = list(dict.fromkeys(vocab))
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.enable_truncation(max_length=48, strategy="longest_first")
    tok.save(os.path.join(OUT, "tokenizer.json"))

    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, num_labels=1,
        hidden_act="gelu", layer_norm_eps=1e-12,
    )
    config.architectures = ["BertForSequenceClassification"]
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        # A wider classifier, so that the pairs' scores differ visibly.
        model.classifier.weight.mul_(6.0)
    model.save_pretrained(OUT, safe_serialization=True)

    expected = []
    for query, doc in PAIRS:
        enc = tok.encode(query, doc)
        with torch.no_grad():
            logit = model(
                input_ids=torch.tensor([enc.ids]),
                token_type_ids=torch.tensor([enc.type_ids]),
                attention_mask=torch.ones(1, len(enc.ids), dtype=torch.long),
            ).logits[0, 0].item()
        expected.append({
            "query": query, "document": doc, "tokens": len(enc.ids),
            "logit": logit, "score": 1.0 / (1.0 + torch.exp(torch.tensor(-logit)).item()),
        })
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
