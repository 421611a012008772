//! The BERT encoder (embeddings, post-norm layers, exact-erf GELU) shared by
//! the sentence encoder ([`crate::embed`]) and the cross-encoders
//! ([`crate::cross_encoder`]), with its `config.json`.
//!
//! Hand-written on candle-nn (about 150 lines) rather than taken from
//! candle-transformers: that crate is ~83k lines of other models, which would
//! triple the models crate's build time for one BERT.
//!
//! Padded keys get a large negative attention bias (as in Hugging Face's
//! BERT), so they receive zero attention weight.

use std::path::Path;

use anyhow::{ensure, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

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
    /// RoBERTa-family checkpoints (XLM-RoBERTa, RoBERTa) number positions
    /// from `pad_token_id + 1`.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
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

impl BertConfig {
    /// Refuses what the encoder does not implement; `path` names the file.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if let Some(t) = &self.model_type {
            ensure!(
                matches!(t.as_str(), "bert" | "roberta" | "xlm-roberta"),
                "{}: model_type `{t}` is not supported; the BERT encoder supports `bert`, `roberta` and `xlm-roberta`",
                path.display()
            );
        }
        ensure!(
            self.max_position_embeddings > self.first_position() as usize,
            "{}: max_position_embeddings {} leaves no positions after the padding offset {}",
            path.display(),
            self.max_position_embeddings,
            self.first_position()
        );
        ensure!(
            self.hidden_act == "gelu" && self.position_embedding_type == "absolute",
            "{}: unsupported hidden_act `{}` / position_embedding_type `{}` (expected gelu / absolute)",
            path.display(),
            self.hidden_act,
            self.position_embedding_type
        );
        ensure!(
            self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads),
            "{}: hidden_size {} is not a multiple of num_attention_heads {}",
            path.display(),
            self.hidden_size,
            self.num_attention_heads
        );
        Ok(())
    }

    /// Whether this is a RoBERTa-family checkpoint (positions offset past
    /// the padding id, no segment ids).
    pub fn is_roberta(&self) -> bool {
        matches!(self.model_type.as_deref(), Some("roberta" | "xlm-roberta"))
    }

    /// The position id of the first token: 0 for BERT, `pad_token_id + 1`
    /// for RoBERTa (Hugging Face's `create_position_ids_from_input_ids`).
    pub fn first_position(&self) -> u32 {
        if self.is_roberta() {
            self.pad_token_id.unwrap_or(1) + 1
        } else {
            0
        }
    }

    /// The longest sequence the position table covers.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings - self.first_position() as usize
    }
}

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
pub(crate) struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
    /// Position id of the first token ([`BertConfig::first_position`]).
    first_position: u32,
    /// Segment ids are read (BERT) or all 0 (a one-row type table, RoBERTa).
    segments: bool,
}

impl Bert {
    pub(crate) fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
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
            first_position: c.first_position(),
            segments: c.type_vocab_size > 1,
        })
    }

    /// `ids`, `mask`: (batch, seq) u32; returns (batch, seq, hidden).
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let types = Tensor::zeros(ids.dims2()?, DType::U32, ids.device())?;
        self.forward_with_types(ids, &types, mask)
    }

    /// [`Bert::forward`] with segment ids (`types`: 0 for the first text of
    /// a pair, 1 for the second, as cross-encoders read them).
    pub(crate) fn forward_with_types(
        &self,
        ids: &Tensor,
        types: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let dev = ids.device();
        // Right padding: the real tokens of every row start at position 0.
        // (Padded rows get positions past their end; they are masked keys
        // and their own states are never read.)
        let positions = Tensor::arange(self.first_position, self.first_position + s as u32, dev)?;
        let types = if self.segments {
            types.clone()
        } else {
            Tensor::zeros(ids.dims2()?, DType::U32, dev)?
        };
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

/// Token counts by an encoder's `tokenizer.json` (no special tokens, no
/// truncation), for request limits and passage cuts outside the model.
#[derive(Clone)]
pub struct EncoderTokenCounter(tokenizers::Tokenizer);

impl EncoderTokenCounter {
    /// A counter over a copy of `tokenizer` with its truncation and padding off.
    pub fn new(tokenizer: &tokenizers::Tokenizer) -> Result<Self> {
        let mut t = tokenizer.clone();
        t.with_truncation(None)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        t.with_padding(None);
        Ok(Self(t))
    }

    fn encode(&self, text: &str) -> Result<tokenizers::Encoding> {
        self.0
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))
    }
}

impl firstrank_core::prompt::TokenCounter for EncoderTokenCounter {
    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode(text)?.len())
    }

    fn truncate_to_tokens(&self, text: &str, max_tokens: usize) -> Result<String> {
        let encoding = self.encode(text)?;
        let offsets = encoding.get_offsets();
        if offsets.len() <= max_tokens {
            return Ok(text.to_string());
        }
        let end = match max_tokens {
            0 => 0,
            n => offsets[n - 1].1,
        };
        Ok(text.get(..end).unwrap_or(text).to_string())
    }

    fn token_spans(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        Ok(self.encode(text)?.get_offsets().to_vec())
    }
}
