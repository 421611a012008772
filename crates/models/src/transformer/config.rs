//! A loaded model's hyper-parameters ([`ModelConfig`]) and the two readers the
//! families fill them from: GGUF metadata ([`Meta`]) and a Hugging Face
//! `config.json` ([`HfConfig`], in transformers 4's or 5's layout).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::Value as JsonValue;

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

/// `config.json` fields, with errors that name the file and the field.
pub(crate) struct HfConfig<'a> {
    pub path: &'a Path,
    v: &'a JsonValue,
}

impl<'a> HfConfig<'a> {
    /// The settings object `v` (the root of `path`, or a nested text config).
    pub(super) fn new(path: &'a Path, v: &'a JsonValue) -> Self {
        Self { path, v }
    }

    pub(super) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.v.get(key) {
            None | Some(JsonValue::Null) => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).with_context(|| {
                format!(
                    "{}: field `{key}` is {x}, expected a non-negative integer",
                    self.path.display()
                )
            }),
        }
    }

    pub(super) fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .with_context(|| format!("{}: field `{key}` is missing", self.path.display()))
    }

    pub(super) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.v.get(key) {
            None | Some(JsonValue::Null) => Ok(None),
            Some(x) => x.as_f64().map(Some).with_context(|| {
                format!(
                    "{}: field `{key}` is {x}, expected a number",
                    self.path.display()
                )
            }),
        }
    }

    pub(super) fn opt_bool(&self, key: &str) -> Option<bool> {
        self.v.get(key).and_then(JsonValue::as_bool)
    }

    /// The RoPE settings of layers of `layer_type` (`full_attention`,
    /// `sliding_attention`) under transformers 5's `rope_parameters`, which is
    /// either one object for all layers or one per layer type.
    pub(super) fn rope_parameters(&self, layer_type: &str) -> Option<&JsonValue> {
        let p = self.v.get("rope_parameters").filter(|p| p.is_object())?;
        match p.get(layer_type) {
            Some(per_type) if per_type.is_object() => Some(per_type),
            _ if p.get("rope_theta").is_some() || p.get("rope_type").is_some() => Some(p),
            _ => None,
        }
    }

    /// RoPE base of `layer_type` layers: `rope_parameters`, else the
    /// transformers 4 field `legacy_key`, else `default`.
    pub(super) fn rope_theta(
        &self,
        layer_type: &str,
        legacy_key: &str,
        default: f64,
    ) -> Result<f32> {
        if let Some(t) = self
            .rope_parameters(layer_type)
            .and_then(|p| p.get("rope_theta"))
        {
            return t.as_f64().map(|t| t as f32).with_context(|| {
                format!(
                    "{}: `rope_parameters.rope_theta` is {t}, expected a number",
                    self.path.display()
                )
            });
        }
        Ok(self.opt_f64(legacy_key)?.unwrap_or(default) as f32)
    }

    /// The linear RoPE scaling factor of `layer_type` layers (1 when there is
    /// none), from `rope_parameters` or transformers 4's `rope_scaling`; other
    /// scaling types are refused.
    pub(super) fn linear_rope_scale(&self, layer_type: &str) -> Result<f32> {
        let (s, field) = match self.rope_parameters(layer_type) {
            Some(p) => (p, "rope_parameters"),
            None => match self.v.get("rope_scaling").filter(|s| !s.is_null()) {
                Some(s) => (s, "rope_scaling"),
                None => return Ok(1.0),
            },
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(JsonValue::as_str)
            .unwrap_or(if field == "rope_scaling" {
                "linear"
            } else {
                "default"
            });
        match kind {
            "default" => Ok(1.0),
            "linear" => Ok(s.get("factor").and_then(JsonValue::as_f64).unwrap_or(1.0) as f32),
            other => bail!(
                "{}: `{field}` type `{other}` is not supported (only linear RoPE scaling)",
                self.path.display()
            ),
        }
    }

    /// The `layer_types` list (transformers 5), checked against the layer count.
    pub(super) fn layer_types(&self, n_layers: usize) -> Result<Option<Vec<&str>>> {
        let Some(list) = self.v.get("layer_types").filter(|t| !t.is_null()) else {
            return Ok(None);
        };
        let types: Vec<&str> = list
            .as_array()
            .map(|a| a.iter().filter_map(JsonValue::as_str).collect())
            .unwrap_or_default();
        if types.len() != n_layers {
            bail!(
                "{}: `layer_types` must list {n_layers} strings, one per layer; found {list}",
                self.path.display()
            );
        }
        Ok(Some(types))
    }
}
