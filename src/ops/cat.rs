//! `quantized::cat` and `quantized::cat_relu` of quint8 tensors along one dim, with the output
//! qparams the op is called with (`torch.cat` on quantized tensors is the same kernel with the
//! first input's qparams).
//!
//! Kernel, identical on every engine (`aten/src/ATen/native/quantized/cpu/qconcat.cpp:
//! quantized_cat_impl`):
//! - **NHWC kernel** when `dim == 1` and every input is 4-D and `is_contiguous(channels_last)`
//!   (which also holds for NCHW-strided tensors with `C == 1` or `H == W == 1`):
//!   `qcat_nhwc_kernel` in `kernels/QuantizedOpKernels.cpp`, per pixel and input. An input whose
//!   `(scale, zero_point)` equal the output's (double compare) is copied byte for byte unless
//!   `relu`. Otherwise its channels `c < ⌊C/8⌋·8` (the 32-wide loop and the 8-wide block after it)
//!   take the vector path, `x = fma(s, q, f32(s·(−z)))`, `relu` `max(x, 0)`, quantized with
//!   `QuantizeAvx2` and `f32(1.0/so)` (double division); the last `C mod 8` channels the scalar
//!   one, `x = f32(s·(q − z))`, `relu`, `quantize_val` (`f32(1/f32(so))`). The output is
//!   channels-last.
//! - **Otherwise**: every input `dequantize()`d (`f32(s·(q − z))`), `at::cat` (exact), then
//!   `quantize_per_tensor(y, so, zo)` (FBGEMM `Quantize`, the scalar formula); `cat_relu` then
//!   takes `max(q, zo)`.
//!
//! Inputs with qparams other than the output's are requantized, never rejected.
//!
//! Reference flows: the flow's dequantize of every input, the float `torch.cat` (exact),
//! `relu` for `cat_relu`, then the flow's quantize node.

use super::add::checked_out;
use super::aten_vec::{self, Dequant};
use super::{Meta, Op, OutQParams, Output, Plan, Predicted, QTensor, Rule, Value};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::numerics::qparams::validate_qparams;
use crate::{Error, Result};

/// `quantized::cat` (`relu: false`) or `quantized::cat_relu` (`relu: true`) along `dim`
/// (negative dims count from the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Cat {
    pub dim: i64,
    #[serde(skip)]
    pub relu: bool,
}

impl Cat {
    fn op_name(&self) -> &'static str {
        if self.relu {
            "cat_relu"
        } else {
            "cat"
        }
    }
}

/// `Tensor::is_contiguous(MemoryFormat::ChannelsLast)` of a 4-D tensor
/// (`c10/core/Contiguity.h: _compute_channels_last_contiguous_2d`): strides of C, W, H, N chain
/// from 1, size-1 dims skipped.
fn channels_last_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1;
    for d in [1, 3, 2, 0] {
        if shape[d] != 1 {
            if strides[d] != expected {
                return false;
            }
            expected *= shape[d];
        }
    }
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// `qcat_nhwc_kernel`.
    Nhwc,
    /// Dequantize, `at::cat`, `quantize_per_tensor`.
    Generic,
    /// A reference flow.
    Float,
}

