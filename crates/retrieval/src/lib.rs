//! firstrank-retrieval: the first stage before reranking. Builds an index
//! directory from a corpus (a document store, a BM25 inverted index on
//! tantivy scored with Anserini's MS MARCO settings, and optionally an exact
//! dense index of all-MiniLM-L6-v2 embeddings) and retrieves candidates as
//! `firstrank_core::Request`s, by BM25, dense search, or reciprocal-rank
//! fusion of both. It also extracts synthetic keyword queries from a corpus
//! ([`synthetic`]) for unsupervised domain adaptation.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use firstrank_retrieval::{build_index, IndexOptions, Retriever, RetrieveOptions, Method};
//! let corpus = std::path::Path::new("corpus.jsonl");
//! let dir = std::path::Path::new("index");
//! build_index(corpus, dir, &IndexOptions::default(), &mut |_| {})?;
//! let r = Retriever::open(dir)?;
//! let queries = firstrank_core::formats::read_topics("topics.tsv".as_ref())?;
//! let requests = r.retrieve(&queries, &RetrieveOptions { method: Method::Bm25, k: 100, ..Default::default() })?;
//! # Ok(()) }
//! ```

pub mod analyzer;
pub mod bm25;
pub mod corpus;
pub mod dense;
pub mod docstore;
pub mod feedback;
pub mod index;
pub mod retrieve;
pub mod synthetic;

pub use bm25::Bm25Params;
pub use corpus::{read_documents, Document};
pub use index::{
    add_dense_index, build_index, DenseOptions, IndexOptions, Manifest, Progress, Stage,
};
pub use retrieve::{
    rrf, to_run, write_request_jsonl, write_trec_run, Method, RetrieveOptions, Retriever,
};
pub use synthetic::{synthesize, write_synthetic, SynthOptions, SyntheticQuery};
