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
    /// Keep the file's quantized blocks in memory (about a quarter to an
    /// eighth of f32). Matmuls over a few rows (decoding, short suffixes) use
    /// candle's quantized kernels (8-bit activations, llama.cpp style; the
    /// logits move slightly); prefill matmuls dequantize each weight on the
    /// fly and multiply in f32, which is faster there and keeps the prompt's
    /// logits those of the f32 reference (see [`EXACT_MIN_TOKENS`]).
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

/// Where a model's tensors come from: a GGUF file or a Hugging Face
/// safetensors directory. Names are GGUF's (`blk.0.attn_q.weight`); shapes
/// are candle order (rows/out first). Errors name the file and the tensor.
pub(crate) trait WeightSource {
    fn path(&self) -> &Path;
    fn device(&self) -> &Device;
    fn has_tensor(&self, name: &str) -> bool;
    /// A small tensor (norm weights, rope factors) as f32.
    fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;
    fn linear(&mut self, name: &str, out: usize, inp: usize, mode: WeightMode) -> Result<Linear>;
    fn rows(&mut self, name: &str, rows: usize, cols: usize, mode: WeightMode)
        -> Result<RowMatrix>;
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
}

impl WeightSource for GgufReader<'_> {
    fn path(&self) -> &Path {
        self.path
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let q = self.qtensor(name, shape)?;
        Ok(q.dequantize(&self.device)?.to_dtype(DType::F32)?)
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize, mode: WeightMode) -> Result<Linear> {
        let q = self.qtensor(name, &[out, inp])?;
        Linear::new(q, mode, &self.device)
    }

    fn rows(
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
    /// Quantized blocks (the same tensor as a candle `QMatMul` and as a
    /// `QTensor` for on-the-fly dequantization).
    Quant {
        qm: QMatMul,
        q: Arc<QTensor>,
    },
    Dense(Tensor),
}

/// Forward calls over at least this many tokens dequantize each quantized
/// weight for its matmul instead of using candle's quantized kernel; shorter
/// calls (decoding) use the kernel.
///
/// Why: for prefill, the quantized kernels are both slower and less faithful.
/// On CPU candle computes one dot product per (row, column) pair and only some
/// types have SIMD kernels: measured with 512 rows on an AVX-512 VNNI machine,
/// Q5_0 and Q4_1 took 25-30× longer than dequantizing plus an f32 matmul and
/// Q8_0 2×; Q4_K and Q6_K (repacked VNNI kernels) were 1.2-1.8× faster per
/// matmul, but end to end on Gemma 3 270M that gain was within noise while the
/// 8-bit activations moved the FIRST letter logits by up to 0.7 (Kendall tau
/// vs the f32 reference down to 0.88). Dequantizing a weight costs about a
/// tenth of its 512-row matmul. For one or a few rows the quantized kernel is
/// memory-bound and much faster.
pub const EXACT_MIN_TOKENS: usize = 8;

impl Linear {
    fn new(q: QTensor, mode: WeightMode, device: &Device) -> Result<Self> {
        Ok(match mode {
            WeightMode::Quantized => {
                let q = Arc::new(q);
                Linear::Quant {
                    qm: QMatMul::from_arc(q.clone())?,
                    q,
                }
            }
            WeightMode::DequantizedF32 => {
                Linear::Dense(q.dequantize(device)?.to_dtype(DType::F32)?)
            }
        })
    }

    /// A weight held as given (f32 `[out, in]`), or, in quantized mode,
    /// quantized to Q8_0 when its rows split into Q8_0 blocks (Hugging Face
    /// checkpoints: a quarter of f32's memory, and the same kernels as GGUF).
    pub fn from_f32(w: Tensor, mode: WeightMode) -> Result<Self> {
        let cols = w.dim(1)?;
        if mode == WeightMode::Quantized && cols % GgmlDType::Q8_0.block_size() == 0 {
            let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
            let device = w.device().clone();
            return Self::new(q, mode, &device);
        }
        Ok(Linear::Dense(w))
    }

    /// The weight as dense f32 `[out, in]` (dequantized if quantized).
    pub fn dense_weight(&self) -> Result<Tensor> {
        Ok(match self {
            Linear::Quant { q, .. } => q.dequantize(&q.device())?.to_dtype(DType::F32)?,
            Linear::Dense(w) => w.clone(),
        })
    }

    /// `[out, in]` of the weight.
    pub fn dims(&self) -> (usize, usize) {
        let d = match self {
            Linear::Quant { q, .. } => q.shape().dims().to_vec(),
            Linear::Dense(w) => w.dims().to_vec(),
        };
        (d[0], d[1])
    }

    /// `x: [n, in]` → `[n, out]`; `kernel`: use the quantized kernel (else
    /// dequantize a quantized weight and multiply in f32).
    pub fn forward(&self, x: &Tensor, kernel: bool) -> Result<Tensor> {
        Ok(match self {
            Linear::Quant {
                qm: qm @ QMatMul::QTensor(_),
                q,
            } => {
                if kernel {
                    qm.forward(x)?
                } else {
                    let w = q.dequantize(&q.device())?;
                    x.matmul(&w.t()?)?
                }
            }
            Linear::Quant { qm, .. } => qm.forward(x)?,
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

    /// Like [`Linear::from_f32`]: Q8_0 blocks in quantized mode.
    pub fn from_f32(w: Tensor, mode: WeightMode) -> Result<Self> {
        let cols = w.dim(1)?;
        if mode == WeightMode::Quantized && cols % GgmlDType::Q8_0.block_size() == 0 {
            return Ok(RowMatrix::Quant(Arc::new(QTensor::quantize(
                &w,
                GgmlDType::Q8_0,
            )?)));
        }
        Ok(RowMatrix::Dense(w))
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
