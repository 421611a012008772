//! Sentence embeddings with a BERT bi-encoder in the sentence-transformers
//! layout (all-MiniLM-L6-v2 is the default): WordPiece tokenisation from the
//! model's `tokenizer.json`, truncation to `max_seq_length` (from
//! `sentence_bert_config.json`, special tokens included, as
//! sentence-transformers does), a BERT encoder, mean pooling over the
//! attention mask and L2 normalisation (`x / max(‖x‖₂, 1e-12)`, PyTorch's
//! `F.normalize`, which the model's `Normalize` module calls).
//!
//! The encoder is hand-written on candle-nn (about 150 lines) rather than taken
//! from candle-transformers: that crate is ~83k lines of other models, which
//! would triple the models crate's build time for one BERT.
//!
//! Batches are padded to their longest sequence; padded keys get a large
//! negative attention bias (as in Hugging Face's BERT), so they receive zero
//! attention weight and padded positions are excluded from the mean. Texts are
//! encoded in batches of similar lengths (sorted by token count, like
//! sentence-transformers) and returned in input order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// The part of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_pos")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_pos() -> String {
    "absolute".into()
}

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

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    out_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            query: linear(h, h, vb.pp("self.query"))?,
            key: linear(h, h, vb.pp("self.key"))?,
            value: linear(h, h, vb.pp("self.value"))?,
            out: linear(h, h, vb.pp("output.dense"))?,
            out_norm: layer_norm(h, c.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
        })
    }

    /// `x`: (batch, seq, hidden); `bias`: (batch, 1, 1, seq), 0 or very negative.
    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, s, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
        let y = self.out.forward(&ctx)?;
        Ok(self.out_norm.forward(&(y + x)?)?)
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        Ok(Self {
            attention: SelfAttention::load(vb.pp("attention"), c)?,
            intermediate: linear(
                c.hidden_size,
                c.intermediate_size,
                vb.pp("intermediate.dense"),
            )?,
            output: linear(c.intermediate_size, c.hidden_size, vb.pp("output.dense"))?,
            output_norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("output.LayerNorm"))?,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let a = self.attention.forward(x, bias)?;
        // BERT's "gelu" is the exact erf form.
        let i = self.intermediate.forward(&a)?.gelu_erf()?;
        let o = self.output.forward(&i)?;
        Ok(self.output_norm.forward(&(o + a)?)?)
    }
}

/// A BERT encoder returning the last hidden states.
struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        let e = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: embedding(c.vocab_size, c.hidden_size, e.pp("word_embeddings"))?,
            position: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                e.pp("position_embeddings"),
            )?,
            token_type: embedding(
                c.type_vocab_size,
                c.hidden_size,
                e.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(c.hidden_size, c.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
        })
    }

    /// `ids`, `mask`: (batch, seq) u32; returns (batch, seq, hidden).
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let dev = ids.device();
        let positions = Tensor::arange(0u32, s as u32, dev)?;
        let types = Tensor::zeros((b, s), DType::U32, dev)?;
        let x = self
            .word
            .forward(ids)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .add(&self.token_type.forward(&types)?)?;
        let mut x = self.norm.forward(&x)?;
        // 0 where attended, f32::MIN where padded (Hugging Face's choice).
        let bias =
            ((mask.to_dtype(DType::F32)? - 1.0)? * (-(f32::MIN as f64)))?.reshape((b, 1, 1, s))?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias)?;
        }
        Ok(x)
    }
}

/// A sentence-transformers bi-encoder: text in, unit-norm embedding out.
pub struct SentenceEncoder {
    model: Bert,
    tokenizer: Tokenizer,
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
        if let Some(t) = &config.model_type {
            ensure!(
                t == "bert",
                "{}: model_type `{t}` is not supported; the sentence encoder supports `bert`",
                dir.join("config.json").display()
            );
        }
        ensure!(
            config.hidden_act == "gelu" && config.position_embedding_type == "absolute",
            "{}: unsupported hidden_act `{}` / position_embedding_type `{}` (expected gelu / absolute)",
            dir.join("config.json").display(),
            config.hidden_act,
            config.position_embedding_type
        );
        ensure!(
            config.num_attention_heads > 0
                && config
                    .hidden_size
                    .is_multiple_of(config.num_attention_heads),
            "{}: hidden_size {} is not a multiple of num_attention_heads {}",
            dir.join("config.json").display(),
            config.hidden_size,
            config.num_attention_heads
        );
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
        .min(config.max_position_embeddings);

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
        Ok(Self {
            model,
            tokenizer,
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
            s <= self.config.max_position_embeddings,
            "a sequence of {s} tokens exceeds the model's {} positions",
            self.config.max_position_embeddings
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
}
