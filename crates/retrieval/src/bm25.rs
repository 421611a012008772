//! BM25 over a tantivy inverted index, scored here rather than by tantivy,
//! to reproduce Anserini's MS MARCO passage runs (Lucene 9 `BM25Similarity`):
//!
//! `score(q, d) = Σ_t  c(t, q) · idf(t) · tf / (tf + k1 · (1 − b + b · dl / avgdl))`,
//! `idf(t) = ln(1 + (N − df + 0.5) / (df + 0.5))`, with k1 = 0.9, b = 0.4.
//!
//! - Why not tantivy's scorer: its BM25 has k1 = 1.2 and b = 0.75 as private
//!   constants. Its index has everything the formula needs, read here:
//!   postings with term frequencies, `df` from the term dictionary, N, and the
//!   field's total token count for `avgdl = tokens / N` (Lucene:
//!   `sumTotalTermFreq / docCount`, the same when every document has text).
//! - `dl` is tantivy's one-byte fieldnorm, decoded. Its table is exactly
//!   Lucene's `SmallFloat.byte4ToInt` (checked: all 256 entries agree), so
//!   lengths are quantised the way Lucene quantises them (exact up to 39
//!   tokens, then ~12% steps) and scores match Lucene's up to f32 summation
//!   order.
//! - Lucene 8+ dropped the constant `(k1 + 1)` factor; so does this (ranking is
//!   unchanged either way). A term repeated in the query counts `c(t, q)` times
//!   (Anserini's bag-of-words query boosts a repeated term by its count).
//! - Terms come from [`crate::analyzer`] (Anserini's English analyzer: Porter
//!   stemming, Lucene's stopwords). The title, when there is one, is indexed in
//!   the same field before the text (Pyserini indexes `contents` only).
//! - Ties are broken by corpus order (Anserini breaks them by docid).
//!
//! Search is term-at-a-time into a dense per-segment accumulator, then a
//! partial sort: exhaustive and exact (no WAND), a few ms per query on
//! MS MARCO-sized segments.

use std::path::Path;

use anyhow::{Context, Result};
use tantivy::directory::MmapDirectory;
use tantivy::postings::Postings;
use tantivy::schema::{
    IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST,
};
use tantivy::{
    DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term, TERMINATED,
};

use crate::analyzer::{analyze, EnglishTokenizer, TOKENIZER_NAME};

/// Anserini's MS MARCO BM25 parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bm25Params {
    pub k1: f32,
    pub b: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Bm25Params { k1: 0.9, b: 0.4 }
    }
}

const TEXT: &str = "text";
const ORD: &str = "ord";

fn schema() -> Schema {
    let mut s = Schema::builder();
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(TOKENIZER_NAME)
        .set_index_option(IndexRecordOption::WithFreqs)
        .set_fieldnorms(true);
    s.add_text_field(TEXT, TextOptions::default().set_indexing_options(indexing));
    s.add_u64_field(ORD, NumericOptions::default() | FAST);
    s.build()
}

/// Writes the tantivy index of one corpus.
pub struct Bm25Writer {
    writer: IndexWriter,
    text: tantivy::schema::Field,
    ord: tantivy::schema::Field,
}

impl Bm25Writer {
    /// Creates an empty index in `dir` (which must exist and be empty).
    pub fn create(dir: &Path) -> Result<Self> {
        let schema = schema();
        let directory =
            MmapDirectory::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        let index = Index::create(directory, schema.clone(), tantivy::IndexSettings::default())
            .with_context(|| format!("creating the BM25 index in {}", dir.display()))?;
        index
            .tokenizers()
            .register(TOKENIZER_NAME, EnglishTokenizer);
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let writer = index
            .writer_with_num_threads(threads, 128 * threads * 1_000_000)
            .context("starting the BM25 index writer")?;
        Ok(Self {
            writer,
            text: schema.get_field(TEXT)?,
            ord: schema.get_field(ORD)?,
        })
    }

    pub fn add(&mut self, ord: u64, text: &str) -> Result<()> {
        let mut doc = TantivyDocument::default();
        doc.add_text(self.text, text);
        doc.add_u64(self.ord, ord);
        self.writer.add_document(doc)?;
        Ok(())
    }

