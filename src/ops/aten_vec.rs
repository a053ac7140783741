//! ATen's elementwise loop over quantized tensors: which element takes the vector lambda and
//! which the scalar one, and the arithmetic each side does.
//!
//! Many quantized CPU kernels in `aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp`
//! (`qadd_kernel`, `qmul_kernel`, `qhardswish_kernel`, `qhardsigmoid_kernel`, `leaky_qrelu_out_kernel`,
//! `qelu_kernel`, `qtanh_kernel`, `qsigmoid_kernel`, …) run `cpu_kernel_vec(iter, scalar_op, vector_op)`
//! over a `TensorIterator`, and the two lambdas round differently (the vector one dequantizes with
//! an FMA, `fma(s, q, s·(−z))`; the scalar one with `s·(q − z)`). Which lambda an output element
//! gets is decided by its position, never by its value:
//!
//! 1. **Rows.** `TensorIterator` (`aten/src/ATen/TensorIterator.cpp`) broadcasts the inputs to the
//!    output shape (a size-1 input dim that is broadcast gets stride 0), sorts the dims by stride
//!    (`reorder_dimensions`: an insertion sort over the operands' strides, output first, stride-0
//!    dims skipped per operand, equal strides broken by size), and merges neighbouring dims whose
//!    strides chain (`coalesce_dimensions`). The innermost merged dim is a *row*. [`Lanes::new`]
//!    replays this on the shapes and memory formats.
//! 2. **Body and tail.** Per row, `VectorizedLoop2d` (`aten/src/ATen/native/cpu/Loops.h`) calls
//!    `vectorized_loop` when the output and every input have unit inner stride, or one input has
//!    stride 0 (a broadcast scalar); otherwise every element goes through `basic_loop`, the scalar
//!    lambda. `vectorized_loop` takes blocks of `2 · Vectorized<quint8>::size()` elements with the
//!    vector lambda and finishes the row with the scalar one: element `j` of a row of length `L`
//!    is vector iff `j < ⌊L/64⌋·64`.
//! 3. **Width.** These kernels are registered with `REGISTER_DISPATCH` only, so an AVX-512 build
//!    falls back to the AVX2 kernel (`aten/src/ATen/native/DispatchStub.h`): `Vectorized<quint8>`
//!    has 32 lanes and the body block is 64 on AVX2 and AVX-512 CPUs alike. CPUs without AVX2 run
//!    ATen's DEFAULT (generic) vector code, which is not modelled ([`Lanes::new`] errors).
//! 4. **Threads.** `TensorIteratorBase::for_each` splits the iteration space into
//!    `min(threads, ⌈numel/32768⌉)` chunks of `⌈numel/T⌉` elements when `numel ≥ 32768` and more
//!    than one thread runs; each chunk is cut at row ends and every piece restarts the 64-block
//!    count, so large tensors depend on the thread count. Goldens are captured with one thread,
//!    which is what is modelled here.
//!
//! The arithmetic of both sides (`aten/src/ATen/cpu/vec/vec256/vec256_qint.h` for the vector
//! side, `at::native::dequantize_val` / `quantize_val` → FBGEMM `Dequantize` / `Quantize` for the
//! scalar side) is in [`Dequant`], [`quantize_vec`], [`quantize_val`] and [`requantize_vec`] /
//! [`requantize_val`].

use super::{MemoryFormat, Meta};
use crate::engine::CpuFeatures;
use crate::numerics::quantize::aten;
use crate::{Error, Result};

/// Elements `2 · Vectorized<quint8>::size()` that `vectorized_loop` hands to the vector lambda at
/// once (AVX2 kernel, also on AVX-512 CPUs).
pub const BODY_BLOCK: usize = 64;

