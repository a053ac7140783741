//! `quantized::mul` and `quantized::mul_relu` of two quint8 tensors (FX: `operator.mul` /
//! `torch.mul` between quantized activations, e.g. MobileNetV3's squeeze-excite gate
//! `[N,C,H,W] × [N,C,1,1]`), with the output qparams the op is called with.
//!
//! Kernel, identical on every engine for quint8 (`aten/src/ATen/native/quantized/cpu/qmul.cpp:
//! QMul::run` → `qmul_kernel` in `kernels/QuantizedOpKernels.cpp`): the output has the broadcast
//! shape and `qa.suggest_memory_format()`; with `m = f32(f32(f32(sa)·f32(sb)) · f32(1/f32(so)))`,
//! `c = (qa − za)·(qb − zb)` (exact int32) and `q = sat(zo + RNE(f32(f32(c)·m)))`
//! (`requantize_from_int`), `mul_relu` then `max(q, zo)`. The vector and scalar lambdas agree
//! unless `|c·m| ≥ 2^31`, where the vector side's `cvtps2dq` overflows to 0 and the scalar
//! side saturates; [`super::aten_vec::Lanes`] decides which applies.
//!
//! Reference flows: the flow's dequantize of both inputs, the float `a * b` (broadcasting; one
//! f32 rounding, exact), `relu` for `mul_relu`, then the flow's quantize node.

use super::add::{
    binary_inputs, binary_predict, binary_trace, float_binary, float_binary_rule,
    float_binary_value,
};
use super::aten_vec::{self, broadcast_indices, Lanes, LoopOut, Operand};
use super::{Meta, Op, OutQParams, Output, Plan, QTensor, Rule, Value};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::Result;

/// `quantized::mul` (`relu: false`) or `quantized::mul_relu` (`relu: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mul {
    pub relu: bool,
}

impl Mul {
    fn op_name(&self) -> &'static str {
        if self.relu {
            "mul_relu"
        } else {
            "mul"
        }
    }
}

impl Op for Mul {
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
        let (a, b, out) = binary_inputs(op, inputs, out)?;
        let (sa, _) = a.qparams(op)?;
        let (sb, _) = b.qparams(op)?;
        let shape = aten_vec::broadcast_shape(op, a.shape, b.shape)?;
        let kernel = if ctx.flow.is_integer() {
            let qa = Operand::of(a)?;
            let given = Operand::new(&shape, qa.suggest_memory_format())?;
            let lanes = Lanes::new(op, LoopOut::Given(&given), &[qa, Operand::of(b)?], &ctx.cpu)?;
            // `float multiplier = self_scale * other_scale * inv_scale` in f32, left to right.
            let multiplier = (sa as f32 * sb as f32) * aten_vec::inv32(out.scale);
            Some((lanes, multiplier))
        } else {
            None
        };
        Ok(Box::new(MulPlan {
            op: *self,
            flow: ctx.flow,
            kernel,
            a_index: broadcast_indices(&shape, a.shape)?,
            b_index: broadcast_indices(&shape, b.shape)?,
            out,
            shape,
        }))
    }
}

#[derive(Debug)]
struct MulPlan {
    op: Mul,
    flow: Flow,
    /// `convert_fx`: the loop's lanes and the f32 multiplier.
    kernel: Option<(Lanes, f32)>,
    a_index: Vec<usize>,
    b_index: Vec<usize>,
    out: OutQParams,
    shape: Vec<usize>,
}

impl MulPlan {
    /// ATen's vector (`v`) or scalar requantization of the product `c`, then the fused relu.
    fn requantize(&self, c: i32, m: f32, v: bool) -> i64 {
        let zo = self.out.zero_point;
        let q = if v {
            aten_vec::requantize_vec(c, m, zo)
        } else {
            aten_vec::requantize_val(c, m, zo)
        };
        if self.op.relu {
            q.max(zo)
        } else {
            q
        }
    }

