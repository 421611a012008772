//! Sentence embeddings with a BERT bi-encoder in the sentence-transformers
//! layout (all-MiniLM-L6-v2 is the default): WordPiece tokenisation from the
//! model's `tokenizer.json`, truncation to `max_seq_length` (from
//! `sentence_bert_config.json`, special tokens included, as
//! sentence-transformers does), a BERT encoder, mean pooling over the
//! attention mask and L2 normalisation (`x / max(‖x‖₂, 1e-12)`, PyTorch's
//! `F.normalize`, which the model's `Normalize` module calls).
//!
//! The encoder is [`crate::bert`]'s (shared with the cross-encoders).
//!
//! Batches are padded to their longest sequence; padded keys get a large
//! negative attention bias (as in Hugging Face's BERT), so they receive zero
//! attention weight and padded positions are excluded from the mean. Texts are
//! encoded in batches of similar lengths (sorted by token count, like
//! sentence-transformers) and returned in input order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::bert::{Bert, BertConfig};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// Pooling options of `1_Pooling/config.json`; only mean pooling is supported.
#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// How to split inputs into forward passes.
const DEFAULT_BATCH_SIZE: usize = 32;

/// A sentence-transformers bi-encoder: text in, unit-norm embedding out.
pub struct SentenceEncoder {
    model: Bert,
    tokenizer: Tokenizer,
    /// The tokenizer without truncation, for counting and chunking.
    counter: crate::bert::EncoderTokenCounter,
    config: BertConfig,
    max_seq_length: usize,
    device: Device,
    dir: PathBuf,
    batch_size: usize,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("dir", &self.dir)
            .field("dim", &self.config.hidden_size)
            .field("max_seq_length", &self.max_seq_length)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

impl SentenceEncoder {
    /// Loads a sentence-transformers model directory: `config.json`,
    /// `model.safetensors`, `tokenizer.json`, and if present
    /// `sentence_bert_config.json` (max_seq_length; default 512 capped by the
    /// position table) and `1_Pooling/config.json` (must ask for mean pooling).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        config.validate(&dir.join("config.json"))?;
        let pooling_path = dir.join("1_Pooling/config.json");
        if pooling_path.exists() {
            let p: PoolingConfig = read_json(&pooling_path)?;
            ensure!(
                p.pooling_mode_mean_tokens
                    && !p.pooling_mode_cls_token
                    && !p.pooling_mode_max_tokens
                    && !p.pooling_mode_mean_sqrt_len_tokens,
                "{}: only mean pooling (pooling_mode_mean_tokens alone) is supported",
                pooling_path.display()
            );
        }
        let sbert_path = dir.join("sentence_bert_config.json");
        let max_seq_length = if sbert_path.exists() {
            let s: SentenceBertConfig = read_json(&sbert_path)?;
            s.max_seq_length.unwrap_or(512)
        } else {
            512
        }
        .min(config.max_tokens());

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        tokenizer.with_padding(None);

        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            bail!(
                "{}: missing; the sentence encoder needs safetensors weights",
                weights_path.display()
            );
        }
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(&weights_path, device)
                .with_context(|| format!("reading {}", weights_path.display()))?;
        // Some exports prefix the encoder with `bert.`.
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("bert.").map(str::to_owned).unwrap_or(k), v))
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = Bert::load(vb, &config)
            .with_context(|| format!("{}: not a BERT checkpoint", weights_path.display()))?;
        let counter = crate::bert::EncoderTokenCounter::new(&tokenizer)?;
        Ok(Self {
            model,
            tokenizer,
            counter,
            config,
            max_seq_length,
            device: device.clone(),
            dir: dir.to_path_buf(),
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Embedding dimension (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// Token limit per text, special tokens included.
    /// Counts tokens as the model's tokenizer does.
    pub fn token_counter(&self) -> Result<crate::bert::EncoderTokenCounter> {
        Ok(self.counter.clone())
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Texts per forward pass (default 32). Results do not depend on it
    /// beyond float rounding (~1e-6).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Token ids as the model sees them: `[CLS] … [SEP]`, truncated to
    /// `max_seq_length`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Unit-norm embeddings of `texts`, in input order.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<_>>()?;
        // Longest first, so that batches hold similar lengths.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let embs = self.encode_ids(&batch)?;
            for (&i, e) in chunk.iter().zip(embs) {
                out[i] = e;
            }
        }
        Ok(out)
    }

    /// One forward pass over already tokenised texts (padded to the longest).
    pub fn encode_ids(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let s = batch.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        ensure!(
            s <= self.config.max_tokens(),
            "a sequence of {s} tokens exceeds the model's {} positions",
            self.config.max_tokens()
        );
        let b = batch.len();
        let mut ids = vec![0u32; b * s];
        let mut mask = vec![0u32; b * s];
        for (r, t) in batch.iter().enumerate() {
            ids[r * s..r * s + t.len()].copy_from_slice(t);
            mask[r * s..r * s + t.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (b, s), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, s), &self.device)?;
        let hidden = self.model.forward(&ids, &mask)?;
        // Mean over real tokens: sum(h * m) / max(sum(m), 1e-9).
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&count)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        let normed = mean.broadcast_div(&norm)?;
        Ok(normed.to_vec2::<f32>()?)
    }
}

