//! Quantized `BatchNorm2d` in eval mode (`nnq.BatchNorm2d` → `quantized::batch_norm2d`,
//! `nniq.BNReLU2d` → `quantized::batch_norm2d_relu`) on a 4-D quint8 tensor, with its own output
//! qparams. Params: the float `weight`, `bias`, `running_mean`, `running_var` (f32, one per
//! channel), `eps`, `relu`.
//!
//! - Fused parameters (`quantized/cpu/Normalization.cpp: compute_fused_params`, a generic
//!   translation unit: no FMA), per channel, `eps` and the scales in double:
//!   `inv = f32(1.0 / f64(sqrtf(f32(var + f32(eps)))))`,
//!   `alpha = f32(f64(f32(inv·w)) · (in_s / out_s))`,
//!   `beta = f32(f64(f32(b − f32(f32(mean·inv)·w))) / out_s)`.
//! - Kernel (`kernels/QuantizedOpKernels.cpp: q_batch_norm_kernel`, the AVX2 build under the AVX2
//!   and AVX512 capabilities; input made NHWC, so memory format does not change values):
//!   `q' = clamp(RNE(fma(alpha, f32(q − in_zp), beta)) + out_zp, 0, 255)` for every channel —
//!   the vector body uses `vec::fmadd` and GCC contracts the scalar tail `alpha·x + beta` into an
//!   FMA too. Without AVX2 (ATen's DEFAULT capability) `f32(f32(alpha·x) + beta)`. `relu`:
//!   `max(q', out_zp)`. The qnnpack engine has no kernel of its own: the same.
//! - Reference flows (`native/cpu/batch_norm_kernel.cpp:
//!   batch_norm_cpu_collect_linear_and_constant_terms`, AVX2 build): on `x = dequantize(q)`,
//!   `invstd = f32(1/f32(sqrt(f32(var + f32(eps)))))`, `a = f32(invstd·w)`,
//!   `c = fma(−mean, a, b)`, `y = fma(x, a, c)` (no FMA without AVX2); `relu`: `max(y, 0)`;
//!   then the flow's quantize node. Exact.

use super::{expect_inputs, expect_out, Meta, Op, OutQParams, Output, Plan, Rule};
use super::{QTensor, Value};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::numerics::bound::Pred;
use crate::numerics::qparams::validate_qparams;
use crate::numerics::quantize::rne;
use crate::{Error, Result};

/// Eval-mode `BatchNorm2d` (optionally followed by ReLU) on a quantized tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNorm2d {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub eps: f64,
    #[serde(default)]
    pub relu: bool,
    /// The output scale the PyTorch call passes (the golden call table's params); when given it
    /// must equal the output qparams'.
    #[serde(default)]
    pub scale: Option<f64>,
    /// The output zero point the PyTorch call passes, likewise.
    #[serde(default)]
    pub zero_point: Option<i64>,
}

const OP: &str = "batch_norm2d";

/// `a·b + c` with one rounding (`fma`) or two.
fn mul_add(fma: bool, a: f32, b: f32, c: f32) -> f32 {
    if fma {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

impl BatchNorm2d {
    /// `compute_fused_params`: `(alpha, beta)` per channel.
    fn fused(&self, in_scale: f64, out_scale: f64) -> Vec<(f32, f32)> {
        (0..self.weight.len())
            .map(|c| {
                let (w, b) = (self.weight[c], self.bias[c]);
                let inv = (1.0f64 / (self.running_var[c] + self.eps as f32).sqrt() as f64) as f32;
                let alpha = ((inv * w) as f64 * (in_scale / out_scale)) as f32;
                let beta = ((b - self.running_mean[c] * inv * w) as f64 / out_scale) as f32;
                (alpha, beta)
            })
            .collect()
    }

    /// The float op's `(a, c)` per channel: `y = a·x + c`.
    fn float_terms(&self, fma: bool) -> Vec<(f32, f32)> {
        (0..self.weight.len())
            .map(|c| {
                let invstd = 1.0f32 / (self.running_var[c] + self.eps as f32).sqrt();
                let a = invstd * self.weight[c];
                (a, mul_add(fma, -self.running_mean[c], a, self.bias[c]))
            })
            .collect()
    }

    fn check(&self, channels: usize) -> Result<()> {
        let lists = [
            ("weight", &self.weight),
            ("bias", &self.bias),
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ];
        for (name, v) in lists {
            if v.len() != channels {
                return Err(Error::shape(
                    OP,
                    format!("{name} has {} values for {channels} channels", v.len()),
                ));
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::invalid(OP, format!("{name} holds {x}")));
            }
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::invalid(OP, format!("eps {}", self.eps)));
        }
        if let Some(v) = self
            .running_var
            .iter()
            .find(|&&v| v + self.eps as f32 <= 0.0)
        {
            return Err(Error::invalid(
                OP,
                format!("running_var {v} + eps is not positive"),
            ));
        }
        Ok(())
    }
}