    /// Commits and waits for background merges.
    pub fn finish(mut self) -> Result<()> {
        self.writer.commit().context("committing the BM25 index")?;
        self.writer
            .wait_merging_threads()
            .context("finishing the BM25 index")?;
        Ok(())
    }
}

/// A searchable BM25 index.
pub struct Bm25Index {
    reader: IndexReader,
    text: tantivy::schema::Field,
    params: Bm25Params,
}

/// One hit: document ordinal and score.
pub type Hit = (u64, f32);

impl Bm25Index {
    pub fn open(dir: &Path, params: Bm25Params) -> Result<Self> {
        let index = Index::open_in_dir(dir).with_context(|| {
            format!("{}: cannot open the BM25 index; rebuild it", dir.display())
        })?;
        index
            .tokenizers()
            .register(TOKENIZER_NAME, EnglishTokenizer);
        let text = index.schema().get_field(TEXT).with_context(|| {
            format!(
                "{}: not a firstrank BM25 index (no `text` field)",
                dir.display()
            )
        })?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .with_context(|| format!("{}: cannot read the BM25 index", dir.display()))?;
        Ok(Self {
            reader,
            text,
            params,
        })
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The `k` best documents for `query`, best first (ties: lower ordinal first).
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let searcher = self.reader.searcher();
        let n = searcher.num_docs() as f32;
        // Query terms with their counts, in first-seen order.
        let mut terms: Vec<(String, f32)> = Vec::new();
        for t in analyze(query) {
            match terms.iter_mut().find(|(s, _)| *s == t) {
                Some((_, c)) => *c += 1.0,
                None => terms.push((t, 1.0)),
            }
        }
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let mut total_tokens = 0u64;
        for seg in searcher.segment_readers() {
            total_tokens += seg.inverted_index(self.text)?.total_num_tokens();
        }
        let avgdl = (total_tokens as f32 / n).max(f32::MIN_POSITIVE);
        let weighted: Vec<(Term, f32)> = terms
            .into_iter()
            .map(|(t, c)| {
                let term = Term::from_field_text(self.text, &t);
                let df = searcher.doc_freq(&term)? as f32;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                Ok((term, c * idf))
            })
            .collect::<Result<_>>()?;
        let Bm25Params { k1, b } = self.params;
        let mut hits: Vec<Hit> = Vec::new();
        for seg in searcher.segment_readers() {
            let inverted = seg.inverted_index(self.text)?;
            let norms = seg.get_fieldnorms_reader(self.text)?;
            let ords = seg.fast_fields().u64(ORD)?;
            let alive = seg.alive_bitset();
            let mut acc = vec![0f32; seg.max_doc() as usize];
            let mut touched: Vec<u32> = Vec::new();
            for (term, weight) in &weighted {
                let Some(mut postings) =
                    inverted.read_postings(term, IndexRecordOption::WithFreqs)?
                else {
                    continue;
                };
                let mut doc = postings.doc();
                while doc != TERMINATED {
                    let tf = postings.term_freq() as f32;
                    let dl = norms.fieldnorm(doc) as f32;
                    let s = weight * tf / (tf + k1 * (1.0 - b + b * dl / avgdl));
                    let slot = &mut acc[doc as usize];
                    if *slot == 0.0 {
                        touched.push(doc);
                    }
                    *slot += s;
                    doc = postings.advance();
                }
            }
            for doc in touched {
                if alive.is_some_and(|a| !a.is_alive(doc)) {
                    continue;
                }
                let ord = ords
                    .first(doc)
                    .context("BM25 index: a document has no ordinal; rebuild the index")?;
                hits.push((ord, acc[doc as usize]));
            }
        }
        Ok(top_k(hits, k))
    }
}

/// The `k` best hits, score descending, ties by ordinal ascending.
pub(crate) fn top_k(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    let cmp = |a: &Hit, b: &Hit| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if hits.len() > k {
        hits.select_nth_unstable_by(k, cmp);
        hits.truncate(k);
    }
    hits.sort_by(cmp);
    hits
}
