//! The hand-derived backward pass of one transformer block, for training
//! with adapters: a forward pass that keeps what the backward pass needs (a
//! [`BlockTape`]), and a backward pass that turns the gradient of the
//! block's output into the gradient of its input and of the adapters'
//! parameters, with explicit tensor formulas instead of candle's autograd.
//!
//! Why not autograd: candle's backward of `x·Wᵀ` also computes the gradient
//! of the frozen weight (a product as large as the forward one), the
//! autograd path needs the composed (unfused) RMSNorm, RoPE and softmax, and
//! the graph of a whole layer had to be rebuilt in the backward pass to keep
//! memory bounded (checkpointing: a second forward). Here the forward runs
//! the fused kernels once, the tape holds the activations (the attention
//! probabilities are the largest: heads × tokens² per sequence), and the
//! backward computes only what is needed: `∂x = ∂y·W` for frozen weights,
//! the adapters' own gradients, the softmax's closed form
//! `p ⊙ (g − Σ g⊙p)`, RoPE's inverse rotation, RMSNorm's and the gated
//! activations' derivatives. The result equals autograd's up to float
//! rounding (tested against it); CPU and CUDA share the code.
//!
//! Covered: every block the transformer runs (llama, Qwen, Gemma 3: biases,
//! q/k norms, sandwich norms, SiLU and tanh-GELU, sliding windows, attention
//! soft-caps), with adapters given as a [`ProjectionDelta`]. Full
//! fine-tuning (trainable projection weights) stays on autograd.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, D};

use super::norm::rms_norm;
use super::projection::{accumulate_delta_grads, DeltaGrads, Projection};
use super::weights::Linear;
use super::{Activation, CausalLm, PaddedBatch, RopeStyle, TrainContext};

/// What the backward pass of one block needs from its forward pass.
pub struct BlockTape {
    layer: usize,
    /// Sequences and padded length of the batch.
    batch: usize,
    len: usize,
    /// The block's input, `[batch · len, hidden]`.
    x: Tensor,
    /// The adapters' inputs (dropout applied) and saved values, by projection.
    adapters: Vec<AdapterTape>,
    /// Queries and keys before their per-head norm (q/k-norm models), and
    /// after norm and RoPE; values. `[batch, heads, len, head_dim]`.
    q_pre_norm: Option<Tensor>,
    k_pre_norm: Option<Tensor>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// The attention probabilities, one block of queries at a time.
    attention: Vec<AttentionBlock>,
    /// Attention output before the post-attention norm (sandwich norms).
    a_pre: Option<Tensor>,
    /// Residual after attention.
    x1: Tensor,
    gate: Tensor,
    up: Tensor,
    /// MLP output before the post-MLP norm (sandwich norms).
    d_pre: Option<Tensor>,
}

/// One block of queries' attention: queries `q0..q0 + len` over keys
/// `k0..k0 + keys` (those some query of the block can see).
struct AttentionBlock {
    q0: usize,
    len: usize,
    k0: usize,
    keys: usize,
    /// `[batch, kv_heads, group · len, keys]`.
    probs: Tensor,
    /// `tanh(scores / cap)` where the model soft-caps attention logits.
    softcap_tanh: Option<Tensor>,
}

struct AdapterTape {
    proj: Projection,
    /// Input of the adapter: the projection's input times the dropout mask.
    input: Tensor,
    keep: Option<Tensor>,
    saved: Tensor,
}

impl BlockTape {
    fn adapter(&self, proj: Projection) -> Option<&AdapterTape> {
        self.adapters.iter().find(|a| a.proj == proj)
    }
}