impl Op for BatchNorm2d {
    fn name(&self) -> &'static str {
        OP
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let x = expect_inputs(OP, inputs, 1)?[0];
        let (scale, zero_point) = x.qparams(OP)?;
        validate_qparams("input qparams", scale, zero_point, 0, 255)?;
        let out = *expect_out(OP, out)?;
        validate_qparams("output qparams", out.scale, out.zero_point, 0, 255)?;
        let called = (
            self.scale.unwrap_or(out.scale),
            self.zero_point.unwrap_or(out.zero_point),
        );
        if called != (out.scale, out.zero_point) {
            return Err(Error::invalid(
                OP,
                format!(
                    "params name output qparams {called:?}, the output has ({}, {})",
                    out.scale, out.zero_point
                ),
            ));
        }
        let dims = super::pool::nchw(OP, x.shape)?;
        self.check(dims[1])?;
        let fma = ctx.cpu.avx2;
        let terms = if ctx.flow.is_integer() {
            let t = self.fused(scale, out.scale);
            if let Some((a, b)) = t.iter().find(|(a, b)| !(a.is_finite() && b.is_finite())) {
                return Err(Error::invalid(
                    OP,
                    format!("fused parameters alpha {a}, beta {b} are not finite"),
                ));
            }
            t
        } else {
            self.float_terms(fma)
        };
        Ok(Box::new(BatchNormPlan {
            relu: self.relu,
            fma,
            flow: ctx.flow,
            out,
            dims,
            terms,
        }))
    }
}

#[derive(Debug)]
struct BatchNormPlan {
    relu: bool,
    fma: bool,
    flow: Flow,
    out: OutQParams,
    dims: [usize; 4],
    /// `(alpha, beta)` (quantized kernel) or `(a, c)` (float op) per channel.
    terms: Vec<(f32, f32)>,
}