/// Element strides of a freshly allocated tensor of `shape` in `format` (`empty_tensor_restride`:
/// row-major, or `get_channels_last_strides_2d` for a 4-D channels-last tensor).
///
/// Quantized inputs are assumed to hold these strides. For tensors that are contiguous in both
/// formats (C = 1 or H = W = 1) PyTorch may keep either set; they differ only on size-1 dims,
/// which never change which elements form a row.
pub fn alloc_strides(shape: &[usize], format: MemoryFormat) -> Result<Vec<usize>> {
    match (format, shape) {
        (MemoryFormat::ChannelsLast, &[_, c, h, w]) => Ok(vec![h * w * c, 1, w * c, c]),
        (MemoryFormat::ChannelsLast, _) => Err(Error::invalid(
            "memory format",
            format!("channels_last needs a 4-D tensor, got shape {shape:?}"),
        )),
        (MemoryFormat::Contiguous, _) => {
            let mut s = vec![1usize; shape.len()];
            for d in (0..shape.len().saturating_sub(1)).rev() {
                s[d] = s[d + 1] * shape[d + 1].max(1);
            }
            Ok(s)
        }
    }
}

/// `Tensor::suggest_memory_format()` of a 4-D tensor with these strides
/// (`c10/core/MemoryFormat.h: is_channels_last_strides_2d_s4`): channels-last when the strides
/// order the dims C, W, H, N from fastest to slowest (size-1 dims and the ambiguous N111 layout
/// resolve to contiguous); other ranks are contiguous.
pub fn suggest_memory_format(shape: &[usize], strides: &[usize]) -> MemoryFormat {
    if shape.len() != 4 || strides.len() != 4 || strides[1] == 0 {
        return MemoryFormat::Contiguous;
    }
    let mut min = 0usize;
    for d in [1usize, 3, 2, 0] {
        if shape[d] == 0 || strides[d] < min {
            return MemoryFormat::Contiguous;
        }
        if d == 0 && min == strides[1] {
            return MemoryFormat::Contiguous;
        }
        min = strides[d];
        if shape[d] > 1 {
            min *= shape[d];
        }
    }
    MemoryFormat::ChannelsLast
}

/// One operand of the loop: its own shape and element strides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operand {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

impl Operand {
    /// A tensor allocated in `format` ([`alloc_strides`]).
    pub fn new(shape: &[usize], format: MemoryFormat) -> Result<Self> {
        Ok(Self {
            shape: shape.to_vec(),
            strides: alloc_strides(shape, format)?,
        })
    }

    /// A stage input as PyTorch held it.
    pub fn of(m: &Meta<'_>) -> Result<Self> {
        Self::new(m.shape, m.memory_format)
    }

    /// `suggest_memory_format()` of this operand.
    pub fn suggest_memory_format(&self) -> MemoryFormat {
        suggest_memory_format(&self.shape, &self.strides)
    }
}

/// The shape `a` and `b` broadcast to (`at::infer_size`), or an error naming `op`.
pub fn broadcast_shape(op: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        let off = n - s.len();
        if i < off {
            1
        } else {
            s[i - off]
        }
    };
    (0..n)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => Err(Error::shape(
                op,
                format!("shapes {a:?} and {b:?} do not broadcast (dim {i}: {x} vs {y})"),
            )),
        })
        .collect()
}

