//! Full fine-tuning outputs: every trained projection as a dense matrix in
//! one safetensors file ([`FULL_WEIGHTS`]), under its Hugging Face name with
//! rows in Hugging Face order, so the file applies to the Hugging Face
//! checkpoint of the same model too.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use crate::transformer::{CausalLm, Projection};

/// The file a full fine-tuning run writes into its output directory.
pub const FULL_WEIGHTS: &str = "projections.safetensors";

/// The trained projections `vars` under their Hugging Face names, in
/// `dtype`, on the CPU.
pub fn full_named_tensors(
    model: &CausalLm,
    vars: &[((usize, Projection), Var)],
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let qk = model.qk_permutation();
    let mut out = HashMap::new();
    for ((layer, target), var) in vars {
        let mut w = var.as_tensor().clone();
        if let Some(qk) = qk {
            w = qk.apply(*target, w, true)?;
        }
        out.insert(
            format!("{}.weight", target.hf_path(*layer)),
            w.to_dtype(dtype)?.to_device(&Device::Cpu)?,
        );
    }
    Ok(out)
}

/// The weight of projection `target` of `layer` from tensors in Hugging Face
/// names and order (a [`FULL_WEIGHTS`] file or a checkpoint), in `model`'s
/// row order on its device; None when the tensors do not hold it.
pub fn projection_from_hf(
    model: &CausalLm,
    tensors: &HashMap<String, Tensor>,
    layer: usize,
    target: Projection,
) -> Result<Option<Tensor>> {
    let Some(t) = tensors.get(&format!("{}.weight", target.hf_path(layer))) else {
        return Ok(None);
    };
    let mut w = t.to_dtype(DType::F32)?.to_device(model.device())?;
    if let Some(qk) = model.qk_permutation() {
        w = qk.apply(target, w, false)?;
    }
    Ok(Some(w))
}

/// Loads a full fine-tuning output into `model`'s projections; returns how
/// many it replaced.
pub fn load_full_weights(model: &mut CausalLm, path: &Path) -> Result<usize> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: cannot read the projection weights", path.display()))?;
    let mut n = 0;
    for layer in 0..model.config().n_layers {
        for target in Projection::ALL {
            let Some(w) = projection_from_hf(model, &tensors, layer, target)? else {
                continue;
            };
            model.set_projection(layer, target, w).with_context(|| {
                format!("{}: `{}.weight`", path.display(), target.hf_path(layer))
            })?;
            n += 1;
        }
    }
    ensure!(n > 0, "{}: no projection weights found", path.display());
    Ok(n)
}