impl BatchNormPlan {
    fn element(&self, q: &QTensor, i: usize) -> Result<i64> {
        let [_, c, h, w] = self.dims;
        let (a, b) = self.terms[(i / (h * w)) % c];
        let code = q.data[i] as i64;
        if self.flow.is_integer() {
            let y = mul_add(self.fma, a, (code - q.zero_point) as f32, b);
            let v = (rne(y) as i64 + self.out.zero_point).clamp(0, 255);
            Ok(if self.relu {
                v.max(self.out.zero_point)
            } else {
                v
            })
        } else {
            let x = self.flow.dequantize(code, q.scale, q.zero_point);
            let y = mul_add(self.fma, x, a, b);
            let (lo, hi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
            let y = if self.relu { y.max(0.0) } else { y };
            self.flow
                .quantize(y, self.out.scale, self.out.zero_point, lo, hi)
                .ok_or_else(|| Error::invalid(OP, "NaN reaches the quantize node"))
        }
    }
}

impl Plan for BatchNormPlan {
    fn rule(&self) -> Rule {
        let op = if self.fma {
            "fma (one rounding)"
        } else {
            "f32 multiply, then f32 add (no AVX2: no FMA)"
        };
        let relu = if self.relu { ", then ReLU" } else { "" };
        if self.flow.is_integer() {
            Rule::default()
                .with(
                    "fused params",
                    "inv = f32(1/f64(sqrtf(f32(var + f32(eps))))), alpha = f32(f32(inv·w)·(in_s/out_s)), \
                     beta = f32(f32(b − f32(f32(mean·inv)·w)) / out_s) (scales in double)",
                )
                .with(
                    "kernel",
                    format!(
                        "q' = clamp(RNE(alpha·f32(q − in_zp) + beta) + out_zp, 0, 255) with {op}{}",
                        if self.relu { ", then max(q', out_zp)" } else { "" }
                    ),
                )
        } else {
            let (lo, hi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
            Rule::default()
                .with(
                    "float op",
                    format!(
                        "invstd = f32(1/f32(sqrt(f32(var + f32(eps))))), a = f32(invstd·w), \
                         c = b − mean·a, y = x·a + c, each a·b + c with {op}{relu}"
                    ),
                )
                .with(
                    "quantize",
                    format!(
                        "{} quantize (scale {}, zero point {}), clamp {lo}..{hi}",
                        self.flow.name(),
                        self.out.scale,
                        self.out.zero_point
                    ),
                )
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        super::pool::predict_ints(
            OP,
            inputs[0],
            self.dims,
            self.dims,
            |i| i,
            |q, i| self.element(q, i).map(Pred::Exact),
        )
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = super::pool::input(OP, inputs[0], &self.dims)?;
        let code = super::element_at(OP, &q.data, i)?;
        let [_, c, h, w] = self.dims;
        let ch = (i / (h * w)) % c;
        let (a, b) = self.terms[ch];
        Ok(vec![
            format!("element {i}: channel {ch}, code {code}, terms ({a:e}, {b:e})"),
            format!("result {}", self.element(q, i)?),
            format!("rule: {}", self.rule()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CpuFeatures;

    fn ctx(flow: Flow, cpu: CpuFeatures) -> Ctx {
        Ctx {
            cpu,
            ..crate::ops::pool::test_ctx(flow, crate::engine::Engine::X86)
        }
    }

    fn bn(c: usize) -> BatchNorm2d {
        BatchNorm2d {
            weight: vec![1.0; c],
            bias: vec![0.0; c],
            running_mean: vec![0.0; c],
            running_var: vec![1.0; c],
            eps: 0.0,
            relu: false,
            scale: None,
            zero_point: None,
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

    fn run(op: &BatchNorm2d, c: Ctx, x: &QTensor, o: OutQParams) -> Result<Vec<i64>> {
        let v = Value::Quantized(x.clone());
        let plan = op.plan(&c, &[v.meta()], Some(&o))?;
        let p = plan.predict(&[&v])?.remove(0);
        Ok(p.ints().unwrap().iter().map(|p| p.value()).collect())
    }

    #[test]
    fn identity_scale_and_shift() {
        // w 2, var 1 (inv 1), mean 1, b 0.5, scales 1: alpha 2, beta 0.5 − 2 = −1.5;
        // codes 0..4 with zp 2: x = −2..2 → 2x − 1.5 = −5.5, −3.5, −1.5, 0.5, 2.5 → RNE −6, −4,
        // −2, 0, 2; out_zp 10 → 4, 6, 8, 10, 12; relu → 10, 10, 10, 10, 12.
        let mut op = BatchNorm2d {
            weight: vec![2.0],
            bias: vec![0.5],
            running_mean: vec![1.0],
            ..bn(1)
        };
        let x = QTensor::new(vec![1, 1, 1, 5], vec![0, 1, 2, 3, 4], 1.0, 2);
        let fx = ctx(Flow::ConvertFx, CpuFeatures::AVX512_VNNI);
        assert_eq!(run(&op, fx, &x, out(1.0, 10)).unwrap(), [4, 6, 8, 10, 12]);
        op.relu = true;
        assert_eq!(
            run(&op, fx, &x, out(1.0, 10)).unwrap(),
            [10, 10, 10, 10, 12]
        );
        // Reference flows: the same numbers in float, ReLU at 0 before quantizing.
        let r = ctx(Flow::ConvertToReferenceFx, CpuFeatures::AVX512_VNNI);
        assert_eq!(run(&op, r, &x, out(1.0, 10)).unwrap(), [10, 10, 10, 10, 12]);
    }

    #[test]
    fn fma_decides_near_ties() {
        // alpha = w = 1 + u (u = 2^-23; var 1, eps 0, scales 1: inv 1), beta = b = −3.5 − 4u,
        // x = 3. Exact: 3 + 3u − 3.5 − 4u = −0.5 − u → RNE −1 with one rounding (FMA). The f32
        // product 3 + 3u rounds to 3 + 4u (ulp 2u, tie to even), the sum is −0.5 → RNE −0.
        let u = 2f32.powi(-23);
        let (alpha, beta) = (1.0 + u, -3.5 - 4.0 * u);
        assert_eq!(alpha.mul_add(3.0, beta), -0.5 - u);
        assert_eq!(alpha * 3.0 + beta, -0.5);
        let op = BatchNorm2d {
            weight: vec![alpha],
            bias: vec![beta],
            ..bn(1)
        };
        let x = QTensor::new(vec![1, 1, 1, 1], vec![3], 1.0, 0);
        let with = ctx(Flow::ConvertFx, CpuFeatures::AVX512_VNNI);
        let no_avx2 = CpuFeatures {
            avx2: false,
            ..CpuFeatures::AVX2
        };
        let without = ctx(Flow::ConvertFx, no_avx2);
        assert_eq!(run(&op, with, &x, out(1.0, 10)).unwrap(), [9]);
        assert_eq!(run(&op, without, &x, out(1.0, 10)).unwrap(), [10]);
    }

    #[test]
    fn bad_parameters_are_errors() {
        let x = QTensor::new(vec![1, 2, 1, 1], vec![0, 1], 1.0, 0);
        let fx = ctx(Flow::ConvertFx, CpuFeatures::AVX512_VNNI);
        assert!(run(&bn(3), fx, &x, out(1.0, 0)).is_err());
        let neg = BatchNorm2d {
            running_var: vec![1.0, -1.0],
            ..bn(2)
        };
        assert!(run(&neg, fx, &x, out(1.0, 0)).is_err());
        let nan = BatchNorm2d {
            weight: vec![f32::NAN, 1.0],
            ..bn(2)
        };
        assert!(run(&nan, fx, &x, out(1.0, 0)).is_err());
        assert!(run(&bn(2), fx, &x, out(0.0, 0)).is_err());
        let flat = QTensor::new(vec![2, 1], vec![0, 1], 1.0, 0);
        assert!(run(&bn(1), fx, &flat, out(1.0, 0)).is_err());
        let called = BatchNorm2d {
            zero_point: Some(3),
            ..bn(2)
        };
        assert!(run(&called, fx, &x, out(1.0, 0)).is_err());
        assert!(run(&bn(2), fx, &x, out(1.0, 0)).is_ok());
    }
    #[test]
    fn each_element_takes_its_channels_terms() {
        // [2, 2, 2, 3], channel c scales by w = c + 1 (var 1, eps 0, scales 1: alpha w, beta 0).
        // Element i sits in channel (i / 6) % 2, so image 1 repeats image 0's channels.
        let op = BatchNorm2d {
            weight: vec![1.0, 2.0],
            ..bn(2)
        };
        let x = QTensor::new(vec![2, 2, 2, 3], (0..24).collect(), 1.0, 0);
        let want: Vec<i64> = (0..24).map(|i| i * (1 + (i / 6) % 2)).collect();
        let no_avx2 = CpuFeatures {
            avx2: false,
            ..CpuFeatures::AVX2
        };
        for flow in [Flow::ConvertFx, Flow::ConvertToReferenceFx] {
            for cpu in [CpuFeatures::AVX512_VNNI, no_avx2] {
                let c = ctx(flow, cpu);
                assert_eq!(run(&op, c, &x, out(1.0, 0)).unwrap(), want, "{flow:?}");
            }
        }
    }

    #[test]
    fn eps_adds_to_the_variance_under_the_square_root() {
        // var 3.75 + eps 0.25 = 4: the inverse standard deviation is 1/2, y = x/2.
        let op = BatchNorm2d {
            running_var: vec![3.75],
            eps: 0.25,
            ..bn(1)
        };
        let x = QTensor::new(vec![1, 1, 1, 4], vec![0, 10, 20, 40], 1.0, 0);
        for flow in [Flow::ConvertFx, Flow::ConvertToReferenceFx] {
            let c = ctx(flow, CpuFeatures::AVX512_VNNI);
            assert_eq!(
                run(&op, c, &x, out(1.0, 0)).unwrap(),
                [0, 5, 10, 20],
                "{flow:?}"
            );
        }
    }

    #[test]
    fn trace_shows_the_channel_code_terms_and_result() {
        let op = BatchNorm2d {
            weight: vec![1.0, 2.0],
            bias: vec![0.5, -0.5],
            ..bn(2)
        };
        let x = QTensor::new(vec![2, 2, 2, 3], (0..24).collect(), 1.0, 0);
        let v = Value::Quantized(x.clone());
        let c = ctx(Flow::ConvertFx, CpuFeatures::AVX512_VNNI);
        let plan = op.plan(&c, &[v.meta()], Some(&out(1.0, 3))).unwrap();
        let want = run(&op, c, &x, out(1.0, 3)).unwrap();
        for (i, w) in want.iter().enumerate() {
            let t = plan.trace(&[&v], 0, i).unwrap();
            let ch = (i / 6) % 2;
            let (a, b) = [(1.0f32, 0.5f32), (2.0, -0.5)][ch];
            assert_eq!(
                t[0],
                format!("element {i}: channel {ch}, code {i}, terms ({a:e}, {b:e})")
            );
            assert_eq!(t[1], format!("result {w}"));
            assert!(t[2].starts_with("rule: "), "{t:?}");
        }
        assert!(plan.trace(&[&v], 0, 24).is_err());
    }

    #[test]
    fn the_rule_names_each_path() {
        let x = Value::Quantized(QTensor::new(vec![1, 1, 1, 1], vec![0], 1.0, 0));
        let no_avx2 = CpuFeatures {
            avx2: false,
            ..CpuFeatures::AVX2
        };
        let relu = BatchNorm2d {
            relu: true,
            ..bn(1)
        };
        for (flow, cpu, op, want) in [
            (
                Flow::ConvertFx,
                CpuFeatures::AVX2,
                &bn(1),
                ["alpha = f32(", "with fma (one rounding)"],
            ),
            (
                Flow::ConvertFx,
                no_avx2,
                &relu,
                ["beta = f32(", "no FMA), then max(q', out_zp)"],
            ),
            (
                Flow::ConvertToReferenceFx,
                CpuFeatures::AVX2,
                &relu,
                ["invstd = ", "fma (one rounding), then ReLU"],
            ),
            (
                Flow::ConvertToReferenceDecomposedFx,
                no_avx2,
                &bn(1),
                ["c = b − mean·a", "clamp 0..127"],
            ),
        ] {
            let c = ctx(flow, cpu);
            let o = OutQParams {
                quant_max: 127,
                ..out(1.0, 0)
            };
            let plan = op.plan(&c, &[x.meta()], Some(&o)).unwrap();
            let text: Vec<String> = plan
                .rule()
                .lines
                .iter()
                .map(|(_, t)| t.to_string())
                .collect();
            for w in want {
                assert!(text.iter().any(|t| t.contains(w)), "{flow:?} {w}: {text:?}");
            }
        }
    }

    #[test]
    fn degenerate_statistics_are_errors() {
        let x = QTensor::new(vec![1, 1, 1, 1], vec![0], 1.0, 0);
        for flow in [Flow::ConvertFx, Flow::ConvertToReferenceFx] {
            let c = ctx(flow, CpuFeatures::AVX512_VNNI);
            // var + eps = 0: no inverse standard deviation.
            let zero = BatchNorm2d {
                running_var: vec![0.0],
                ..bn(1)
            };
            assert!(run(&zero, c, &x, out(1.0, 0)).is_err(), "{flow:?}");
            // A negative or infinite eps, even where var + eps stays positive.
            for eps in [-1.0, f64::INFINITY, f64::NAN] {
                let op = BatchNorm2d {
                    running_var: vec![2.0],
                    eps,
                    ..bn(1)
                };
                assert!(run(&op, c, &x, out(1.0, 0)).is_err(), "{flow:?} eps {eps}");
            }
            let small = BatchNorm2d {
                running_var: vec![0.0],
                eps: 1e-5,
                ..bn(1)
            };
            assert!(run(&small, c, &x, out(1.0, 0)).is_ok(), "{flow:?}");
        }
        // alpha = f32(3e38 · 10) overflows while beta stays finite: the kernel has no finite
        // parameters to run.
        let big = BatchNorm2d {
            weight: vec![3e38],
            ..bn(1)
        };
        let fx = ctx(Flow::ConvertFx, CpuFeatures::AVX512_VNNI);
        let err = run(&big, fx, &x, out(0.1, 0)).unwrap_err().to_string();
        assert!(err.contains("not finite"), "{err}");
        assert!(run(&big, fx, &x, out(1.0, 0)).is_ok());
    }
}
