//! Merging a trained LoRA adapter into its base GGUF file: every adapted
//! projection becomes `W + scale·B·A`, stored as f16 (default), q8_0 or f32;
//! all other tensors and all metadata are copied unchanged. The result is a
//! plain GGUF that firstrank, llama.cpp and other GGUF tools load without
//! knowing about adapters.
//!
//! Re-quantizing a merged weight to the base's 4-bit type would round most of
//! a small adapter update away, hence f16 by default.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device};

use super::lora::{LoraSet, LoraTarget};
use crate::transformer::{CausalLm, WeightMode};

/// Storage type of the merged projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergedType {
    F16,
    Q8_0,
    F32,
}

impl std::str::FromStr for MergedType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" => Ok(MergedType::F16),
            "q8_0" => Ok(MergedType::Q8_0),
            "f32" => Ok(MergedType::F32),
            other => bail!("unknown merged type `{other}`; expected f16, q8_0 or f32"),
        }
    }
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

fn gguf_projection(name: &str) -> Option<(usize, LoraTarget)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let target = match tail {
        "attn_q.weight" => LoraTarget::Q,
        "attn_k.weight" => LoraTarget::K,
        "attn_v.weight" => LoraTarget::V,
        "attn_output.weight" => LoraTarget::O,
        "ffn_gate.weight" => LoraTarget::Gate,
        "ffn_up.weight" => LoraTarget::Up,
        "ffn_down.weight" => LoraTarget::Down,
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