impl Op for Cat {
    fn name(&self) -> &'static str {
        self.op_name()
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let op = self.op_name();
        let first = inputs
            .first()
            .ok_or_else(|| Error::invalid(op, "needs at least one input"))?;
        let rank = first.shape.len();
        if rank == 0 {
            return Err(Error::shape(
                op,
                "zero-dimensional tensors cannot be concatenated",
            ));
        }
        let dim = if self.dim < 0 {
            self.dim + rank as i64
        } else {
            self.dim
        };
        if !(0..rank as i64).contains(&dim) {
            return Err(Error::invalid(
                op,
                format!("dim {} out of range for rank {rank}", self.dim),
            ));
        }
        let dim = dim as usize;
        let mut sizes = Vec::with_capacity(inputs.len());
        let mut nhwc = dim == 1 && rank == 4;
        for (k, m) in inputs.iter().enumerate() {
            let (s, z) = m.qparams(op)?;
            validate_qparams(&format!("{op} input {k} qparams"), s, z, 0, 255)?;
            let strides = aten_vec::alloc_strides(m.shape, m.memory_format)?;
            let same = m.shape.len() == rank
                && (0..rank).all(|d| d == dim || m.shape[d] == first.shape[d]);
            if !same {
                return Err(Error::shape(
                    op,
                    format!(
                        "input {k} has shape {:?}, input 0 {:?}: sizes must match except in dim {dim}",
                        m.shape, first.shape
                    ),
                ));
            }
            nhwc = nhwc && channels_last_contiguous(m.shape, &strides);
            sizes.push(m.shape[dim]);
        }
        let out = checked_out(op, out)?;
        let kernel = match (ctx.flow.is_integer(), nhwc) {
            (false, _) => Kernel::Float,
            (true, true) => {
                if !ctx.cpu.avx2 {
                    return Err(Error::invalid(
                        op,
                        "ATen's qcat_nhwc_kernel is modelled for x86 CPUs with AVX2 (its AVX2 \
                         kernel also runs on AVX-512 CPUs); this capture CPU has no AVX2",
                    ));
                }
                Kernel::Nhwc
            }
            (true, false) => Kernel::Generic,
        };
        let mut shape = first.shape.to_vec();
        shape[dim] = sizes.iter().sum();
        let mut offsets = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for &c in &sizes {
            offsets.push(at);
            at += c;
        }
        Ok(Box::new(CatPlan {
            op: *self,
            flow: ctx.flow,
            kernel,
            out,
            inner: shape[dim + 1..].iter().product(),
            shape,
            dim,
            sizes,
            offsets,
        }))
    }
}

#[derive(Debug)]
struct CatPlan {
    op: Cat,
    flow: Flow,
    kernel: Kernel,
    out: OutQParams,
    shape: Vec<usize>,
    dim: usize,
    /// Every input's size along `dim`, and where it starts in the output.
    sizes: Vec<usize>,
    offsets: Vec<usize>,
    /// Elements per step along `dim` (the product of the later dims).
    inner: usize,
}

impl CatPlan {
    /// The integer kernels' output code for code `q` of an input with `(scale, zero_point)`
    /// (`vector`: the NHWC kernel's vector channels).
    fn code(&self, (scale, zero_point): (f64, i64), q: u8, vector: bool) -> Option<i64> {
        let (so, zo) = (self.out.scale, self.out.zero_point);
        match self.kernel {
            Kernel::Float => None,
            Kernel::Generic => {
                let x = Dequant::new(scale, zero_point).scalar(q);
                let r = aten_vec::quantize_val(x, so, zo);
                if self.op.relu {
                    r.map(|v| v.max(zo))
                } else {
                    r
                }
            }
            Kernel::Nhwc => {
                if (scale, zero_point) == (so, zo) && !self.op.relu {
                    return Some(q as i64);
                }
                let x = Dequant::new(scale, zero_point).at(q, vector);
                let x = if self.op.relu { x.max(0.0) } else { x };
                if vector {
                    Some(aten_vec::quantize_vec(x, aten_vec::inv64(so), zo))
                } else {
                    aten_vec::quantize_val(x, so, zo)
                }
            }
        }
    }

    /// Output element `i`: (input, its logical index, its index along `dim`).
    fn source(&self, i: usize) -> (usize, usize, usize) {
        let total = self.shape[self.dim];
        let (outer, k, r) = (
            i / (self.inner * total),
            i / self.inner % total,
            i % self.inner,
        );
        let j = self.offsets.partition_point(|&o| o <= k) - 1;
        let c = k - self.offsets[j];
        (j, (outer * self.sizes[j] + c) * self.inner + r, c)
    }

