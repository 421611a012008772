//! Synthetic queries for unsupervised domain adaptation (`firstrank
//! synth-queries`): keyword queries *extracted* from corpus passages, so that
//! a reranker can be trained on a domain's own text without real queries.
//! This module owns the extraction (tokens, term statistics, seeded
//! sampling) and the two outputs, a topics TSV and TREC pseudo-qrels naming
//! each query's source passage. It is hand-written because it is a few dozen
//! lines of term statistics; no generator model is involved.
//!
//! - **Words**: the lowercase alphanumeric runs of a passage's indexed text
//!   (`title text`). A *keyword* is a word of at least 3 characters that is
//!   not all digits and not one of the analyzer's
//!   [`ENGLISH_STOPWORDS`](crate::analyzer::ENGLISH_STOPWORDS).
//! - **Scores**: each distinct keyword of the passage scores `tf × idf`, tf
//!   its count in the passage, idf `ln(N / df)` over the whole corpus (N
//!   passages, df those holding the keyword). A keyword in every passage
//!   scores 0 and is never drawn; with a document-frequency ceiling
//!   (`max_df`, a fraction of the passages), neither is a keyword held by
//!   more than that share of them (words like "what" or "also" that the
//!   stopword list lets through).
//! - **Eligible passages** have at least `min_words` words and at least
//!   `min_terms` keywords of positive score, so every query has between
//!   `min_terms` and `max_terms` terms.
//! - **Sampling**: `count` distinct eligible passages, uniformly (a partial
//!   Fisher-Yates shuffle seeded by `seed`, so a smaller count gives a prefix
//!   of a larger one). For the i-th, a length L uniform in
//!   `[min_terms, max_terms]` (capped by the passage's keywords), then L
//!   distinct keywords drawn without replacement with probability
//!   proportional to their score, from a generator seeded by `seed` and i;
//!   the query lists them in order of first appearance in the passage.
//!
//! The corpus is held in memory: this is meant for candidate pools and
//! corpora of up to a few million passages.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use firstrank_core::formats::AtomicWriter;
use firstrank_core::significance::SplitMix64;

use crate::analyzer::ENGLISH_STOPWORDS;
use crate::corpus::Document;

/// What to extract.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    /// Queries to make, one per sampled passage.
    pub count: usize,
    /// Fewest terms in a query (at least 1).
    pub min_terms: usize,
    /// Most terms in a query (at least `min_terms`).
    pub max_terms: usize,
    /// Passages with fewer words are never sampled.
    pub min_words: usize,
    /// Keywords in more than this fraction of the passages are never drawn
    /// (None: no ceiling).
    pub max_df: Option<f64>,
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            count: 100,
            min_terms: 3,
            max_terms: 6,
            min_words: 20,
            max_df: None,
            seed: 1,
        }
    }
}

impl SynthOptions {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.count > 0,
            "the number of queries (--count) must be at least 1"
        );
        ensure!(
            self.min_terms > 0,
            "the fewest terms per query (--min-terms) must be at least 1"
        );
        if let Some(f) = self.max_df {
            ensure!(
                f > 0.0 && f <= 1.0,
                "the document-frequency ceiling (--max-df) must be a fraction in (0, 1], got {f}"
            );
        }
        ensure!(
            self.min_terms <= self.max_terms,
            "the fewest terms per query (--min-terms {}) exceed the most (--max-terms {})",
            self.min_terms,
            self.max_terms
        );
        Ok(())
    }
}

/// One synthetic query and the passage it was extracted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticQuery {
    /// `synth-1`, `synth-2`, ...
    pub qid: String,
    /// Space-separated keywords.
    pub text: String,
    /// The source passage.
    pub docid: String,
}

/// The lowercase alphanumeric words of `text`, in order, repeats kept.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Whether a word (from [`words`]) may be a query term: 3+ characters, not
/// only digits, not a stopword.
pub fn is_keyword(word: &str) -> bool {
    word.chars().count() >= 3
        && !word.chars().all(char::is_numeric)
        && ENGLISH_STOPWORDS.binary_search(&word).is_err()
}

/// Document frequencies of keywords over a corpus.
#[derive(Debug, Clone, Default)]
pub struct TermStats {
    num_docs: usize,
    df: HashMap<String, u32>,
    /// Keywords in more than this many passages score 0.
    max_df: Option<u32>,
}

