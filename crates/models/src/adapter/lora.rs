//! LoRA adapters on the transformer's projections: creation, the low-rank
//! update the training pass adds through the transformer's
//! [`ProjectionDelta`] seam, and saving/loading in PEFT's layout so adapters
//! move between firstrank and Hugging Face tools (merging is in `merge`).
//!
//! An adapter on a projection `W: [out, in]` adds `scale · B·A·x` with
//! `A: [r, in]`, `B: [out, r]`, `scale = alpha / r`. As in PEFT, `A` starts
//! Kaiming-uniform (bound `1/sqrt(in)`) and `B` at zero, so training starts
//! from the base model; dropout applies to the adapter's input only.
//!
//! Files (`adapter_config.json` + `adapter_model.safetensors`) use PEFT's
//! names, `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`
//! and so on. llama-architecture GGUF files store the query and key rows
//! permuted for llama.cpp's interleaved RoPE; the `B` matrices of `q_proj`
//! and `k_proj` are permuted back to Hugging Face's row order on save and
//! forward again on load, so a saved adapter applies to the Hugging Face
//! checkpoint of the same model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use firstrank_core::formats::write_atomically;
use firstrank_core::significance::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::transformer::{CausalLm, Projection, ProjectionDelta, QkPermutation};

/// Rank, scaling, dropout and targets of a set of adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<Projection>,
    /// Layers that get adapters (PEFT's `layers_to_transform`); `None`: all.
    /// Adapting only the top layers leaves the layers below frozen, so the
    /// backward pass stops at the lowest adapted layer.
    pub layers: Option<Vec<usize>>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: Projection::ALL.to_vec(),
            layers: None,
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.rank > 0, "LoRA rank must be at least 1 (got 0)");
        ensure!(
            self.alpha > 0.0 && self.alpha.is_finite(),
            "LoRA alpha must be positive (got {})",
            self.alpha
        );
        ensure!(
            (0.0..1.0).contains(&self.dropout),
            "LoRA dropout must be in [0, 1) (got {})",
            self.dropout
        );
        ensure!(
            !self.targets.is_empty(),
            "LoRA needs at least one target projection"
        );
        if let Some(layers) = &self.layers {
            ensure!(!layers.is_empty(), "LoRA needs at least one layer");
        }
        Ok(())
    }

    /// Checks the layer selection against a model of `n_layers` layers.
    pub fn validate_for(&self, n_layers: usize) -> Result<()> {
        self.validate()?;
        if let Some(bad) = self
            .layers
            .iter()
            .flatten()
            .find(|&&layer| layer >= n_layers)
        {
            bail!(
                "LoRA layer {bad} (layers_to_transform) does not exist: the model has layers 0..={}",
                n_layers - 1
            );
        }
        Ok(())
    }

    /// The adapted layers of a model with `n_layers` layers (checked by
    /// [`LoraConfig::validate_for`]), ascending.
    pub fn adapted_layers(&self, n_layers: usize) -> Vec<usize> {
        match &self.layers {
            None => (0..n_layers).collect(),
            Some(l) => {
                let mut l = l.clone();
                l.sort_unstable();
                l.dedup();
                l
            }
        }
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One adapter: `A: [r, in]`, `B: [out, r]` (trainable) and its scale.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
}

impl LoraPair {
    /// `scale · B·A·(x ⊙ keep)`; `keep` is a scaled dropout mask shaped like
    /// `x` (None: no dropout).
    pub fn delta(&self, x: &Tensor, keep: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = match keep {
            Some(k) => (x * k)?,
            None => x.clone(),
        };
        x.matmul(&self.a.as_tensor().t()?)?
            .matmul(&self.b.as_tensor().t()?)?
            * self.scale
    }

    /// `scale · B·A`, `[out, in]`, detached from the autograd graph.
    pub fn merged_delta(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?.detach())
    }
}

/// The adapters of a model, keyed by (layer, projection).
#[derive(Debug, Clone)]
pub struct LoraSet {
    config: LoraConfig,
    pairs: BTreeMap<(usize, Projection), LoraPair>,
    /// Heads per projection when q/k rows are stored permuted (llama GGUF):
    /// (query heads, key heads, head dim).
    qk_permutation: Option<QkPermutation>,
}

#[derive(Serialize, Deserialize)]
struct AdapterConfigFile {
    peft_type: String,
    task_type: String,
    r: usize,
    lora_alpha: f64,
    lora_dropout: f32,
    target_modules: Vec<String>,
    bias: String,
    fan_in_fan_out: bool,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    inference_mode: bool,
    #[serde(default)]
    use_rslora: bool,
    /// PEFT writes one index or a list; absent or null: every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layers_to_transform: Option<LayerSelection>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum LayerSelection {
    One(usize),
    Many(Vec<usize>),
}

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

