//! The seven projections of a transformer block, by name, and the seam
//! through which trainable updates reach them: the training pass asks a
//! [`ProjectionDelta`] for each projection's update (LoRA adapters implement
//! it in `crate::adapter`), and dense weights are read and replaced here
//! (full fine-tuning, merged adapters).

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};

use super::weights::Linear;
use super::{CausalLm, RopeStyle};

/// One of the seven projections of a block (the modules LoRA adapters and
/// full fine-tuning train).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// The Hugging Face / PEFT module name (`q_proj`, ...).
    pub fn hf_name(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::Down => "down_proj",
        }
    }

    fn hf_module(self) -> &'static str {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => "self_attn",
            _ => "mlp",
        }
    }

    /// Accepts Hugging Face names (`q_proj`) and short ones (`q`, `gate`).
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.trim().trim_end_matches("_proj");
        Ok(match n {
            "q" => Projection::Q,
            "k" => Projection::K,
            "v" => Projection::V,
            "o" => Projection::O,
            "gate" => Projection::Gate,
            "up" => Projection::Up,
            "down" => Projection::Down,
            _ => bail!(
                "unknown LoRA target `{name}`; expected some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
            ),
        })
    }

    /// The Hugging Face parameter path of this projection in layer `i`.
    pub fn hf_path(self, layer: usize) -> String {
        format!(
            "model.layers.{layer}.{}.{}",
            self.hf_module(),
            self.hf_name()
        )
    }
}

/// A trainable update of projection outputs in the training pass: the
/// transformer adds `delta(x)` to `W·x` wherever the update covers a
/// projection. LoRA adapters implement it (`crate::adapter::lora`).
pub trait ProjectionDelta {
    /// Whether projection `proj` of `layer` has an update.
    fn covers(&self, layer: usize, proj: Projection) -> bool;

    /// The update for input `x` of projection `proj` of `layer`, or None
    /// when it has none; `keep` is a scaled dropout mask shaped like `x`.
    fn delta(
        &self,
        layer: usize,
        proj: Projection,
        x: &Tensor,
        keep: Option<&Tensor>,
    ) -> Result<Option<Tensor>>;

    /// The lowest layer with an update: nothing below it trains.
    fn lowest_layer(&self) -> Option<usize>;

    /// For the hand-derived backward pass (`train_block`): the update of
    /// input `x` (dropout already applied) and what [`Self::backward`] needs
    /// of it, or None when the projection has no update.
    fn forward_saved(
        &self,
        layer: usize,
        proj: Projection,
        x: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>>;

    /// The gradient of the update's input `x` (as given to
    /// [`Self::forward_saved`], with `saved` from it) and of its parameters,
    /// in the order of the parameters' [`DeltaGrads`] slots, for the output
    /// gradient `d_out`.
    fn backward(
        &self,
        layer: usize,
        proj: Projection,
        x: &Tensor,
        saved: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)>;
}

/// Parameter gradients of a [`ProjectionDelta`] by (layer, projection), as
/// the hand-derived backward pass accumulates them.
pub type DeltaGrads = std::collections::BTreeMap<(usize, Projection), Vec<Tensor>>;

/// Adds `grads` of `(layer, proj)` into `store`.
pub fn accumulate_delta_grads(
    store: &mut DeltaGrads,
    layer: usize,
    proj: Projection,
    grads: Vec<Tensor>,
) -> Result<()> {
    match store.get_mut(&(layer, proj)) {
        Some(acc) => {
            ensure!(acc.len() == grads.len(), "gradient slots differ");
            for (a, g) in acc.iter_mut().zip(grads) {
                *a = (&*a + g)?;
            }
        }
        None => {
            store.insert((layer, proj), grads);
        }
    }
    Ok(())
}

/// For the rows of `heads` heads of `head_dim`: `idx[hf_row] = gguf_row`.
fn gguf_row_of_hf_row(heads: usize, head_dim: usize) -> Vec<u32> {
    let half = head_dim / 2;
    let mut idx = vec![0u32; heads * head_dim];
    for h in 0..heads {
        for c in 0..2 {
            for i in 0..half {
                idx[h * head_dim + c * half + i] = (h * head_dim + 2 * i + c) as u32;
            }
        }
    }
    idx
}

fn invert(perm: &[u32]) -> Vec<u32> {
    let mut inv = vec![0u32; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as u32;
    }
    inv
}

/// The query/key head layout of a model whose GGUF rows are permuted for
/// interleaved RoPE (llama GGUFs): (query heads, key heads, head dim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkPermutation {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl QkPermutation {
    /// Row reordering of a query/key projection between the GGUF layout and
    /// Hugging Face's: with `to_hf`, `idx[hf_row] = gguf_row` (an
    /// `index_select` of GGUF-ordered rows gives HF order), else the inverse.
    /// `None` for the other projections.
    pub fn rows(self, proj: Projection, to_hf: bool) -> Option<Vec<u32>> {
        let heads = match proj {
            Projection::Q => self.heads,
            Projection::K => self.kv_heads,
            _ => return None,
        };
        let hf_to_gguf = gguf_row_of_hf_row(heads, self.head_dim);
        Some(if to_hf {
            hf_to_gguf
        } else {
            invert(&hf_to_gguf)
        })
    }

