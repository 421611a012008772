//! Cross-encoder rerankers: a BERT or XLM-RoBERTa sequence-classification
//! checkpoint (a Hugging Face directory with `config.json` whose
//! `architectures` is `BertForSequenceClassification`, e.g.
//! cross-encoder/ms-marco-MiniLM-L-6-v2, or
//! `XLMRobertaForSequenceClassification`, e.g. BAAI/bge-reranker-v2-m3;
//! `model.safetensors` and `tokenizer.json`) reads each (query, document)
//! pair as its tokenizer pairs them (`[CLS] q [SEP] d [SEP]` with segment
//! ids 0/1; `<s> q </s></s> d </s>` without), and its classifier on the
//! first token's state (dense + tanh, then a linear layer) gives one logit
//! per pair. The score is that logit's sigmoid for a
//! single-label model, as TEI returns it ([`CrossEncoder::raw_scores`] keeps
//! the logit); pairs are cut to the model's length, the document first
//! (`longest_first` truncation, as sentence-transformers does).
//!
//! The encoder is [`crate::bert`]'s (RoBERTa's only differences there are
//! positions counted from the padding id and no segment ids); ModernBERT
//! classification checkpoints are not supported yet (refused by name).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use firstrank_core::chunk::PassageBudget;
use firstrank_core::prompt::TokenCounter;
use firstrank_core::window::{ScoreScale, WindowScorer};
use firstrank_core::{Candidate, Query};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::bert::{Bert, BertConfig};

/// The fields of `config.json` that say what the checkpoint is.
#[derive(Debug, Deserialize)]
struct Architecture {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: Option<HashMap<String, String>>,
}

/// Whether `dir` holds a sequence-classification checkpoint (of any family;
/// [`CrossEncoder::load`] says which it supports).
pub fn is_cross_encoder_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    serde_json::from_str::<Architecture>(&text).is_ok_and(|a| {
        a.architectures
            .iter()
            .any(|x| x.ends_with("ForSequenceClassification"))
    })
}

/// The checkpoint families read here: the same encoder, named apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `BertForSequenceClassification`: the pooler (dense + tanh on
    /// `[CLS]`), then `classifier`.
    Bert,
    /// `XLMRobertaForSequenceClassification`,
    /// `RobertaForSequenceClassification`: `classifier.dense` + tanh on
    /// `<s>`, then `classifier.out_proj` (the same shape as BERT's head).
    Roberta,
}

impl Family {
    const SUPPORTED: &'static str = "BertForSequenceClassification, \
        XLMRobertaForSequenceClassification, RobertaForSequenceClassification";

    fn of(architecture: &str) -> Option<Self> {
        match architecture {
            "BertForSequenceClassification" => Some(Family::Bert),
            "XLMRobertaForSequenceClassification" | "RobertaForSequenceClassification" => {
                Some(Family::Roberta)
            }
            _ => None,
        }
    }

    /// The encoder's prefix, the head's first (dense + tanh) and last layer.
    fn weight_names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::Bert => ("bert", "bert.pooler.dense", "classifier"),
            Family::Roberta => ("roberta", "classifier.dense", "classifier.out_proj"),
        }
    }
}

/// Texts per forward pass.
const BATCH: usize = 16;

/// A loaded cross-encoder.
pub struct CrossEncoder {
    bert: Bert,
    pooler: Linear,
    classifier: Linear,
    tokenizer: Tokenizer,
    /// The tokenizer without truncation, for counting and chunking.
    counter: crate::bert::EncoderTokenCounter,
    max_len: usize,
    device: Device,
    dir: PathBuf,
    /// Report the logit instead of its sigmoid.
    pub raw_scores: bool,
}

