//! Fake quantization: `fake_quantize_per_tensor_affine`, `fake_quantize_per_channel_affine` and
//! `fused_moving_avg_obs_fake_quant` (ATen `QuantizedOpKernels.cpp`, `fused_obs_fake_quant.cpp`);
//! the arithmetic is [`crate::numerics::quantize::fake_quant`] and
//! [`crate::numerics::observer::fused_moving_avg_obs_fake_quant`].

use super::quantize::QParams;
use super::{expect_inputs, Meta, Op, OutQParams, Output, Plan, Predicted, Rule, Value};
use crate::engine::Ctx;
use crate::numerics::observer::{fused_moving_avg_obs_fake_quant, FusedConfig, FusedState};
use crate::numerics::qparams::validate_qparams;
use crate::numerics::quantize::fake_quant;
use crate::{Error, Result};

/// `fake_quantize_per_tensor_affine` / `fake_quantize_per_channel_affine`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuantize {
    pub qparams: QParams,
    pub quant_min: i64,
    pub quant_max: i64,
}

impl Op for FakeQuantize {
    fn name(&self) -> &'static str {
        match self.qparams {
            QParams::PerTensor { .. } => "fake_quantize_per_tensor_affine",
            QParams::PerChannel { .. } => "fake_quantize_per_channel_affine",
        }
    }

    fn plan<'a>(
        &'a self,
        _ctx: &Ctx,
        inputs: &[Meta<'_>],
        _out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let input = expect_inputs(self.name(), inputs, 1)?[0];
        let (inner, channels) = match &self.qparams {
            QParams::PerTensor { scale, zero_point } => {
                validate_qparams(
                    "qparams",
                    *scale,
                    *zero_point,
                    self.quant_min,
                    self.quant_max,
                )?;
                (1, 1)
            }
            QParams::PerChannel {
                scales,
                zero_points,
                axis,
                ..
            } => {
                let c = *input.shape.get(*axis).ok_or_else(|| {
                    Error::invalid("axis", format!("{axis} outside shape {:?}", input.shape))
                })?;
                if scales.len() != c || zero_points.len() != c {
                    return Err(Error::shape(
                        "per-channel qparams",
                        format!("{} scales for {c} channels", scales.len()),
                    ));
                }
                for (&s, &z) in scales.iter().zip(zero_points) {
                    validate_qparams("qparams", s, z, self.quant_min, self.quant_max)?;
                }
                (input.shape[axis + 1..].iter().product::<usize>(), c.max(1))
            }
        };
        Ok(Box::new(FakeQuantizePlan {
            op: self,
            inner: inner.max(1),
            channels,
            shape: input.shape.to_vec(),
        }))
    }
}

#[derive(Debug)]
struct FakeQuantizePlan<'a> {
    op: &'a FakeQuantize,
    inner: usize,
    channels: usize,
    shape: Vec<usize>,
}

impl FakeQuantizePlan<'_> {
    fn qparams(&self, i: usize) -> (f32, i64) {
        match &self.op.qparams {
            QParams::PerTensor { scale, zero_point } => (*scale as f32, *zero_point),
            QParams::PerChannel {
                scales,
                zero_points,
                ..
            } => {
                let c = (i / self.inner) % self.channels;
                (scales[c] as f32, zero_points[c])
            }
        }
    }
}

impl FakeQuantizePlan<'_> {
    /// Output and mask of element i, by the kernel of this op's qparams.
    fn element(&self, x: f32, i: usize) -> (f32, bool) {
        let (s, z) = self.qparams(i);
        let kernel = match self.op.qparams {
            QParams::PerTensor { .. } => fake_quant::per_tensor,
            QParams::PerChannel { .. } => fake_quant::per_channel,
        };
        kernel(x, s, z, self.op.quant_min, self.op.quant_max)
    }
}

impl Plan for FakeQuantizePlan<'_> {
    fn rule(&self) -> Rule {
        let (lo, hi) = (self.op.quant_min, self.op.quant_max);
        let rule = match self.op.qparams {
            QParams::PerTensor { .. } => format!(
                "qf = f32(zp + RNE(f32(x·f32(1/scale)))), q = int64(fmin(fmax(qf, {lo}), {hi})) \
                 (NaN → {lo}, +inf → {hi}), f32(f32(q − zp)·scale); mask {lo} ≤ qf ≤ {hi}"
            ),
            QParams::PerChannel { .. } => format!(
                "q = int64(zp + RNE(f32(x·f32(1/scale)))) (NaN, ±inf → INT64_MIN), clamp \
                 {lo}..{hi} in double, f32((q − zp)·scale); mask {lo} ≤ q ≤ {hi}"
            ),
        };
        Rule::default().with("fake quantize", rule)
    }

    /// `output`, and `mask` (1 where the unclamped value is in range: the `_cachemask` variant's
    /// second output).
    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let xs = inputs[0].f32s("input")?;
        let (out, mask): (Vec<f32>, Vec<i64>) = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let (y, m) = self.element(x, i);
                (y, i64::from(m))
            })
            .unzip();
        Ok(vec![
            Output::new("output", self.shape.clone(), Predicted::Floats(out)),
            Output::new(
                "mask",
                self.shape.clone(),
                Predicted::exact(mask.into_iter()),
            ),
        ])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let x = super::element_at("fake_quantize", inputs[0].f32s("input")?, i)?;
        let (s, z) = self.qparams(i);
        let (y, m) = self.element(x, i);
        Ok(vec![
            format!("x = {x:e}, scale {s}, zero_point {z}"),
            format!("output {y:e}, mask {m}"),
        ])
    }
}

