#!/usr/bin/env python3
"""Times transformers scoring (query, document) pairs with a cross-encoder
directory on the CPU, for the cross-encoder entry of benchmarks/cpu-inference.md:

    venv/bin/python scripts/bench-cross-encoder.py DIR DOCS_FILE [BATCH]

DOCS_FILE has one document per line; the query is "how long do fleas live".
Prints documents per second of the scoring loop alone (tokenizing, the
forward passes in batches of BATCH, default 32, and the sigmoid), after one
warm-up batch; model loading and imports are not counted.
"""

import sys
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

directory, docs_file = sys.argv[1], sys.argv[2]
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
docs = [line.rstrip("\n") for line in open(docs_file, encoding="utf-8") if line.strip()]
query = "how long do fleas live"
tok = AutoTokenizer.from_pretrained(directory)
model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
# The position table bounds the pair (RoBERTa's starts after the padding id).
offset = 2 if model.config.model_type in ("roberta", "xlm-roberta") else 0
max_length = min(tok.model_max_length, model.config.max_position_embeddings - offset)


def score(chunk):
    enc = tok([query] * len(chunk), chunk, padding=True, truncation=True,
              max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return torch.sigmoid(model(**enc).logits[:, 0])


score(docs[:batch])
start = time.perf_counter()
for i in range(0, len(docs), batch):
    score(docs[i:i + batch])
took = time.perf_counter() - start
print(f"{len(docs)} documents in {took:.2f}s: {len(docs) / took:.0f} documents/s "
      f"(torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch})")
