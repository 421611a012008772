//! First-stage retrieval on small hand-made corpora: BM25 scores checked by
//! hand for k1 = 0.9, b = 0.4; dense search against a brute-force sort; RRF
//! order; request JSONL read back by the core reader; bad corpora and damaged
//! indexes give errors that name the file and place.

use std::path::{Path, PathBuf};

use firstrank_core::formats::{read_requests, InputSpec};
use firstrank_core::Query;
use firstrank_retrieval::dense::{search_matrix, DenseIndex, DenseWriter};
use firstrank_retrieval::{
    build_index, rrf, write_request_jsonl, write_trec_run, IndexOptions, Method, RetrieveOptions,
    Retriever, Stage,
};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn q(qid: &str, text: &str) -> Query {
    Query {
        qid: qid.into(),
        text: text.into(),
        instruction: None,
    }
}

/// Three documents whose analysed terms are easy to count by hand:
/// d1 = [flea, flea, dog] (dl 3), d2 = [dog, cat] (dl 2), d3 = [bird] (dl 1);
/// "the", "is", "a", "and", "of" are stopwords, "fleas"/"dogs" stem.
const TINY: &str = r#"{"docid": "d1", "text": "The fleas of a flea-dog"}
{"docid": "d2", "text": "dogs and cats"}
{"docid": "d3", "title": "Bird", "text": "is a"}
"#;

fn tiny_index(tmp: &Path) -> Retriever {
    let corpus = write(tmp, "corpus.jsonl", TINY);
    let dir = tmp.join("idx");
    let mut reports = Vec::new();
    let m = build_index(&corpus, &dir, &IndexOptions::default(), &mut |p| {
        reports.push(p)
    })
    .unwrap();
    assert_eq!(m.corpus.num_docs, 3);
    assert!(reports
        .iter()
        .any(|p| p.stage == Stage::Reading && p.finished && p.done == 3));
    Retriever::open(&dir).unwrap()
}

/// Lucene 9 BM25 for one term, written out independently of the crate.
fn bm25(n: f64, df: f64, tf: f64, dl: f64, avgdl: f64) -> f64 {
    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
    idf * tf / (tf + 0.9 * (1.0 - 0.4 + 0.4 * dl / avgdl))
}

#[test]
fn bm25_scores_match_hand_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tiny_index(tmp.path());
    let opts = RetrieveOptions {
        method: Method::Bm25,
        k: 10,
        ..Default::default()
    };
    // N = 3, 6 tokens, avgdl = 2.
    let got = r
        .retrieve(
            &[
                q("1", "fleas"),
                q("2", "Dog's flea"),
                q("3", "the of"),
                q("4", "flea flea"),
            ],
            &opts,
        )
        .unwrap();

    let flea_d1 = bm25(3.0, 1.0, 2.0, 3.0, 2.0); // 0.98083 * 2 / 3.08
    assert!((flea_d1 - 0.636902).abs() < 1e-5, "hand value {flea_d1}");
    let r1: Vec<(&str, f64)> = got[0]
        .candidates
        .iter()
        .map(|c| (c.docid.as_str(), c.score))
        .collect();
    assert_eq!(r1.len(), 1);
    assert_eq!(r1[0].0, "d1");
    assert!((r1[0].1 - flea_d1).abs() < 1e-5, "{r1:?}");

    let dog_d1 = bm25(3.0, 2.0, 1.0, 3.0, 2.0);
    let dog_d2 = bm25(3.0, 2.0, 1.0, 2.0, 2.0);
    let r2: Vec<(&str, f64)> = got[1]
        .candidates
        .iter()
        .map(|c| (c.docid.as_str(), c.score))
        .collect();
    assert_eq!(r2.iter().map(|x| x.0).collect::<Vec<_>>(), ["d1", "d2"]);
    assert!((r2[0].1 - (dog_d1 + flea_d1)).abs() < 1e-5, "{r2:?}");
    assert!((r2[1].1 - dog_d2).abs() < 1e-5, "{r2:?}");
    // Candidates carry the stored text and title.
    assert_eq!(got[1].candidates[0].text, "The fleas of a flea-dog");
    assert_eq!(got[1].query, q("2", "Dog's flea"));

    // Stopwords only: no terms, no candidates.
    assert!(got[2].candidates.is_empty());
    // A repeated query term counts twice.
    assert!((got[3].candidates[0].score - 2.0 * flea_d1).abs() < 1e-5);

    // The title is indexed: "bird" finds d3, which has a title.
    let bird = r.retrieve(&[q("5", "birds")], &opts).unwrap();
    assert_eq!(bird[0].candidates[0].docid, "d3");
    assert_eq!(bird[0].candidates[0].title.as_deref(), Some("Bird"));
    assert!((bird[0].candidates[0].score - bm25(3.0, 1.0, 1.0, 1.0, 2.0)).abs() < 1e-5);
}

