#!/usr/bin/env python3
"""Writes the tiny cross-encoders of crates/models/tests/data: tiny-cross-encoder
(BERT) and tiny-xlmr-cross-encoder (XLM-RoBERTa).

No cross-encoder checkpoint can be downloaded on the development machine, so
the cross-encoder path (pair tokenisation with segment ids, the BERT encoder,
pooler and single-label classifier, padding across a batch, truncation) is
checked against transformers on a tiny randomly initialised
BertForSequenceClassification: 2 layers, hidden size 32, a WordPiece
tokenizer over a small vocabulary with truncation at 48 tokens. Every weight
(norms and biases included) is drawn at random with a fixed seed and kept in
f32; expected.json holds transformers' logits and sigmoid scores for a few
(query, document) pairs, each scored alone (unpadded), one pair long enough
to be truncated. The XLM-RoBERTa one is built the same way (its own seed)
with RoBERTa's conventions: `<s> q </s></s> d </s>` pairs without segment
ids, positions counted from pad_token_id + 1, the classification head
(`classifier.dense`, `classifier.out_proj`) on `<s>`.

Run with any Python that has torch, transformers, tokenizers and
safetensors, e.g.
    ~/.venvs/firstref/bin/python scripts/make-tiny-cross-encoder.py
Re-running it reproduces the committed weights and tokenizers exactly; the
expected logits agree to about 1e-6 (float reductions differ between CPUs).
"""

import json
import os

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "models", "tests", "data")
OUT = os.path.join(DATA, "tiny-cross-encoder")
OUT_XLMR = os.path.join(DATA, "tiny-xlmr-cross-encoder")

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


def tokenizer(out, specials, unk, single, pair, bos, eos):
    """A WordPiece tokenizer over WORDS with `specials` first, truncating
    pairs at 48 tokens, saved as out/tokenizer.json."""
    vocab = specials + WORDS
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = list(dict.fromkeys(vocab))
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(bos, ids[bos]), (eos, ids[eos])],
    )
    tok.enable_truncation(max_length=48, strategy="longest_first")
    tok.save(os.path.join(out, "tokenizer.json"))
    return tok, len(vocab)


def randomize(model, classifier_out):
    """Every weight drawn at random (fixed seed set by the caller); a wider
    classifier, so that the pairs' scores differ visibly."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        classifier_out.weight.mul_(6.0)


def write_expected(out, tok, model, segment_ids):
    """transformers' logit and sigmoid score for each pair, scored alone."""
    expected = []
    for query, doc in PAIRS:
        enc = tok.encode(query, doc)
        inputs = {
            "input_ids": torch.tensor([enc.ids]),
            "attention_mask": torch.ones(1, len(enc.ids), dtype=torch.long),
        }
        if segment_ids:
            inputs["token_type_ids"] = torch.tensor([enc.type_ids])
        with torch.no_grad():
            logit = model(**inputs).logits[0, 0].item()
        expected.append({
            "query": query, "document": doc, "tokens": len(enc.ids),
            "logit": logit, "score": 1.0 / (1.0 + torch.exp(torch.tensor(-logit)).item()),
        })
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(json.dumps(expected, indent=1))


def bert():
    os.makedirs(OUT, exist_ok=True)
    tok, vocab_size = tokenizer(
        OUT, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]",
        "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", "[CLS]", "[SEP]",
    )
    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, num_labels=1,
        hidden_act="gelu", layer_norm_eps=1e-12,
    )
    config.architectures = ["BertForSequenceClassification"]
    model = BertForSequenceClassification(config).eval()
    randomize(model, model.classifier)
    model.save_pretrained(OUT, safe_serialization=True)
    write_expected(OUT, tok, model, segment_ids=True)


def xlm_roberta():
    os.makedirs(OUT_XLMR, exist_ok=True)
    tok, vocab_size = tokenizer(
        OUT_XLMR, ["<s>", "<pad>", "</s>", "<unk>"], "<unk>",
        "<s> $A </s>", "<s> $A </s> </s> $B </s>", "<s>", "</s>",
    )
    torch.manual_seed(11)
    config = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=1, num_labels=1,
        hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    config.architectures = ["XLMRobertaForSequenceClassification"]
    model = XLMRobertaForSequenceClassification(config).eval()
    randomize(model, model.classifier.out_proj)
    model.save_pretrained(OUT_XLMR, safe_serialization=True)
    # transformers numbers XLM-RoBERTa's positions from the ids (pad_token_id
    # + 1 onwards) and reads no segment ids.
    write_expected(OUT_XLMR, tok, model, segment_ids=False)


if __name__ == "__main__":
    bert()
    xlm_roberta()