impl LoraSet {
    /// Fresh adapters (`A` Kaiming-uniform from `seed`, `B` zero) on
    /// `config.targets` of the adapted layers.
    pub fn new(model: &CausalLm, config: &LoraConfig, seed: u64) -> Result<Self> {
        let device = model.device();
        let mut rng = SplitMix64(seed);
        let mut pairs = BTreeMap::new();
        let n_layers = model.config().n_layers;
        config.validate_for(n_layers)?;
        for layer in config.adapted_layers(n_layers) {
            for &target in &config.targets {
                let (out, inp) = model.projection_dims(layer, target).context("projection")?;
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..config.rank * inp)
                    .map(|_| ((rng.unit_f64() * 2.0 - 1.0) * bound) as f32)
                    .collect();
                let a = Tensor::from_vec(a, (config.rank, inp), device)?;
                let b = Tensor::zeros((out, config.rank), DType::F32, device)?;
                pairs.insert(
                    (layer, target),
                    LoraPair {
                        a: Var::from_tensor(&a)?,
                        b: Var::from_tensor(&b)?,
                        scale: config.scale(),
                    },
                );
            }
        }
        Ok(Self {
            config: config.clone(),
            pairs,
            qk_permutation: model.qk_permutation(),
        })
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The lowest layer with an adapter: nothing below it trains.
    pub fn lowest_layer(&self) -> Option<usize> {
        self.pairs.keys().map(|(l, _)| *l).min()
    }

    pub fn get(&self, layer: usize, target: Projection) -> Option<&LoraPair> {
        self.pairs.get(&(layer, target))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&(usize, Projection), &LoraPair)> {
        self.pairs.iter()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The layers that have adapters, ascending.
    pub fn layers(&self) -> Vec<usize> {
        let mut l: Vec<usize> = self.pairs.keys().map(|(l, _)| *l).collect();
        l.dedup();
        l
    }

    /// The trainable variables, `A` then `B` of each adapter in key order.
    pub fn vars(&self) -> Vec<Var> {
        self.pairs
            .values()
            .flat_map(|p| [p.a.clone(), p.b.clone()])
            .collect()
    }

    /// Number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.pairs
            .values()
            .map(|p| p.a.elem_count() + p.b.elem_count())
            .sum()
    }

    /// Checks that a checkpoint written by an earlier run holds exactly this
    /// set's adapters (same layers, projections and rank), so `--resume` with
    /// different adapter options fails saying so instead of on a tensor name.
    pub fn check_resumable(&self, checkpoint: &HashMap<String, Tensor>) -> Result<()> {
        let describe = |layers: &[usize], targets: usize, rank: Option<usize>| {
            let rank = rank.map_or("?".to_string(), |r| r.to_string());
            format!(
                "{targets} projections on layers {} at rank {rank}",
                layer_list(layers)
            )
        };
        let mut found: BTreeMap<usize, usize> = BTreeMap::new();
        let mut found_rank = None;
        for (name, t) in checkpoint {
            if let Some(layer) = layer_of_tensor_name(name) {
                if name.ends_with(".lora_A.weight") {
                    *found.entry(layer).or_default() += 1;
                    found_rank = t.dims().first().copied();
                }
            }
        }
        let found_layers: Vec<usize> = found.keys().copied().collect();
        let found_targets = found.values().copied().max().unwrap_or(0);
        let expected_layers = self.layers();
        let expected_targets = self.config.targets.len();
        let same = found_layers == expected_layers
            && found.values().all(|&n| n == expected_targets)
            && found_rank == Some(self.config.rank);
        ensure!(
            same,
            "--resume: the checkpoint holds {}, but this run asks for {}; resume with the \
             checkpoint's adapter options (--lora-layers, --lora-targets, --lora-rank) or \
             train into a new --output directory",
            describe(&found_layers, found_targets, found_rank),
            describe(&expected_layers, expected_targets, Some(self.config.rank))
        );
        Ok(())
    }

    fn row_permutation(&self, target: Projection, to_hf: bool) -> Option<Vec<u32>> {
        self.qk_permutation?.rows(target, to_hf)
    }