#[test]
fn bm25_long_documents_use_lucene_length_quantisation() {
    // dl = 45 is stored as 44 (Lucene's byte4 table: ... 40, 42, 44, 46 ...),
    // so the score must use 44, not 45.
    let tmp = tempfile::tempdir().unwrap();
    let long: Vec<String> = std::iter::once("zebra".to_string())
        .chain((0..44).map(|i| format!("w{i}")))
        .collect();
    let corpus = format!(
        "{{\"docid\": \"long\", \"text\": \"{}\"}}\n{{\"docid\": \"short\", \"text\": \"zebra yak\"}}\n",
        long.join(" ")
    );
    let corpus = write(tmp.path(), "c.jsonl", &corpus);
    let dir = tmp.path().join("idx");
    build_index(&corpus, &dir, &IndexOptions::default(), &mut |_| {}).unwrap();
    let r = Retriever::open(&dir).unwrap();
    let got = r
        .retrieve(
            &[q("1", "zebra")],
            &RetrieveOptions {
                k: 5,
                ..Default::default()
            },
        )
        .unwrap();
    let avgdl = 47.0 / 2.0;
    let long_score = got[0]
        .candidates
        .iter()
        .find(|c| c.docid == "long")
        .unwrap()
        .score;
    assert!(
        (long_score - bm25(2.0, 2.0, 1.0, 44.0, avgdl)).abs() < 1e-5,
        "{long_score}"
    );
    assert!((long_score - bm25(2.0, 2.0, 1.0, 45.0, avgdl)).abs() > 1e-4);
}

#[test]
fn request_jsonl_and_trec_run_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tiny_index(tmp.path());
    let reqs = r
        .retrieve(
            &[q("1", "dog"), q("2", "bird")],
            &RetrieveOptions::default(),
        )
        .unwrap();
    let out = tmp.path().join("cands.jsonl");
    write_request_jsonl(&out, &reqs).unwrap();
    let back = read_requests(&InputSpec::Auto(out)).unwrap();
    assert_eq!(back, reqs);
    let run = tmp.path().join("run.trec");
    write_trec_run(&run, &reqs, "bm25").unwrap();
    let text = std::fs::read_to_string(&run).unwrap();
    assert!(
        text.starts_with("1 Q0 d2 1 ") || text.starts_with("1 Q0 d1 1 "),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3);
}