impl TermStats {
    /// Counts, for each keyword, the texts that hold it.
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut stats = TermStats::default();
        for text in texts {
            stats.num_docs += 1;
            let mut distinct: Vec<String> = words(text).filter(|w| is_keyword(w)).collect();
            distinct.sort_unstable();
            distinct.dedup();
            for w in distinct {
                *stats.df.entry(w).or_insert(0) += 1;
            }
        }
        stats
    }

    pub fn num_docs(&self) -> usize {
        self.num_docs
    }

    /// Leaves out keywords held by more than `fraction` of the texts.
    pub fn with_max_df(mut self, fraction: Option<f64>) -> Self {
        self.max_df = fraction.map(|f| (f * self.num_docs as f64).floor() as u32);
        self
    }

    /// `ln(N / df)`; a word the corpus lacks counts as df 1.
    pub fn idf(&self, word: &str) -> f64 {
        let df = self.df.get(word).copied().unwrap_or(0).max(1) as f64;
        (self.num_docs.max(1) as f64 / df).ln()
    }

    /// The distinct keywords of `text` in order of first appearance, each with
    /// its `tf × idf`; keywords scoring 0 are left out.
    pub fn keyword_scores(&self, text: &str) -> Vec<(String, f64)> {
        let mut order: Vec<(String, f64)> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for w in words(text).filter(|w| is_keyword(w)) {
            match at.get(&w) {
                Some(&i) => order[i].1 += 1.0,
                None => {
                    at.insert(w.clone(), order.len());
                    order.push((w, 1.0));
                }
            }
        }
        for (w, score) in &mut order {
            let too_common = self
                .max_df
                .is_some_and(|max| self.df.get(w).copied().unwrap_or(0) > max);
            *score *= if too_common { 0.0 } else { self.idf(w) };
        }
        order.retain(|(_, s)| *s > 0.0);
        order
    }
}

/// Draws one query from `text`: L uniform in `[min_terms, max_terms]`
/// (capped by the keywords there are), then L keywords without replacement
/// with probability proportional to their score, in order of first
/// appearance. `None` when the text has fewer than `min_terms` keywords of
/// positive score.
pub fn extract_query(
    text: &str,
    stats: &TermStats,
    min_terms: usize,
    max_terms: usize,
    rng: &mut SplitMix64,
) -> Option<Vec<String>> {
    let scored = stats.keyword_scores(text);
    if scored.len() < min_terms.max(1) || min_terms > max_terms {
        return None;
    }
    let len = (min_terms + rng.below(max_terms - min_terms + 1)).min(scored.len());
    let mut weights: Vec<f64> = scored.iter().map(|(_, s)| *s).collect();
    let mut picked = Vec::with_capacity(len);
    for _ in 0..len {
        let total: f64 = weights.iter().sum();
        let mut u = rng.unit_f64() * total;
        // Rounding can leave u just past the last weight: take the last one left.
        let mut choice = weights.iter().rposition(|&w| w > 0.0)?;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 && u < w {
                choice = i;
                break;
            }
            u -= w;
        }
        weights[choice] = 0.0;
        picked.push(choice);
    }
    picked.sort_unstable();
    Some(picked.into_iter().map(|i| scored[i].0.clone()).collect())
}

