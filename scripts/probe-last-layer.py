#!/usr/bin/env python3
"""probe-last-layer.py: can SmolLM2's last layer alone learn relevance from frozen states?

A diagnostic for issue 7 (BENCHMARKS.md, "Probe: the last layer on cached states"), not part of
the product. It runs in the Python reference's environment (../shared/ref, torch + transformers)
because it is a throwaway experiment: the question is whether a cheap training regime is worth
building into `firstrank train`.

The idea it tests: the ranking loss reads only the last prompt position's identifier logits, so
with adapters on the final layer alone, every layer below can run once per list, and each epoch
then costs one layer at one query position (milliseconds per list instead of seconds). That buys
many epochs on two CPU cores, if the final layer's inputs carry relevance a LoRA can read.

  cache  runs the model with the bundled adapter (layers 22-29) merged, keeps the input of
         layer 29 at every position (f16) and the identifier logits, for the DL19/DL20 BM25
         top-20 windows, the DL19 window of a seeded shuffle of the top 100 (Python's
         random.Random(7), not the permutation of `rerank --shuffle-input 7`), and the first
         N training lists of the given `firstrank label` files in one seeded shuffled order.
  train  rebuilds layer 29 with the bundled adapter's LoRA (or a fresh one), checks the rebuilt
         head reproduces the cached logits, and trains that LoRA with the weighted RankNet
         loss (crates/models/src/train/loss.rs) on the cached states: AdamW, 10 warmup steps,
         cosine decay, gradient clipping 1.0. It prints the loss on held-out lists and the
         nDCG@10 of DL19, DL20 and the shuffled DL19 window after each epoch.

Usage (from the repository root, with the reference venv):
  ~/.venvs/firstref/bin/python scripts/probe-last-layer.py cache DIR LISTS.jsonl [LISTS.jsonl ...] [--lists N]
  ~/.venvs/firstref/bin/python scripts/probe-last-layer.py train DIR [--lr X] [--epochs N] [--fresh]
"""
import argparse
import json
import math
import os
import random
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "ref"))
import common  # noqa: E402
import treceval  # noqa: E402
from first_ref import FirstReranker  # noqa: E402

ADAPTER = os.path.join(ROOT, "crates", "models", "adapters", "smollm2-first")
LAYER = 29
SHARD = 50


def save_shard(path, recs):
    np.savez(path + ".npz", **{f"h{i}": r["h"] for i, r in enumerate(recs)},
             **{f"l{i}": r["logits"] for i, r in enumerate(recs)})
    with open(path + ".json", "w") as f:
        json.dump([{k: v for k, v in r.items() if k not in ("h", "logits")} for r in recs], f)


def load_shard(path):
    z = np.load(path + ".npz")
    meta = json.load(open(path + ".json"))
    return [dict(m, h=torch.from_numpy(z[f"h{i}"].astype(np.float32)), logits=z[f"l{i}"])
            for i, m in enumerate(meta)]


