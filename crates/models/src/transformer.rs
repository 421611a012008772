//! Decoder-only transformer forward pass on candle tensors, for GGUF
//! checkpoints of the `llama` (Llama, Mistral, SmolLM2), `qwen2`, `qwen3` and
//! `gemma3` architectures and the Hugging Face directories of `hf`. Qwen2 adds
//! projection biases and Qwen3 per-head q/k norms to the llama block.
//!
//! Hand-written rather than taken from candle-transformers because FIRST needs
//! things those models do not offer: the output of the last position only, an
//! LM head restricted to a few rows (the identifier tokens), a KV cache that
//! can be truncated back to a shared prompt prefix and extended, per-layer taps
//! of the hidden state for debugging against the reference, and two weight
//! modes ([`WeightMode::Quantized`] for speed, [`WeightMode::DequantizedF32`]
//! for fidelity with the Python reference).
//!
//! Shapes inside are batch-free: activations are `[tokens, hidden]`.
//!
//! CPU inference has fused kernels of its own beside candle's ops: the causal
//! softmax (`softmax`), the gated MLP activation (`gated`), and, for quantized-mode
//! prefill on AVX512-BF16 CPUs, bf16 matrix products (`bf16_gemm`) for the
//! projections and the whole attention (`bf16_attention`). Training and CUDA
//! use candle's ops, with a gradient attached to candle's fused softmax for
//! training attention (`train_softmax`).

mod bf16_attention;
mod bf16_gemm;
mod gated;
mod gemma3;
mod hf;
mod llama;
mod softmax;
#[cfg(test)]
mod test_support;
mod train_softmax;
mod weights;

pub use hf::SUPPORTED_HF_ARCHS;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};

use crate::train::lora::{LoraSet, LoraTarget};
use weights::{GgufReader, Linear, RowMatrix, WeightSource};
pub use weights::{WeightMode, EXACT_MIN_TOKENS};

/// What a training forward pass adds to inference: adapters, their input
/// dropout, and NEFTune embedding noise.
#[derive(Clone, Copy, Default)]
pub struct TrainContext<'a> {
    pub adapters: Option<&'a LoraSet>,
    /// LoRA dropout probability on the adapter input (0 = off).
    pub dropout: f32,
    /// NEFTune alpha: uniform embedding noise of magnitude
    /// `alpha / sqrt(tokens * hidden)` (None = off).
    pub embedding_noise: Option<f32>,
    /// Where dropout masks are kept so that recomputing a layer (gradient
    /// checkpointing) drops the same inputs; None draws fresh masks.
    pub dropout_masks: Option<&'a DropoutMasks>,
}

impl TrainContext<'_> {
    /// The keep-mask (`1/(1-p)` or 0 per element) for the adapter input `x`
    /// of `(layer, target)`, or None without dropout.
    fn dropout_mask(&self, layer: usize, target: LoraTarget, x: &Tensor) -> Result<Option<Tensor>> {
        if self.dropout <= 0.0 || self.adapters.is_none() {
            return Ok(None);
        }
        let p = f64::from(self.dropout);
        let draw =
            || -> Result<Tensor> { Ok(Tensor::rand(0f32, 1f32, x.shape(), x.device())?.ge(p)?) };
        let keep = match self.dropout_masks {
            Some(store) => {
                let mut map = store.0.borrow_mut();
                match map.get(&(layer, target)) {
                    Some(m) if m.shape() == x.shape() => m.clone(),
                    _ => {
                        let m = draw()?;
                        map.insert((layer, target), m.clone());
                        m
                    }
                }
            }
            None => draw()?,
        };
        Ok(Some((keep.to_dtype(DType::F32)? * (1.0 / (1.0 - p)))?))
    }
}

/// Dropout keep-masks by (layer, projection), stored as `u8` for one batch.
#[derive(Default)]
pub struct DropoutMasks(std::cell::RefCell<std::collections::HashMap<(usize, LoraTarget), Tensor>>);

/// A right-padded batch of sequences with the RoPE tables and attention
/// masks its layers share (see [`CausalLm::train_batch`]; batched inference
/// builds one too).
pub struct PaddedBatch {
    ids: Tensor,
    lens: Vec<usize>,
    len: usize,
    ropes: Vec<(Tensor, Tensor)>,
    masks: Vec<(Option<usize>, Tensor)>,
}

impl PaddedBatch {
    /// The RoPE tables and the additive mask `layer` attends with.
    fn layer_tables(&self, layer: &Layer) -> Result<((&Tensor, &Tensor), &Tensor)> {
        let mask = &self
            .masks
            .iter()
            .find(|(w, _)| *w == layer.spec.sliding_window)
            .context("mask")?
            .1;
        let (cos, sin) = &self.ropes[layer.rope];
        Ok(((cos, sin), mask))
    }

    /// Padded length: sequence `j`'s position `p` is row `j · len() + p`.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of sequences.
    pub fn sequences(&self) -> usize {
        self.lens.len()
    }
}

/// Queries per block of the bf16 CPU attention op, and of the block-causal
/// inference attention on CUDA (chunks longer than a block skip the keys the
/// block cannot see).
const ATTENTION_BLOCK: usize = 256;

/// Queries per block of the block-causal f32 attention on the CPU: smaller
/// blocks compute fewer masked scores (a block wastes about half a block of
/// keys per query), and at 128 the products over a 1.8k-token SmolLM2 prompt
/// still run at full speed; 128 was 4 % faster per window than 256 and
/// level with 64 on a Zen 3 (BENCHMARKS.md, "CPUs without AVX512-BF16").
const CPU_F32_ATTENTION_BLOCK: usize = 128;

/// Largest total size of projections packed for bf16 prefill at load (1 GiB:
/// the +212 MB of SmolLM2-135M's, +180 MB of Gemma-3-270M's). Packing ahead
/// saves dequantizing and packing every weight at every prefill (a SmolLM2
/// FIRST window 1.1-1.2x faster); bigger models pack per call instead of
/// holding a bf16 copy beside their quantized blocks.
const BF16_PREPACK_BUDGET: usize = 1 << 30;

/// The GGUF `general.architecture` values this module can run.
pub const SUPPORTED_ARCHS: &[&str] = &["llama", "qwen2", "qwen3", "gemma3"];