impl CausalLm {
    /// Block `layer` of a training batch, keeping a tape for
    /// [`CausalLm::train_block_backward`]. `x: [batch · len, hidden]`.
    pub fn train_block_forward(
        &self,
        layer: usize,
        x: &Tensor,
        batch: &PaddedBatch,
        ctx: &TrainContext<'_>,
    ) -> Result<(Tensor, BlockTape)> {
        let c = &self.config;
        let l = self.layers.get(layer).context("no such layer")?;
        let (rope, mask) = batch.layer_tables(l)?;
        let (b, s) = (batch.sequences(), batch.len());
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let mut adapters = Vec::new();
        let mut project = |p: Projection, w: &Linear, bias: &Option<Tensor>, input: &Tensor| {
            self.tape_projection(layer, p, w, bias, input, ctx, &mut adapters)
        };
        let h = rms_norm(x, &l.attn_norm, c.rms_eps)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q0 = heads(project(Projection::Q, &l.wq, &l.bq, &h)?, nh)?;
        let k0 = heads(project(Projection::K, &l.wk, &l.bk, &h)?, nkv)?;
        let v = heads(project(Projection::V, &l.wv, &l.bv, &h)?, nkv)?;
        let (q1, k1, q_pre_norm, k_pre_norm) = match (&l.q_norm, &l.k_norm) {
            (Some(qn), Some(kn)) => (
                rms_norm(&q0, qn, c.rms_eps)?,
                rms_norm(&k0, kn, c.rms_eps)?,
                Some(q0),
                Some(k0),
            ),
            _ => (q0, k0, None, None),
        };
        let (cos, sin) = rope;
        let q = self.rope(&q1, cos, sin)?;
        let k = self.rope(&k1, cos, sin)?;
        let (o, attention) = self.taped_attention(l, &q, &k, &v, mask, b, s)?;
        let a = project(Projection::O, &l.wo, &l.bo, &o)?;
        let (a, a_pre) = match &l.post_attn_norm {
            Some(n) => (rms_norm(&a, n, c.rms_eps)?, Some(a)),
            None => (a, None),
        };
        let x1 = (x + a)?;
        let h2 = rms_norm(&x1, &l.ffn_norm, c.rms_eps)?;
        let gate = project(Projection::Gate, &l.gate, &None, &h2)?;
        let up = project(Projection::Up, &l.up, &None, &h2)?;
        let m = (activation(c.activation, &gate)? * &up)?;
        let d = project(Projection::Down, &l.down, &None, &m)?;
        let (d, d_pre) = match &l.post_ffn_norm {
            Some(n) => (rms_norm(&d, n, c.rms_eps)?, Some(d)),
            None => (d, None),
        };
        let y = (&x1 + d)?;
        let tape = BlockTape {
            layer,
            batch: b,
            len: s,
            x: x.clone(),
            adapters,
            q_pre_norm,
            k_pre_norm,
            q,
            k,
            v,
            attention,
            a_pre,
            x1,
            gate,
            up,
            d_pre,
        };
        Ok((y, tape))
    }

