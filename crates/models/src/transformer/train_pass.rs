//! The differentiable training pass on candle's autograd: what a training
//! forward adds to inference (adapters seen through [`ProjectionDelta`],
//! their input dropout, NEFTune embedding noise), and the per-layer entry
//! points the trainer drives (embedding, one block, the final norm, logits
//! of chosen rows).

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};

use super::norm::rms_norm_train;
use super::projection::{Projection, ProjectionDelta};
use super::{CausalLm, PaddedBatch, WeightMode};

/// What a training forward pass adds to inference: adapters, their input
/// dropout, and NEFTune embedding noise.
#[derive(Clone, Copy, Default)]
pub struct TrainContext<'a> {
    pub adapters: Option<&'a dyn ProjectionDelta>,
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
    pub(super) fn dropout_mask(
        &self,
        layer: usize,
        target: Projection,
        x: &Tensor,
    ) -> Result<Option<Tensor>> {
        let covered = self.adapters.is_some_and(|a| a.covers(layer, target));
        if self.dropout <= 0.0 || !covered {
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
pub struct DropoutMasks(std::cell::RefCell<std::collections::HashMap<(usize, Projection), Tensor>>);

impl CausalLm {
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

    /// For training on a CPU with AVX512-BF16: the projections of the
    /// layers below `below` (the frozen ones, which run forward only) multiply
    /// in bf16 with f32 accumulation from weights packed once, as
    /// quantized-mode prefill does, about twice the f32 rate. Their outputs
    /// feed the trained layers rounded as a bf16 base would be (the trained
    /// layers and every gradient stay f32). Returns whether it applied (false
    /// on other CPUs and devices, where nothing changes).
    pub fn bf16_frozen_layers(&mut self, below: usize) -> Result<bool> {
        if !(self.device.is_cpu() && super::bf16_gemm::available()) {
            return Ok(false);
        }
        for layer in self.layers.iter_mut().take(below) {
            for l in layer.projections_mut() {
                l.allow_bf16_prefill();
                l.prepack_bf16()?;
            }
        }
        Ok(true)
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
}