/// Model family, which decides the block structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
}

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
    pub arch: Arch,
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
    md: &'a HashMap<String, Value>,
    reader: &'a GgufReader<'a>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.md.get(&format!("{}.{key}", self.arch))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
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

    fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.with_context(|| {
            format!(
                "{}: metadata `{}.{key}` is missing",
                self.path.display(),
                self.arch
            )
        })
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
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

    fn opt_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// `rope.scaling.type` none/linear → the factor positions are divided by.
    fn linear_rope_scale(&self) -> Result<f32> {
        match self.opt_str("rope.scaling.type") {
            None | Some("none") => Ok(1.0),
            Some("linear") => Ok(self.opt_f32("rope.scaling.factor")?.unwrap_or(1.0)),
            Some(other) => bail!(
                "{}: RoPE scaling `{other}` is not supported (only none and linear)",
                self.path.display()
            ),
        }
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.reader.has_tensor(name)
    }

    /// Vocabulary size: metadata, else the token embedding's row count.
    fn vocab(&self) -> Result<usize> {
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

struct Layer {
    spec: LayerSpec,
    /// Index into `CausalLm::rope_freqs`.
    rope: usize,
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    /// Projection biases (Qwen2: q/k/v; Llama with `attention_bias`: all four).
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    bo: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    post_ffn_norm: Option<Tensor>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn projections(&self) -> [&Linear; 7] {
        [
            &self.wq, &self.wk, &self.wv, &self.wo, &self.gate, &self.up, &self.down,
        ]
    }

    fn projections_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
}

/// Keys and values of the positions processed so far, per layer, plus the
/// token ids they came from. Truncating it to a shared prefix lets the next
/// prompt with that prefix skip recomputing it.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer `(k, v)`, each `[1, kv_heads, len, head_dim]`.
    layers: Vec<Option<(Tensor, Tensor)>>,
    tokens: Vec<u32>,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &CausalLm) -> Self {
        Self {
            layers: vec![None; model.config.n_layers],
            tokens: Vec::new(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token ids of the cached positions.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Keeps the first `len` positions (no-op if `len >= self.len()`).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.tokens.len() {
            return;
        }
        self.tokens.truncate(len);
        for slot in &mut self.layers {
            *slot = match slot.take() {
                // Narrowing cannot fail: len is below the cached length.
                Some((k, v)) if len > 0 => k.narrow(2, 0, len).ok().zip(v.narrow(2, 0, len).ok()),
                _ => None,
            };
        }
    }

    /// Back to `len` positions after a failed forward pass, which may have
    /// appended keys and values to some layers only.
    fn rollback(&mut self, len: usize) {
        self.tokens.truncate(len);
        for slot in &mut self.layers {
            *slot = match slot.take() {
                Some((k, v)) if len > 0 => match (k.dim(2), v.dim(2)) {
                    (Ok(kl), Ok(vl)) if kl >= len && vl >= len => {
                        k.narrow(2, 0, len).ok().zip(v.narrow(2, 0, len).ok())
                    }
                    _ => None,
                },
                _ => None,
            };
        }
        if len > 0 && self.layers.iter().any(Option::is_none) {
            self.clear_all();
        }
    }

    fn clear_all(&mut self) {
        self.tokens.clear();
        self.layers.iter_mut().for_each(|s| *s = None);
    }

    /// Length of the longest common prefix of the cached tokens and `tokens`.
    pub fn common_prefix_len(&self, tokens: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Truncates the cache to its longest common prefix with `tokens`, keeping
    /// at least one token of `tokens` uncached (so a forward pass over the rest
    /// yields the last position). Returns how many positions were kept.
    pub fn reuse_prefix(&mut self, tokens: &[u32]) -> usize {
        self.reuse_prefix_leaving(tokens, 1)
    }

    /// Like [`KvCache::reuse_prefix`], but leaves at least `min_new` (at least
    /// one) tokens of `tokens` uncached.
    pub fn reuse_prefix_leaving(&mut self, tokens: &[u32], min_new: usize) -> usize {
        let keep = self
            .common_prefix_len(tokens)
            .min(tokens.len().saturating_sub(min_new.max(1)));
        self.truncate(keep);
        keep
    }
}

/// A causal language model loaded from a GGUF file.
pub struct CausalLm {
    config: ModelConfig,
    mode: WeightMode,
    device: Device,
    embed: RowMatrix,
    /// `None`: tied to `embed`.
    output: Option<RowMatrix>,
    final_norm: Tensor,
    layers: Vec<Layer>,
    /// Distinct RoPE inverse-frequency tables used by the layers.
    rope_freqs: Vec<Vec<f32>>,
    prefill_chunk: usize,
    forward_calls: u64,
    /// Whether the projections were packed for bf16 prefill at load.
    bf16_prepacked: bool,
}

impl std::fmt::Debug for CausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLm")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl CausalLm {
    /// Loads a GGUF checkpoint. Errors name the file, and for an unsupported
    /// architecture the architecture found and the supported ones.
    pub fn load(path: impl AsRef<Path>, mode: WeightMode, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let mut reader = GgufReader::open(path, device)?;
        let arch = match reader.content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => bail!(
                "{}: metadata `general.architecture` is {other:?}, expected a string",
                path.display()
            ),
            None => bail!(
                "{}: metadata `general.architecture` is missing",
                path.display()
            ),
        };
        let config = {
            let meta = Meta {
                path,
                arch: &arch,
                md: &reader.content.metadata,
                reader: &reader,
            };
            match arch.as_str() {
                "llama" | "qwen2" | "qwen3" => llama::config(&meta)?,
                "gemma3" => gemma3::config(&meta)?,
                other => bail!(
                    "{}: unsupported model architecture `{other}` (general.architecture); supported: {}",
                    path.display(),
                    SUPPORTED_ARCHS.join(", ")
                ),
            }
        };
        Self::from_reader(&mut reader, config, mode)
    }

    /// Loads a Hugging Face model directory (`config.json` and
    /// `*.safetensors`; see the `hf` module for the architectures). In
    /// quantized mode the matrices are held as Q8_0 blocks.
    pub fn load_hf_dir(dir: impl AsRef<Path>, mode: WeightMode, device: &Device) -> Result<Self> {
        let (mut reader, config) = hf::open(dir.as_ref(), device)?;
        Self::from_reader(&mut reader, config, mode)
    }

    fn from_reader(
        r: &mut dyn WeightSource,
        config: ModelConfig,
        mode: WeightMode,
    ) -> Result<Self> {
        let c = &config;
        ensure!(
            c.n_heads > 0 && c.n_kv_heads > 0 && c.n_heads.is_multiple_of(c.n_kv_heads),
            "{}: head_count {} is not a multiple of head_count_kv {}",
            r.path().display(),
            c.n_heads,
            c.n_kv_heads
        );
        ensure!(
            c.head_dim.is_multiple_of(2),
            "{}: odd head_dim {}",
            r.path().display(),
            c.head_dim
        );
        let (h, hd) = (c.hidden, c.head_dim);
        let embed = r.rows("token_embd.weight", c.vocab, h, mode)?;
        let output = if c.tied_embeddings {
            None
        } else {
            Some(r.rows("output.weight", c.vocab, h, mode)?)
        };
        let final_norm = r.dense("output_norm.weight", &[h])?;
        // Optional llama3-style per-frequency divisors.
        let freq_factors = if r.has_tensor("rope_freqs.weight") {
            Some(r.dense("rope_freqs.weight", &[hd / 2])?.to_vec1::<f32>()?)
        } else {
            None
        };
        let mut rope_keys: Vec<(u32, u32)> = Vec::new();
        let mut rope_freqs = Vec::new();
        let mut layers = Vec::with_capacity(c.n_layers);
        for (i, spec) in c.layers.iter().enumerate() {
            let key = (spec.rope_theta.to_bits(), spec.rope_scale.to_bits());
            let rope = match rope_keys.iter().position(|k| *k == key) {
                Some(p) => p,
                None => {
                    rope_keys.push(key);
                    rope_freqs.push(inv_freqs(
                        hd,
                        spec.rope_theta,
                        spec.rope_scale,
                        freq_factors.as_deref(),
                    ));
                    rope_keys.len() - 1
                }
            };
            let p = format!("blk.{i}");
            let opt = |r: &mut dyn WeightSource,
                       on: bool,
                       name: &str,
                       n: usize|
             -> Result<Option<Tensor>> {
                if on {
                    Ok(Some(r.dense(&format!("{p}.{name}.weight"), &[n])?))
                } else {
                    Ok(None)
                }
            };
            let bias = |r: &mut dyn WeightSource, name: &str, n: usize| -> Result<Option<Tensor>> {
                let full = format!("{p}.{name}.bias");
                if r.has_tensor(&full) {
                    Ok(Some(r.dense(&full, &[n])?))
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                spec: spec.clone(),
                rope,
                attn_norm: r.dense(&format!("{p}.attn_norm.weight"), &[h])?,
                wq: r.linear(&format!("{p}.attn_q.weight"), c.n_heads * hd, h, mode)?,
                wk: r.linear(&format!("{p}.attn_k.weight"), c.n_kv_heads * hd, h, mode)?,
                wv: r.linear(&format!("{p}.attn_v.weight"), c.n_kv_heads * hd, h, mode)?,
                wo: r.linear(&format!("{p}.attn_output.weight"), h, c.n_heads * hd, mode)?,
                bq: bias(r, "attn_q", c.n_heads * hd)?,
                bk: bias(r, "attn_k", c.n_kv_heads * hd)?,
                bv: bias(r, "attn_v", c.n_kv_heads * hd)?,
                bo: bias(r, "attn_output", h)?,
                q_norm: opt(r, c.qk_norm, "attn_q_norm", hd)?,
                k_norm: opt(r, c.qk_norm, "attn_k_norm", hd)?,
                post_attn_norm: opt(r, c.sandwich_norms, "post_attention_norm", h)?,
                ffn_norm: r.dense(&format!("{p}.ffn_norm.weight"), &[h])?,
                post_ffn_norm: opt(r, c.sandwich_norms, "post_ffw_norm", h)?,
                gate: r.linear(&format!("{p}.ffn_gate.weight"), c.intermediate, h, mode)?,
                up: r.linear(&format!("{p}.ffn_up.weight"), c.intermediate, h, mode)?,
                down: r.linear(&format!("{p}.ffn_down.weight"), h, c.intermediate, mode)?,
            });
        }
        let mut model = Self {
            config,
            mode,
            device: r.device().clone(),
            embed,
            output,
            final_norm,
            layers,
            rope_freqs,
            prefill_chunk: 2048,
            forward_calls: 0,
            bf16_prepacked: false,
        };
        model.prepack_bf16()?;
        Ok(model)
    }

    /// Packs every projection for bf16 prefill ahead (see
    /// [`BF16_PREPACK_BUDGET`]) when prefill runs in bf16: a quantized-mode
    /// model on a CPU with AVX512-BF16.
    fn prepack_bf16(&mut self) -> Result<()> {
        if !self.bf16_prefill() {
            return Ok(());
        }
        let bytes: usize = self
            .layers
            .iter()
            .flat_map(Layer::projections)
            .map(|l| 2 * l.bf16_prefill_elements())
            .sum();
        if bytes > BF16_PREPACK_BUDGET {
            tracing::debug!(
                "bf16 prefill packs weights per call: {} MB packed would exceed {} MB",
                bytes >> 20,
                BF16_PREPACK_BUDGET >> 20
            );
            return Ok(());
        }
        for layer in &mut self.layers {
            for l in layer.projections_mut() {
                l.prepack_bf16()?;
            }
        }
        self.bf16_prepacked = true;
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn weight_mode(&self) -> WeightMode {
        self.mode
    }

    /// Whether prefill (forward calls of [`EXACT_MIN_TOKENS`] or more) runs
    /// its matrix products in bf16 with f32 accumulation: quantized mode on a
    /// CPU with AVX512-BF16. Otherwise prefill multiplies in f32 and matches
    /// the f32 reference.
    pub fn bf16_prefill(&self) -> bool {
        self.device.is_cpu() && self.mode == WeightMode::Quantized && bf16_gemm::available()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of [`CausalLm::forward`] calls so far.
    pub fn forward_calls(&self) -> u64 {
        self.forward_calls
    }

    /// Positions processed together inside one forward call (bounds the
    /// activation memory); at least 1. Default 2048: on the CPU, longer
    /// matrix products run faster (2048 vs 512: 1.08x per SmolLM2 window).
    pub fn set_prefill_chunk(&mut self, n: usize) {
        self.prefill_chunk = n.max(1);
    }

    /// Runs `tokens` after the positions already in `cache` (appending their
    /// keys and values to it) and returns the hidden state of the last
    /// position after the final norm, `[hidden]`. With `taps`, the last
    /// position's hidden state after the embedding (`embed` / `embed_scaled`),
    /// after each layer (`layer{i}_out`) and after the final norm
    /// (`final_norm`) is pushed.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        cache: &mut KvCache,
        mut taps: Option<&mut Vec<(String, Tensor)>>,
    ) -> Result<Tensor> {
        self.forward_calls += 1;
        ensure!(!tokens.is_empty(), "forward called with no tokens");
        ensure!(
            cache.layers.len() == self.layers.len(),
            "KV cache has {} layers but the model has {}",
            cache.layers.len(),
            self.layers.len()
        );
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            bail!(
                "token id {bad} is out of range for a vocabulary of {}",
                self.config.vocab
            );
        }
        let total = cache.len() + tokens.len();
        ensure!(
            total <= self.config.context_length,
            "{total} positions exceed the model's context length {}",
            self.config.context_length
        );
        // Decided per call, not per chunk, so the numerics of a prompt do not
        // depend on how it is chunked.
        let kernel = tokens.len() < EXACT_MIN_TOKENS;
        let n_chunks = tokens.len().div_ceil(self.prefill_chunk);
        let start = cache.len();
        let mut last = None;
        for (ci, chunk) in tokens.chunks(self.prefill_chunk).enumerate() {
            let t = if ci + 1 == n_chunks {
                taps.as_deref_mut()
            } else {
                None
            };
            match self.forward_chunk(chunk, cache, t, kernel, ci + 1 == n_chunks) {
                Ok(h) => last = Some(h),
                Err(e) => {
                    cache.rollback(start);
                    return Err(e);
                }
            }
        }
        let x = last.context("no chunk processed")?;
        let c = &self.config;
        let last = x.narrow(0, x.dim(0)? - 1, 1)?;
        let out = rms_norm(&last, &self.final_norm, c.rms_eps)?.reshape(c.hidden)?;
        if let Some(t) = taps {
            t.push(("final_norm".to_string(), out.clone()));
        }
        Ok(out)
    }

    /// Several independent prompts in one pass, right-padded to the longest
    /// (padding comes after each prompt, so causal attention keeps it away
    /// from real positions), without a KV cache: returns each prompt's last
    /// hidden state after the final norm, `[hidden]`, as [`CausalLm::forward`]
    /// would from an empty cache. One forward call however many prompts.
    pub fn forward_batch_last(&mut self, prompts: &[&[u32]]) -> Result<Vec<Tensor>> {
        self.forward_calls += 1;
        let batch = self.padded_batch(prompts)?;
        // The same weight path a single prompt of this length would take.
        let kernel = prompts.iter().all(|p| p.len() < EXACT_MIN_TOKENS);
        let c = &self.config;
        let mut x = self.embed.rows(&batch.ids)?;
        if let Some(scale) = c.embed_scale {
            x = (x * f64::from(scale))?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let (rope, mask) = batch.layer_tables(layer)?;
            let mut slot = None;
            x = self.block(
                i,
                &x,
                prompts.len(),
                &mut slot,
                rope,
                (0, mask),
                kernel,
                None,
                false,
            )?;
        }
        let (dev, len) = (&self.device, batch.len);
        let rows: Vec<u32> = prompts
            .iter()
            .enumerate()
            .map(|(j, p)| (j * len + p.len() - 1) as u32)
            .collect();
        let last = x.index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
        let normed = rms_norm(&last, &self.final_norm, c.rms_eps)?;
        (0..prompts.len()).map(|j| Ok(normed.get(j)?)).collect()
    }

    /// The differentiable forward pass used for training: all of `tokens` in
    /// one pass from an empty cache, with the LoRA adapters of `train` added
    /// to their projections, and gradient-carrying versions of the fused
    /// kernels (RMSNorm, RoPE, softmax) that candle implements without a
    /// backward pass. Returns the final-normed hidden states of every
    /// position, `[tokens, hidden]`. Needs dense weights
    /// ([`WeightMode::DequantizedF32`]).
    pub fn forward_train(&self, tokens: &[u32], train: &TrainContext<'_>) -> Result<Tensor> {
        self.forward_train_batch(&[tokens], train)
    }

    /// [`CausalLm::forward_train`] over several sequences at once, right-padded
    /// to the longest: returns `[batch · len, hidden]`, sequence `j`'s
    /// position `p` at row `j · len + p` (rows past a sequence's end are
    /// padding; causal attention keeps them from touching real positions).
    pub fn forward_train_batch(&self, seqs: &[&[u32]], train: &TrainContext<'_>) -> Result<Tensor> {
        let batch = self.train_batch(seqs)?;
        let mut x = self.train_embed(&batch, train)?;
        for i in 0..self.layers.len() {
            x = self.train_layer(i, &x, &batch, train)?;
        }
        self.train_final_norm(&x)
    }

    /// Checks and pads `seqs` for the training pass, and builds the position
    /// tables and masks its layers share.
    pub fn train_batch(&self, seqs: &[&[u32]]) -> Result<PaddedBatch> {
        ensure!(
            self.mode == WeightMode::DequantizedF32,
            "training needs the f32 weight mode (dequantized weights)"
        );
        self.padded_batch(seqs)
    }

    /// Checks `seqs` (tokens in the vocabulary, within the context) and pads
    /// them to the longest, with the RoPE tables and masks of that length.
    fn padded_batch(&self, seqs: &[&[u32]]) -> Result<PaddedBatch> {
        ensure!(
            !seqs.is_empty() && seqs.iter().all(|s| !s.is_empty()),
            "forward called with no tokens"
        );
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        ensure!(
            len <= self.config.context_length,
            "{len} positions exceed the model's context length {}",
            self.config.context_length
        );
        let mut ids = Vec::with_capacity(seqs.len() * len);
        for s in seqs {
            if let Some(&bad) = s.iter().find(|&&t| t as usize >= self.config.vocab) {
                bail!(
                    "token id {bad} is out of range for a vocabulary of {}",
                    self.config.vocab
                );
            }
            ids.extend_from_slice(s);
            // Padding repeats the last token; causal attention never lets a
            // real position see it.
            ids.extend(std::iter::repeat_n(s[s.len() - 1], len - s.len()));
        }
        let dev = &self.device;
        let ropes = self
            .rope_freqs
            .iter()
            .map(|f| rope_tables(f, 0, len, dev))
            .collect::<Result<Vec<_>>>()?;
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for layer in &self.layers {
            let w = layer.spec.sliding_window;
            if !masks.iter().any(|(mw, _)| *mw == w) {
                masks.push((w, attention_mask(0, len, w, dev)?.1));
            }
        }
        Ok(PaddedBatch {
            ids: Tensor::new(ids, dev)?,
            lens: seqs.iter().map(|s| s.len()).collect(),
            len,
            ropes,
            masks,
        })
    }

    /// Scaled token embeddings of a training batch plus NEFTune noise (each
    /// sequence's magnitude from its own length), `[batch · len, hidden]`.
    pub fn train_embed(&self, batch: &PaddedBatch, train: &TrainContext<'_>) -> Result<Tensor> {
        let c = &self.config;
        let mut x = self.embed.rows(&batch.ids)?;
        if let Some(scale) = c.embed_scale {
            x = (x * f64::from(scale))?;
        }
        if let Some(alpha) = train.embedding_noise {
            let mags: Vec<f32> = batch
                .lens
                .iter()
                .flat_map(|&n| {
                    let m = f64::from(alpha) / ((n * c.hidden) as f64).sqrt();
                    std::iter::repeat_n(m as f32, batch.len)
                })
                .collect();
            let mags = Tensor::from_vec(mags, (batch.lens.len() * batch.len, 1), &self.device)?;
            let noise = Tensor::rand(-1f32, 1f32, x.shape(), &self.device)?.broadcast_mul(&mags)?;
            x = (x + noise)?;
        }
        Ok(x)
    }

    /// Block `layer` of the training pass on `x: [batch · len, hidden]`.
    pub fn train_layer(
        &self,
        layer: usize,
        x: &Tensor,
        batch: &PaddedBatch,
        train: &TrainContext<'_>,
    ) -> Result<Tensor> {
        self.batch_layer(layer, x, batch, Some(train))
    }

    /// Block `layer` of a training batch through the inference kernels (fused
    /// RMSNorm, RoPE and softmax, block-causal attention), without adapters
    /// or an autograd graph: for the frozen layers below the lowest adapter,
    /// whose output needs no gradient. Equal to [`CausalLm::train_layer`]
    /// without adapters up to float rounding.
    pub fn frozen_layer(&self, layer: usize, x: &Tensor, batch: &PaddedBatch) -> Result<Tensor> {
        self.batch_layer(layer, x, batch, None)
    }

    /// Block `layer` on a padded batch (no KV cache); `train` selects the
    /// differentiable kernels and adapters, `None` the inference kernels.
    fn batch_layer(
        &self,
        layer: usize,
        x: &Tensor,
        batch: &PaddedBatch,
        train: Option<&TrainContext<'_>>,
    ) -> Result<Tensor> {
        let l = self.layers.get(layer).context("no such layer")?;
        let (rope, mask) = batch.layer_tables(l)?;
        let mut slot = None;
        self.block(
            layer,
            x,
            batch.lens.len(),
            &mut slot,
            rope,
            (0, mask),
            false,
            train,
            false,
        )
    }

    /// The final RMSNorm, differentiable.
    pub fn train_final_norm(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm_train(x, &self.final_norm, self.config.rms_eps)
    }

    /// Logits of `token_ids` at each row of `hidden` (`[n, hidden]` →
    /// `[n, token_ids.len()]`), differentiable (for the ranking loss).
    pub fn logits_rows_train(&self, hidden: &Tensor, token_ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(token_ids, &self.device)?;
        let rows = self.head().rows(&ids)?;
        let logits = hidden.matmul(&rows.t()?)?;
        self.softcap(logits)
    }

    /// Full-vocabulary logits of each row of `hidden`, differentiable (for
    /// the language-modelling loss).
    pub fn logits_all_train(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.head().project_all(hidden)?;
        self.softcap(logits)
    }

    /// Runs one chunk and returns the hidden states of all its positions
    /// before the final norm, `[tokens, hidden]`; of the last position only,
    /// `[1, hidden]`, when `last_chunk` and the final layer can skip the
    /// others (CPU inference with the fused softmax).
    fn forward_chunk(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        mut taps: Option<&mut Vec<(String, Tensor)>>,
        kernel: bool,
        last_chunk: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let dev = &self.device;
        let offset = cache.len();
        let s = tokens.len();
        let ids = Tensor::new(tokens, dev)?;
        let mut x = self.embed.rows(&ids)?;
        let mut tap = |name: &str, x: &Tensor| -> Result<()> {
            if let Some(t) = taps.as_deref_mut() {
                t.push((name.to_string(), x.get(x.dim(0)? - 1)?));
            }
            Ok(())
        };
        if let Some(scale) = c.embed_scale {
            x = (x * f64::from(scale))?;
            tap("embed_scaled", &x)?;
        } else {
            tap("embed", &x)?;
        }
        // RoPE tables for this chunk's positions, one per distinct frequency set.
        let ropes = self
            .rope_freqs
            .iter()
            .map(|f| rope_tables(f, offset, s, dev))
            .collect::<Result<Vec<_>>>()?;
        // Masks per distinct window: (first key kept, [s, keys] additive mask).
        let mut masks: Vec<(Option<usize>, usize, Tensor)> = Vec::new();
        for layer in &self.layers {
            let w = layer.spec.sliding_window;
            if !masks.iter().any(|(mw, _, _)| *mw == w) {
                let (k0, m) = attention_mask(offset, s, w, dev)?;
                masks.push((w, k0, m));
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let (_, k0, mask) = masks
                .iter()
                .find(|(w, _, _)| *w == layer.spec.sliding_window)
                .context("mask")?;
            let (cos, sin) = &ropes[layer.rope];
            x = self.block(
                i,
                &x,
                1,
                &mut cache.layers[i],
                (cos, sin),
                (*k0, mask),
                kernel,
                None,
                last_chunk && i + 1 == self.layers.len(),
            )?;
            tap(&format!("layer{i}_out"), &x)?;
        }
        cache.tokens.extend_from_slice(tokens);
        Ok(x)
    }

    /// One transformer block on `x: [batch · s, hidden]` (`batch` sequences
    /// of `s` positions). `slot` holds the layer's cached keys and values
    /// (inference, `batch` 1); `train` adds adapters and selects
    /// differentiable kernels.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        i: usize,
        x: &Tensor,
        batch: usize,
        slot: &mut Option<(Tensor, Tensor)>,
        rope: (&Tensor, &Tensor),
        mask: (usize, &Tensor),
        kernel: bool,
        train: Option<&TrainContext<'_>>,
        last_only: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let layer = &self.layers[i];
        let norm = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            if train.is_some() {
                rms_norm_train(x, w, c.rms_eps)
            } else {
                rms_norm(x, w, c.rms_eps)
            }
        };
        let proj = |target: LoraTarget, w: &Linear, x: &Tensor| -> Result<Tensor> {
            let y = w.forward(x, kernel)?;
            let Some(t) = train else { return Ok(y) };
            let Some(pair) = t.adapters.and_then(|a| a.get(i, target)) else {
                return Ok(y);
            };
            let mask = t.dropout_mask(i, target, x)?;
            Ok((y + pair.delta(x, mask.as_ref())?)?)
        };
        let h = norm(x, &layer.attn_norm)?;
        // Only the last position's output is wanted: its queries alone go
        // through attention and the MLP (CPU inference with the fused
        // softmax; in bf16 a row's result does not depend on the other rows,
        // in f32 it matches the full pass to rounding).
        let last_only =
            last_only && batch == 1 && train.is_none() && !kernel && self.fused_softmax();
        let mut a = self.attention(
            layer,
            &h,
            batch,
            slot,
            rope,
            mask,
            &proj,
            kernel,
            train.is_some(),
            last_only,
        )?;
        if let Some(n) = &layer.post_attn_norm {
            a = norm(&a, n)?;
        }
        let x = if last_only {
            x.narrow(0, x.dim(0)? - 1, 1)?
        } else {
            x.clone()
        };
        let x1 = (x + a)?;
        let h = norm(&x1, &layer.ffn_norm)?;
        let gate = proj(LoraTarget::Gate, &layer.gate, &h)?;
        let up = proj(LoraTarget::Up, &layer.up, &h)?;
        let act = if train.is_none() && self.device.is_cpu() {
            let act = match c.activation {
                Activation::Silu => gated::GateActivation::Silu,
                Activation::GeluTanh => gated::GateActivation::GeluTanh,
            };
            gated::gated(act, &gate, &up)?
        } else {
            match c.activation {
                Activation::Silu => (candle_nn::ops::silu(&gate)? * up)?,
                Activation::GeluTanh => (gate.gelu()? * up)?,
            }
        };
        let mut m = proj(LoraTarget::Down, &layer.down, &act)?;
        if let Some(n) = &layer.post_ffn_norm {
            m = norm(&m, n)?;
        }
        Ok((x1 + m)?)
    }

    /// Self-attention of one layer over `batch` sequences; `proj` applies a
    /// projection (plus its adapter when training); `kernel`: a short call
    /// (decoding) that uses the quantized kernels; `train` selects
    /// differentiable kernels.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        batch: usize,
        slot: &mut Option<(Tensor, Tensor)>,
        (cos, sin): (&Tensor, &Tensor),
        (k0, mask): (usize, &Tensor),
        proj: &dyn Fn(LoraTarget, &Linear, &Tensor) -> Result<Tensor>,
        kernel: bool,
        train: bool,
        last_only: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let s = x.dim(0)? / batch;
        // [batch·rows, n·hd] → [batch, n, rows, hd]
        let heads_of = |t: Tensor, n: usize, rows: usize| -> Result<Tensor> {
            Ok(t.reshape((batch, rows, n, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let heads = |t: Tensor, n: usize| heads_of(t, n, s);
        // Queries: of every position, or of the last one only (its keys and
        // values are still computed for all positions, for the cache).
        let (xq, q_rows, cos_q, sin_q) = if last_only {
            (
                x.narrow(0, s - 1, 1)?,
                1,
                cos.narrow(0, s - 1, 1)?,
                sin.narrow(0, s - 1, 1)?,
            )
        } else {
            (x.clone(), s, cos.clone(), sin.clone())
        };
        let mut q = heads_of(
            with_bias(proj(LoraTarget::Q, &layer.wq, &xq)?, &layer.bq)?,
            nh,
            q_rows,
        )?;
        let mut k = heads(
            with_bias(proj(LoraTarget::K, &layer.wk, x)?, &layer.bk)?,
            nkv,
        )?;
        let v = heads(
            with_bias(proj(LoraTarget::V, &layer.wv, x)?, &layer.bv)?,
            nkv,
        )?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            if train {
                q = rms_norm_train(&q, qn, c.rms_eps)?;
                k = rms_norm_train(&k, kn, c.rms_eps)?;
            } else {
                q = rms_norm(&q, qn, c.rms_eps)?;
                k = rms_norm(&k, kn, c.rms_eps)?;
            }
        }
        let rope = |t: &Tensor, cos: &Tensor, sin: &Tensor| -> Result<Tensor> {
            Ok(match (c.rope_style, train) {
                (RopeStyle::Interleaved, false) => candle_nn::rotary_emb::rope_i(t, cos, sin)?,
                (RopeStyle::HalfSplit, false) => candle_nn::rotary_emb::rope(t, cos, sin)?,
                (RopeStyle::Interleaved, true) => candle_nn::rotary_emb::rope_i_slow(t, cos, sin)?,
                (RopeStyle::HalfSplit, true) => candle_nn::rotary_emb::rope_slow(t, cos, sin)?,
            })
        };
        let q = rope(&q, &cos_q, &sin_q)?;
        let k = rope(&k, cos, sin)?;
        let (k_all, v_all) = match slot.take() {
            Some((kc, vc)) => (Tensor::cat(&[&kc, &k], 2)?, Tensor::cat(&[&vc, &v], 2)?),
            None => (k, v),
        };
        if !train {
            *slot = Some((k_all.clone(), v_all.clone()));
        }
        let total = k_all.dim(2)?;
        if !train && !kernel && self.bf16_attention() {
            // All keys, at their absolute positions (the op applies the
            // sliding window itself): its summation order then depends only
            // on positions, not on where the chunk or cached prefix starts.
            let out = bf16_attention::CausalAttention {
                first_query_key: total - q_rows,
                window: layer.spec.sliding_window,
                scale: c.attn_scale as f32,
                block: ATTENTION_BLOCK,
            }
            .forward(&q, &k_all, &v_all)?;
            return with_bias(proj(LoraTarget::O, &layer.wo, &out)?, &layer.bo);
        }
        let (k_use, v_use) = if k0 > 0 {
            (
                k_all.narrow(2, k0, total - k0)?,
                v_all.narrow(2, k0, total - k0)?,
            )
        } else {
            (k_all, v_all)
        };
        let tk = total - k0;
        let group = nh / nkv;
        if last_only {
            // One query per head against all visible keys: the fused softmax
            // with a single row per head.
            ensure!(
                !train && self.fused_softmax(),
                "last-position attention needs the fused CPU softmax"
            );
            let q = q.reshape((batch, nkv, group, hd))?;
            let probs = softmax::causal_softmax(
                &q.matmul(&k_use.t()?)?,
                softmax::CausalRows {
                    rows: 1,
                    first_query_key: tk - 1,
                    window: layer.spec.sliding_window,
                    scale: c.attn_scale as f32,
                },
            )?;
            let out = probs
                .matmul(&v_use.contiguous()?)?
                .reshape((batch, nh * hd))?;
            return with_bias(proj(LoraTarget::O, &layer.wo, &out)?, &layer.bo);
        }
        if !train && s > self.attention_block() {
            let out = self.block_causal_attention(
                layer,
                &q,
                (&k_use, &v_use),
                (batch, s, total - s, k0),
                mask,
            )?;
            return with_bias(proj(LoraTarget::O, &layer.wo, &out)?, &layer.bo);
        }
        // Query heads of one kv head are adjacent: [batch, nkv, group*s, hd].
        let q = q.reshape((batch, nkv, group * s, hd))?;
        if !train && self.fused_softmax() {
            let scores = q.matmul(&k_use.t()?)?;
            let probs = softmax::causal_softmax(
                &scores,
                softmax::CausalRows {
                    rows: s,
                    first_query_key: total - s - k0,
                    window: layer.spec.sliding_window,
                    scale: c.attn_scale as f32,
                },
            )?;
            let out = probs
                .matmul(&v_use.contiguous()?)?
                .reshape((batch, nh, s, hd))?
                .transpose(1, 2)?
                .reshape((batch * s, nh * hd))?;
            return with_bias(proj(LoraTarget::O, &layer.wo, &out)?, &layer.bo);
        }
        // The scale goes on the queries, a score matrix's 1/keys of the work
        // (and one pass fewer in the backward pass).
        let q = (q * c.attn_scale)?;
        let mut scores = q.matmul(&k_use.t()?)?;
        if let Some(cap) = c.attn_logit_softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let scores = scores
            .reshape((batch, nkv, group, s, tk))?
            .broadcast_add(mask)?;
        let probs = if train {
            train_softmax::softmax_last_dim(&scores)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let probs = probs.reshape((batch, nkv, group * s, tk))?;
        let out = probs.matmul(&v_use.contiguous()?)?;
        let out = out
            .reshape((batch, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((batch * s, nh * hd))?;
        with_bias(proj(LoraTarget::O, &layer.wo, &out)?, &layer.bo)
    }

    /// Inference attention for a long chunk, one block of
    /// [`CausalLm::attention_block`] queries at a time over only the keys some query
    /// of the block can see (causal, and the sliding window where the layer
    /// has one). Skipping the masked keys halves the score and softmax work
    /// of a prefill and keeps each score matrix small; the result equals the
    /// full masked computation, since masked keys get probability exactly 0.
    /// `q: [batch, heads, s, hd]`, `k`/`v: [batch, kv_heads, keys, hd]`
    /// (keys from absolute position `k0`), `mask: [s, keys]`; returns
    /// `[batch · s, heads · hd]`.
    fn block_causal_attention(
        &self,
        layer: &Layer,
        q: &Tensor,
        (k, v): (&Tensor, &Tensor),
        (batch, s, offset, k0): (usize, usize, usize, usize),
        mask: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let group = nh / nkv;
        let q = q.reshape((batch, nkv, group, s, hd))?;
        let block = self.attention_block();
        let mut outs = Vec::with_capacity(s.div_ceil(block));
        for q0 in (0..s).step_by(block) {
            let len = block.min(s - q0);
            let first_key = match layer.spec.sliding_window {
                Some(w) => (offset + q0 + 1).saturating_sub(w),
                None => 0,
            };
            let start = first_key.saturating_sub(k0);
            let keys = offset + q0 + len - k0 - start;
            let qb = q
                .narrow(3, q0, len)?
                .contiguous()?
                .reshape((batch, nkv, group * len, hd))?;
            let kb = k.narrow(2, start, keys)?;
            let vb = v.narrow(2, start, keys)?.contiguous()?;
            if self.fused_softmax() {
                let probs = softmax::causal_softmax(
                    &qb.matmul(&kb.t()?)?,
                    softmax::CausalRows {
                        rows: len,
                        first_query_key: offset + q0 - k0 - start,
                        window: layer.spec.sliding_window,
                        scale: c.attn_scale as f32,
                    },
                )?;
                outs.push(probs.matmul(&vb)?.reshape((batch, nkv, group, len, hd))?);
                continue;
            }
            let mut scores = (qb.matmul(&kb.t()?)? * c.attn_scale)?;
            if let Some(cap) = c.attn_logit_softcap {
                scores = ((scores / cap)?.tanh()? * cap)?;
            }
            let mb = mask.narrow(0, q0, len)?.narrow(1, start, keys)?;
            let scores = scores
                .reshape((batch, nkv, group, len, keys))?
                .broadcast_add(&mb)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((
                batch,
                nkv,
                group * len,
                keys,
            ))?;
            outs.push(probs.matmul(&vb)?.reshape((batch, nkv, group, len, hd))?);
        }
        Ok(Tensor::cat(&outs, 3)?
            .reshape((batch, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((batch * s, nh * hd))?)
    }

    /// Queries per block of [`CausalLm::block_causal_attention`].
    fn attention_block(&self) -> usize {
        if self.device.is_cpu() {
            CPU_F32_ATTENTION_BLOCK
        } else {
            ATTENTION_BLOCK
        }
    }

    /// Whether inference attention uses the fused CPU softmax (`softmax`
    /// module): on the CPU, for models without an attention logit soft-cap.
    fn fused_softmax(&self) -> bool {
        self.device.is_cpu() && self.config.attn_logit_softcap.is_none()
    }

    /// Whether prefill attention runs in bf16 (`bf16_attention`): the fused
    /// CPU path of a quantized-mode model on a CPU with AVX512-BF16, like the
    /// projections around it (f32 mode stays exact).
    fn bf16_attention(&self) -> bool {
        self.fused_softmax() && self.bf16_prefill()
    }

    /// The projection `target` of layer `layer`.
    pub(crate) fn projection(&self, layer: usize, target: LoraTarget) -> Option<&Linear> {
        let l = self.layers.get(layer)?;
        Some(match target {
            LoraTarget::Q => &l.wq,
            LoraTarget::K => &l.wk,
            LoraTarget::V => &l.wv,
            LoraTarget::O => &l.wo,
            LoraTarget::Gate => &l.gate,
            LoraTarget::Up => &l.up,
            LoraTarget::Down => &l.down,
        })
    }

    fn projection_mut(&mut self, layer: usize, target: LoraTarget) -> Option<&mut Linear> {
        let l = self.layers.get_mut(layer)?;
        Some(match target {
            LoraTarget::Q => &mut l.wq,
            LoraTarget::K => &mut l.wk,
            LoraTarget::V => &mut l.wv,
            LoraTarget::O => &mut l.wo,
            LoraTarget::Gate => &mut l.gate,
            LoraTarget::Up => &mut l.up,
            LoraTarget::Down => &mut l.down,
        })
    }

    /// `[out, in]` of a projection.
    pub fn projection_dims(&self, layer: usize, target: LoraTarget) -> Option<(usize, usize)> {
        self.projection(layer, target).map(Linear::dims)
    }

    /// Replaces a projection's weight by a dense `[out, in]` tensor (full
    /// fine-tuning puts trainable variables here; merging adapters puts
    /// `W + scale·B·A`).
    pub fn set_projection(&mut self, layer: usize, target: LoraTarget, w: Tensor) -> Result<()> {
        let dims = self
            .projection_dims(layer, target)
            .with_context(|| format!("the model has no layer {layer}"))?;
        ensure!(
            w.dims() == [dims.0, dims.1],
            "layer {layer} {}: weight of shape {:?}, expected [{}, {}]",
            target.peft_name(),
            w.dims(),
            dims.0,
            dims.1
        );
        let mode = self.mode;
        let prepacked = self.bf16_prepacked;
        let slot = self
            .projection_mut(layer, target)
            .context("projection exists")?;
        *slot = Linear::dense(w.to_dtype(DType::F32)?, mode);
        if prepacked && !w.track_op() {
            slot.prepack_bf16()?;
        }
        Ok(())
    }

    /// The dense f32 weight of a projection.
    pub fn projection_weight(&self, layer: usize, target: LoraTarget) -> Result<Tensor> {
        self.projection(layer, target)
            .with_context(|| format!("the model has no layer {layer}"))?
            .dense_weight()
    }

    /// Adds every adapter's `scale·B·A` to its projection (quantized weights
    /// become dense f32). Returns how many projections changed.
    pub fn merge_lora(&mut self, set: &LoraSet) -> Result<usize> {
        let mut merged = 0;
        for ((layer, target), pair) in set.iter() {
            let w = self.projection_weight(*layer, *target)?;
            let delta = pair.merged_delta()?.to_device(&self.device)?;
            // Detached: a weight derived from the adapter's variables would
            // otherwise make every activation record its autograd graph (and
            // the KV cache keep whole forward passes alive).
            self.set_projection(*layer, *target, (w + delta)?.detach())?;
            merged += 1;
        }
        Ok(merged)
    }

    fn head(&self) -> &RowMatrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    fn softcap(&self, logits: Tensor) -> Result<Tensor> {
        Ok(match self.config.final_logit_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    /// Next-token logits of `token_ids` only, from a final hidden state
    /// `[hidden]` (as returned by [`CausalLm::forward`]): gathers just those
    /// rows of the LM head.
    pub fn logits_for(&self, hidden: &Tensor, token_ids: &[u32]) -> Result<Vec<f32>> {
        if token_ids.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(&bad) = token_ids.iter().find(|&&t| t as usize >= self.config.vocab) {
            bail!(
                "token id {bad} is out of range for a vocabulary of {}",
                self.config.vocab
            );
        }
        let ids = Tensor::new(token_ids, &self.device)?;
        let rows = self.head().rows(&ids)?;
        let h = hidden
            .to_dtype(DType::F32)?
            .reshape((self.config.hidden, 1))?;
        let logits = rows.matmul(&h)?.squeeze(1)?;
        Ok(self.softcap(logits)?.to_vec1::<f32>()?)
    }

    /// The full-vocabulary next-token logits from a final hidden state.
    pub fn full_logits(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let h = hidden
            .to_dtype(DType::F32)?
            .reshape((1, self.config.hidden))?;
        let logits = self.head().project_all(&h)?.squeeze(0)?;
        Ok(self.softcap(logits)?.to_vec1::<f32>()?)
    }
}

/// `y + b` per row, or `y` for a projection without bias.
fn with_bias(y: Tensor, b: &Option<Tensor>) -> Result<Tensor> {
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * w`.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?)
}

/// [`rms_norm`] from elementary ops, so gradients flow through it (candle's
/// fused kernel has no backward pass).
fn rms_norm_train(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm_slow(x, w, eps as f32)?)
}

/// Inverse frequencies `1 / (theta^(2i/d) · scale · factor_i)`, in f32 like
/// the reference.
fn inv_freqs(head_dim: usize, theta: f32, scale: f32, factors: Option<&[f32]>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            let mut f = 1.0f32 / theta.powf(e);
            if scale != 1.0 {
                f /= scale;
            }
            if let Some(fs) = factors {
                f /= fs[i];
            }
            f
        })
        .collect()
}

/// `cos`/`sin` of `pos · inv_freq` for positions `offset..offset+n`, each
/// `[n, d/2]`.
fn rope_tables(inv: &[f32], offset: usize, n: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let half = inv.len();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in offset..offset + n {
        let pf = p as f32;
        for &f in inv {
            let a = f * pf;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), dev)?,
        Tensor::from_vec(sin, (n, half), dev)?,
    ))
}

/// Causal (and sliding-window) additive mask for queries at absolute
/// positions `offset..offset+s`. Keys before the returned first index are
/// outside every query's window and are left out; the mask is
/// `[s, offset + s - k0]`.
fn attention_mask(
    offset: usize,
    s: usize,
    window: Option<usize>,
    dev: &Device,
) -> Result<(usize, Tensor)> {
    let total = offset + s;
    let k0 = match window {
        Some(w) => (offset + 1).saturating_sub(w),
        None => 0,
    };
    let tk = total - k0;
    let mut m = vec![0f32; s * tk];
    for i in 0..s {
        let p = offset + i;
        for (j, slot) in m[i * tk..(i + 1) * tk].iter_mut().enumerate() {
            let k = k0 + j;
            let visible = k <= p && window.is_none_or(|w| p - k < w);
            if !visible {
                *slot = f32::NEG_INFINITY;
            }
        }
    }
    Ok((k0, Tensor::from_vec(m, (s, tk), dev)?))
}

/// Index of the largest value (first on ties).
pub fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, v) in values.iter().enumerate() {
        if best.is_none_or(|b| *v > values[b]) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_mask_matches_q_minus_k_below_window() {
        // 6 positions, window 3, queries 4 and 5 after 4 cached positions.
        let (k0, m) = attention_mask(4, 2, Some(3), &Device::Cpu).unwrap();
        assert_eq!(k0, 2);
        let m = m.to_vec2::<f32>().unwrap();
        // query 4 sees keys 2,3,4; query 5 sees 3,4,5.
        let vis: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|v| *v == 0.0).collect())
            .collect();
        assert_eq!(
            vis,
            vec![vec![true, true, true, false], vec![false, true, true, true]]
        );
        let (k0, m) = attention_mask(0, 3, None, &Device::Cpu).unwrap();
        assert_eq!(k0, 0);
        let m = m.to_vec2::<f32>().unwrap();
        assert_eq!(m[0][1], f32::NEG_INFINITY);
        assert_eq!(m[2][0], 0.0);
    }

    #[test]
    fn inv_freqs_first_is_one() {
        let f = inv_freqs(64, 100_000.0, 1.0, None);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 100_000f32.powf(-2.0 / 64.0)).abs() < 1e-9);
    }

    #[test]
    fn cache_prefix_reuse_keeps_one_token() {
        let kv = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 2))
            .unwrap();
        let mut c = KvCache {
            layers: vec![Some((kv.clone(), kv))],
            tokens: vec![1, 2, 3],
        };
        assert_eq!(c.common_prefix_len(&[1, 2, 4]), 2);
        // Identical prompt: one token must stay uncached.
        assert_eq!(c.clone().reuse_prefix(&[1, 2, 3]), 2);
        assert_eq!(c.clone().reuse_prefix_leaving(&[1, 2, 3], 0), 2);
        assert_eq!(c.clone().reuse_prefix_leaving(&[1, 2, 3, 4], 3), 1);
        assert_eq!(c.reuse_prefix(&[1, 9]), 1);
        assert_eq!(c.tokens(), &[1]);
        let (k, _) = c.layers[0].as_ref().unwrap();
        assert_eq!(k.dims(), [1, 1, 1, 2]);
        assert_eq!(
            k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0.0, 1.0]
        );
        c.clear();
        assert!(c.is_empty() && c.layers[0].is_none());
    }
}