    /// `input·Wᵀ (+ bias)` plus the adapter's update where there is one,
    /// whose input, dropout mask and saved value go on the tape.
    #[allow(clippy::too_many_arguments)]
    fn tape_projection(
        &self,
        layer: usize,
        proj: Projection,
        w: &Linear,
        bias: &Option<Tensor>,
        input: &Tensor,
        ctx: &TrainContext<'_>,
        tapes: &mut Vec<AdapterTape>,
    ) -> Result<Tensor> {
        let mut y = w.forward(input, false)?;
        if let Some(adapters) = ctx.adapters.filter(|a| a.covers(layer, proj)) {
            let keep = ctx.dropout_mask(layer, proj, input)?;
            let kept = match &keep {
                Some(k) => (input * k)?,
                None => input.clone(),
            };
            if let Some((delta, saved)) = adapters.forward_saved(layer, proj, &kept)? {
                y = (y + delta)?;
                tapes.push(AdapterTape {
                    proj,
                    input: kept,
                    keep,
                    saved,
                });
            }
        }
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Causal attention of `q: [b, heads, s, hd]` over `k`, `v: [b, kv_heads,
    /// s, hd]` (after RoPE), one block of queries at a time over only the keys
    /// the block can see (causal, and the layer's sliding window): returns the
    /// output `[b · s, heads · hd]` and the blocks' probabilities. Masked keys
    /// get probability exactly 0, so this equals the full masked product.
    #[allow(clippy::too_many_arguments)]
    fn taped_attention(
        &self,
        l: &super::Layer,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        b: usize,
        s: usize,
    ) -> Result<(Tensor, Vec<AttentionBlock>)> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let group = nh / nkv;
        let q = q.reshape((b, nkv, group, s, hd))?;
        let block = self.attention_block();
        let mut outs = Vec::with_capacity(s.div_ceil(block));
        let mut blocks = Vec::with_capacity(s.div_ceil(block));
        for q0 in (0..s).step_by(block) {
            let len = block.min(s - q0);
            let k0 = match l.spec.sliding_window {
                Some(w) => (q0 + 1).saturating_sub(w),
                None => 0,
            };
            let keys = q0 + len - k0;
            let qb = (q
                .narrow(3, q0, len)?
                .contiguous()?
                .reshape((b, nkv, group * len, hd))?
                * c.attn_scale)?;
            let kb = k.narrow(2, k0, keys)?;
            let mut scores = qb.matmul(&kb.t()?)?;
            let softcap_tanh = match c.attn_logit_softcap {
                Some(cap) => {
                    let t = (scores / cap)?.tanh()?;
                    scores = (&t * cap)?;
                    Some(t)
                }
                None => None,
            };
            let mb = mask.narrow(0, q0, len)?.narrow(1, k0, keys)?;
            let scores = scores
                .reshape((b, nkv, group, len, keys))?
                .broadcast_add(&mb)?
                .reshape((b, nkv, group * len, keys))?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            drop(scores);
            let vb = v.narrow(2, k0, keys)?.contiguous()?;
            outs.push(probs.matmul(&vb)?.reshape((b, nkv, group, len, hd))?);
            blocks.push(AttentionBlock {
                q0,
                len,
                k0,
                keys,
                probs,
                softcap_tanh,
            });
        }
        let o = Tensor::cat(&outs, 3)?
            .reshape((b, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((b * s, nh * hd))?;
        Ok((o, blocks))
    }

    /// The gradients of the queries, keys and values (`[b, heads or
    /// kv_heads, s, hd]`, after RoPE) from that of the attention output
    /// `d_o: [b · s, heads · hd]`, block by block: with `P` a block's
    /// probabilities, `∂V += Pᵀ·∂O`, `∂S = P ⊙ (∂P − Σ ∂P⊙P)` for
    /// `∂P = ∂O·Vᵀ`, then `∂Q = scale · ∂S·K` and `∂K += ∂Sᵀ·(scale · Q)`.
    fn taped_attention_backward(
        &self,
        tape: &BlockTape,
        d_o: &Tensor,
        b: usize,
        s: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let group = nh / nkv;
        let d_o = d_o
            .reshape((b, s, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, nkv, group, s, hd))?;
        let q = tape.q.reshape((b, nkv, group, s, hd))?;
        let mut dq_blocks = Vec::with_capacity(tape.attention.len());
        let mut dk: Option<Tensor> = None;
        let mut dv: Option<Tensor> = None;
        let add = |acc: &mut Option<Tensor>, part: Tensor, k0: usize, keys: usize| -> Result<()> {
            let part = part.pad_with_zeros(2, k0, s - k0 - keys)?;
            *acc = Some(match acc.take() {
                Some(a) => (a + part)?,
                None => part,
            });
            Ok(())
        };
        for blk in &tape.attention {
            let (q0, len, k0, keys) = (blk.q0, blk.len, blk.k0, blk.keys);
            let dob = d_o
                .narrow(3, q0, len)?
                .contiguous()?
                .reshape((b, nkv, group * len, hd))?;
            let kb = tape.k.narrow(2, k0, keys)?;
            let vb = tape.v.narrow(2, k0, keys)?;
            let d_probs = dob.matmul(&vb.t()?)?;
            add(&mut dv, blk.probs.t()?.matmul(&dob)?, k0, keys)?;
            let dot = (&d_probs * &blk.probs)?.sum_keepdim(D::Minus1)?;
            let mut d_scores = (d_probs.broadcast_sub(&dot)? * &blk.probs)?;
            drop((d_probs, dot));
            if let Some(t) = &blk.softcap_tanh {
                // scores = cap · tanh(raw / cap): ∂raw = ∂scores · (1 − tanh²).
                d_scores = (d_scores * (1.0 - t.sqr()?)?)?;
            }
            let qb = (q
                .narrow(3, q0, len)?
                .contiguous()?
                .reshape((b, nkv, group * len, hd))?
                * c.attn_scale)?;
            dq_blocks.push(
                (d_scores.matmul(&kb.contiguous()?)? * c.attn_scale)?
                    .reshape((b, nkv, group, len, hd))?,
            );
            add(&mut dk, d_scores.t()?.matmul(&qb)?, k0, keys)?;
        }
        let dq = Tensor::cat(&dq_blocks, 3)?.reshape((b, nh, s, hd))?;
        let dk = dk.context("no attention blocks")?;
        let dv = dv.context("no attention blocks")?;
        Ok((dq, dk, dv))
    }

    /// RoPE of `[batch, heads, len, head_dim]` in the model's pairing.
    fn rope(&self, t: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(match self.config.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(t, cos, sin)?,
            RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(t, cos, sin)?,
        })
    }

    /// The gradient of a block's input from the gradient `dy` of its output
    /// (`[batch · len, hidden]`); adds the adapters' parameter gradients to
    /// `grads`.
    pub fn train_block_backward(
        &self,
        tape: BlockTape,
        dy: &Tensor,
        batch: &PaddedBatch,
        ctx: &TrainContext<'_>,
        grads: &mut DeltaGrads,
    ) -> Result<Tensor> {
        let c = &self.config;
        let i = tape.layer;
        let l = self.layers.get(i).context("no such layer")?;
        let (b, s) = (tape.batch, tape.len);
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let adapters = ctx.adapters;
        // ∂input of `input·Wᵀ + Δ(input ⊙ keep)` from ∂output.
        let mut back = |p: Projection, w: &Linear, d_out: &Tensor| -> Result<Tensor> {
            let mut d_in = d_out.matmul(&weight(w)?)?;
            if let (Some(t), Some(a)) = (tape.adapter(p), adapters) {
                let (d_kept, g) = a.backward(i, p, &t.input, &t.saved, d_out)?;
                accumulate_delta_grads(grads, i, p, g)?;
                d_in = match &t.keep {
                    Some(k) => (d_in + (d_kept * k)?)?,
                    None => (d_in + d_kept)?,
                };
            }
            Ok(d_in)
        };

        // MLP: y = x1 + norm?(down(act(gate) ⊙ up)).
        let dd = match (&l.post_ffn_norm, &tape.d_pre) {
            (Some(n), Some(pre)) => rms_norm_backward(pre, n, c.rms_eps, dy)?,
            _ => dy.clone(),
        };
        let act = activation(c.activation, &tape.gate)?;
        let dm = back(Projection::Down, &l.down, &dd)?;
        let d_up = (&dm * &act)?;
        let d_gate = ((&dm * &tape.up)? * activation_derivative(c.activation, &tape.gate)?)?;
        drop((dm, act));
        let dh2 =
            (back(Projection::Gate, &l.gate, &d_gate)? + back(Projection::Up, &l.up, &d_up)?)?;
        let mut dx1 = (dy + rms_norm_backward(&tape.x1, &l.ffn_norm, c.rms_eps, &dh2)?)?;
        drop(dh2);

        // Attention: x1 = x + norm?(o·Woᵀ).
        let da = match (&l.post_attn_norm, &tape.a_pre) {
            (Some(n), Some(pre)) => rms_norm_backward(pre, n, c.rms_eps, &dx1)?,
            _ => dx1.clone(),
        };
        let d_o = back(Projection::O, &l.wo, &da)?;
        drop(da);
        let (dq, dk, dv) = self.taped_attention_backward(&tape, &d_o, b, s)?;
        // RoPE is a rotation: its transpose rotates by the opposite angle.
        let ((cos, sin), _) = batch.layer_tables(l)?;
        let neg_sin = sin.neg()?;
        let mut dq = self.rope(&dq.contiguous()?, cos, &neg_sin)?;
        let mut dk = self.rope(&dk.contiguous()?, cos, &neg_sin)?;
        if let (Some(qn), Some(kn), Some(q0), Some(k0)) =
            (&l.q_norm, &l.k_norm, &tape.q_pre_norm, &tape.k_pre_norm)
        {
            dq = rms_norm_backward(q0, qn, c.rms_eps, &dq)?;
            dk = rms_norm_backward(k0, kn, c.rms_eps, &dk)?;
        }
        let rows = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.transpose(1, 2)?.contiguous()?.reshape((b * s, n * hd))?)
        };
        let dh = ((back(Projection::Q, &l.wq, &rows(dq, nh)?)?
            + back(Projection::K, &l.wk, &rows(dk, nkv)?)?)?
            + back(Projection::V, &l.wv, &rows(dv, nkv)?)?)?;
        dx1 = (dx1 + rms_norm_backward(&tape.x, &l.attn_norm, c.rms_eps, &dh)?)?;
        Ok(dx1)
    }
}