#[test]
fn dense_search_equals_brute_force() {
    // Pseudo-random rows (a fixed LCG), enough to use several threads and
    // the pruning inside the scan.
    let (rows, dim) = (20_000usize, 24usize);
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let m: Vec<f32> = (0..rows * dim).map(|_| next()).collect();
    let queries: Vec<Vec<f32>> = (0..3).map(|_| (0..dim).map(|_| next()).collect()).collect();
    let k = 50;
    let got = search_matrix(&m, dim, &queries, k);
    for (qv, hits) in queries.iter().zip(&got) {
        let mut all: Vec<(u64, f64)> = (0..rows)
            .map(|r| {
                let s: f64 = m[r * dim..(r + 1) * dim]
                    .iter()
                    .zip(qv)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                (r as u64, s)
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(hits.len(), k);
        let want: Vec<u64> = all[..k].iter().map(|x| x.0).collect();
        let have: Vec<u64> = hits.iter().map(|x| x.0).collect();
        assert_eq!(have, want);
        for (h, w) in hits.iter().zip(&all) {
            assert!((h.1 as f64 - w.1).abs() < 1e-5);
        }
    }

    // The same through the on-disk format, with a tie broken by ordinal.
    let tmp = tempfile::tempdir().unwrap();
    let mut w = DenseWriter::create(tmp.path(), "toy", 2).unwrap();
    for row in [[0.0f32, 1.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0]] {
        w.add(&row).unwrap();
    }
    w.finish().unwrap();
    let idx = DenseIndex::open(tmp.path(), 4).unwrap();
    let hits = idx.search(&[vec![1.0, 0.0]], 3).unwrap();
    assert_eq!(hits[0].iter().map(|h| h.0).collect::<Vec<_>>(), [1, 3, 2]);
    assert!(idx.search(&[vec![1.0]], 3).is_err(), "dimension mismatch");
    // Wrong count or a truncated matrix is refused.
    assert!(DenseIndex::open(tmp.path(), 5)
        .unwrap_err()
        .to_string()
        .contains("rebuild"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(tmp.path().join("dense.f32"))
        .unwrap();
    f.set_len(12).unwrap();
    let e = DenseIndex::open(tmp.path(), 4).unwrap_err().to_string();
    assert!(e.contains("dense.f32") && e.contains("expected 32"), "{e}");
}

#[test]
fn rrf_fuses_by_reciprocal_rank() {
    let a = vec![(1u64, 9.0f32), (2, 8.0), (3, 7.0)];
    let b = vec![(3u64, 0.9f32), (1, 0.8), (4, 0.7)];
    let fused = rrf(&[&a, &b], 60.0, 10);
    // 1: 1/61 + 1/62; 3: 1/63 + 1/61; 2: 1/62; 4: 1/63.
    let order: Vec<u64> = fused.iter().map(|x| x.0).collect();
    assert_eq!(order, [1, 3, 2, 4]);
    assert!((fused[0].1 - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-12);
    assert!((fused[1].1 - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-12);
    // Equal fused scores: lower ordinal first.
    let c = vec![(7u64, 1.0f32)];
    let d = vec![(5u64, 1.0f32)];
    assert_eq!(
        rrf(&[&c, &d], 60.0, 10)
            .iter()
            .map(|x| x.0)
            .collect::<Vec<_>>(),
        [5, 7]
    );
    assert_eq!(rrf(&[&a, &b], 60.0, 2).len(), 2);
}

fn build_err(corpus_text: &str, name: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write(tmp.path(), name, corpus_text);
    let dir = tmp.path().join("idx");
    let e = build_index(&corpus, &dir, &IndexOptions::default(), &mut |_| {}).unwrap_err();
    assert!(!dir.exists(), "a failed build leaves no directory");
    format!("{e:#}")
}

#[test]
fn bad_corpora_are_clear_errors() {
    let e = build_err("", "empty.jsonl");
    assert!(
        e.contains("empty.jsonl") && e.contains("no documents"),
        "{e}"
    );
    let e = build_err("\n\n", "blank.tsv");
    assert!(e.contains("no documents"), "{e}");

    let e = build_err(
        "{\"docid\": \"a\", \"text\": \"x\"}\n{\"docid\": \"b\", \"text\": \"y\"}\n{\"docid\": \"a\", \"text\": \"z\"}\n",
        "dup.jsonl",
    );
    assert!(
        e.contains("dup.jsonl: line 3") && e.contains("duplicate docid a") && e.contains("line 1"),
        "{e}"
    );

    let e = build_err("{\"docid\": \"a\", \"title\": \"t\"}\n", "notext.jsonl");
    assert!(
        e.contains("line 1") && e.contains("no text") && e.contains("`text` or `contents`"),
        "{e}"
    );

    let e = build_err(
        "{\"docid\": \"a\", \"text\": \"x\"}\n{\"docid\": \"b\", \"text\": \"  \"}\n",
        "blanktext.jsonl",
    );
    assert!(e.contains("line 2") && e.contains("empty text"), "{e}");

    let e = build_err("{\"text\": \"x\"}\n", "noid.jsonl");
    assert!(
        e.contains("line 1") && e.contains("`docid`, `_id` or `id`"),
        "{e}"
    );

    let e = build_err(
        "{\"docid\": \"a\", \"text\": \"x\"}\n{\"docid\": \"b\", \"text\": \n",
        "broken.jsonl",
    );
    assert!(e.contains("broken.jsonl: line 2"), "{e}");

    let e = build_err("a\tfine\nno tab here\n", "c.tsv");
    assert!(e.contains("c.tsv: line 2") && e.contains("no tab"), "{e}");

    let e = build_err("{\"docid\": \"a b\", \"text\": \"x\"}\n", "space.jsonl");
    assert!(e.contains("whitespace"), "{e}");

    // TSV and integer docids work.
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write(tmp.path(), "c.tsv", "7\tseven dwarfs\n8\teight legs\n");
    let dir = tmp.path().join("idx");
    build_index(&corpus, &dir, &IndexOptions::default(), &mut |_| {}).unwrap();
    let got = Retriever::open(&dir)
        .unwrap()
        .retrieve(&[q("1", "legs")], &RetrieveOptions::default())
        .unwrap();
    assert_eq!(got[0].candidates[0].docid, "8");
    // An existing non-empty directory is not overwritten.
    let e = build_index(&corpus, &dir, &IndexOptions::default(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("not an empty directory"), "{e}");
}

#[test]
fn damaged_indexes_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write(tmp.path(), "corpus.jsonl", TINY);
    let dir = tmp.path().join("idx");
    build_index(&corpus, &dir, &IndexOptions::default(), &mut |_| {}).unwrap();
    let manifest = dir.join("manifest.json");
    let good = std::fs::read_to_string(&manifest).unwrap();

    std::fs::write(&manifest, &good[..good.len() / 2]).unwrap();
    let e = Retriever::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains("manifest.json") && e.contains("corrupted manifest"),
        "{e}"
    );

    std::fs::write(&manifest, good.replace("\"version\": 1", "\"version\": 99")).unwrap();
    let e = Retriever::open(&dir).unwrap_err().to_string();
    assert!(e.contains("version 99") && e.contains("rebuild"), "{e}");

    std::fs::write(
        &manifest,
        good.replace("\"num_docs\": 3", "\"num_docs\": 4"),
    )
    .unwrap();
    let e = format!("{:#}", Retriever::open(&dir).unwrap_err());
    assert!(e.contains("docs.offsets") && e.contains("corrupted"), "{e}");

    std::fs::remove_file(&manifest).unwrap();
    let e = Retriever::open(&dir).unwrap_err().to_string();
    assert!(e.contains("incomplete index"), "{e}");

    std::fs::write(&manifest, &good).unwrap();
    Retriever::open(&dir).unwrap();
    // No dense part: asking for dense retrieval says so.
    let e = Retriever::open(&dir)
        .unwrap()
        .retrieve(
            &[q("1", "dog")],
            &RetrieveOptions {
                method: Method::Dense,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("no dense part"), "{e}");
    let e = Retriever::open(&tmp.path().join("nowhere"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no index here"), "{e}");
}

/// The passages of an index, in ordinal order (docid, indexed text).
fn indexed_docs(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("docs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let text = v["text"].as_str().unwrap_or_default();
            (v["docid"].as_str().unwrap().to_owned(), text.to_owned())
        })
        .collect()
}

#[test]
fn candidates_files_are_pooled_corpora() {
    let tmp = tempfile::tempdir().unwrap();
    // retrieve_results JSON: d2 comes back in the second query with another
    // text (the first is kept), d1 twice within the first query.
    let json = write(
        tmp.path(),
        "cands.json",
        r#"[
  {"query": "fleas", "hits": [
    {"content": "fleas lay eggs", "qid": 1, "docid": "d1", "rank": 1, "score": 3.0},
    {"content": "dogs have fleas", "qid": 1, "docid": "d2", "rank": 2, "score": 2.0},
    {"content": "fleas again", "qid": 1, "docid": "d1", "rank": 3, "score": 1.0}]},
  {"query": "cats", "hits": [
    {"content": "cats hunt mice", "qid": 2, "docid": "d3", "rank": 1, "score": 3.0},
    {"content": "another text for d2", "qid": 2, "docid": "d2", "rank": 2, "score": 2.0}]}
]"#,
    );
    let dir = tmp.path().join("idx");
    let m = build_index(&json, &dir, &IndexOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(m.corpus.num_docs, 3);
    assert_eq!(m.corpus.bytes, std::fs::metadata(&json).unwrap().len());
    let docs = indexed_docs(&dir);
    let ids: Vec<&str> = docs.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(ids, ["d1", "d2", "d3"]);
    assert_eq!(docs[1].1, "dogs have fleas");
    let r = Retriever::open(&dir).unwrap();
    let got = r
        .retrieve(&[q("q", "mice")], &RetrieveOptions::default())
        .unwrap();
    assert_eq!(got[0].candidates[0].docid, "d3");

    // The request JSONL that `retrieve` writes is a corpus too, pooled the same way.
    let jsonl = tmp.path().join("cands.jsonl");
    let reqs = r
        .retrieve(
            &[q("1", "fleas"), q("2", "cats fleas")],
            &RetrieveOptions::default(),
        )
        .unwrap();
    write_request_jsonl(&jsonl, &reqs).unwrap();
    let dir2 = tmp.path().join("idx2");
    let m = build_index(&jsonl, &dir2, &IndexOptions::default(), &mut |_| {}).unwrap();
    let mut want: Vec<String> = Vec::new();
    for c in reqs.iter().flat_map(|r| &r.candidates) {
        if !want.contains(&c.docid) {
            want.push(c.docid.clone());
        }
    }
    assert_eq!(m.corpus.num_docs as usize, want.len());
    let got: Vec<String> = indexed_docs(&dir2).into_iter().map(|(d, _)| d).collect();
    assert_eq!(got, want);

    // A corpus JSONL whose lines happen to have a `query` field stays a corpus.
    let corpus = write(
        tmp.path(),
        "odd.jsonl",
        "{\"docid\": \"a\", \"query\": \"x\", \"text\": \"alpha\"}\n",
    );
    let m = build_index(
        &corpus,
        &tmp.path().join("idx3"),
        &IndexOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(m.corpus.num_docs, 1);

    // Errors name the file.
    let e = build_err("[]", "none.json");
    assert!(e.contains("none.json") && e.contains("no passages"), "{e}");
    let e = build_err(
        "[{\"query\": \"q\", \"hits\": [{\"content\": \"\", \"qid\": 1, \"docid\": \"x\", \"score\": 1}]}]",
        "blank.json",
    );
    assert!(
        e.contains("blank.json") && e.contains("query 1") && e.contains("empty text"),
        "{e}"
    );
    let e = build_err(
        "{\"query\": {\"text\": \"q\", \"qid\": \"1\"}, \"candidates\": [{\"docid\": \"x\", \"score\": 1}]}\n",
        "nodoc.jsonl",
    );
    assert!(
        e.contains("nodoc.jsonl: line 1") && e.contains("doc"),
        "{e}"
    );
    let e = build_err("[{\"query\": \"q\", \"hits\": [", "cut.json");
    assert!(e.contains("cut.json"), "{e}");
    let e = build_err("1 Q0 d1 1 2.5 bm25\n", "run.trec");
    assert!(
        e.contains("run.trec: line 1") && e.contains("looks like a TREC run"),
        "{e}"
    );
}