    fn element(&self, ins: &[&QTensor], i: usize, trace: bool) -> (Option<i64>, String) {
        let (j, idx, c) = self.source(i);
        let t = ins[j];
        let q = t.data[idx];
        let (so, zo) = (self.out.scale, self.out.zero_point);
        let relu = |x: f32| if self.op.relu { x.max(0.0) } else { x };
        match self.kernel {
            Kernel::Float => {
                let (lo, hi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
                let x = relu(self.flow.dequantize(q as i64, t.scale, t.zero_point));
                let r = self.flow.quantize(x, so, zo, lo, hi);
                (
                    r,
                    super::note(trace, format_args!("input {j} q {q}: x {x:e} → {r:?}")),
                )
            }
            Kernel::Generic => {
                let x = Dequant::new(t.scale, t.zero_point).scalar(q);
                let r = self.code((t.scale, t.zero_point), q, false);
                (
                    r,
                    super::note(
                        trace,
                        format_args!(
                            "input {j} q {q}: dequantize {x:e}, quantize_per_tensor → {r:?}"
                        ),
                    ),
                )
            }
            Kernel::Nhwc => {
                if (t.scale, t.zero_point) == (so, zo) && !self.op.relu {
                    return (
                        Some(q as i64),
                        super::note(trace, format_args!("input {j} q {q}: copied")),
                    );
                }
                let d = Dequant::new(t.scale, t.zero_point);
                let vector = c < self.sizes[j] / 8 * 8;
                let x = relu(d.at(q, vector));
                let r = self.code((t.scale, t.zero_point), q, vector);
                let side = if vector { "vector" } else { "scalar" };
                (
                    r,
                    super::note(
                        trace,
                        format_args!("input {j} q {q}, channel {c}: {side} x {x:e} → {r:?}"),
                    ),
                )
            }
        }
    }

    fn quantized<'v>(&self, inputs: &[&'v Value]) -> Result<Vec<&'v QTensor>> {
        if inputs.len() != self.sizes.len() {
            return Err(Error::invalid(
                self.op.op_name(),
                format!(
                    "planned for {} inputs, got {}",
                    self.sizes.len(),
                    inputs.len()
                ),
            ));
        }
        inputs
            .iter()
            .enumerate()
            .map(|(k, v)| v.quantized(&format!("input {k}")))
            .collect()
    }
}