impl std::fmt::Debug for CrossEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossEncoder")
            .field("dir", &self.dir)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl CrossEncoder {
    /// Loads a BERT or (XLM-)RoBERTa sequence-classification directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let arch: Architecture = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", config_path.display()))?;
        let name = arch.architectures.first().cloned().unwrap_or_default();
        let Some(family) = Family::of(&name) else {
            bail!(
                "{}: architecture `{name}` is not a supported cross-encoder (supported: {})",
                config_path.display(),
                Family::SUPPORTED
            );
        };
        let labels = arch
            .num_labels
            .or_else(|| arch.id2label.as_ref().map(HashMap::len))
            .unwrap_or(2);
        ensure!(
            labels == 1,
            "{}: the classifier has {labels} labels; a reranking cross-encoder has one (a relevance logit)",
            config_path.display()
        );
        let config: BertConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a {name} config", config_path.display()))?;
        config.validate(&config_path)?;
        ensure!(
            config.is_roberta() == (family == Family::Roberta),
            "{}: architecture `{name}` with model_type `{}`",
            config_path.display(),
            config.model_type.as_deref().unwrap_or("(none)")
        );

        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            bail!(
                "{}: missing; the cross-encoder needs safetensors weights",
                weights_path.display()
            );
        }
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(&weights_path, device)
                .with_context(|| format!("reading {}", weights_path.display()))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let (encoder, head_dense, head_out) = family.weight_names();
        let bert = Bert::load(vb.pp(encoder), &config)
            .with_context(|| format!("{}: not a {name} checkpoint", weights_path.display()))?;
        let h = config.hidden_size;
        let pooler = linear(h, h, vb.pp(head_dense))
            .with_context(|| format!("{}: no {head_dense}", weights_path.display()))?;
        let classifier = linear(h, 1, vb.pp(head_out))
            .with_context(|| format!("{}: no classifier", weights_path.display()))?;

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        let max_len = tokenizer
            .get_truncation()
            .map_or(512, |t| t.max_length)
            .min(config.max_tokens());
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        tokenizer.with_padding(None);
        let counter = crate::bert::EncoderTokenCounter::new(&tokenizer)?;
        Ok(Self {
            bert,
            pooler,
            classifier,
            tokenizer,
            counter,
            max_len,
            device: device.clone(),
            dir: dir.to_path_buf(),
            raw_scores: false,
        })
    }

    /// The longest (query, document) pair in tokens, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Counts tokens as the model's tokenizer does.
    pub fn token_counter(&self) -> Result<crate::bert::EncoderTokenCounter> {
        Ok(self.counter.clone())
    }

    /// Scores of `texts` for `query`, in input order (sigmoid, or the logit
    /// with `raw_scores`).
    pub fn score(&self, query: &str, texts: &[&str]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            out.extend(self.score_batch(query, chunk)?);
        }
        Ok(out)
    }

    fn score_batch(&self, query: &str, texts: &[&str]) -> Result<Vec<f32>> {
        let encodings = texts
            .iter()
            .map(|t| {
                self.tokenizer
                    .encode((query, *t), true)
                    .map_err(|e| anyhow::anyhow!("tokenizing a pair: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let s = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(1)
            .max(1);
        let b = texts.len();
        let (mut ids, mut types, mut mask) =
            (vec![0u32; b * s], vec![0u32; b * s], vec![0u32; b * s]);
        for (r, e) in encodings.iter().enumerate() {
            let n = e.get_ids().len();
            ids[r * s..r * s + n].copy_from_slice(e.get_ids());
            types[r * s..r * s + n].copy_from_slice(e.get_type_ids());
            mask[r * s..r * s + n].fill(1);
        }
        let ids = Tensor::from_vec(ids, (b, s), &self.device)?;
        let types = Tensor::from_vec(types, (b, s), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, s), &self.device)?;
        let hidden = self.bert.forward_with_types(&ids, &types, &mask)?;
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        let logits = self.classifier.forward(&pooled)?.squeeze(1)?;
        let logits: Vec<f32> = logits.to_vec1()?;
        Ok(if self.raw_scores {
            logits
        } else {
            logits
                .into_iter()
                .map(|x| 1.0 / (1.0 + (-x).exp()))
                .collect()
        })
    }
}

/// A [`WindowScorer`] over a cross-encoder: each candidate of a window is
/// scored on its own (pointwise), so any window size works.
pub struct CrossEncoderScorer {
    pub model: CrossEncoder,
}

impl WindowScorer for CrossEncoderScorer {
    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> Result<Vec<f32>> {
        let texts: Vec<String> = window.iter().map(crate::embed::candidate_text).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        self.model.score(&query.text, &refs)
    }

    /// A pair is cut to `max_len` tokens: the document gets what the query
    /// and the three special tokens leave.
    fn passage_budget(&self) -> Option<(&dyn TokenCounter, PassageBudget)> {
        Some((
            &self.model.counter,
            PassageBudget {
                tokens: self.model.max_len.saturating_sub(3),
                shared_with_query: true,
            },
        ))
    }

    fn score_scale(&self) -> ScoreScale {
        if self.model.raw_scores {
            ScoreScale::Logit
        } else {
            ScoreScale::Probability
        }
    }
}
