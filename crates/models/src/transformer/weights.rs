//! Weight storage for the transformer: reading tensors out of a GGUF file and
//! holding them either as the file's quantized blocks (candle `QMatMul`, the
//! fast default; on CPUs with AVX512-BF16 also packed for bf16 prefill, see
//! `bf16_gemm`) or dequantized to dense f32 (plain matmuls, matching the
//! Python reference that dequantizes everything to float32).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Device, Module, Tensor};

use super::bf16_gemm::{self, PackedB};

/// How the GGUF's weight matrices are held in memory and multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum WeightMode {
    /// Keep GGUF weights quantized (fast).
    ///
    /// The file's quantized blocks stay in memory (about a quarter to an
    /// eighth of f32). Matmuls over a few rows (decoding, short suffixes) use
    /// candle's quantized kernels (8-bit activations, llama.cpp style; the
    /// logits move slightly). Prefill matmuls (see [`EXACT_MIN_TOKENS`]) run
    /// in bf16 with f32 accumulation on a CPU with AVX512-BF16, from weights
    /// packed at load (logits within ~0.2 of the f32 reference, same order up
    /// to near ties); elsewhere they dequantize each weight on the fly and
    /// multiply in f32, which keeps the prompt's logits those of the f32
    /// reference.
    #[default]
    Quantized,
    /// Dequantize everything to f32 (matches the Python reference; slower).
    ///
    /// Every tensor is dequantized at load time and multiplied in f32: the
    /// fidelity mode that matches the reference implementation's logits.
    #[cfg_attr(feature = "clap", value(name = "f32"))]
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
    /// `QTensor` for on-the-fly dequantization). Prefill multiplies in bf16
    /// where the CPU has AVX512-BF16 (see [`prefill_matmul`]).
    Quant {
        qm: QMatMul,
        q: Arc<QTensor>,
        /// The weight packed for bf16 prefill, when packed ahead
        /// ([`Linear::prepack_bf16`]); else packed per call.
        packed: Option<Arc<PackedB>>,
    },
    /// Dense f32. `bf16_prefill`: a weight of a quantized-mode model (a
    /// merged adapter, a Hugging Face weight that does not split into Q8_0
    /// blocks), whose prefill may multiply in bf16 like its quantized
    /// neighbours; false in f32 mode and for trainable weights, which always
    /// multiply in f32.
    Dense {
        w: Tensor,
        bf16_prefill: bool,
        packed: Option<Arc<PackedB>>,
    },
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
                    packed: None,
                }
            }
            WeightMode::DequantizedF32 => Linear::Dense {
                w: q.dequantize(device)?.to_dtype(DType::F32)?,
                bf16_prefill: false,
                packed: None,
            },
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
        Ok(Self::dense(w, mode))
    }

    /// A dense f32 weight kept as it is, in a model of weight mode `mode`.
    pub fn dense(w: Tensor, mode: WeightMode) -> Self {
        Linear::Dense {
            w,
            bf16_prefill: mode == WeightMode::Quantized,
            packed: None,
        }
    }

    /// Elements of the weight whose prefill may run in bf16 (0 for an exact
    /// f32 weight).
    pub fn bf16_prefill_elements(&self) -> usize {
        match self {
            Linear::Dense {
                bf16_prefill: false,
                ..
            } => 0,
            _ => {
                let (out, inp) = self.dims();
                out * inp
            }
        }
    }

    /// Lets a dense f32 weight's prefill multiply in bf16 (as a
    /// quantized-mode model's weights do); the weight itself stays f32.
    pub fn allow_bf16_prefill(&mut self) {
        if let Linear::Dense { bf16_prefill, .. } = self {
            *bf16_prefill = true;
        }
    }

    /// Packs the weight for bf16 prefill once and keeps it (twice the
    /// weight's element count in bytes), so that prefill neither dequantizes
    /// nor packs per call; nothing for exact f32 weights or off the CPU.
    pub fn prepack_bf16(&mut self) -> Result<()> {
        if self.bf16_prefill_elements() == 0 || !bf16_gemm::available() {
            return Ok(());
        }
        let w = self.dense_weight()?;
        if !w.device().is_cpu() {
            return Ok(());
        }
        let fresh = Some(Arc::new(pack_rows(&w)?));
        match self {
            Linear::Quant { packed, .. } | Linear::Dense { packed, .. } => *packed = fresh,
        }
        Ok(())
    }

    /// The weight as dense f32 `[out, in]` (dequantized if quantized).
    pub fn dense_weight(&self) -> Result<Tensor> {
        Ok(match self {
            Linear::Quant { q, .. } => q.dequantize(&q.device())?.to_dtype(DType::F32)?,
            Linear::Dense { w, .. } => w.clone(),
        })
    }

    /// `[out, in]` of the weight.
    pub fn dims(&self) -> (usize, usize) {
        let d = match self {
            Linear::Quant { q, .. } => q.shape().dims().to_vec(),
            Linear::Dense { w, .. } => w.dims().to_vec(),
        };
        (d[0], d[1])
    }

    /// `x: [n, in]` → `[n, out]`; `kernel`: use the quantized kernel (else
    /// dequantize a quantized weight and multiply in f32, or in bf16 on a
    /// CPU with AVX512-BF16).
    pub fn forward(&self, x: &Tensor, kernel: bool) -> Result<Tensor> {
        Ok(match self {
            Linear::Quant {
                packed: Some(p), ..
            }
            | Linear::Dense {
                packed: Some(p), ..
            } if !kernel && packed_usable(x) => {
                x.contiguous()?.apply_op1_no_bwd(&bf16_gemm::MatmulBt(p))?
            }
            Linear::Quant {
                qm: qm @ QMatMul::QTensor(_),
                q,
                ..
            } => {
                if kernel {
                    qm.forward(x)?
                } else {
                    prefill_matmul(x, &q.dequantize(&q.device())?)?
                }
            }
            Linear::Quant { qm, .. } => qm.forward(x)?,
            Linear::Dense {
                w,
                bf16_prefill: true,
                ..
            } if !kernel => prefill_matmul(x, w)?,
            Linear::Dense { w, .. } => x.matmul(&w.t()?)?,
        })
    }
}

/// `x · wᵀ` for a prefill (`x: [n, in]`, `w: [out, in]` f32) of a weight
/// not packed ahead: in bf16 with f32 accumulation on a CPU with AVX512-BF16
/// (about twice the f32 GEMM's throughput, see `bf16_gemm`), else in f32.
fn prefill_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !(packed_usable(x) && w.dtype() == DType::F32) {
        return Ok(x.matmul(&w.t()?)?);
    }
    let packed = pack_rows(w)?;
    Ok(x.contiguous()?
        .apply_op1_no_bwd(&bf16_gemm::MatmulBt(&packed))?)
}

/// Whether `x` can go through the bf16 product: f32 `[n, in]` on a CPU with
/// AVX512-BF16, and carrying no gradient.
fn packed_usable(x: &Tensor) -> bool {
    bf16_gemm::available()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && x.rank() == 2
        && !x.track_op()
}

/// An f32 CPU weight `[out, in]` packed for the bf16 product.
fn pack_rows(w: &Tensor) -> Result<PackedB> {
    let (n, k) = w.dims2()?;
    let w = w.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(all)) = &*storage else {
        bail!("bf16 prefill: f32 CPU weight expected");
    };
    let (start, end) = layout
        .contiguous_offsets()
        .context("bf16 prefill: contiguous weight")?;
    Ok(PackedB::from_rows(&all[start..end], n, k))
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