    /// The tensors under PEFT's names (B rows in Hugging Face order), in `dtype`.
    pub fn named_tensors(&self, dtype: DType) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for ((layer, target), pair) in &self.pairs {
            let prefix = format!("base_model.model.{}", target.hf_path(*layer));
            let mut b = pair.b.as_tensor().clone();
            if let Some(perm) = self.row_permutation(*target, true) {
                let idx = Tensor::new(perm.as_slice(), b.device())?;
                b = b.index_select(&idx, 0)?;
            }
            out.insert(
                format!("{prefix}.lora_A.weight"),
                pair.a
                    .as_tensor()
                    .to_dtype(dtype)?
                    .to_device(&Device::Cpu)?,
            );
            out.insert(
                format!("{prefix}.lora_B.weight"),
                b.to_dtype(dtype)?.to_device(&Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into
    /// `dir` (created if needed), each written atomically.
    pub fn save(&self, dir: &Path, dtype: DType, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create adapter directory {}", dir.display()))?;
        let tensors = self.named_tensors(dtype)?;
        super::save_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS))?;
        let config = AdapterConfigFile {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r: self.config.rank,
            lora_alpha: self.config.alpha,
            lora_dropout: self.config.dropout,
            target_modules: self
                .config
                .targets
                .iter()
                .map(|t| t.hf_name().to_string())
                .collect(),
            bias: "none".into(),
            fan_in_fan_out: false,
            base_model_name_or_path: Some(base_model.to_string()),
            inference_mode: true,
            use_rslora: false,
            layers_to_transform: self
                .config
                .layers
                .as_ref()
                .map(|_| LayerSelection::Many(self.layers())),
        };
        let json = serde_json::to_string_pretty(&config)? + "\n";
        write_atomically(dir.join(ADAPTER_CONFIG), json.as_bytes())?;
        Ok(())
    }

    /// Loads a PEFT LoRA adapter directory for `model`; errors name the file
    /// and the tensor or field at fault.
    pub fn load(dir: &Path, model: &CausalLm) -> Result<Self> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&config_path).with_context(|| {
            format!(
                "{}: cannot read the adapter config (is {} a LoRA adapter directory?)",
                config_path.display(),
                dir.display()
            )
        })?;
        let file: AdapterConfigFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a PEFT adapter config", config_path.display()))?;
        ensure!(
            file.peft_type.eq_ignore_ascii_case("lora"),
            "{}: peft_type is `{}`, only LORA adapters are supported",
            config_path.display(),
            file.peft_type
        );
        ensure!(
            !file.use_rslora,
            "{}: rsLoRA scaling is not supported",
            config_path.display()
        );
        let targets = file
            .target_modules
            .iter()
            .map(|t| Projection::parse(t))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("{}: target_modules", config_path.display()))?;
        let config = LoraConfig {
            rank: file.r,
            alpha: file.lora_alpha,
            dropout: file.lora_dropout,
            targets,
            layers: file.layers_to_transform.map(|l| match l {
                LayerSelection::One(i) => vec![i],
                LayerSelection::Many(v) => v,
            }),
        };
        let n_layers = model.config().n_layers;
        config
            .validate_for(n_layers)
            .with_context(|| format!("{}", config_path.display()))?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        let device = model.device();
        let tensors =
            candle_core::safetensors::load(&weights_path, &Device::Cpu).with_context(|| {
                format!(
                    "{}: cannot read the adapter weights",
                    weights_path.display()
                )
            })?;
        let mut set = Self {
            config: config.clone(),
            pairs: BTreeMap::new(),
            qk_permutation: model.qk_permutation(),
        };
        for layer in config.adapted_layers(n_layers) {
            for &target in &config.targets {
                let prefix = format!("base_model.model.{}", target.hf_path(layer));
                let get = |suffix: &str| -> Result<Tensor> {
                    let name = format!("{prefix}.{suffix}.weight");
                    let t = tensors.get(&name).with_context(|| {
                        format!("{}: tensor `{name}` is missing", weights_path.display())
                    })?;
                    Ok(t.to_dtype(DType::F32)?.to_device(device)?)
                };
                let (out, inp) = model.projection_dims(layer, target).context("projection")?;
                let a = get("lora_A")?;
                let mut b = get("lora_B")?;
                ensure!(
                    a.dims() == [config.rank, inp] && b.dims() == [out, config.rank],
                    "{}: {prefix}: lora_A {:?} / lora_B {:?} do not fit a [{out}, {inp}] projection at rank {}",
                    weights_path.display(),
                    a.dims(),
                    b.dims(),
                    config.rank
                );
                if let Some(perm) = set.row_permutation(target, false) {
                    let idx = Tensor::new(perm.as_slice(), device)?;
                    b = b.index_select(&idx, 0)?;
                }
                set.pairs.insert(
                    (layer, target),
                    LoraPair {
                        a: Var::from_tensor(&a)?,
                        b: Var::from_tensor(&b)?,
                        scale: config.scale(),
                    },
                );
            }
        }
        Ok(set)
    }

    /// Replaces the values of every adapter (same keys and shapes) from
    /// `tensors` in PEFT names, as written by [`LoraSet::named_tensors`].
    pub fn set_from(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for ((layer, target), pair) in &self.pairs {
            let prefix = format!("base_model.model.{}", target.hf_path(*layer));
            for (suffix, var) in [("lora_A", &pair.a), ("lora_B", &pair.b)] {
                let name = format!("{prefix}.{suffix}.weight");
                let t = tensors
                    .get(&name)
                    .with_context(|| format!("tensor `{name}` is missing"))?
                    .to_dtype(DType::F32)?
                    .to_device(var.device())?;
                let t = match (suffix, self.row_permutation(*target, false)) {
                    ("lora_B", Some(perm)) => {
                        let idx = Tensor::new(perm.as_slice(), var.device())?;
                        t.index_select(&idx, 0)?
                    }
                    _ => t,
                };
                var.set(&t)?;
            }
        }
        Ok(())
    }
}