impl Plan for CatPlan {
    fn rule(&self) -> Rule {
        let relu = if self.op.relu { ", max(x, 0)" } else { "" };
        match self.kernel {
            Kernel::Float => {
                let (lo, hi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
                Rule::default()
                    .with(
                        "float op",
                        format!("torch.cat of the dequantized inputs{relu} (exact)"),
                    )
                    .with(
                        "quantize",
                        format!("{}, clamp {lo}..{hi}", self.flow.name()),
                    )
            }
            Kernel::Generic => Rule::default().with(
                "kernel",
                format!(
                    "dequantize (plain), at::cat along dim {}, quantize_per_tensor{}",
                    self.dim,
                    if self.op.relu { ", max(q, zo)" } else { "" }
                ),
            ),
            Kernel::Nhwc => {
                Rule::default().with(
                    "kernel",
                    format!(
                    "qcat_nhwc_kernel: inputs with the output's qparams copied{}; else channels \
                     c < ⌊C/8⌋·8 fma-dequantize{relu}, QuantizeAvx2 with f32(1.0/so), the rest \
                     plain dequantize{relu}, quantize_val",
                    if self.op.relu { " (never under relu)" } else { "" }
                ),
                )
            }
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let ins = self.quantized(inputs)?;
        let n: usize = self.shape.iter().product();
        if let Kernel::Float = self.kernel {
            // torch.cat of the dequantized inputs (exact), then the quantize node.
            let floats = (0..n)
                .map(|i| {
                    let (j, idx, _) = self.source(i);
                    let t = ins[j];
                    let x = self
                        .flow
                        .dequantize(t.data[idx] as i64, t.scale, t.zero_point);
                    if self.op.relu {
                        x.max(0.0)
                    } else {
                        x
                    }
                })
                .collect();
            let name = self.op.op_name();
            return super::exact_float_then_quantize(
                name,
                self.flow,
                &self.out,
                &self.shape,
                floats,
            );
        }
        let values = (0..n).map(|i| self.element(&ins, i, false).0);
        Ok(vec![Output::new(
            "int_repr",
            self.shape.clone(),
            Predicted::from_options(values),
        )])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let ins = self.quantized(inputs)?;
        if i >= self.shape.iter().product::<usize>() {
            return Err(Error::invalid(
                self.op.op_name(),
                "element index out of range",
            ));
        }
        Ok(vec![
            self.element(&ins, i, true).1,
            format!("rule: {}", self.rule()),
        ])
    }

    fn lowered(&self) -> Option<super::Lowered<'_>> {
        (self.kernel != Kernel::Float).then_some(super::Lowered::Pointwise(self))
    }
}

/// Function `2·j` (vector channels) and `2·j + 1` (the others): input `j`'s requantization.
impl super::Pointwise for CatPlan {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn arity(&self) -> usize {
        1
    }
    fn functions(&self) -> usize {
        2 * self.sizes.len()
    }
    fn source(&self, i: usize) -> (usize, [(usize, usize); 2]) {
        let (j, idx, c) = CatPlan::source(self, i);
        let vector = self.kernel == Kernel::Nhwc && c < self.sizes[j] / 8 * 8;
        (2 * j + usize::from(!vector), [(j, idx), (0, 0)])
    }
    fn value(&self, f: usize, qparams: &[(f64, i64)], [q, _]: [u8; 2]) -> Option<i64> {
        self.code(*qparams.get(f / 2)?, q, f.is_multiple_of(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CpuFeatures, Engine, Isa};
    use crate::numerics::bound::Pred;
    use crate::ops::MemoryFormat;

    fn ctx(flow: Flow) -> Ctx {
        Ctx {
            flow,
            engine: Engine::Fbgemm,
            isa: Isa::Vnni,
            cpu: CpuFeatures::AVX512_VNNI,
        }
    }

    fn out(scale: f64, zero_point: i64) -> OutQParams {
        OutQParams {
            scale,
            zero_point,
            quant_min: 0,
            quant_max: 255,
        }
    }

    fn run(op: Cat, c: Ctx, xs: Vec<QTensor>, o: OutQParams) -> Result<Vec<Pred>> {
        let vals: Vec<Value> = xs.into_iter().map(Value::Quantized).collect();
        let metas: Vec<Meta> = vals.iter().map(Value::meta).collect();
        let plan = op.plan(&c, &metas, Some(&o))?;
        let refs: Vec<&Value> = vals.iter().collect();
        Ok(plan.predict(&refs)?.remove(0).ints().unwrap().to_vec())
    }

    fn cl(mut t: QTensor) -> QTensor {
        t.memory_format = MemoryFormat::ChannelsLast;
        t
    }

    #[test]
    fn elements_come_from_the_right_input_along_any_dim() {
        // [2,1] ++ [2,2] along dim 1, identity requantization: rows interleave.
        let a = QTensor::new(vec![2, 1], vec![1, 2], 1.0, 0);
        let b = QTensor::new(vec![2, 2], vec![3, 4, 5, 6], 1.0, 0);
        let cat = Cat {
            dim: -1,
            relu: false,
        };
        let p = run(
            cat,
            ctx(Flow::ConvertFx),
            vec![a.clone(), b.clone()],
            out(1.0, 0),
        );
        assert_eq!(p.unwrap(), [1, 3, 4, 2, 5, 6].map(Pred::Exact).to_vec());
        let b0 = QTensor::new(vec![1, 1], vec![9], 1.0, 0);
        let cat0 = Cat {
            dim: 0,
            relu: false,
        };
        let p = run(cat0, ctx(Flow::ConvertFx), vec![a, b0], out(1.0, 0));
        assert_eq!(p.unwrap(), [1, 2, 9].map(Pred::Exact).to_vec());
    }

    #[test]
    fn generic_path_requantizes_and_relu_clamps_at_the_zero_point() {
        // s = 0.5, z = 10 → so = 1, zo = 3: q 13 → 1.5 → RNE 2 + 3 = 5; q 7 → −1.5 → −2 + 3 = 1.
        let a = QTensor::new(vec![1, 2, 1, 1], vec![13, 7], 0.5, 10);
        let cat = Cat {
            dim: 1,
            relu: false,
        };
        // NCHW [1,2,1,1] is channels-last contiguous too: take a shape that is not.
        let a2 = QTensor::new(vec![1, 2, 1, 2], vec![13, 13, 7, 7], 0.5, 10);
        let p = run(cat, ctx(Flow::ConvertFx), vec![a2.clone()], out(1.0, 3)).unwrap();
        assert_eq!(p, [5, 5, 1, 1].map(Pred::Exact).to_vec());
        let relu = Cat { dim: 1, relu: true };
        let p = run(relu, ctx(Flow::ConvertFx), vec![a2], out(1.0, 3)).unwrap();
        assert_eq!(p, [5, 5, 3, 3].map(Pred::Exact).to_vec());
        // The same values through the NHWC kernel (H = W = 1): all channels scalar (C < 8).
        let p = run(cat, ctx(Flow::ConvertFx), vec![a], out(1.0, 3)).unwrap();
        assert_eq!(p, [5, 1].map(Pred::Exact).to_vec());
    }

    #[test]
    fn nhwc_kernel_copies_equal_qparams_and_splits_channels_at_multiples_of_8() {
        // An input code whose FMA and plain dequantize requantize differently (so = 2s puts odd
        // q − z on exact halves, which only the plain dequantize hits exactly): channels 0..8 take
        // the vector path, channel 8 the scalar; the last input has the output's qparams.
        let s = 0.1f32 as f64;
        let so = 2.0 * s;
        let (z, q, vec_q, sc_q) = (0..256)
            .flat_map(|z| (0..=255u8).map(move |q| (z, q)))
            .find_map(|(z, q)| {
                let d = Dequant::new(s, z);
                let v = aten_vec::quantize_vec(d.vector(q), aten_vec::inv64(so), 1);
                let p = aten_vec::quantize_val(d.scalar(q), so, 1).unwrap();
                (v != p).then_some((z, q, v, p))
            })
            .expect("a code the two paths round apart");
        let a = cl(QTensor::new(vec![1, 9, 1, 2], vec![q; 18], s, z));
        let copy = cl(QTensor::new(vec![1, 1, 1, 2], vec![77, 78], so, 1));
        let o = out(so, 1);
        let got = run(
            Cat {
                dim: 1,
                relu: false,
            },
            ctx(Flow::ConvertFx),
            vec![a, copy],
            o,
        )
        .unwrap();
        let mut want = vec![vec_q; 16];
        want.extend([sc_q, sc_q, 77, 78]);
        assert_eq!(got, want.into_iter().map(Pred::Exact).collect::<Vec<_>>());
    }

    #[test]
    fn reference_flows_and_errors() {
        let a = QTensor::new(vec![2], vec![3, 200], 0.5, 1);
        let o = OutQParams {
            scale: 0.25,
            zero_point: 2,
            quant_min: 0,
            quant_max: 127,
        };
        let cat = Cat { dim: 0, relu: true };
        // x = 1, 99.5 → 4 + 2 = 6, 398 + 2 → 255 (convert_to_reference_fx) or 127 (decomposed).
        let p = run(cat, ctx(Flow::ConvertToReferenceFx), vec![a.clone()], o).unwrap();
        assert_eq!(p, vec![Pred::Exact(6), Pred::Exact(255)]);
        let p = run(
            cat,
            ctx(Flow::ConvertToReferenceDecomposedFx),
            vec![a.clone()],
            o,
        );
        assert_eq!(p.unwrap(), vec![Pred::Exact(6), Pred::Exact(127)]);
        let c = ctx(Flow::ConvertFx);
        assert!(run(cat, c, vec![], o).is_err());
        let bad_dim = Cat {
            dim: 1,
            relu: false,
        };
        assert!(run(bad_dim, c, vec![a.clone()], o).is_err());
        let m = QTensor::new(vec![2, 1], vec![0, 0], 0.5, 1);
        assert!(run(cat, c, vec![a.clone(), m.clone()], o).is_err());
        let bad_shape = QTensor::new(vec![1, 2], vec![0, 0], 0.5, 1);
        let catd = Cat {
            dim: 0,
            relu: false,
        };
        assert!(run(catd, c, vec![m, bad_shape], o).is_err());
        let scalar = QTensor::new(vec![], vec![0], 0.5, 1);
        assert!(run(catd, c, vec![scalar], o).is_err());
        let zp = QTensor::new(vec![2], vec![0, 0], 0.5, 300);
        assert!(run(catd, c, vec![a, zp], o).is_err());
    }
}
