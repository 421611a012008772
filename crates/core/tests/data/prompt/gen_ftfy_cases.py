#!/usr/bin/env python3
"""Generates ftfy_cases.jsonl: input/expected pairs for firstrank's textfix, with
`expected = ftfy.fix_text(input)` from the real ftfy (tested with ftfy 6.3.1).

    python3 -m venv /tmp/ftfyenv && /tmp/ftfyenv/bin/pip install ftfy
    /tmp/ftfyenv/bin/python gen_ftfy_cases.py [--shared ../../../../../../shared] \
        [--full /tmp/ftfy_full.jsonl]

The committed table holds a list of hand-written hard strings plus DL19/DL20 passages
that ftfy changes: one or more per kind of fix (as `ftfy.fix_and_explain` names it),
each cut to a window around the changed region (the expected text is recomputed on
the cut input, and a cut is kept only if ftfy still changes it). `--full` also writes
every DL19/DL20 passage (bm25 and splade files, stripped as rank_llm does), changed by
ftfy or not, uncut, outside the repository, for the ignored full check in
crates/core/tests/prompt.rs (env FIRSTRANK_FTFY_FULL).
"""
import argparse
import collections
import json
import os

import ftfy

HERE = os.path.dirname(os.path.abspath(__file__))

HARD = [
    # HTML entities
    "Broken text&hellip; it&#x2019;s &amp; fine",
    "P&EACUTE;REZ and P&eacute;rez, &ntilde; &Ntilde; &NTILDE; &nTILDE;",
    "BUNDESSTRA&SZLIG;E",
    "&lt;b&gt; is escaped, &AMP; too",
    "<b>real html</b> keeps &amp; and &eacute;",
    "line one &amp;\nline <two> &amp;\nline three &amp;",
    "no semicolon: &amp &copy 2019, this&not that",
    "&#150; &#x80; &#0; &#1; &#65abc; &#xZZ; &#99999999; &#xD800;",
    "&Jscr;ohn &HilbertSpace;ancock &checkmark;",
    "&LTIMES; &ltimes; &ETH; &eth;",
    # classic mojibake
    "cafÃ©",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "itâ€™s a â€œquoteâ€\x9d â€” dash",
    "â\x80\x9cMS MARCOâ\x80\x9d style: donâ\x80\x99t",
    "sÃ³",
    "voilÃ le travail",
    "Ã\xa0 la carte",
    "schÃ¶n and MÃ¼nchen",
    "â€œ like this â€�",
    "Ã? question",
    "naÃ¯ve Â£5 costs 10Â°C",
    "ГўВЂВњquotesГўВЂВќ in cp1251 mojibake",
    "Ã¨ Ã± Ã¡ Ãº",
    "âœ” No problems",
    "\xa0Â\xa0 nbsp",
    "mixed: cafÃ© and real café",
    "Ã©t\u00e9 partial",
    "I'm Ã\x83Â©",
    "Ã¥ Ã… ÃŒ stay, Ã¤ Ã¶ go",
    "ter-mÄ\xad-nahl and Ã©",
    "ä¸­æ–‡ Chinese, æ—¥æœ¬ Japanese",
    "ï»¿BOM at the start",
    "soufflÃ© Â\xa0and crÃ¨me brÃ»lÃ©e",
    "ÐŸÑ€Ð¸Ð²ÐµÑ‚ Russian",
    "Ã\x89cole â\x80\x94 dash and â\x80\x98single quotesâ\x80\x99",
    "bad utf8 run: Ã© Ã and end",
    # legitimate text that must stay
    "café naïve Ñandú façade",
    "São Paulo, Portugal — à noite",
    "Ã€ is rare but legal?",
    "Ωμέγα Кириллица 中文 한국어",
    "price: 5 € or £4, 10°C ± 2",
    "«guillemets» and ¿qué?",
    # character fixes
    "ﬂuﬃeﬆ ﬁsh Ĳssel",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ｶﾀｶﾅ",
    "\u201chere\u2019s a test\u201d \u2018single\u2019 \u02bcmodifier \u201ecomma\u201f",
    "crlf\r\nline\rcr\u2028ls\u2029ps",
    "\x1b[36;44mblue\x1b[0m text",
    "ctrl\x00\x01\x08\x0b\x0e\x1f\x7f chars\ufeff bom \u206a \ufff9\ufffc tab\tff\x0c",
    "C1 controls: \x80 \x85 \x91test\x92",
    "e\u0301 NFD and \u212b angstrom",
    "",
    "   ",
]


def window(inp, out, pad=60):
    """Cut `inp` to the region that differs from `out`, with context."""
    p = 0
    while p < min(len(inp), len(out)) and inp[p] == out[p]:
        p += 1
    s = 0
    while s < min(len(inp), len(out)) - p and inp[-1 - s] == out[-1 - s]:
        s += 1
    a = max(0, p - pad)
    b = min(len(inp), len(inp) - s + pad)
    while a > 0 and not inp[a - 1].isspace():
        a -= 1
    while b < len(inp) and not inp[b].isspace():
        b += 1
    return inp[a:b].strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(HERE, "../../../../../../shared"))
    ap.add_argument("--full", default=None)
    ap.add_argument("--per-kind", type=int, default=3)
    args = ap.parse_args()

    passages = {}
    for ds in ["dl19", "dl20"]:
        for f in ["bm25-top100.json", "splade-pp-ed-top100.json"]:
            for q in json.load(open(os.path.join(args.shared, "data", ds, f))):
                for h in q["hits"]:
                    passages[h["docid"]] = h["content"].strip()
    changed = {}
    kinds = collections.defaultdict(list)
    for docid in sorted(passages):
        text = passages[docid]
        fixed = ftfy.fix_text(text)
        if fixed != text:
            changed[docid] = fixed
            _, expl = ftfy.fix_and_explain(text)
            kinds[tuple(tuple(s) for s in expl)].append(docid)
    print(f"{len(passages)} unique passages, ftfy changes {len(changed)}, {len(kinds)} kinds of fix")

    if args.full:
        with open(args.full, "w") as f:
            for docid in sorted(passages):
                f.write(json.dumps({"source": f"passage {docid}", "input": passages[docid],
                                    "expected": changed.get(docid, passages[docid])},
                                   ensure_ascii=False) + "\n")
        print(f"wrote {len(passages)} full cases ({len(changed)} changed) to {args.full}")

    rows = [{"source": "hard", "input": s, "expected": ftfy.fix_text(s)} for s in HARD]
    for kind in sorted(kinds, key=lambda k: -len(kinds[k])):
        taken = 0
        for docid in kinds[kind]:
            if taken >= args.per_kind:
                break
            cut = window(passages[docid], changed[docid])
            expected = ftfy.fix_text(cut)
            if expected == cut:
                continue
            rows.append({"source": f"passage {docid} ({' '.join(s[1] for s in kind)})",
                         "input": cut, "expected": expected})
            taken += 1
    out = os.path.join(HERE, "ftfy_cases.jsonl")
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} cases to {out}")


if __name__ == "__main__":
    main()