/// `fused_moving_avg_obs_fake_quant`, one call per input batch, starting from `initial` or, when
/// it is `None`, from the buffers of an untrained `FusedMovingAvgObsFakeQuantize`
/// (`running_min = +inf`, `running_max = −inf`, scale 1, zero point 0; per row one of each per
/// channel of the first batch).
#[derive(Debug, Clone, PartialEq)]
pub struct FusedMovingAvgObsFakeQuant {
    pub cfg: FusedConfig,
    pub observer_on: bool,
    pub fake_quant_on: bool,
    pub initial: Option<FusedState>,
}

impl FusedMovingAvgObsFakeQuant {
    /// The buffers before the first batch, whose shape is `first`.
    fn initial_state(&self, first: Option<&[usize]>) -> Result<FusedState> {
        if let Some(s) = &self.initial {
            let n = s.scale.len();
            if [s.running_min.len(), s.running_max.len(), s.zero_point.len()] != [n; 3] || n == 0 {
                return Err(Error::shape(
                    "fused fake-quant initial buffers",
                    format!(
                        "running_min {}, running_max {}, scale {}, zero_point {} values",
                        s.running_min.len(),
                        s.running_max.len(),
                        n,
                        s.zero_point.len()
                    ),
                ));
            }
            return Ok(s.clone());
        }
        let n = match first {
            Some(shape) if self.cfg.per_row_fake_quant => {
                *shape.get(self.cfg.ch_axis).ok_or_else(|| {
                    Error::invalid(
                        "ch_axis",
                        format!("{} outside shape {shape:?}", self.cfg.ch_axis),
                    )
                })?
            }
            _ => 1,
        };
        Ok(FusedState::untrained(n))
    }
}

impl Op for FusedMovingAvgObsFakeQuant {
    fn name(&self) -> &'static str {
        "fused_moving_avg_obs_fake_quant"
    }

    fn plan<'a>(
        &'a self,
        _ctx: &Ctx,
        _inputs: &[Meta<'_>],
        _out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        if self.cfg.quant_min > self.cfg.quant_max {
            return Err(Error::invalid(self.name(), "quant_min > quant_max"));
        }
        Ok(Box::new(FusedPlan { op: self }))
    }
}

/// The outputs [`FusedPlan::predict`] gives per batch.
const FUSED_OUTPUTS_PER_STEP: usize = 5;

#[derive(Debug)]
struct FusedPlan<'a> {
    op: &'a FusedMovingAvgObsFakeQuant,
}