    fn element(&self, a: &QTensor, b: &QTensor, i: usize) -> (Option<i64>, String) {
        let (qa, qb) = (a.data[self.a_index[i]], b.data[self.b_index[i]]);
        let Some((lanes, m)) = &self.kernel else {
            return float_binary(self.flow, &self.out, self.op.relu, (qa, a), (qb, b), '*');
        };
        let c = (qa as i32 - a.zero_point as i32) * (qb as i32 - b.zero_point as i32);
        let v = lanes.is_vector(i);
        let q = self.requantize(c, *m, v);
        let side = if v { "vector" } else { "scalar" };
        (
            Some(q),
            format!("qa {qa}, qb {qb}: c = {c}, {side} requantize with m = {m:e} → {q}"),
        )
    }
}

impl Plan for MulPlan {
    fn rule(&self) -> Rule {
        let Some((lanes, m)) = &self.kernel else {
            return float_binary_rule(self.flow, &self.out, self.op.relu, '*');
        };
        let relu = if self.op.relu { ", max(q, zo)" } else { "" };
        Rule::default()
            .with(
                "kernel",
                format!(
                    "ATen qmul_kernel: c = (qa − za)·(qb − zb), q = sat(zo + RNE(f32(c)·{m:e})){relu} \
                     (m = f32(f32(sa·sb)·f32(1/so)); the vector side gives 0 where |c·m| ≥ 2^31)"
                ),
            )
            .with("layout", lanes.describe())
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let float = |a: &QTensor, b: &QTensor, i: usize| {
            let (qa, qb) = (a.data[self.a_index[i]], b.data[self.b_index[i]]);
            float_binary_value(self.flow, self.op.relu, (qa, a), (qb, b), '*')
        };
        let float: super::BinaryFloat<'_> = self.kernel.is_none().then_some(&float);
        binary_predict(inputs, &self.shape, |a, b, i| self.element(a, b, i), float)
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let (op, rule) = (self.op.op_name(), self.rule());
        binary_trace(op, inputs, &self.shape, i, rule, |a, b, i| {
            self.element(a, b, i)
        })
    }

    fn lowered(&self) -> Option<super::Lowered<'_>> {
        self.kernel
            .as_ref()
            .map(|_| super::Lowered::Pointwise(self))
    }
}