/// The text a bi-encoder embeds for a candidate: `title text` when titled.
pub fn candidate_text(c: &firstrank_core::Candidate) -> String {
    match &c.title {
        Some(t) if !t.is_empty() => format!("{t} {}", c.text),
        _ => c.text.clone(),
    }
}

/// A bi-encoder reranker: each passage scores its embedding's cosine with the
/// query's (sentence-transformers' `util.cos_sim` on normalised vectors).
/// It is the dense teacher of `firstrank label` and a baseline for FIRST.
pub struct BiEncoderScorer {
    pub encoder: SentenceEncoder,
}

impl BiEncoderScorer {
    /// Cosine of the query with each candidate.
    pub fn scores(
        &self,
        query: &str,
        candidates: &[firstrank_core::Candidate],
    ) -> Result<Vec<f32>> {
        let mut texts = Vec::with_capacity(candidates.len() + 1);
        texts.push(query.to_string());
        texts.extend(candidates.iter().map(candidate_text));
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vecs = self.encoder.encode(&refs)?;
        let q = &vecs[0];
        Ok(vecs[1..].iter().map(|v| cosine_of_unit(q, v)).collect())
    }

    /// [`BiEncoderScorer::scores`] with passage embeddings kept in `cache`
    /// (keyed by the text encoded): labelling many queries over one pool of
    /// passages (synthetic queries over a corpus) encodes each passage once.
    pub fn scores_cached(
        &self,
        query: &str,
        candidates: &[firstrank_core::Candidate],
        cache: &mut std::collections::HashMap<String, Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let texts: Vec<String> = candidates.iter().map(candidate_text).collect();
        let mut missing: Vec<&str> = Vec::new();
        for t in &texts {
            if !cache.contains_key(t) && !missing.contains(&t.as_str()) {
                missing.push(t);
            }
        }
        let mut batch = Vec::with_capacity(missing.len() + 1);
        batch.push(query);
        batch.extend(missing.iter().copied());
        let mut vecs = self.encoder.encode(&batch)?.into_iter();
        let q = vecs
            .next()
            .context("the encoder returned no query vector")?;
        for (t, v) in missing.into_iter().zip(vecs) {
            cache.insert(t.to_string(), v);
        }
        texts
            .iter()
            .map(|t| {
                let v = cache.get(t).context("passage embedding missing")?;
                Ok(cosine_of_unit(&q, v))
            })
            .collect()
    }
}

/// Cosine of two L2-normalised vectors: their dot product.
fn cosine_of_unit(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl firstrank_core::window::WindowScorer for BiEncoderScorer {
    fn score_window(
        &mut self,
        query: &firstrank_core::Query,
        window: &[firstrank_core::Candidate],
    ) -> Result<Vec<f32>> {
        self.scores(&query.text, window)
    }

    /// A passage is embedded alone, cut to `max_seq_length` tokens less the
    /// two special tokens.
    fn passage_budget(
        &self,
    ) -> Option<(
        &dyn firstrank_core::prompt::TokenCounter,
        firstrank_core::chunk::PassageBudget,
    )> {
        Some((
            &self.encoder.counter,
            firstrank_core::chunk::PassageBudget {
                tokens: self.encoder.max_seq_length.saturating_sub(2),
                shared_with_query: false,
            },
        ))
    }
}