/// For every element of `out_shape` (logical order), the logical index of the element of an input
/// of `in_shape` broadcast to it (numpy rules; `in_shape` must broadcast to `out_shape`).
pub fn broadcast_indices(out_shape: &[usize], in_shape: &[usize]) -> Result<Vec<usize>> {
    let nd = out_shape.len();
    if in_shape.len() > nd {
        return Err(Error::shape(
            "broadcast",
            format!("{in_shape:?} has more dims than {out_shape:?}"),
        ));
    }
    let off = nd - in_shape.len();
    // Input stride per output dim (0 where broadcast).
    let mut stride = vec![0usize; nd];
    let mut acc = 1usize;
    for i in (0..in_shape.len()).rev() {
        let (size, o) = (in_shape[i], out_shape[off + i]);
        if size == o {
            stride[off + i] = acc;
        } else if size != 1 {
            return Err(Error::shape(
                "broadcast",
                format!("{in_shape:?} does not broadcast to {out_shape:?}"),
            ));
        }
        acc *= size;
    }
    let numel: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; nd];
    let mut at = 0usize;
    for _ in 0..numel {
        out.push(at);
        for d in (0..nd).rev() {
            idx[d] += 1;
            at += stride[d];
            if idx[d] < out_shape[d] {
                break;
            }
            at -= stride[d] * out_shape[d];
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// The output of a loop.
#[derive(Debug, Clone, Copy)]
pub enum LoopOut<'a> {
    /// Allocated by the op before the loop, with the shape the inputs broadcast to; its strides
    /// take part in ordering the dims.
    Given(&'a Operand),
    /// Of this shape, allocated by `TensorIterator` itself (no output given, or one of another
    /// shape that it resizes): left out when ordering the dims, then allocated dense in
    /// iteration order (`allocate_or_resize_outputs`, `compatible_stride`).
    Allocated(&'a [usize]),
}

/// Which elements of an output ATen's `cpu_kernel_vec` computes with the vector lambda (one
/// thread, AVX2 kernel; see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lanes {
    /// Per output element in logical (row-major) order: `true` = vector lambda.
    vector: Vec<bool>,
    /// Length of a row after coalescing.
    row: usize,
    /// Whether rows go through `vectorized_loop` (else `basic_loop`, all scalar).
    vectorized: bool,
}

impl Lanes {
    /// Replays `TensorIterator`'s dim ordering and coalescing for an output and its inputs (each
    /// broadcast to the output's shape), and `VectorizedLoop2d`'s choice per row.
    pub fn new(op: &str, out: LoopOut<'_>, inputs: &[Operand], cpu: &CpuFeatures) -> Result<Self> {
        if !cpu.avx2 {
            return Err(Error::invalid(
                op,
                "ATen's quantized elementwise kernels are modelled for x86 CPUs with AVX2 (their \
                 AVX2 kernel also runs on AVX-512 CPUs); this capture CPU has no AVX2",
            ));
        }
        let (shape, given) = match out {
            LoopOut::Given(o) => (&o.shape[..], Some(o)),
            LoopOut::Allocated(s) => (s, None),
        };
        let nd = shape.len();
        if given.is_some_and(|o| o.strides.len() != nd) {
            return Err(Error::shape(op, "output strides do not match its shape"));
        }
        // Element strides of every operand over the output's dims (output first; an output
        // TensorIterator allocates has none yet and takes no part in ordering the dims).
        let mut strides: Vec<Vec<usize>> = vec![given.map_or(vec![0; nd], |o| o.strides.clone())];
        for (k, inp) in inputs.iter().enumerate() {
            if inp.shape.len() > nd || inp.strides.len() != inp.shape.len() {
                return Err(Error::shape(
                    op,
                    format!(
                        "input {k} of shape {:?} has more dims than the output {shape:?}",
                        inp.shape
                    ),
                ));
            }
            let off = nd - inp.shape.len();
            let mut s = vec![0usize; nd];
            for (i, (&size, &stride)) in inp.shape.iter().zip(&inp.strides).enumerate() {
                if size == 1 && shape[off + i] != 1 {
                    s[off + i] = 0;
                } else if size == shape[off + i] {
                    s[off + i] = stride;
                } else {
                    return Err(Error::shape(
                        op,
                        format!(
                            "input {k} of shape {:?} does not broadcast to the output shape {shape:?}",
                            inp.shape
                        ),
                    ));
                }
            }
            strides.push(s);
        }
        let numel: usize = shape.iter().product();
        if numel == 0 {
            return Ok(Self {
                vector: Vec::new(),
                row: 0,
                vectorized: false,
            });
        }
        // reorder_dimensions: perm[0] is the fastest dim.
        let mut perm: Vec<usize> = (0..nd).rev().collect();
        let skip = usize::from(given.is_none());
        let should_swap = |d0: usize, d1: usize| -> i32 {
            for s in &strides[skip..] {
                let (s0, s1) = (s[d0], s[d1]);
                if s0 == 0 || s1 == 0 {
                    continue;
                }
                if s0 < s1 {
                    return -1;
                }
                if s0 > s1 {
                    return 1;
                }
                if shape[d0] > shape[d1] {
                    return 1;
                }
            }
            0
        };
        if nd > 1 {
            for i in 1..nd {
                let mut d1 = i;
                for d0 in (0..i).rev() {
                    match should_swap(perm[d0], perm[d1]) {
                        c if c > 0 => {
                            perm.swap(d0, d1);
                            d1 = d0;
                        }
                        c if c < 0 => break,
                        _ => {}
                    }
                }
            }
        }
        // allocate_or_resize_outputs: an allocated output is dense in iteration order.
        if given.is_none() {
            let mut next = 1;
            for &d in &perm {
                strides[0][d] = next;
                next *= shape[d];
            }
        }
        // coalesce_dimensions, as far as the first (innermost) merged dim goes.
        let (row, inner) = if nd == 0 {
            (1, vec![1usize; strides.len()])
        } else {
            let mut size = shape[perm[0]];
            let mut inner: Vec<usize> = strides.iter().map(|s| s[perm[0]]).collect();
            for &d in &perm[1..] {
                let chains = size == 1
                    || shape[d] == 1
                    || strides.iter().zip(&inner).all(|(s, &i)| size * i == s[d]);
                if !chains {
                    break;
                }
                if size == 1 {
                    inner = strides.iter().map(|s| s[d]).collect();
                }
                size *= shape[d];
            }
            (size, inner)
        };
        let out_unit = inner[0] == 1;
        let ins = &inner[1..];
        let all_unit = ins.iter().all(|&s| s == 1);
        let one_scalar = (0..ins.len())
            .any(|k| ins[k] == 0 && ins.iter().enumerate().all(|(j, &s)| j == k || s == 1));
        let vectorized = out_unit && (all_unit || one_scalar);
        let body = if vectorized {
            row / BODY_BLOCK * BODY_BLOCK
        } else {
            0
        };
        // Walk the elements in iteration order (perm[0] fastest) and mark their logical index.
        let mut logical_stride = vec![1usize; nd];
        for d in (0..nd.saturating_sub(1)).rev() {
            logical_stride[d] = logical_stride[d + 1] * shape[d + 1];
        }
        let mut vector = vec![false; numel];
        let mut idx = vec![0usize; nd];
        let mut logical = 0usize;
        for t in 0..numel {
            vector[logical] = t % row < body;
            for &d in &perm {
                idx[d] += 1;
                logical += logical_stride[d];
                if idx[d] < shape[d] {
                    break;
                }
                logical -= logical_stride[d] * shape[d];
                idx[d] = 0;
            }
        }
        Ok(Self {
            vector,
            row,
            vectorized,
        })
    }

    /// A unary op whose output has the input's shape and is allocated in `out_format`.
    pub fn unary(
        op: &str,
        input: &Meta<'_>,
        out_format: MemoryFormat,
        cpu: &CpuFeatures,
    ) -> Result<Self> {
        let out = Operand::new(input.shape, out_format)?;
        Self::new(op, LoopOut::Given(&out), &[Operand::of(input)?], cpu)
    }

    /// Whether output element `i` (logical order) takes the vector lambda.
    pub fn is_vector(&self, i: usize) -> bool {
        self.vector[i]
    }

    /// Number of output elements.
    pub fn len(&self) -> usize {
        self.vector.len()
    }

    /// Whether the output is empty.
    pub fn is_empty(&self) -> bool {
        self.vector.is_empty()
    }

    /// The split in words, for [`super::Rule`].
    pub fn describe(&self) -> String {
        if self.vector.is_empty() {
            return "empty output".into();
        }
        let n = self.vector.iter().filter(|&&v| v).count();
        if self.vectorized {
            format!(
                "TensorIterator rows of {} elements: the first {} of each row take the vector \
                 lambda (blocks of {BODY_BLOCK}), the rest the scalar one ({n} of {} vector)",
                self.row,
                self.row / BODY_BLOCK * BODY_BLOCK,
                self.vector.len()
            )
        } else {
            format!(
                "TensorIterator rows of {} elements without unit inner strides: every element \
                 takes the scalar lambda",
                self.row
            )
        }
    }
}

pub use crate::numerics::quantize::aten::{inv32, inv64};

/// Dequantization of one per-tensor quint8 input on either side of the loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dequant {
    /// `f32(scale)`.
    pub scale: f32,
    pub zero_point: i32,
    /// `f32(scale · −f32(zero_point))`, the vector side's premultiplied offset.
    pub premul: f32,
}

impl Dequant {
    /// From a tensor's double scale and zero point.
    pub fn new(scale: f64, zero_point: i64) -> Self {
        let s = scale as f32;
        let zp = zero_point as i32;
        Self {
            scale: s,
            zero_point: zp,
            premul: s * -(zp as f32),
        }
    }

    /// Vector side (`Vectorized<quint8>::dequantize(scale, zp, premul)`): `fma(s, f32(q), premul)`.
    #[inline]
    pub fn vector(&self, q: u8) -> f32 {
        self.scale.mul_add(q as f32, self.premul)
    }

    /// Scalar side (`dequantize_val` → FBGEMM `Dequantize`): `f32(s · f32(q − z))`.
    #[inline]
    pub fn scalar(&self, q: u8) -> f32 {
        aten::dequantize(q as i64, self.scale as f64, self.zero_point as i64)
    }

    /// The side `vector` selects.
    #[inline]
    pub fn at(&self, q: u8, vector: bool) -> f32 {
        if vector {
            self.vector(q)
        } else {
            self.scalar(q)
        }
    }
}

/// Vector quantize to quint8 (`QuantizeAvx2` in `vec256_qint.h`): `min(f32(x·inv), 2^31−128)`,
/// round half even (NaN → 2^31−128), wrapping `+ zp`, saturate to 0..255.
#[inline]
pub fn quantize_vec(x: f32, inv: f32, zero_point: i64) -> i64 {
    aten::quantize_avx2(x, inv, zero_point as i32, 0, 255) as i64
}

/// ATen's vector `qadd` / `qadd_relu` lambda (`kernels/QuantizedOpKernels.cpp: qadd_kernel`):
/// `c = f32(fma(sa, qa, pa) + fma(sb, qb, pb))`, `max(c, 0)` under ReLU, then `QuantizeAvx2`
/// with `inv` and the output zero point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorAdd {
    pub a: Dequant,
    pub b: Dequant,
    pub relu: bool,
    pub inv: f32,
    pub zero_point: i32,
}