/// Function 0: ATen's vector requantization; function 1: the scalar one.
impl super::Pointwise for MulPlan {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn arity(&self) -> usize {
        2
    }
    fn functions(&self) -> usize {
        2
    }
    fn source(&self, i: usize) -> (usize, [(usize, usize); 2]) {
        let f = match &self.kernel {
            Some((lanes, _)) => usize::from(!lanes.is_vector(i)),
            None => 0,
        };
        (f, [(0, self.a_index[i]), (1, self.b_index[i])])
    }
    fn value(&self, f: usize, qparams: &[(f64, i64)], [qa, qb]: [u8; 2]) -> Option<i64> {
        let (_, m) = self.kernel.as_ref()?;
        let [(_, za), (_, zb)] = [*qparams.first()?, *qparams.get(1)?];
        let c = (qa as i32 - za as i32) * (qb as i32 - zb as i32);
        Some(self.requantize(c, *m, f == 0))
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
            engine: Engine::Qnnpack,
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

    fn q(shape: Vec<usize>, data: Vec<u8>, scale: f64, zp: i64) -> QTensor {
        QTensor::new(shape, data, scale, zp)
    }

    fn run(op: Mul, c: Ctx, a: QTensor, b: QTensor, o: OutQParams) -> Result<Vec<Pred>> {
        let (a, b) = (Value::Quantized(a), Value::Quantized(b));
        let plan = op.plan(&c, &[a.meta(), b.meta()], Some(&o))?;
        Ok(plan.predict(&[&a, &b])?.remove(0).ints().unwrap().to_vec())
    }

    #[test]
    fn integer_product_requantized_half_to_even() {
        // sa = sb = 0.5, so = 0.5: m = 0.5. (qa − 2)·(qb − 1) = 1, 3, 5, −3 → 0.5, 1.5, 2.5, −1.5
        // → RNE 0, 2, 2, −2, + zo 10.
        let a = q(vec![4], vec![3, 5, 7, 5], 0.5, 2);
        let b = q(vec![4], vec![2, 2, 2, 0], 0.5, 1);
        let p = run(
            Mul { relu: false },
            ctx(Flow::ConvertFx),
            a.clone(),
            b.clone(),
            out(0.5, 10),
        );
        assert_eq!(p.unwrap(), [10, 12, 12, 8].map(Pred::Exact).to_vec());
        let p = run(Mul { relu: true }, ctx(Flow::ConvertFx), a, b, out(0.5, 10));
        assert_eq!(p.unwrap(), [10, 12, 12, 10].map(Pred::Exact).to_vec());
    }

    #[test]
    fn squeeze_excite_broadcast_either_way() {
        // [1,2,2,2] × [1,2,1,1], both orders, channels-last or not: c·m with m = 1.
        let mut x = q(vec![1, 2, 2, 2], vec![1, 2, 3, 4, 5, 6, 7, 8], 1.0, 0);
        let g = q(vec![1, 2, 1, 1], vec![2, 3], 1.0, 0);
        let expect = [2, 4, 6, 8, 15, 18, 21, 24].map(Pred::Exact).to_vec();
        for cl in [false, true] {
            if cl {
                x.memory_format = MemoryFormat::ChannelsLast;
            }
            let c = ctx(Flow::ConvertFx);
            let p = run(Mul { relu: false }, c, x.clone(), g.clone(), out(1.0, 0)).unwrap();
            assert_eq!(p, expect);
            let p = run(Mul { relu: false }, c, g.clone(), x.clone(), out(1.0, 0)).unwrap();
            assert_eq!(p, expect);
        }
    }

    #[test]
    fn huge_multipliers_overflow_only_in_the_vector_body() {
        // m = 2^16: c = 255·255 → 4.3e9 ≥ 2^31. 64 vector elements give 0, the tail 255.
        let a = q(vec![65], vec![255; 65], 1.0, 0);
        let b = q(vec![65], vec![255; 65], 1.0, 0);
        let p = run(
            Mul { relu: false },
            ctx(Flow::ConvertFx),
            a,
            b,
            out(2f64.powi(-16), 3),
        );
        let p = p.unwrap();
        assert!(p[..64].iter().all(|&v| v == Pred::Exact(0)));
        assert_eq!(p[64], Pred::Exact(255));
    }

    #[test]
    fn reference_flows_and_errors() {
        let a = q(vec![2], vec![3, 200], 0.5, 1);
        let b = q(vec![1], vec![5], 0.25, 0);
        let o = OutQParams {
            scale: 0.25,
            zero_point: 2,
            quant_min: 0,
            quant_max: 127,
        };
        // x = [1, 99.5], y = 1.25: 1.25 / 0.25 = 5 + 2 = 7; 124.375 / 0.25 = 497.5 → clamped.
        let p = run(
            Mul { relu: false },
            ctx(Flow::ConvertToReferenceFx),
            a.clone(),
            b.clone(),
            o,
        );
        assert_eq!(p.unwrap(), vec![Pred::Exact(7), Pred::Exact(255)]);
        let p = run(
            Mul { relu: false },
            ctx(Flow::ConvertToReferenceDecomposedFx),
            a.clone(),
            b,
            o,
        );
        assert_eq!(p.unwrap(), vec![Pred::Exact(7), Pred::Exact(127)]);
        let bad = q(vec![3], vec![0; 3], 0.25, 0);
        assert!(run(Mul { relu: false }, ctx(Flow::ConvertFx), a.clone(), bad, o).is_err());
        let zp = q(vec![2], vec![0; 2], 0.25, -1);
        assert!(run(Mul { relu: false }, ctx(Flow::ConvertFx), a, zp, o).is_err());
    }
}