impl ProjectionDelta for LoraSet {
    fn covers(&self, layer: usize, proj: Projection) -> bool {
        self.pairs.contains_key(&(layer, proj))
    }

    fn delta(
        &self,
        layer: usize,
        proj: Projection,
        x: &Tensor,
        keep: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        match self.pairs.get(&(layer, proj)) {
            Some(pair) => Ok(Some(pair.delta(x, keep)?)),
            None => Ok(None),
        }
    }

    fn lowest_layer(&self) -> Option<usize> {
        LoraSet::lowest_layer(self)
    }

    /// `Δ = scale · z·Bᵀ` with `z = x·Aᵀ` (kept for the backward pass).
    fn forward_saved(
        &self,
        layer: usize,
        proj: Projection,
        x: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let Some(pair) = self.pairs.get(&(layer, proj)) else {
            return Ok(None);
        };
        // Detached: the hand-derived pass must not record candle's autograd
        // graph (which would keep every activation of the step alive).
        let (a, b) = (pair.a.as_tensor().detach(), pair.b.as_tensor().detach());
        let z = x.matmul(&a.t()?)?;
        let delta = (z.matmul(&b.t()?)? * pair.scale)?;
        Ok(Some((delta, z)))
    }

    /// With `g = ∂L/∂Δ`: `∂B = scale · gᵀz`, `∂z = scale · g·B`,
    /// `∂A = ∂zᵀ·x`, `∂x = ∂z·A`; the slots are `[A, B]` ([`LoraSet::vars`]'
    /// order).
    fn backward(
        &self,
        layer: usize,
        proj: Projection,
        x: &Tensor,
        saved: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let pair = self
            .pairs
            .get(&(layer, proj))
            .context("backward of a projection without an adapter")?;
        let (a, b) = (pair.a.as_tensor().detach(), pair.b.as_tensor().detach());
        let d_b = (d_out.t()?.matmul(saved)? * pair.scale)?;
        let d_z = (d_out.matmul(&b)? * pair.scale)?;
        let d_a = d_z.t()?.matmul(x)?;
        let d_x = d_z.matmul(&a)?;
        Ok((d_x, vec![d_a, d_b]))
    }
}

/// The layer index in a PEFT tensor name (`...layers.{i}.self_attn...`).
fn layer_of_tensor_name(name: &str) -> Option<usize> {
    let rest = &name[name.find(".layers.")? + ".layers.".len()..];
    rest[..rest.find('.')?].parse().ok()
}

/// `22-29` for a contiguous run, `0,4,7` otherwise, `none` when empty.
fn layer_list(layers: &[usize]) -> String {
    match (layers.first(), layers.last()) {
        (None, _) | (_, None) => "none".to_string(),
        (Some(a), Some(b)) if b - a + 1 == layers.len() && layers.len() > 1 => format!("{a}-{b}"),
        _ => layers
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_tensor_names_give_their_layers() {
        let name = "base_model.model.model.layers.27.mlp.up_proj.lora_A.weight";
        assert_eq!(layer_of_tensor_name(name), Some(27));
        assert_eq!(layer_of_tensor_name("lm_head.weight"), None);
        assert_eq!(layer_list(&[22, 23, 24]), "22-24");
        assert_eq!(layer_list(&[0, 4, 7]), "0,4,7");
        assert_eq!(layer_list(&[5]), "5");
        assert_eq!(layer_list(&[]), "none");
    }

    #[test]
    fn config_validation() {
        let bad = LoraConfig {
            rank: 0,
            ..LoraConfig::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("rank"));
        let bad = LoraConfig {
            dropout: 1.0,
            ..LoraConfig::default()
        };
        assert!(bad.validate().is_err());
        assert_eq!(LoraConfig::default().scale(), 2.0);
    }
}
