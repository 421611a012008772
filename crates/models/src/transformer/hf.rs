//! Hugging Face model directories (`config.json` + `*.safetensors`) of the
//! families in `families` (each family names its `architectures` values and
//! reads its own hyper-parameters). This module holds what they share: the
//! `config.json` reader, in the layout of either transformers 4
//! (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`, flat or per layer
//! type), and the tensor reader, which serves the safetensors under the GGUF
//! names the model builder asks for:
//! - q/k rows are in Hugging Face order, so RoPE rotates the two halves of
//!   each head (llama GGUFs permute those rows for interleaved RoPE);
//! - tensor names follow the llama layout unless the family renames a module,
//!   and RMSNorm weights get the family's offset (Gemma's `+1`);
//! - f16, bf16 and f32 tensors are read as f32; in quantized mode the
//!   projections and embeddings become Q8_0 blocks (a quarter of f32's
//!   memory, the GGUF kernels), in f32 mode they stay dense; biases stay f32.
//!
//! Refused with a message: MLP biases, Qwen's optional sliding-window layers,
//! RoPE scaling other than linear.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::{HfConfig, ModelConfig};
use super::families::{self, Family};
use super::weights::{Linear, RowMatrix, WeightMode, WeightSource};

/// A Hugging Face model directory opened for reading tensors.
pub(crate) struct HfDirReader {
    config_path: PathBuf,
    tensors: MmapedSafetensors,
    /// `""` or `"language_model."` (multimodal Gemma 3 checkpoints).
    prefix: String,
    family: &'static Family,
    device: Device,
}

/// Opens `dir`: reads `config.json`, maps every `*.safetensors` file, and
/// returns the reader and the model's hyper-parameters.
pub(crate) fn open(dir: &Path, device: &Device) -> Result<(HfDirReader, ModelConfig)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "{}: not a Hugging Face model directory (cannot read config.json)",
            dir.display()
        )
    })?;
    let root: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    let arch_name = root
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .with_context(|| {
            format!(
                "{}: field `architectures` is missing (expected e.g. [\"LlamaForCausalLM\"])",
                config_path.display()
            )
        })?
        .to_string();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.safetensors files", dir.display());
    }
    // SAFETY: the files are mapped read-only for the lifetime of the
    // reader; firstrank does not write them, and changing a model file
    // while it is being loaded is outside what any loader can guard against.
    let tensors = unsafe { MmapedSafetensors::multi(&files) }
        .with_context(|| format!("{}: cannot read the safetensors files", dir.display()))?;
    let family = families::by_hf_arch(&arch_name).with_context(|| {
        format!(
            "{}: unsupported architecture `{arch_name}` (config.json `architectures`); supported: {}",
            config_path.display(),
            families::supported_hf_archs().join(", ")
        )
    })?;
    let cfg_value = match (family.hf_text_config)(&arch_name) {
        Some(key) => root
            .get(key)
            .with_context(|| format!("{}: field `{key}` is missing", config_path.display()))?,
        None => &root,
    };
    let prefix = if tensors.get("model.embed_tokens.weight").is_ok() {
        String::new()
    } else if tensors
        .get("language_model.model.embed_tokens.weight")
        .is_ok()
    {
        "language_model.".to_string()
    } else {
        bail!(
            "{}: tensor `model.embed_tokens.weight` is missing from the safetensors files",
            dir.display()
        );
    };
    let cfg = HfConfig::new(&config_path, cfg_value);
    let reader = HfDirReader {
        config_path: config_path.clone(),
        tensors,
        prefix,
        family,
        device: device.clone(),
    };
    let has_lm_head = reader.has_tensor("output.weight");
    let config = (family.hf_config)(&cfg, &arch_name, has_lm_head)?;
    Ok((reader, config))
}

impl HfDirReader {
    /// The Hugging Face name of a GGUF tensor name, for this family.
    fn hf_name(&self, gguf: &str) -> Option<String> {
        let p = &self.prefix;
        match gguf {
            "token_embd.weight" => return Some(format!("{p}model.embed_tokens.weight")),
            "output.weight" => return Some(format!("{p}lm_head.weight")),
            "output_norm.weight" => return Some(format!("{p}model.norm.weight")),
            _ => {}
        }
        let rest = gguf.strip_prefix("blk.")?;
        let (layer, name) = rest.split_once('.')?;
        let (name, kind) = match name.strip_suffix(".weight") {
            Some(n) => (n, "weight"),
            None => (name.strip_suffix(".bias")?, "bias"),
        };
        let module = match (self.family.hf_block_module)(name) {
            Some(m) => m,
            None => match name {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                // llama calls its norm before the MLP post_attention_layernorm.
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            },
        };
        Some(format!("{p}model.layers.{layer}.{module}.{kind}"))
    }

    /// A tensor as f32 on the CPU, shape-checked; norms get the family's
    /// offset (Gemma's `+1`).
    fn load(&self, gguf: &str, shape: &[usize]) -> Result<Tensor> {
        let name = self.hf_name(gguf).with_context(|| {
            format!(
                "{}: no Hugging Face tensor corresponds to `{gguf}`",
                self.config_path.display()
            )
        })?;
        let t = self.tensors.load(&name, &Device::Cpu).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot read tensor `{name}` from the safetensors files: {e}",
                self.config_path.display()
            )
        })?;
        if t.dims() != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {shape:?} from config.json",
                self.config_path.display(),
                t.dims()
            );
        }
        let t = t.to_dtype(DType::F32)?;
        let is_norm = gguf.ends_with("norm.weight");
        let offset = self.family.hf_norm_offset;
        Ok(if is_norm && offset != 0.0 {
            (t + offset)?
        } else {
            t
        })
    }
}

impl WeightSource for HfDirReader {
    fn path(&self) -> &Path {
        &self.config_path
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.hf_name(name)
            .is_some_and(|n| self.tensors.get(&n).is_ok())
    }

    fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.load(name, shape)?.to_device(&self.device)?)
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize, mode: WeightMode) -> Result<Linear> {
        let w = self.load(name, &[out, inp])?.to_device(&self.device)?;
        Linear::from_f32(w, mode)
    }

    fn rows(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        mode: WeightMode,
    ) -> Result<RowMatrix> {
        let w = self.load(name, &[rows, cols])?.to_device(&self.device)?;
        RowMatrix::from_f32(w, mode)
    }
}
