//! A loaded model's hyper-parameters ([`ModelConfig`]) and the GGUF metadata
//! reader ([`Meta`]) the families fill them from.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;

use super::weights::{GgufReader, WeightSource};

/// How rotary position embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions `(2i, 2i+1)` form a pair (llama.cpp "normal" RoPE; goes with
    /// the permuted q/k rows of llama GGUFs).
    Interleaved,
    /// Dimensions `(i, i + d/2)` form a pair (NeoX / Hugging Face `rotate_half`).
    HalfSplit,
}

/// The gate activation of the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Per-layer attention settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// `Some(w)`: a query at position `p` sees keys `k` with `p - k < w`.
    pub sliding_window: Option<usize>,
    pub rope_theta: f32,
    /// Linear RoPE scaling factor (positions are divided by it); 1 = none.
    pub rope_scale: f32,
}

/// Hyper-parameters of a loaded model (from the GGUF metadata, completed with
/// the architecture's fixed values).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The model family ([`super::families::Family::name`]).
    pub family: &'static str,
    /// `general.architecture` as found in the file.
    pub arch_name: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rms_eps: f64,
    pub rope_style: RopeStyle,
    /// RoPE base of the global (full-attention) layers.
    pub rope_theta: f32,
    /// RoPE base of the sliding-window layers, where they differ (Gemma 3).
    pub rope_theta_local: Option<f32>,
    pub sliding_window: Option<usize>,
    pub layers: Vec<LayerSpec>,
    /// Multiplier of `q·k` before the softmax.
    pub attn_scale: f64,
    /// Multiplier of the token embedding (Gemma: `sqrt(hidden)`).
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    /// Per-head RMSNorm of queries and keys (Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm after attention and after the MLP, before the residual add (Gemma).
    pub sandwich_norms: bool,
    pub final_logit_softcap: Option<f64>,
    pub attn_logit_softcap: Option<f64>,
    /// The LM head is the token embedding (no `output.weight` in the file).
    pub tied_embeddings: bool,
}

/// GGUF metadata under the architecture's key prefix; errors name the file.
pub(crate) struct Meta<'a> {
    pub path: &'a Path,
    pub arch: &'a str,
    pub(super) md: &'a HashMap<String, Value>,
    pub(super) reader: &'a GgufReader<'a>,
}

impl Meta<'_> {
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.md.get(&format!("{}.{key}", self.arch))
    }

    pub(super) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => bail!(
                "{}: metadata `{}.{key}` is {other:?}, expected a non-negative integer",
                self.path.display(),
                self.arch
            ),
        };
        Ok(Some(n as usize))
    }

    pub(super) fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.with_context(|| {
            format!(
                "{}: metadata `{}.{key}` is missing",
                self.path.display(),
                self.arch
            )
        })
    }

    pub(super) fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        Ok(Some(match v {
            Value::F32(x) => *x,
            Value::F64(x) => *x as f32,
            Value::U32(x) => *x as f32,
            Value::I32(x) => *x as f32,
            other => bail!(
                "{}: metadata `{}.{key}` is {other:?}, expected a number",
                self.path.display(),
                self.arch
            ),
        }))
    }

    pub(super) fn opt_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// `rope.scaling.type` none/linear → the factor positions are divided by.
    pub(super) fn linear_rope_scale(&self) -> Result<f32> {
        match self.opt_str("rope.scaling.type") {
            None | Some("none") => Ok(1.0),
            Some("linear") => Ok(self.opt_f32("rope.scaling.factor")?.unwrap_or(1.0)),
            Some(other) => bail!(
                "{}: RoPE scaling `{other}` is not supported (only none and linear)",
                self.path.display()
            ),
        }
    }

    pub(super) fn has_tensor(&self, name: &str) -> bool {
        self.reader.has_tensor(name)
    }

    /// Vocabulary size: metadata, else the token embedding's row count.
    pub(super) fn vocab(&self) -> Result<usize> {
        if let Some(v) = self.opt_usize("vocab_size")? {
            return Ok(v);
        }
        let info = self
            .reader
            .content
            .tensor_infos
            .get("token_embd.weight")
            .with_context(|| {
                format!(
                    "{}: tensor `token_embd.weight` is missing",
                    self.path.display()
                )
            })?;
        Ok(info.shape.dims()[0])
    }
}
