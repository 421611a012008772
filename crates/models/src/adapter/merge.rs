//! Merging a LoRA adapter into its base: into a loaded model's projections
//! (how inference applies an adapter: [`merge_into_model`]), or into the base
//! GGUF file ([`merge_into_gguf`]), where every adapted projection becomes
//! `W + scale·B·A`, stored as f16 (default), q8_0 or f32, and all other
//! tensors and all metadata are copied unchanged. The result is a plain GGUF
//! that firstrank, llama.cpp and other GGUF tools load without knowing about
//! adapters.
//!
//! Re-quantizing a merged weight to the base's 4-bit type would round most of
//! a small adapter update away, hence f16 by default.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device};

use super::lora::LoraSet;
use crate::transformer::{CausalLm, Projection, WeightMode};

/// Adds every adapter's `scale·B·A` to its projection of `model`
/// (quantized weights become dense f32). Returns how many projections
/// changed.
pub fn merge_into_model(model: &mut CausalLm, set: &LoraSet) -> Result<usize> {
    let mut merged = 0;
    for ((layer, target), pair) in set.iter() {
        let w = model.projection_weight(*layer, *target)?;
        let delta = pair.merged_delta()?.to_device(model.device())?;
        // Detached: a weight derived from the adapter's variables would
        // otherwise make every activation record its autograd graph (and
        // the KV cache keep whole forward passes alive).
        model.set_projection(*layer, *target, (w + delta)?.detach())?;
        merged += 1;
    }
    Ok(merged)
}

/// Storage type of the merged projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum MergedType {
    /// Half precision (the default: keeps a small adapter's update).
    F16,
    /// 8-bit blocks (llama.cpp's Q8_0).
    #[cfg_attr(feature = "clap", value(name = "q8_0"))]
    Q8_0,
    /// Full precision.
    F32,
}

impl MergedType {
    fn ggml(self) -> GgmlDType {
        match self {
            MergedType::F16 => GgmlDType::F16,
            MergedType::Q8_0 => GgmlDType::Q8_0,
            MergedType::F32 => GgmlDType::F32,
        }
    }
}

fn gguf_projection(name: &str) -> Option<(usize, Projection)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let target = match tail {
        "attn_q.weight" => Projection::Q,
        "attn_k.weight" => Projection::K,
        "attn_v.weight" => Projection::V,
        "attn_output.weight" => Projection::O,
        "ffn_gate.weight" => Projection::Gate,
        "ffn_up.weight" => Projection::Up,
        "ffn_down.weight" => Projection::Down,
        _ => return None,
    };
    Some((layer.parse().ok()?, target))
}

/// Writes `base` with the adapter in `adapter_dir` merged into `out`
/// (atomically: a failed or interrupted write leaves no file). Returns how many projections
/// were merged.
pub fn merge_into_gguf(
    base: &Path,
    adapter_dir: &Path,
    out: &Path,
    merged: MergedType,
) -> Result<usize> {
    let device = Device::Cpu;
    // Loaded for the shapes and RoPE layout the adapter is checked against.
    let model = CausalLm::load(base, WeightMode::Quantized, &device)?;
    let set = LoraSet::load(adapter_dir, &model)?;
    drop(model);
    let mut file =
        std::fs::File::open(base).with_context(|| format!("cannot open {}", base.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| anyhow::anyhow!("{}: not a valid GGUF file: {e}", base.display()))?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let mut count = 0;
    for name in names {
        let q = content
            .tensor(&mut file, name, &device)
            .with_context(|| format!("{}: reading `{name}`", base.display()))?;
        let q = match gguf_projection(name).and_then(|(l, t)| set.get(l, t)) {
            Some(pair) => {
                let w = q.dequantize(&device)?.to_dtype(DType::F32)?;
                let w = (w + pair.merged_delta()?.to_device(&device)?)?;
                count += 1;
                QTensor::quantize(&w, merged.ggml())
                    .with_context(|| format!("quantizing merged `{name}`"))?
            }
            None => q,
        };
        tensors.push((name.clone(), q));
    }
    if count != set.len() {
        bail!(
            "{}: merged {count} of the adapter's {} projections (tensor names do not match)",
            base.display(),
            set.len()
        );
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let mut w = firstrank_core::formats::AtomicWriter::create(out)?;
    gguf_file::write(&mut w, &metadata, &tensor_refs)
        .with_context(|| format!("writing {}", out.display()))?;
    w.commit()?;
    Ok(count)
}
