//! Weight storage for the transformer: reading tensors out of a GGUF file and
//! holding them either as the file's quantized blocks (candle `QMatMul`, the
//! fast default) or dequantized to dense f32 (plain matmuls, matching the
//! Python reference that dequantizes everything to float32).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

/// How the GGUF's weight matrices are held in memory and multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMode {
    /// Keep the file's quantized blocks and use candle's quantized matmuls
    /// (activations quantized on the fly, llama.cpp style). Fast; the logits
    /// move slightly, and close pairs of identifiers may swap.
    #[default]
    Quantized,
    /// Dequantize every tensor to f32 at load time and use f32 matmuls: the
    /// fidelity mode that matches the reference implementation's logits.
    DequantizedF32,
}

impl std::fmt::Display for WeightMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightMode::Quantized => "quantized",
            WeightMode::DequantizedF32 => "f32",
        })
    }
}

impl std::str::FromStr for WeightMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quantized" | "q" => Ok(WeightMode::Quantized),
            "f32" | "dequantized" | "dequantized-f32" => Ok(WeightMode::DequantizedF32),
            other => bail!("unknown weight mode `{other}`; expected `quantized` or `f32`"),
        }
    }
}

/// An open GGUF file: its parsed header and a reader for tensor data. Errors
/// name the file.
pub(crate) struct GgufReader<'a> {
    pub path: &'a Path,
    pub content: gguf_file::Content,
    file: File,
    pub device: Device,
}

impl<'a> GgufReader<'a> {
    pub fn open(path: &'a Path, device: &Device) -> Result<Self> {
        let mut file = File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a valid GGUF file (corrupt or truncated header?): {e}",
                path.display()
            )
        })?;
        Ok(Self {
            path,
            content,
            file,
            device: device.clone(),
        })
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads one tensor, checking its shape (candle order: rows/out first).
    pub fn qtensor(&mut self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let info = self.content.tensor_infos.get(name).with_context(|| {
            format!(
                "{}: tensor `{name}` is missing from the GGUF file",
                self.path.display()
            )
        })?;
        if info.shape.dims() != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {:?} from the model's hyper-parameters",
                self.path.display(),
                info.shape.dims(),
                shape
            );
        }
        self.content
            .tensor(&mut self.file, name, &self.device)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot read tensor `{name}` (file truncated or corrupt?): {e}",
                    self.path.display()
                )
            })
    }

    /// A small tensor (norm weights, rope factors) dequantized to f32.
    pub fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let q = self.qtensor(name, shape)?;
        Ok(q.dequantize(&self.device)?.to_dtype(DType::F32)?)
    }

    pub fn linear(
        &mut self,
        name: &str,
        out: usize,
        inp: usize,
        mode: WeightMode,
    ) -> Result<Linear> {
        let q = self.qtensor(name, &[out, inp])?;
        Linear::new(q, mode, &self.device)
    }

    pub fn rows(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        mode: WeightMode,
    ) -> Result<RowMatrix> {
        let q = self.qtensor(name, &[rows, cols])?;
        RowMatrix::new(q, mode, &self.device)
    }
}

/// A weight matrix `[out, in]` applied as `x · Wᵀ`.
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    Quant(QMatMul),
    Dense(Tensor),
}

impl Linear {
    fn new(q: QTensor, mode: WeightMode, device: &Device) -> Result<Self> {
        Ok(match mode {
            WeightMode::Quantized => Linear::Quant(QMatMul::from_qtensor(q)?),
            WeightMode::DequantizedF32 => {
                Linear::Dense(q.dequantize(device)?.to_dtype(DType::F32)?)
            }
        })
    }

    /// `x: [n, in]` → `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Quant(m) => m.forward(x)?,
            Linear::Dense(w) => x.matmul(&w.t()?)?,
        })
    }
}

/// A `[rows, cols]` matrix read by rows: the token embedding and the LM head.
/// Quantized mode keeps the blocks and dequantizes only the rows asked for.
#[derive(Debug, Clone)]
pub(crate) enum RowMatrix {
    Quant(Arc<QTensor>),
    Dense(Tensor),
}

impl RowMatrix {
    fn new(q: QTensor, mode: WeightMode, device: &Device) -> Result<Self> {
        Ok(match mode {
            WeightMode::Quantized if !matches!(q.dtype(), GgmlDType::F32) => {
                RowMatrix::Quant(Arc::new(q))
            }
            _ => RowMatrix::Dense(q.dequantize(device)?.to_dtype(DType::F32)?),
        })
    }

    /// The rows `ids`, as f32 `[ids.len(), cols]`.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            RowMatrix::Quant(q) => q.embedding(ids)?.to_dtype(DType::F32)?,
            RowMatrix::Dense(w) => w.index_select(ids, 0)?,
        })
    }

    /// `x: [n, cols]` → `[n, rows]` (all rows: the full-vocabulary projection).
    pub fn project_all(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            RowMatrix::Quant(q) => QMatMul::from_arc(q.clone())?.forward(x)?,
            RowMatrix::Dense(w) => x.matmul(&w.t()?)?,
        })
    }
}