/// The generator of the `i`-th query (0-based): independent of the passage
/// sampling and of the other queries.
fn query_rng(seed: u64, i: usize) -> SplitMix64 {
    let mut mix = SplitMix64(seed ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    SplitMix64(mix.next_u64())
}

/// Makes `options.count` queries from distinct passages of `docs` (see the
/// module comment). An error, before anything is drawn, when the options are
/// invalid or fewer passages are eligible than asked for.
pub fn synthesize(docs: &[Document], options: &SynthOptions) -> Result<Vec<SyntheticQuery>> {
    options.validate()?;
    let texts: Vec<String> = docs.iter().map(Document::indexed_text).collect();
    let stats = TermStats::new(texts.iter().map(String::as_str)).with_max_df(options.max_df);
    let mut eligible: Vec<usize> = (0..texts.len())
        .filter(|&i| {
            words(&texts[i]).count() >= options.min_words
                && stats.keyword_scores(&texts[i]).len() >= options.min_terms
        })
        .collect();
    let rule = format!(
        "at least {} words and {} distinct keywords (words of 3+ characters, not stopwords or numbers, \
         not in every passage)",
        options.min_words, options.min_terms
    );
    if eligible.is_empty() {
        bail!(
            "none of the corpus's {} passages is eligible: none has {rule}; lower --min-words or --min-terms",
            docs.len()
        );
    }
    if eligible.len() < options.count {
        bail!(
            "only {} of the corpus's {} passages are eligible ({rule}), fewer than the {} queries asked for; \
             lower --count to {} or less, or --min-words / --min-terms",
            eligible.len(),
            docs.len(),
            options.count,
            eligible.len()
        );
    }
    let mut rng = SplitMix64(options.seed);
    for k in 0..options.count {
        let j = k + rng.below(eligible.len() - k);
        eligible.swap(k, j);
    }
    let mut out = Vec::with_capacity(options.count);
    for (i, &d) in eligible[..options.count].iter().enumerate() {
        let terms = extract_query(
            &texts[d],
            &stats,
            options.min_terms,
            options.max_terms,
            &mut query_rng(options.seed, i),
        )
        .context("an eligible passage gave no query")?;
        out.push(SyntheticQuery {
            qid: format!("synth-{}", i + 1),
            text: terms.join(" "),
            docid: docs[d].docid.clone(),
        });
    }
    Ok(out)
}

/// Writes the topics (`qid<TAB>query`) and, if asked, the qrels (`qid 0
/// docid 1`, each query's source passage). Both are written to temp files
/// first and renamed into place only when both are complete.
pub fn write_synthetic(
    queries: &[SyntheticQuery],
    topics: &Path,
    qrels: Option<&Path>,
) -> Result<()> {
    if qrels == Some(topics) {
        bail!(
            "{}: the topics and the qrels would be the same file; give two paths",
            topics.display()
        );
    }
    let mut t = AtomicWriter::create(topics)?;
    for q in queries {
        writeln!(t, "{}\t{}", q.qid, q.text)
            .with_context(|| format!("writing {}", topics.display()))?;
    }
    let q = match qrels {
        Some(path) => {
            let mut w = AtomicWriter::create(path)?;
            for q in queries {
                writeln!(w, "{} 0 {} 1", q.qid, q.docid)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Some(w)
        }
        None => None,
    };
    t.commit()?;
    if let Some(w) = q {
        w.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> Document {
        Document {
            docid: id.into(),
            title: None,
            text: text.into(),
        }
    }

    /// 60 passages of 15 words each drawn from a vocabulary of 80
    /// (`topic0` ... `topic79`), with stopwords, numbers and short words
    /// between them, and a sentence shared by all (whose words score 0).
    fn corpus() -> Vec<Document> {
        let mut rng = SplitMix64(99);
        (0..60)
            .map(|i| {
                let mut text = String::from("Shared opening sentence here.");
                for j in 0..15 {
                    text.push_str(&format!(" topic{}", rng.below(80)));
                    if j % 3 == 0 {
                        text.push_str(" of the");
                    }
                    if j % 5 == 0 {
                        text.push_str(" 2024 is ok");
                    }
                }
                doc(&format!("d{i}"), &text)
            })
            .collect()
    }

    #[test]
    fn words_and_keywords() {
        let w: Vec<String> = words("Don't STOP: the 3.14 Café-au-lait, ok?").collect();
        assert_eq!(
            w,
            ["don", "t", "stop", "the", "3", "14", "café", "au", "lait", "ok"]
        );
        let kept: Vec<&String> = w.iter().filter(|w| is_keyword(w)).collect();
        assert_eq!(kept, ["don", "stop", "café", "lait"]);
        assert!(!is_keyword("2019") && !is_keyword("with") && is_keyword("covid19"));
    }

    #[test]
    fn a_document_frequency_ceiling_keeps_common_words_out() {
        // "common" is in 3 of 4 passages, "rare" words in one each.
        let texts = [
            "common alpha bravo",
            "common charlie delta",
            "common echo foxtrot",
            "golf hotel india",
        ];
        let stats = TermStats::new(texts.iter().copied());
        let has = |s: &TermStats, w: &str| s.keyword_scores(texts[0]).iter().any(|(k, _)| k == w);
        assert!(has(&stats, "common"));
        let capped = TermStats::new(texts.iter().copied()).with_max_df(Some(0.5));
        assert!(!has(&capped, "common") && has(&capped, "alpha"));
        // At the ceiling itself a word is kept (3 of 4 = 0.75).
        let at = TermStats::new(texts.iter().copied()).with_max_df(Some(0.75));
        assert!(has(&at, "common"));
        let bad = SynthOptions {
            max_df: Some(0.0),
            ..SynthOptions::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("--max-df"));
    }

    #[test]
    fn same_seed_same_queries_other_seed_others() {
        let docs = corpus();
        let o = SynthOptions {
            count: 20,
            ..Default::default()
        };
        let a = synthesize(&docs, &o).unwrap();
        assert_eq!(a, synthesize(&docs, &o).unwrap());
        let b = synthesize(
            &docs,
            &SynthOptions {
                seed: 2,
                ..o.clone()
            },
        )
        .unwrap();
        assert_ne!(a, b);
        // A smaller count is a prefix of a larger one.
        let small = synthesize(&docs, &SynthOptions { count: 5, ..o }).unwrap();
        assert_eq!(small[..], a[..5]);
        let qids: Vec<&str> = a.iter().map(|q| q.qid.as_str()).collect();
        assert_eq!(qids[..3], ["synth-1", "synth-2", "synth-3"]);
    }

    #[test]
    fn queries_are_keywords_of_their_passage_in_order() {
        let docs = corpus();
        for seed in 0..5 {
            let o = SynthOptions {
                count: 60,
                min_terms: 2,
                max_terms: 5,
                seed,
                ..Default::default()
            };
            let qs = synthesize(&docs, &o).unwrap();
            // All 60 passages, each once.
            let mut ids: Vec<&str> = qs.iter().map(|q| q.docid.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 60);
            let mut lengths = std::collections::HashSet::new();
            for q in &qs {
                let text = &docs.iter().find(|d| d.docid == q.docid).unwrap().text;
                let passage: Vec<String> = words(text).collect();
                let terms: Vec<&str> = q.text.split(' ').collect();
                assert!((2..=5).contains(&terms.len()), "{q:?}");
                lengths.insert(terms.len());
                let mut seen = std::collections::HashSet::new();
                let mut last = None;
                for t in &terms {
                    assert!(is_keyword(t) && seen.insert(*t), "{q:?}");
                    assert!(!t.chars().all(char::is_numeric) && t.len() >= 3);
                    let first = passage
                        .iter()
                        .position(|w| w == t)
                        .expect("from the passage");
                    assert!(last.is_none_or(|l| first > l), "not in order: {q:?}");
                    last = Some(first);
                }
            }
            assert_eq!(lengths.len(), 4, "every length in range occurs");
        }
    }

    #[test]
    fn length_is_capped_by_the_keywords_available() {
        let stats = TermStats::new(["alpha beta gamma", "delta", "epsilon"]);
        let got = extract_query("alpha beta gamma", &stats, 2, 6, &mut SplitMix64(3)).unwrap();
        assert_eq!(got, ["alpha", "beta", "gamma"]);
        assert!(extract_query("alpha beta", &stats, 3, 6, &mut SplitMix64(3)).is_none());
    }

    #[test]
    fn rare_words_are_drawn_more_often() {
        // "common" is in half the passages, "rare" only in the target, both
        // once in it; "everywhere" is in all and never drawn.
        let mut texts: Vec<String> = (0..100)
            .map(|i| {
                if i % 2 == 0 {
                    format!("everywhere common filler{i}")
                } else {
                    format!("everywhere other{i}")
                }
            })
            .collect();
        texts[0] = "everywhere common rare".into();
        let stats = TermStats::new(texts.iter().map(String::as_str));
        let mut rng = SplitMix64(7);
        let (mut rare, trials) = (0, 4000);
        for _ in 0..trials {
            let q = extract_query(&texts[0], &stats, 1, 1, &mut rng).unwrap();
            assert_ne!(q[0], "everywhere");
            rare += (q[0] == "rare") as usize;
        }
        // P(rare) = ln 100 / (ln 100 + ln 2) = 0.869.
        let share = rare as f64 / trials as f64;
        assert!((0.84..0.90).contains(&share), "{share}");
    }

    #[test]
    fn bad_options_and_too_few_passages() {
        let docs = corpus();
        let err = |o: SynthOptions| format!("{:#}", synthesize(&docs, &o).unwrap_err());
        let d = SynthOptions::default();
        assert!(err(SynthOptions {
            count: 0,
            ..d.clone()
        })
        .contains("at least 1"));
        assert!(err(SynthOptions {
            min_terms: 0,
            ..d.clone()
        })
        .contains("at least 1"));
        assert!(err(SynthOptions {
            min_terms: 5,
            max_terms: 4,
            ..d.clone()
        })
        .contains("exceed"));
        let e = err(SynthOptions {
            count: 61,
            ..d.clone()
        });
        assert!(e.contains("only 60 of the corpus's 60 passages"), "{e}");
        let e = err(SynthOptions {
            min_words: 1000,
            ..d.clone()
        });
        assert!(
            e.contains("none of the corpus's 60 passages is eligible"),
            "{e}"
        );
        // Short passages are skipped.
        let mut docs = corpus();
        docs.push(doc("short", "a tiny passage about zebras"));
        let qs = synthesize(&docs, &SynthOptions { count: 60, ..d }).unwrap();
        assert!(qs.iter().all(|q| q.docid != "short"));
    }

    #[test]
    fn outputs_are_written_together() {
        let tmp = tempfile::tempdir().unwrap();
        let qs = synthesize(
            &corpus(),
            &SynthOptions {
                count: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let topics = tmp.path().join("t.tsv");
        let qrels = tmp.path().join("q.txt");
        write_synthetic(&qs, &topics, Some(&qrels)).unwrap();
        let t = std::fs::read_to_string(&topics).unwrap();
        assert_eq!(t.lines().count(), 3);
        assert!(t.starts_with(&format!("synth-1\t{}\n", qs[0].text)));
        let q = std::fs::read_to_string(&qrels).unwrap();
        assert_eq!(
            q.lines().next().unwrap(),
            format!("synth-1 0 {} 1", qs[0].docid)
        );
        assert!(write_synthetic(&qs, &topics, Some(&topics)).is_err());
    }
}