impl VectorAdd {
    /// The code of one pair.
    #[inline]
    pub fn apply(&self, qa: u8, qb: u8) -> u8 {
        let c = self.a.vector(qa) + self.b.vector(qb);
        let c = if self.relu { c.max(0.0) } else { c };
        aten::quantize_avx2(c, self.inv, self.zero_point, 0, 255) as u8
    }
}

/// Scalar quantize to quint8 (`at::native::quantize_val` → FBGEMM `Quantize<uint8_t>`):
/// `zp + nearbyint(f32(x · f32(1/f32(scale))))` in float, clamped to 0..255. `None` for NaN,
/// whose conversion C++ leaves undefined.
#[inline]
pub fn quantize_val(x: f32, scale: f64, zero_point: i64) -> Option<i64> {
    aten::quantize_scalar(x, scale as f32, zero_point as i32, 0, 255)
}

/// Vector `requantize_from_int` (`RequantizeAvx2`): `cvtps2dq(f32(f32(v)·m))` (out of range →
/// `INT32_MIN`), wrapping `+ zp`, saturate to 0..255.
#[inline]
pub fn requantize_vec(v: i32, multiplier: f32, zero_point: i64) -> i64 {
    let r = crate::numerics::requant::round_ne_i32(v as f32 * multiplier);
    (r.wrapping_add(zero_point as i32) as i64).clamp(0, 255)
}

