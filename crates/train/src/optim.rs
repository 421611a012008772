//! AdamW with a learning-rate schedule (linear warmup, then linear or cosine
//! decay) and global gradient-norm clipping.
//!
//! Hand-written rather than candle-nn's `AdamW` because checkpoints must save
//! and restore the moment estimates for `--resume`, which candle-nn's
//! optimizer keeps private. The update is PyTorch's AdamW (decoupled weight
//! decay, bias-corrected moments).

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use candle_core::{Tensor, Var};

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Schedule {
    /// The peak rate throughout.
    Constant,
    /// Linear decay to 0.
    Linear,
    /// Cosine decay to 0.
    Cosine,
}

/// Learning rate at optimizer step `step` (0-based) of `total`, after
/// `warmup` steps of linear warmup from 0 (transformers' schedules).
pub fn learning_rate(
    peak: f64,
    schedule: Schedule,
    warmup: usize,
    total: usize,
    step: usize,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => peak * (1.0 - progress),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// AdamW over a fixed list of variables.
pub struct AdamW {
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, weight_decay: f64) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        })
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// One update with `grads[i]` for `vars[i]` (`None`: no gradient, the
    /// variable is left alone).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        ensure!(grads.len() == self.vars.len(), "one gradient per variable");
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let var = &self.vars[i];
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            let mut w = var.as_tensor().clone();
            if self.weight_decay > 0.0 {
                w = (&w * (1.0 - lr * self.weight_decay))?;
            }
            var.set(&(w - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments and step count, for a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            out.insert(format!("m.{i}"), m.to_device(&candle_core::Device::Cpu)?);
            out.insert(format!("v.{i}"), v.to_device(&candle_core::Device::Cpu)?);
        }
        out.insert(
            "step".to_string(),
            Tensor::new(&[self.step as u32], &candle_core::Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restores [`AdamW::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for i in 0..self.vars.len() {
            let dev = self.vars[i].device().clone();
            let get = |k: &str| -> Result<Tensor> {
                let t = state
                    .get(k)
                    .with_context(|| format!("optimizer state lacks `{k}`"))?;
                ensure!(
                    t.dims() == self.vars[i].dims(),
                    "optimizer state `{k}` has shape {:?}, the variable {:?}",
                    t.dims(),
                    self.vars[i].dims()
                );
                Ok(t.to_device(&dev)?)
            };
            self.m[i] = get(&format!("m.{i}"))?;
            self.v[i] = get(&format!("v.{i}"))?;
        }
        let step = state
            .get("step")
            .context("optimizer state lacks `step`")?
            .to_vec1::<u32>()?;
        self.step = *step.first().context("empty step")? as usize;
        Ok(())
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`;
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.iter().flatten() {
        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_shapes() {
        assert_eq!(learning_rate(1.0, Schedule::Linear, 2, 10, 0), 0.5);
        assert_eq!(learning_rate(1.0, Schedule::Linear, 2, 10, 1), 1.0);
        assert_eq!(learning_rate(1.0, Schedule::Linear, 2, 10, 2), 1.0);
        assert!((learning_rate(1.0, Schedule::Linear, 2, 10, 6) - 0.5).abs() < 1e-12);
        assert!((learning_rate(1.0, Schedule::Cosine, 0, 10, 5) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(1.0, Schedule::Constant, 0, 10, 9), 1.0);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_against_the_gradient() {
        let v = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![v.clone()], 0.0).unwrap();
        let g = Tensor::new(&[0.5f32, -3.0], &Device::Cpu).unwrap();
        opt.step(&[Some(g)], 0.1).unwrap();
        // Bias-corrected first step: update = g/|g| = sign(g).
        let w = v.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (w[0] - 0.9).abs() < 1e-5 && (w[1] + 1.9).abs() < 1e-5,
            "{w:?}"
        );
        // State round trip.
        let state = opt.state().unwrap();
        let mut other = AdamW::new(vec![v.clone()], 0.0).unwrap();
        other.load_state(&state).unwrap();
        assert_eq!(other.steps(), 1);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g = vec![
            Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap()),
            Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap()),
        ];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let a = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-4);
    }
}