/// The dense f32 weight `[out, in]` of a trained model's projection.
fn weight(w: &Linear) -> Result<Tensor> {
    w.dense_weight()
}

/// The gate activation.
fn activation(act: Activation, g: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => candle_nn::ops::silu(g)?,
        Activation::GeluTanh => g.gelu()?,
    })
}

/// The derivative of the gate activation at `g`.
fn activation_derivative(act: Activation, g: &Tensor) -> Result<Tensor> {
    Ok(match act {
        // silu(g) = g·σ(g): σ(g)·(1 + g·(1 − σ(g))).
        Activation::Silu => {
            let sig = candle_nn::ops::sigmoid(g)?;
            let one_minus = (1.0 - &sig)?;
            (&sig * ((g * one_minus)? + 1.0)?)?
        }
        // gelu(g) = ½g(1 + tanh(u)), u = c(g + 0.044715g³):
        // ½(1 + tanh u) + ½g(1 − tanh²u)·c(1 + 3·0.044715g²).
        Activation::GeluTanh => {
            let c = (2.0f64 / std::f64::consts::PI).sqrt();
            let g2 = g.sqr()?;
            let u = ((g * ((&g2 * 0.044715)? + 1.0)?)? * c)?;
            let t = u.tanh()?;
            let du = (((&g2 * (3.0 * 0.044715))? + 1.0)? * c)?;
            let left = ((&t + 1.0)? * 0.5)?;
            let right = (((g * 0.5)? * (1.0 - t.sqr()?)?)? * du)?;
            (left + right)?
        }
    })
}

/// The gradient of `x` through `y = rms_norm(x, w)` over the last
/// dimension, from `∂y`: with `r = (mean(x²) + eps)^-½` and `g = ∂y ⊙ w`,
/// `∂x = r·g − x·r³·mean(x ⊙ g)`.
pub(super) fn rms_norm_backward(x: &Tensor, w: &Tensor, eps: f64, dy: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.powf(-0.5)?;
    let g = dy.broadcast_mul(w)?;
    let xg = (&x * &g)?.mean_keepdim(D::Minus1)?;
    let first = g.broadcast_mul(&r)?;
    let second = x.broadcast_mul(&(r.powf(3.0)? * xg)?)?;
    Ok((first - second)?)
}