def cache(args):
    os.makedirs(args.dir, exist_ok=True)
    rr = FirstReranker("smollm2-135m", threads=args.threads, adapter=ADAPTER)
    captured = {}

    def keep_input(_module, pos, kw):
        captured["h"] = (kw["hidden_states"] if "hidden_states" in kw else pos[0]).detach()

    rr.model.model.layers[LAYER].register_forward_pre_hook(keep_input, with_kwargs=True)
    letters = torch.tensor(rr.letter_ids)

    def run(prompt):
        with torch.inference_mode():
            out = rr.model(input_ids=torch.tensor([rr.encode(prompt)]), logits_to_keep=1, use_cache=False)
        return captured["h"][0].to(torch.float16).numpy(), out.logits[0, -1, letters].float().numpy()

    t0 = time.time()
    for ds, shuffled in [("dl19", False), ("dl20", False), ("dl19", True)]:
        name = os.path.join(args.dir, ds + ("-shuffled" if shuffled else ""))
        if os.path.exists(name + ".json"):
            continue
        recs = []
        for q in common.load_candidates(ds):
            hits = list(q["hits"])
            if shuffled:
                random.Random(7).shuffle(hits)
            hits = hits[:20]
            h, logits = run(rr.first_prompt(q["query"], [x["content"] for x in hits]))
            recs.append({"qid": q["qid"], "docids": [str(x["docid"]) for x in hits], "h": h, "logits": logits})
        save_shard(name, recs)
        print(f"[{time.time() - t0:.0f}s] {os.path.basename(name)}: {len(recs)} windows", flush=True)
    lists = [json.loads(line) for path in args.lists for line in open(path)]
    random.Random(1).shuffle(lists)
    lists = lists[: args.n_lists]
    for s in range(0, len(lists), SHARD):
        name = os.path.join(args.dir, f"train{s // SHARD:03d}")
        if os.path.exists(name + ".json"):
            continue
        recs = []
        for ex in lists[s:s + SHARD]:
            system, user, assistant = (c["value"] for c in ex["conversations"][:3])
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            prompt = rr.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "["
            h, logits = run(prompt)
            order = [ord(c) - 65 for c in re.findall(r"\[([A-T])\]", assistant)]
            recs.append({"id": ex["id"], "order": order, "h": h, "logits": logits})
        save_shard(name, recs)
        print(f"[{time.time() - t0:.0f}s] {os.path.basename(name)}: {len(recs)} lists", flush=True)


class LastLayerHead:
    """Layer 29 + final norm + identifier rows of the (tied) embedding, evaluated at the last
    position only; LoRA on its seven projections, scaled as the bundled adapter's config says."""

    def __init__(self, fresh, dropout):
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        rr = FirstReranker("smollm2-135m", load_model=False)
        mdir, gguf = os.path.split(rr.gguf_path)
        base = AutoModelForCausalLM.from_pretrained(mdir, gguf_file=gguf, dtype=torch.float32)
        for p in base.parameters():
            p.requires_grad_(False)
        self.cfg, self.layer, self.rope = base.config, base.model.layers[LAYER], base.model.rotary_emb
        self.apply_rope = apply_rotary_pos_emb
        self.final_norm = base.model.norm
        head = base.model.embed_tokens if base.config.tie_word_embeddings else base.lm_head
        self.identifiers = head.weight[rr.letter_ids].detach()
        config = json.load(open(os.path.join(ADAPTER, "adapter_config.json")))
        self.dropout, self.scale = dropout, config["lora_alpha"] / config["r"]
        attn, mlp = self.layer.self_attn, self.layer.mlp
        self.proj = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.o_proj,
                     "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}
        trained = load_file(os.path.join(ADAPTER, "adapter_model.safetensors"))
        self.lora = {}
        for name in self.proj:
            module = "self_attn" if name in ("q", "k", "v", "o") else "mlp"
            key = f"base_model.model.model.layers.{LAYER}.{module}.{name}_proj"
            a = trained[f"{key}.lora_A.weight"].float().clone()
            b = trained[f"{key}.lora_B.weight"].float().clone()
            if fresh:
                b.zero_()
            self.lora[name] = (a.requires_grad_(True), b.requires_grad_(True))

    def params(self):
        return [t for pair in self.lora.values() for t in pair]

    def linear(self, name, x, train):
        a, b = self.lora[name]
        xd = F.dropout(x, self.dropout, train)
        return self.proj[name](x) + (xd @ a.T) @ b.T * self.scale

    def __call__(self, h, train):
        """h: [positions, hidden] input of layer 29 -> the 20 identifier logits."""
        c, n = self.cfg, h.shape[0]
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        nh, nkv = c.num_attention_heads, c.num_key_value_heads
        x = self.layer.input_layernorm(h)
        k = self.linear("k", x, train).view(n, nkv, hd).transpose(0, 1)[None]
        v = self.linear("v", x, train).view(n, nkv, hd).transpose(0, 1)
        q = self.linear("q", x[-1:], train).view(1, nh, hd).transpose(0, 1)[None]
        cos, sin = self.rope(h[None], torch.arange(n)[None])
        q, _ = self.apply_rope(q, q, cos[:, -1:], sin[:, -1:])
        _, k = self.apply_rope(k, k, cos, sin)
        group = nh // nkv
        k, v = k[0].repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        probs = torch.softmax(q[0] @ k.transpose(1, 2) / math.sqrt(hd), -1)
        x1 = h[-1:] + self.linear("o", (probs @ v).transpose(0, 1).reshape(1, nh * hd), train)
        x = self.layer.post_attention_layernorm(x1)
        x2 = x1 + self.linear("down", F.silu(self.linear("gate", x, train)) * self.linear("up", x, train), train)
        return (self.final_norm(x2) @ self.identifiers.T)[0]