    /// Reorders the rows of `t` (`[rows, ...]`) of projection `proj`
    /// between the layouts (unchanged for projections that are not permuted).
    pub fn apply(self, proj: Projection, t: Tensor, to_hf: bool) -> Result<Tensor> {
        Ok(match self.rows(proj, to_hf) {
            Some(idx) => t.index_select(&Tensor::new(idx.as_slice(), t.device())?, 0)?,
            None => t,
        })
    }
}

impl CausalLm {
    /// The q/k row permutation between this model's weights and Hugging
    /// Face's layout, when its rows are stored permuted (llama GGUFs, which
    /// rotate interleaved pairs); None otherwise.
    pub fn qk_permutation(&self) -> Option<QkPermutation> {
        let c = &self.config;
        (c.rope_style == RopeStyle::Interleaved).then_some(QkPermutation {
            heads: c.n_heads,
            kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        })
    }

    /// The projection `target` of layer `layer`.
    pub(crate) fn projection(&self, layer: usize, target: Projection) -> Option<&Linear> {
        let l = self.layers.get(layer)?;
        Some(match target {
            Projection::Q => &l.wq,
            Projection::K => &l.wk,
            Projection::V => &l.wv,
            Projection::O => &l.wo,
            Projection::Gate => &l.gate,
            Projection::Up => &l.up,
            Projection::Down => &l.down,
        })
    }

    fn projection_mut(&mut self, layer: usize, target: Projection) -> Option<&mut Linear> {
        let l = self.layers.get_mut(layer)?;
        Some(match target {
            Projection::Q => &mut l.wq,
            Projection::K => &mut l.wk,
            Projection::V => &mut l.wv,
            Projection::O => &mut l.wo,
            Projection::Gate => &mut l.gate,
            Projection::Up => &mut l.up,
            Projection::Down => &mut l.down,
        })
    }

    /// `[out, in]` of a projection.
    pub fn projection_dims(&self, layer: usize, target: Projection) -> Option<(usize, usize)> {
        self.projection(layer, target).map(Linear::dims)
    }

    /// Replaces a projection's weight by a dense `[out, in]` tensor (full
    /// fine-tuning puts trainable variables here; merging adapters puts
    /// `W + scale·B·A`).
    pub fn set_projection(&mut self, layer: usize, target: Projection, w: Tensor) -> Result<()> {
        let dims = self
            .projection_dims(layer, target)
            .with_context(|| format!("the model has no layer {layer}"))?;
        ensure!(
            w.dims() == [dims.0, dims.1],
            "layer {layer} {}: weight of shape {:?}, expected [{}, {}]",
            target.hf_name(),
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
    pub fn projection_weight(&self, layer: usize, target: Projection) -> Result<Tensor> {
        self.projection(layer, target)
            .with_context(|| format!("the model has no layer {layer}"))?
            .dense_weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_row_permutation_matches_llama_cpp_layout() {
        // One head of dim 4: HF rows [x0 x1 | y0 y1] are stored by llama.cpp
        // as [x0 y0 x1 y1] (pairs interleaved).
        let idx = gguf_row_of_hf_row(1, 4);
        assert_eq!(idx, vec![0, 2, 1, 3]);
        let two = gguf_row_of_hf_row(2, 4);
        assert_eq!(two, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(invert(&invert(&two)), two);
    }

    #[test]
    fn projections_parse_hf_and_short_names() {
        assert_eq!(Projection::parse("q_proj").unwrap(), Projection::Q);
        assert_eq!(Projection::parse("down").unwrap(), Projection::Down);
        assert!(Projection::parse("lm_head").is_err());
        assert_eq!(Projection::Gate.hf_path(3), "model.layers.3.mlp.gate_proj");
    }
}
