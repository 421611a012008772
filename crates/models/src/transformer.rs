//! The family-agnostic decoder-only transformer forward pass on candle
//! tensors, for the model families in `families` (llama, Qwen, Gemma 3), from
//! GGUF files or Hugging Face directories (`hf`). A family only sets the
//! switches of [`ModelConfig`]; the blocks are built and run here.
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
//! The shared blocks have files of their own: `attention` (and its masks),
//! `rope`, `norm`, `kv_cache`, `projection` (the seven projections and the
//! [`ProjectionDelta`] seam adapters train through), `train_pass` (the
//! differentiable pass on autograd) and `train_block` (a block's
//! hand-derived backward pass), `weights` (quantized and dense matrices). CPU
//! inference has fused kernels beside candle's ops: the causal softmax
//! (`softmax`), the gated MLP activation (`gated`), and, for quantized-mode
//! prefill on AVX512-BF16 CPUs, bf16 matrix products (`bf16_gemm`) for the
//! projections and the whole attention (`bf16_attention`). Training and CUDA
//! use candle's ops, with a gradient attached to candle's fused softmax for
//! training attention (`train_softmax`).

mod attention;
mod bf16_attention;
mod bf16_gemm;
mod config;
pub mod families;
mod gated;
mod hf;
mod kv_cache;
mod norm;
mod projection;
mod rope;
mod softmax;
#[cfg(test)]
mod test_support;
mod train_block;
mod train_pass;
mod train_softmax;
mod weights;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};

use attention::attention_mask;
use config::Meta;
pub use config::{Activation, LayerSpec, ModelConfig, RopeStyle};
pub use families::Family;
pub use kv_cache::KvCache;
use norm::{rms_norm, rms_norm_train};
pub use projection::{DeltaGrads, Projection, ProjectionDelta, QkPermutation};
use rope::{inv_freqs, rope_tables};
pub use train_block::BlockTape;
pub use train_pass::{DropoutMasks, TrainContext};
use weights::{GgufReader, Linear, RowMatrix, WeightSource};
pub use weights::{WeightMode, EXACT_MIN_TOKENS};

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

/// Largest total size of projections packed for bf16 prefill at load (1 GiB:
/// the +212 MB of SmolLM2-135M's, +180 MB of Gemma-3-270M's). Packing ahead
/// saves dequantizing and packing every weight at every prefill (a SmolLM2
/// FIRST window 1.1-1.2x faster); bigger models pack per call instead of
/// holding a bf16 copy beside their quantized blocks.
const BF16_PREPACK_BUDGET: usize = 1 << 30;

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
        let family = families::by_gguf_arch(&arch).with_context(|| {
            format!(
                "{}: unsupported model architecture `{arch}` (general.architecture); supported: {}",
                path.display(),
                families::supported_gguf_archs().join(", ")
            )
        })?;
        let config = (family.gguf_config)(&Meta {
            path,
            arch: &arch,
            md: &reader.content.metadata,
            reader: &reader,
        })?;
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

    /// The model's family (its loaders' and chat template's entry in
    /// [`families::FAMILIES`]).
    pub fn family(&self) -> Option<&'static Family> {
        families::by_name(self.config.family)
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
        let proj = |target: Projection, w: &Linear, x: &Tensor| -> Result<Tensor> {
            let y = w.forward(x, kernel)?;
            let Some(t) = train else { return Ok(y) };
            let Some(adapters) = t.adapters.filter(|a| a.covers(i, target)) else {
                return Ok(y);
            };
            let mask = t.dropout_mask(i, target, x)?;
            match adapters.delta(i, target, x, mask.as_ref())? {
                Some(delta) => Ok((y + delta)?),
                None => Ok(y),
            }
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
        let gate = proj(Projection::Gate, &layer.gate, &h)?;
        let up = proj(Projection::Up, &layer.up, &h)?;
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
        let mut m = proj(Projection::Down, &layer.down, &act)?;
        if let Some(n) = &layer.post_ffn_norm {
            m = norm(&m, n)?;
        }
        Ok((x1 + m)?)
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