def weighted_ranknet(scores, order):
    n = len(order)
    rank = torch.empty(n)
    rank[torch.tensor(order)] = torch.arange(1, n + 1, dtype=torch.float32)
    s = scores[:n]
    pairs = rank[:, None] < rank[None, :]
    terms = F.softplus(-(s[:, None] - s[None, :])) / (rank[:, None] + rank[None, :])
    return terms[pairs].mean()


def train(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    head = LastLayerHead(args.fresh, args.dropout)
    evals = {n: load_shard(os.path.join(args.dir, n)) for n in ["dl19", "dl20", "dl19-shuffled"]}
    qrels = {ds: treceval.read_qrels(common.qrels_path(ds)) for ds in ["dl19", "dl20"]}
    if not args.fresh:
        r = evals["dl19"][0]
        with torch.no_grad():
            gap = float(np.abs(head(r["h"], False).numpy() - r["logits"]).max())
        print(f"rebuilt head vs full model, largest identifier-logit gap: {gap:.4f}", flush=True)

    def report(tag):
        cells = []
        with torch.no_grad():
            for name, recs in evals.items():
                rankings = {}
                for r in recs:
                    s = head(r["h"], False).numpy()[: len(r["docids"])]
                    rankings[r["qid"]] = [r["docids"][i] for i in sorted(range(len(s)), key=lambda i: -s[i])]
                means, _ = treceval.evaluate_rankings(rankings, qrels[name.split("-")[0]])
                cells.append(f"{name} {means['ndcg10']:.4f}")
        print(f"{tag}: nDCG@10 " + " | ".join(cells), flush=True)

    shards = sorted(f[:-5] for f in os.listdir(args.dir) if f.startswith("train") and f.endswith(".json"))
    held = [x for s in shards[: args.held_shards] for x in load_shard(os.path.join(args.dir, s))]
    lists = [x for s in shards[args.held_shards:] for x in load_shard(os.path.join(args.dir, s))]

    def held_loss():
        with torch.no_grad():
            return sum(weighted_ranknet(head(x["h"], False), x["order"]).item() for x in held) / len(held)

    print(f"{len(lists)} training lists, {len(held)} held out; held-out loss {held_loss():.5f}", flush=True)
    report("epoch 0")
    opt = torch.optim.AdamW(head.params(), lr=args.lr, weight_decay=0.0)
    total, step, rng = args.epochs * math.ceil(len(lists) / args.batch), 0, random.Random(args.seed)
    for epoch in range(1, args.epochs + 1):
        rng.shuffle(lists)
        t0, seen = time.time(), 0.0
        for b in range(0, len(lists), args.batch):
            lr = args.lr * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * step / total))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            batch = lists[b:b + args.batch]
            loss = sum(weighted_ranknet(head(x["h"], True), x["order"]) for x in batch) / len(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.params(), 1.0)
            opt.step()
            step += 1
            seen += loss.item() * len(batch)
        print(f"epoch {epoch}: training loss {seen / len(lists):.5f}, held-out loss {held_loss():.5f}, "
              f"{time.time() - t0:.0f} s", flush=True)
        report(f"epoch {epoch}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("dir")
    c.add_argument("lists", nargs="+")
    c.add_argument("--lists", dest="n_lists", type=int, default=600)
    c.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("train")
    t.add_argument("dir")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--dropout", type=float, default=0.05)
    t.add_argument("--held-shards", type=int, default=1)
    t.add_argument("--fresh", action="store_true", help="start layer 29's LoRA from zero (B = 0)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    cache(args) if args.cmd == "cache" else train(args)


if __name__ == "__main__":
    main()