/// Scalar `requantize_from_int` (`aten/src/ATen/native/quantized/AffineQuantizerBase.cpp`):
/// `zp + lrintf(f32(f32(v)·m))` in int64 (out of range / NaN → `INT64_MIN`), clamped to 0..255.
#[inline]
pub fn requantize_val(v: i32, multiplier: f32, zero_point: i64) -> i64 {
    let x = crate::numerics::quantize::rne(v as f32 * multiplier);
    let r = if x.is_nan() || !(-9.223_372e18..9.223_372e18).contains(&x) {
        i64::MIN
    } else {
        x as i64
    };
    r.saturating_add(zero_point).clamp(0, 255)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MemoryFormat::{ChannelsLast as CL, Contiguous as NC};

    fn lanes(out: (&[usize], MemoryFormat), ins: &[(&[usize], MemoryFormat)]) -> Lanes {
        let out = Operand::new(out.0, out.1).unwrap();
        let ins: Vec<Operand> = ins
            .iter()
            .map(|(s, f)| Operand::new(s, *f).unwrap())
            .collect();
        Lanes::new("t", LoopOut::Given(&out), &ins, &CpuFeatures::AVX512_VNNI).unwrap()
    }

    fn vector_indices(l: &Lanes) -> Vec<usize> {
        (0..l.len()).filter(|&i| l.is_vector(i)).collect()
    }

    #[test]
    fn same_layout_is_one_row_in_memory_order() {
        // 1x3x5x7 = 105 elements, one row: the first 64 in memory order are vector.
        let s: &[usize] = &[1, 3, 5, 7];
        let l = lanes((s, NC), &[(s, NC), (s, NC)]);
        assert_eq!(vector_indices(&l), (0..64).collect::<Vec<_>>());
        let l = lanes((s, CL), &[(s, CL), (s, CL)]);
        // Memory position of logical (c, h, w) is (h·7 + w)·3 + c.
        let expect: Vec<usize> = (0..105)
            .filter(|&i| {
                let (c, h, w) = (i / 35, (i / 7) % 5, i % 7);
                (h * 7 + w) * 3 + c < 64
            })
            .collect();
        assert_eq!(vector_indices(&l), expect);
    }

    #[test]
    fn broadcast_rows_follow_the_output_layout() {
        // [1,2,9,9] + [1,2,1,1]: contiguous rows of H·W = 81 (64 vector each); channels-last rows
        // of C = 2 (never vector).
        let a: &[usize] = &[1, 2, 9, 9];
        let b: &[usize] = &[1, 2, 1, 1];
        let l = lanes((a, NC), &[(a, NC), (b, NC)]);
        let expect: Vec<usize> = (0..162).filter(|&i| i % 81 < 64).collect();
        assert_eq!(vector_indices(&l), expect);
        let l = lanes((a, CL), &[(a, CL), (b, CL)]);
        assert!(vector_indices(&l).is_empty());
        assert!(l.describe().contains("rows of 2"));
        // C = 130 channels-last: rows of 130, 128 vector each.
        let a: &[usize] = &[1, 130, 2, 1];
        let b: &[usize] = &[1, 130, 1, 1];
        let l = lanes((a, CL), &[(a, CL), (b, NC)]);
        assert_eq!(vector_indices(&l).len(), 2 * 128);
        assert!(!l.is_vector(128 * 2) && !l.is_vector(129 * 2 + 1) && l.is_vector(127 * 2 + 1));
    }

    #[test]
    fn lanes_count_the_output_elements() {
        let s: &[usize] = &[1, 2, 3, 3];
        let l = lanes((s, NC), &[(s, NC), (s, NC)]);
        assert_eq!((l.len(), l.is_empty()), (18, false));
        let e: &[usize] = &[1, 0, 3, 3];
        let l = lanes((e, NC), &[(e, NC), (e, NC)]);
        assert_eq!((l.len(), l.is_empty()), (0, true));
        assert_eq!(l.describe(), "empty output");
    }

    #[test]
    fn vector_add_dequantizes_adds_and_quantizes() {
        // qa = 6 at scale 0.5 is 3, qb = 8 at scale 0.25 is 2: c = 5, code 3 + 5·2 = 13.
        let mut v = VectorAdd {
            a: Dequant::new(0.5, 0),
            b: Dequant::new(0.25, 0),
            relu: false,
            inv: 2.0,
            zero_point: 3,
        };
        assert_eq!(v.apply(6, 8), 13);
        // With zero points 10 and 4: 0.5·(0 − 10) + 0.25·(0 − 4) = −6 → 3 − 12 saturates to 0;
        // under ReLU c = max(−6, 0) = 0 → 3.
        v.a = Dequant::new(0.5, 10);
        v.b = Dequant::new(0.25, 4);
        assert_eq!(v.apply(0, 0), 0);
        v.relu = true;
        assert_eq!(v.apply(0, 0), 3);
        // Above 255 saturates.
        assert_eq!(v.apply(255, 255), 255);
    }

    #[test]
    fn mixed_layouts_are_all_scalar() {
        let s: &[usize] = &[1, 16, 9, 9];
        let l = lanes((s, CL), &[(s, CL), (s, NC)]);
        assert!(vector_indices(&l).is_empty());
        // Both contiguous in either format (C = 1): one row, vectorized.
        let s: &[usize] = &[2, 1, 9, 9];
        let l = lanes((s, CL), &[(s, CL), (s, NC)]);
        assert_eq!(vector_indices(&l), (0..128).collect::<Vec<_>>());
    }

    #[test]
    fn suggest_memory_format_matches_pytorch_corner_cases() {
        let cl = |s: &[usize]| suggest_memory_format(s, &alloc_strides(s, CL).unwrap());
        let nc = |s: &[usize]| suggest_memory_format(s, &alloc_strides(s, NC).unwrap());
        assert_eq!(cl(&[2, 3, 4, 5]), CL);
        assert_eq!(nc(&[2, 3, 4, 5]), NC);
        // N111 is ambiguous and resolves to contiguous; N,C,1,1 channels-last strides say CL.
        assert_eq!(cl(&[2, 1, 1, 1]), NC);
        assert_eq!(cl(&[2, 3, 1, 1]), CL);
        assert_eq!(nc(&[2, 3, 1, 1]), NC);
        assert_eq!(nc(&[2, 1, 4, 5]), NC);
        assert_eq!(suggest_memory_format(&[3, 4], &[4, 1]), NC);
        assert!(alloc_strides(&[3, 4], CL).is_err());
        // C = 1 channels-last strides [H·W, 1, W, 1] still say channels-last.
        assert_eq!(cl(&[2, 1, 4, 5]), CL);
        // A broadcast channel dim (stride 0), an empty dim, strides and shape of other lengths.
        assert_eq!(suggest_memory_format(&[2, 1, 4, 5], &[20, 0, 5, 1]), NC);
        assert_eq!(suggest_memory_format(&[2, 0, 4, 5], &[0, 1, 0, 0]), NC);
        assert_eq!(suggest_memory_format(&[2, 3, 4, 5], &[60, 1, 15]), NC);
        assert_eq!(suggest_memory_format(&[2, 3, 4], &[12, 4, 1, 1]), NC);
        // C fastest but H faster than W: not channels-last.
        assert_eq!(suggest_memory_format(&[2, 3, 4, 5], &[60, 1, 3, 12]), NC);
        // c10's 1C1W permutation: [1, H, 1, C] at [HC, 1, H, H] is not channels-last (the
        // running minimum grows by each dim's size).
        assert_eq!(suggest_memory_format(&[1, 4, 1, 3], &[12, 1, 4, 4]), NC);
    }

    #[test]
    fn broadcast_errors() {
        assert_eq!(
            broadcast_shape("t", &[2, 3, 4], &[3, 1]).unwrap(),
            vec![2, 3, 4]
        );
        assert!(broadcast_shape("t", &[2, 3], &[4]).is_err());
        assert_eq!(
            broadcast_indices(&[2, 2, 3], &[2, 1]).unwrap(),
            vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]
        );
        assert_eq!(
            broadcast_indices(&[2, 3], &[2, 3]).unwrap(),
            (0..6).collect::<Vec<_>>()
        );
        assert!(broadcast_indices(&[2, 3], &[3, 1]).is_err());
        let out = Operand::new(&[1, 2, 1, 1], NC).unwrap();
        let big = Operand::new(&[1, 2, 3, 3], NC).unwrap();
        let given = LoopOut::Given(&out);
        let vnni = CpuFeatures::AVX512_VNNI;
        assert!(Lanes::new("t", given, &[out.clone(), big.clone()], &vnni).is_err());
        // An output TensorIterator allocates takes the broadcast shape.
        let shape = big.shape.clone();
        let l = Lanes::new("t", LoopOut::Allocated(&shape), &[out.clone(), big], &vnni);
        assert_eq!(l.unwrap().len(), 18);
        let no_avx2 = CpuFeatures::default();
        assert!(Lanes::new("t", given, std::slice::from_ref(&out), &no_avx2).is_err());
    }

    #[test]
    fn fma_and_plain_dequantize_differ_where_the_premultiplied_offset_rounds() {
        // s·z is inexact in f32: fma(s, q, f32(−s·z)) rounds twice, s·(q − z) once.
        let d = Dequant::new(0.1f32 as f64, 3);
        let mut differ = 0;
        for q in 0..=255u8 {
            let exact = (q as f64 - 3.0) * (0.1f32 as f64);
            assert_eq!(d.scalar(q), exact as f32);
            if d.vector(q) != d.scalar(q) {
                differ += 1;
            }
        }
        assert!(differ > 0);
        // A zero point of 0 makes both exact.
        let d = Dequant::new(0.1f32 as f64, 0);
        assert!((0..=255u8).all(|q| d.vector(q) == d.scalar(q)));
    }

    #[test]
    fn quantize_sides_agree_in_range_and_requantize_sides_differ_out_of_range() {
        for x in [-3.5f32, -0.49, 0.5, 1.5, 77.25, 1e9] {
            assert_eq!(
                Some(quantize_vec(x, inv32(0.25), 100)),
                quantize_val(x, 0.25, 100)
            );
        }
        assert_eq!(requantize_vec(1000, 0.5, 3), 255);
        assert_eq!(requantize_val(1000, 0.5, 3), 255);
        assert_eq!(requantize_val(-7, 0.5, 3), 0);
        // 2^31 and beyond: cvtps2dq gives INT32_MIN (→ 0), lrintf saturates (→ 255).
        assert_eq!(requantize_vec(65025, 40000.0, 3), 0);
        assert_eq!(requantize_val(65025, 40000.0, 3), 255);
        // Beyond the int64 range lrintf gives INT64_MIN (→ 0), not a saturated INT64_MAX.
        assert_eq!(requantize_val(i32::MAX, 1e10, 3), 0);
        assert_eq!(requantize_val(i32::MIN, 1e10, 3), 0);
    }
}