impl Plan for FusedPlan<'_> {
    fn rule(&self) -> Rule {
        Rule::default().with(
            "fused",
            "running min/max by f32 moving average (first batch: its own), qparams from FBGEMM \
             ChooseQuantizationParams (only when fake quantization is on), then fake quantize",
        )
    }

    /// Per batch `k`, in order: `step k running_min`, `running_max`, `scale`, `zero_point`,
    /// `output` (the buffers after that call, and its output).
    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let mut st = self.op.initial_state(inputs.first().map(|b| b.shape()))?;
        let mut out = Vec::new();
        for (k, b) in inputs.iter().enumerate() {
            let xs = b.f32s(&format!("batch {k}"))?;
            let y = fused_moving_avg_obs_fake_quant(
                xs,
                b.shape(),
                &mut st,
                &self.op.cfg,
                self.op.observer_on,
                self.op.fake_quant_on,
            )?;
            let v = |x: &Vec<f32>| Predicted::Floats(x.clone());
            out.push(Output::new(
                format!("step {k} running_min"),
                vec![st.running_min.len()],
                v(&st.running_min),
            ));
            out.push(Output::new(
                format!("step {k} running_max"),
                vec![st.running_max.len()],
                v(&st.running_max),
            ));
            out.push(Output::new(
                format!("step {k} scale"),
                vec![st.scale.len()],
                v(&st.scale),
            ));
            out.push(Output::new(
                format!("step {k} zero_point"),
                vec![st.zero_point.len()],
                Predicted::exact(st.zero_point.iter().map(|&z| z as i64)),
            ));
            out.push(Output::new(
                format!("step {k} output"),
                b.shape().to_vec(),
                Predicted::Floats(y),
            ));
        }
        Ok(out)
    }

    /// Element `i` of batch `k` (the step of output `output`) and the buffers that call left.
    fn trace(&self, inputs: &[&Value], output: usize, i: usize) -> Result<Vec<String>> {
        let k = output / FUSED_OUTPUTS_PER_STEP;
        let x = inputs.get(k).ok_or_else(|| {
            Error::invalid(self.op.name(), format!("output {output}: no batch {k}"))
        })?;
        let mut lines = match x.f32s(&format!("batch {k}"))?.get(i) {
            Some(v) => vec![format!("batch {k} x[{i}] = {v:e}")],
            None => vec![],
        };
        let outs = self.predict(&inputs[..=k])?;
        lines.extend(super::outputs_at(&outs[FUSED_OUTPUTS_PER_STEP * k..], i));
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{flow::Flow, Engine};
    use crate::ops::pool::test_ctx;
    use crate::tensor::Tensor;

    /// The trace of a fused step shows the element's input and the buffers after that call.
    #[test]
    fn fused_trace_shows_the_input_and_the_steps_buffers() {
        let ctx = test_ctx(Flow::ConvertFx, Engine::Fbgemm);
        let op = FusedMovingAvgObsFakeQuant {
            cfg: FusedConfig {
                averaging_const: 0.5,
                quant_min: 0,
                quant_max: 255,
                ch_axis: 0,
                per_row_fake_quant: false,
                symmetric_quant: false,
            },
            observer_on: true,
            fake_quant_on: true,
            initial: None,
        };
        let b0 = Value::Tensor(Tensor::f32(vec![2], vec![-1.0, 1.0]));
        let b1 = Value::Tensor(Tensor::f32(vec![2], vec![-3.0, 3.0]));
        let plan = op.plan(&ctx, &[b0.meta(), b1.meta()], None).unwrap();
        let outs = plan.predict(&[&b0, &b1]).unwrap();
        // Output 9 is step 1's output; its running min is the average −2.
        let t = plan.trace(&[&b0, &b1], 9, 1).unwrap();
        assert_eq!(t[0], "batch 1 x[1] = 3e0");
        assert_eq!(t[1], "step 1 running_min = -2e0 (0xc0000000)");
        assert_eq!(
            t[5],
            format!("step 1 output[1] = {}", outs[9].values.show(1))
        );
        assert_eq!(t.len(), 6);
        assert!(plan.trace(&[&b0, &b1], 10, 0).is_err());
    }

    /// Per-channel qparams need one scale and one zero point per channel of `axis` (either list
    /// of the wrong length is an error, not a read past its end); a fused op's quant range must
    /// not be empty.
    #[test]
    fn qparams_and_quant_ranges_are_checked() {
        let ctx = test_ctx(Flow::ConvertFx, Engine::Fbgemm);
        let x = Value::Tensor(Tensor::f32(vec![2, 3], vec![0.5; 6]));
        let op = |scales: Vec<f64>, zero_points: Vec<i64>| FakeQuantize {
            qparams: QParams::PerChannel {
                scales,
                scales_f32: true,
                zero_points,
                axis: 1,
            },
            quant_min: 0,
            quant_max: 255,
        };
        let fits = op(vec![0.1; 3], vec![0; 3]);
        let fused = |quant_min, quant_max| FusedMovingAvgObsFakeQuant {
            cfg: FusedConfig {
                averaging_const: 0.01,
                quant_min,
                quant_max,
                ch_axis: 0,
                per_row_fake_quant: false,
                symmetric_quant: false,
            },
            observer_on: true,
            fake_quant_on: true,
            initial: None,
        };
        // PyTorch's fake quantization accepts quant_min == quant_max, not quant_min > quant_max.
        assert!(fused(3, 3).plan(&ctx, &[x.meta()], None).is_ok());
        assert!(fused(4, 3).plan(&ctx, &[x.meta()], None).is_err());
        let plan = fits.plan(&ctx, &[x.meta()], None).unwrap();
        assert_eq!(
            plan.trace(&[&x], 0, 5).unwrap(),
            [
                "x = 5e-1, scale 0.1, zero_point 0",
                "output 5e-1, mask true"
            ]
        );
        assert!(plan.trace(&[&x], 0, 6).is_err());
        for bad in [op(vec![0.1; 3], vec![0; 2]), op(vec![0.1; 2], vec![0; 3])] {
            let e = bad.plan(&ctx, &[x.meta()], None).err().unwrap();
            assert!(e.to_string().contains("channels"), "{e}");
        }
    }

    #[test]
    fn the_kernel_follows_the_qparams_and_the_mask_is_an_output() {
        let ctx = test_ctx(Flow::ConvertFx, Engine::Fbgemm);
        // In range, beyond qmax by less than half a step, NaN, +inf, −inf.
        let xs = vec![1.0, 64.2, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30];
        let x = Value::Tensor(Tensor::f32(vec![1, 6], xs));
        let per_tensor = FakeQuantize {
            qparams: QParams::PerTensor {
                scale: 0.5,
                zero_point: 1,
            },
            quant_min: 0,
            quant_max: 127,
        };
        let per_channel = FakeQuantize {
            qparams: QParams::PerChannel {
                scales: vec![0.5],
                scales_f32: true,
                zero_points: vec![1],
                axis: 0,
            },
            ..per_tensor.clone()
        };
        let run = |op: &FakeQuantize| {
            let plan = op.plan(&ctx, &[x.meta()], None).unwrap();
            let outs = plan.predict(&[&x]).unwrap();
            assert_eq!(outs[0].name, "output");
            assert_eq!(outs[1].name, "mask");
            let Predicted::Floats(y) = &outs[0].values else {
                panic!("floats")
            };
            (
                y.clone(),
                outs[1].ints().unwrap().to_vec(),
                plan.rule().to_string(),
            )
        };
        let (yt, mt, rt) = run(&per_tensor);
        let (yc, mc, rc) = run(&per_channel);
        // 64.2 / 0.5 + 1 = 129.4 → 129: clamped to 127 and masked off.
        assert_eq!(yt, [1.0, 63.0, -0.5, 63.0, -0.5, 63.0]);
        assert_eq!(yc, [1.0, 63.0, -0.5, -0.5, -0.5, -0.5]);
        let exact = |v: [i64; 6]| v.map(crate::numerics::bound::Pred::Exact).to_vec();
        assert_eq!(mt, exact([1, 0, 0, 0, 0, 0]));
        assert_eq!(mc, mt);
        assert!(rt.contains("+inf → 127"), "{rt}");
        assert!(rc.contains("INT64_MIN"), "{rc}");
    }

    /// The buffers start as an untrained module's, one per channel per row (torch 2.15, fake
    /// quantization off: the scale and zero-point buffers keep their 3 initial values), or as
    /// given; given buffers of different lengths are an error.
    #[test]
    fn fused_buffers_start_per_channel_or_as_given() {
        let ctx = test_ctx(Flow::ConvertFx, Engine::Fbgemm);
        let b = Value::Tensor(Tensor::f32(
            vec![3, 2],
            vec![-1.0, 1.0, 0.5, 2.0, -4.0, 0.0],
        ));
        let op = |per_row, fake_quant_on, initial| FusedMovingAvgObsFakeQuant {
            cfg: FusedConfig {
                averaging_const: 0.01,
                quant_min: 0,
                quant_max: 255,
                ch_axis: 0,
                per_row_fake_quant: per_row,
                symmetric_quant: false,
            },
            observer_on: true,
            fake_quant_on,
            initial,
        };
        let run = |op: &FusedMovingAvgObsFakeQuant| -> Result<Vec<Output>> {
            op.plan(&ctx, &[b.meta()], None)?.predict(&[&b])
        };
        let floats = |o: &Output| match &o.values {
            Predicted::Floats(v) => v.clone(),
            other => panic!("{other:?}"),
        };
        let outs = run(&op(true, false, None)).unwrap();
        assert_eq!(floats(&outs[0]), [-1.0, 0.5, -4.0]);
        assert_eq!(floats(&outs[2]), [1.0; 3]);
        assert_eq!(outs[3].values.len(), 3);
        assert_eq!(floats(&outs[4]), [-1.0, 1.0, 0.5, 2.0, -4.0, 0.0]);
        let outs = run(&op(false, false, None)).unwrap();
        assert_eq!(floats(&outs[0]), [-4.0]);
        assert_eq!(floats(&outs[2]), [1.0]);
        // Given buffers: the moving average starts from them.
        let given = FusedState {
            running_min: vec![-2.0],
            running_max: vec![2.0],
            scale: vec![0.5],
            zero_point: vec![3],
        };
        let outs = run(&op(false, false, Some(given.clone()))).unwrap();
        assert_eq!(floats(&outs[0]), [-2.0 + 0.01f32 * (-4.0 - -2.0)]);
        assert_eq!(floats(&outs[2]), [0.5]);
        assert_eq!(
            outs[3].ints().unwrap(),
            [crate::numerics::bound::Pred::Exact(3)]
        );
        let bad = FusedState {
            scale: vec![0.5, 0.5],
            ..given
        };
        let e = run(&op(false, false, Some(bad))).unwrap_err();
        assert!(e.to_string().contains("scale 2"), "{e}");
    }
}
