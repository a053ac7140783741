//! Quantized problems and what every optimized kernel shares around its inner loop: the problem
//! descriptions with zero points ([`QGemm`], [`QConv`]), their validation, the requantization
//! epilogue ([`Requant`] and its per-channel form), and the interfaces of fused kernels
//! ([`QuantGemm`], [`QuantConv`]) that the conformance suite checks.
//!
//! Zero points are folded as FBGEMM does (`ReQuantizeOutput`, FBGEMM
//! `include/fbgemm/OutputProcessing-inl.h`): `raw[i][j] = acc[i][j] − a_zp·Σ_k b[j][k] −
//! b_zp[j]·Σ_k a[i][k] + K·a_zp·b_zp[j]` (int32, wrapping), where `acc` is the kernel's raw
//! `Σ a·b` under its accumulation model; for exact accumulation that is `Σ (a − a_zp)(b − b_zp)`.

use super::Accumulation;
use crate::geometry::Conv2dParams;
use crate::numerics::requant::{round_ne_i32, FbgemmRequant, QnnpackRequant};
use crate::{Error, Result};

/// Memory layout of a conv's input and output tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// PyTorch's logical layout, `N × C × H × W`.
    Nchw,
    /// Channels-last, `N × H × W × C` (FBGEMM's native layout).
    Nhwc,
}

/// Checks an activation (u8) zero point.
pub fn check_activation_zero_point(z: i32) -> Result<()> {
    if (0..=255).contains(&z) {
        Ok(())
    } else {
        Err(Error::invalid(
            "activation zero point",
            format!("{z} is outside 0..=255"),
        ))
    }
}

/// Checks the buffers and the activation zero point of an NHWC conv run (`x`: `nb × h × w × IC`,
/// `out`: `nb × OH × OW × OC` for the conv `p`); returns `(OH, OW)`. `what` names the conv in
/// the error.
pub(crate) fn check_nhwc_run(
    what: &str,
    p: &Conv2dParams,
    (x, nb, h, w): (&[u8], usize, usize, usize),
    out: &[u8],
    a_zp: i32,
) -> Result<(usize, usize)> {
    check_activation_zero_point(a_zp)?;
    let (c, oc) = (p.in_channels, p.out_channels);
    let (_, oh, ow) = p.output_dims(&[nb, c, h, w])?;
    let len = |dims: [usize; 4]| dims.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    let (in_len, out_len) = (len([nb, h, w, c]), len([nb, oh, ow, oc]));
    if in_len != Some(x.len()) || out_len != Some(out.len()) {
        return Err(Error::shape(
            what,
            format!(
                "buffers of {} and {} values for input {nb}×{h}×{w}×{c} (NHWC), \
                 output {nb}×{oh}×{ow}×{oc}",
                x.len(),
                out.len()
            ),
        ));
    }
    Ok((oh, ow))
}

/// Expands 1 (per-tensor) or `n` (per-channel) weight zero points to `n`, each in −128..=127.
pub fn weight_zero_points(z: &[i32], n: usize) -> Result<Vec<i32>> {
    let zps = match z.len() {
        1 => vec![z[0]; n],
        l if l == n => z.to_vec(),
        l => {
            return Err(Error::shape(
                "weight zero points",
                format!("{l} given for {n} output channels (need 1 or {n})"),
            ))
        }
    };
    if let Some(v) = zps.iter().find(|v| !(-128..=127).contains(*v)) {
        return Err(Error::invalid(
            "weight zero point",
            format!("{v} is outside -128..=127"),
        ));
    }
    Ok(zps)
}

/// `a · b` with overflow reported as a shape error.
fn mul(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| Error::shape(what.to_string(), format!("{a}·{b} overflows")))
}

/// A quantized GEMM: `a` is M×K u8 (row-major), `b` is N×K i8 (PyTorch's `[out, in]`).
#[derive(Debug, Clone, Copy)]
pub struct QGemm<'a> {
    /// Rows of A and of the output.
    pub m: usize,
    /// Rows of B, columns of the output (output channels).
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// M×K activations.
    pub a: &'a [u8],
    /// Activation zero point, 0..=255.
    pub a_zero_point: i32,
    /// N×K weights.
    pub b: &'a [i8],
    /// Weight zero points, −128..=127: one (per tensor) or N (per channel).
    pub b_zero_points: &'a [i32],
}

impl QGemm<'_> {
    /// Checks lengths and zero points; returns the weight zero point of every column.
    pub fn validate(&self) -> Result<Vec<i32>> {
        let (m, n, k) = (self.m, self.n, self.k);
        mul("gemm output", m, n)?;
        if mul("gemm A", m, k)? != self.a.len() {
            return Err(Error::shape(
                "gemm A",
                format!("{} values, M·K = {m}·{k}", self.a.len()),
            ));
        }
        if mul("gemm B", n, k)? != self.b.len() {
            return Err(Error::shape(
                "gemm B",
                format!("{} values, N·K = {n}·{k}", self.b.len()),
            ));
        }
        check_activation_zero_point(self.a_zero_point)?;
        weight_zero_points(self.b_zero_points, n)
    }

    /// Checks an output buffer of `len` elements.
    pub fn check_output(&self, len: usize) -> Result<()> {
        if len == self.m * self.n {
            Ok(())
        } else {
            Err(Error::shape(
                "gemm output",
                format!("{len} values, M·N = {}·{}", self.m, self.n),
            ))
        }
    }
}

/// A quantized 2-D convolution: input `batch × C × height × width` in `layout`, weights in
/// PyTorch's `[OC, IC/groups, KH, KW]`, padding filled with the activation zero point.
#[derive(Debug, Clone, Copy)]
pub struct QConv<'a> {
    pub params: Conv2dParams,
    /// Layout of the input and of the output.
    pub layout: Layout,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub input: &'a [u8],
    /// Activation zero point, 0..=255.
    pub a_zero_point: i32,
    pub weight: &'a [i8],
    /// Weight zero points, −128..=127: one or OC.
    pub w_zero_points: &'a [i32],
}

impl QConv<'_> {
    /// Checks geometry, lengths and zero points; returns `(OH, OW)`.
    pub fn validate(&self) -> Result<(usize, usize)> {
        let p = &self.params;
        if p.in_channels == 0 || p.out_channels == 0 {
            return Err(Error::invalid(
                "conv2d channels",
                format!(
                    "{} in, {} out: need at least one",
                    p.in_channels, p.out_channels
                ),
            ));
        }
        let (_, oh, ow) = p.output_dims(&[self.batch, p.in_channels, self.height, self.width])?;
        let pixels = mul("conv2d input", self.height, self.width)?;
        let len = mul(
            "conv2d input",
            mul("conv2d input", self.batch, p.in_channels)?,
            pixels,
        )?;
        if len != self.input.len() {
            return Err(Error::shape(
                "conv2d input",
                format!(
                    "{} values for {}×{}×{}×{}",
                    self.input.len(),
                    self.batch,
                    p.in_channels,
                    self.height,
                    self.width
                ),
            ));
        }
        let ws = p.weight_shape();
        let wlen = ws
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .ok_or_else(|| Error::shape("conv2d weights", "size overflows"))?;
        if wlen != self.weight.len() {
            return Err(Error::shape(
                "conv2d weights",
                format!("{} values for {ws:?}", self.weight.len()),
            ));
        }
        check_activation_zero_point(self.a_zero_point)?;
        weight_zero_points(self.w_zero_points, p.out_channels)?;
        mul(
            "conv2d output",
            mul("conv2d output", self.batch, p.out_channels)?,
            mul("conv2d output", oh, ow)?,
        )?;
        Ok((oh, ow))
    }

    /// Checks an output buffer of `len` elements for output size `(oh, ow)`.
    pub fn check_output(&self, len: usize, (oh, ow): (usize, usize)) -> Result<()> {
        let want = self.batch * self.params.out_channels * oh * ow;
        if len == want {
            Ok(())
        } else {
            Err(Error::shape(
                "conv2d output",
                format!("{len} values, need {want}"),
            ))
        }
    }
}

/// A requantization rule fused into a kernel's epilogue: maps `raw` of output channel `j` to a
/// u8 exactly as the scalar rule of [`crate::numerics::requant`] does.
#[derive(Debug, Clone, PartialEq)]
pub enum Requant {
    /// FBGEMM's `ReQuantizeOutput` ([`FbgemmRequant`]).
    Fbgemm(FbgemmRequant),
    /// QNNPACK's fp32 requantization ([`QnnpackRequant`]).
    Qnnpack(QnnpackRequant),
}

impl Requant {
    /// The scalar rule, exactly [`FbgemmRequant::apply`] or [`QnnpackRequant::apply`].
    #[inline]
    pub fn apply(&self, raw: i32, j: usize) -> u8 {
        match self {
            Requant::Fbgemm(r) => r.apply(raw, j),
            Requant::Qnnpack(r) => r.apply(raw, j),
        }
    }

    /// The output zero point.
    pub fn out_zero_point(&self) -> i32 {
        match self {
            Requant::Fbgemm(f) => f.out_zero_point,
            Requant::Qnnpack(q) => q.out_zero_point,
        }
    }

    /// The sub-rule of output channels `lo..hi` (a per-tensor multiplier stays one entry).
    pub fn channels(&self, lo: usize, hi: usize) -> Result<Requant> {
        self.validate(hi)?;
        let sl = |v: &Vec<f32>| {
            if v.len() == 1 {
                v.clone()
            } else {
                v[lo..hi].to_vec()
            }
        };
        Ok(match self {
            Requant::Fbgemm(f) => Requant::Fbgemm(FbgemmRequant {
                act_times_w_scale: sl(&f.act_times_w_scale),
                multiplier: sl(&f.multiplier),
                bias_term: f.bias_term[lo..hi].to_vec(),
                bias_scale: f.bias_scale,
                out_zero_point: f.out_zero_point,
                relu: f.relu,
            }),
            Requant::Qnnpack(q) => Requant::Qnnpack(QnnpackRequant {
                scale: q.scale[lo..hi].to_vec(),
                bias_q: q.bias_q[lo..hi].to_vec(),
                out_zero_point: q.out_zero_point,
                relu: q.relu,
            }),
        })
    }

    /// Checks that the rule covers output channels `0..n` and its zero point is a u8.
    pub fn validate(&self, n: usize) -> Result<()> {
        let fields: &[(&str, usize, bool)] = match self {
            Requant::Fbgemm(f) => &[
                ("multiplier", f.multiplier.len(), true),
                ("act_times_w_scale", f.act_times_w_scale.len(), true),
                ("bias_term", f.bias_term.len(), false),
            ],
            Requant::Qnnpack(q) => &[
                ("scale", q.scale.len(), false),
                ("bias_q", q.bias_q.len(), false),
            ],
        };
        for &(field, len, may_be_one) in fields {
            if len < n && !(may_be_one && len == 1) {
                return Err(Error::shape(
                    "requantization",
                    format!("{field} has {len} entries for {n} output channels"),
                ));
            }
        }
        let zp = self.out_zero_point();
        if !(0..=255).contains(&zp) {
            return Err(Error::invalid(
                "output zero point",
                format!("{zp} is outside 0..=255"),
            ));
        }
        Ok(())
    }
}

/// A requantization rule in the one per-channel form every SIMD epilogue evaluates:
/// `q = clamp(RNE(f32(fma(add_f[j], add_s[j], f32(raw + add_i[j])) · mult[j])) + zp, lo, 255)`,
/// the fused multiply-add rounding once and RNE giving `i32::MIN` for NaN and out-of-range values
/// (`cvtps2dq`). FBGEMM has `add_i = 0`, and with per-channel weights `add_s = 1` (so the FMA is
/// the plain f32 addition of the quotient), with per-tensor weights `add_f = bias`,
/// `add_s = rcp`; QNNPACK has `add_f = 0` (adding +0.0 to a converted integer changes nothing).
/// So every rule is this one formula, bit for bit ([`PerChannel::apply`] is its scalar
/// evaluation).
#[derive(Debug, Clone)]
pub(crate) struct PerChannel {
    pub(crate) add_i: Vec<i32>,
    pub(crate) add_f: Vec<f32>,
    pub(crate) add_s: Vec<f32>,
    pub(crate) mult: Vec<f32>,
    pub(crate) zp: i32,
    /// The lower clamp: the zero point under a fused ReLU, else 0.
    pub(crate) lo: i32,
}

impl PerChannel {
    /// The rule of output channels `j0 .. j0 + n`, padded with zeros to `len ≥ n` entries (so an
    /// epilogue can load whole vectors).
    pub(crate) fn new(rule: &Requant, j0: usize, n: usize, len: usize) -> Result<Self> {
        rule.validate(j0 + n)?;
        let len = len.max(n);
        let (mut add_i, mut add_f, mut mult) = (vec![0; len], vec![0.0; len], vec![0.0; len]);
        let mut add_s = vec![1.0; len];
        let (zp, relu) = match rule {
            Requant::Fbgemm(f) => {
                for j in 0..n {
                    add_f[j] = f.bias_term[j0 + j];
                    add_s[j] = f.bias_scale.unwrap_or(1.0);
                    mult[j] = f.multiplier[if f.multiplier.len() == 1 { 0 } else { j0 + j }];
                }
                (f.out_zero_point, f.relu)
            }
            Requant::Qnnpack(q) => {
                add_i[..n].copy_from_slice(&q.bias_q[j0..j0 + n]);
                mult[..n].copy_from_slice(&q.scale[j0..j0 + n]);
                (q.out_zero_point, q.relu)
            }
        };
        Ok(Self {
            add_i,
            add_f,
            add_s,
            mult,
            zp,
            lo: if relu { zp } else { 0 },
        })
    }

    /// The rule on one accumulator of (local) channel `j` (the x86 epilogue's scalar tails).
    #[inline]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn apply(&self, raw: i32, j: usize) -> u8 {
        let x = raw.wrapping_add(self.add_i[j]) as f32;
        let f = self.add_f[j].mul_add(self.add_s[j], x) * self.mult[j];
        (round_ne_i32(f) as i64 + self.zp as i64).clamp(self.lo as i64, 255) as u8
    }

    /// [`PerChannel::apply`] on `raw[i]` of (local) channel `j0 + i`, for every `i < out.len()`,
    /// in one loop over slices that the compiler can vectorise. `zp ≥ 0`, so saturating the
    /// zero-point addition in int32 changes nothing after the clamp to `lo..=255`.
    #[inline]
    pub(crate) fn apply_block(&self, raw: &[i32], j0: usize, out: &mut [u8]) {
        let n = out.len();
        let (raw, add_i) = (&raw[..n], &self.add_i[j0..j0 + n]);
        let (add_f, add_s, mult) = (
            &self.add_f[j0..j0 + n],
            &self.add_s[j0..j0 + n],
            &self.mult[j0..j0 + n],
        );
        for i in 0..n {
            let x = raw[i].wrapping_add(add_i[i]) as f32;
            let f = add_f[i].mul_add(add_s[i], x) * mult[i];
            out[i] = round_ne_i32(f).saturating_add(self.zp).clamp(self.lo, 255) as u8;
        }
    }
}

/// Where a fused kernel writes a result: the zero-point-folded int32 accumulators, or u8
/// requantized by a rule.
#[derive(Debug)]
pub enum Output<'a> {
    Raw(&'a mut [i32]),
    Requantized(&'a Requant, &'a mut [u8]),
}

impl Output<'_> {
    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        match self {
            Output::Raw(o) => o.len(),
            Output::Requantized(_, o) => o.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A kernel with zero points folded and requantization fused into its epilogue: GEMM.
pub trait QuantGemm: Send + Sync {
    /// Stable name (as [`super::Int8Gemm::name`]).
    fn name(&self) -> &'static str;
    /// The accumulation model of the raw products.
    fn accumulation(&self) -> Accumulation;
    /// `out[i][j]` = `raw` of row `i`, column `j` (M×N row-major), or the rule applied to it.
    /// Bad shapes, zero points or rules are errors.
    fn qgemm(&self, p: &QGemm<'_>, out: Output<'_>) -> Result<()>;
}

/// A kernel with zero points folded and requantization fused into its epilogue: conv2d.
pub trait QuantConv: Send + Sync {
    /// Stable name.
    fn name(&self) -> &'static str;
    /// The accumulation model, with products in im2col order `(ky, kx, ic)` (FBGEMM's).
    fn accumulation(&self) -> Accumulation;
    /// Whether the kernel implements this geometry and layout (a specialised kernel, such as a
    /// depthwise 3×3 one, covers a subset; a GEMM-based conv covers all).
    fn supports(&self, params: &Conv2dParams, layout: Layout) -> bool;
    /// Whether [`Output::Raw`] is supported (a kernel whose requantization is fused into its
    /// inner loop writes u8 only).
    fn raw_output(&self) -> bool {
        true
    }
    /// Runs `c`, writing `batch × OC × OH × OW` outputs in `c.layout`; returns `(OH, OW)`.
    /// Bad shapes, zero points or rules, and unsupported geometry, are errors.
    fn qconv(&self, c: &QConv<'_>, out: Output<'_>) -> Result<(usize, usize)>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_form_equals_both_scalar_rules() {
        let n = 5;
        let ws = [0.003f32, 0.01, 0.02, 0.0005, 0.007];
        let bias = [1.5f32, -20.0, 0.0, 3e4, -0.25];
        let mut rules = Vec::new();
        for relu in [false, true] {
            for per_channel in [false, true] {
                let w = if per_channel { &ws[..] } else { &ws[..1] };
                rules.push(Requant::Fbgemm(FbgemmRequant::new(
                    0.02,
                    w,
                    per_channel,
                    Some(&bias),
                    n,
                    0.07,
                    100,
                    relu,
                )));
                rules.push(Requant::Qnnpack(QnnpackRequant::new(
                    0.02,
                    w,
                    Some(&bias),
                    n,
                    0.07,
                    17,
                    relu,
                )));
            }
        }
        let mut odd = FbgemmRequant::new(0.02, &ws, true, Some(&bias), n, 0.07, 3, false);
        odd.multiplier[1] = f32::NAN;
        odd.bias_term[2] = f32::INFINITY;
        rules.push(Requant::Fbgemm(odd));
        let raws = [
            i32::MIN,
            -1 << 20,
            -32769,
            -5,
            0,
            1,
            77,
            32768,
            1 << 28,
            i32::MAX,
        ];
        for r in &rules {
            for j0 in 0..2 {
                let pc = PerChannel::new(r, j0, n - j0, 8).unwrap();
                for j in 0..n - j0 {
                    for &raw in &raws {
                        assert_eq!(
                            pc.apply(raw, j),
                            r.apply(raw, j0 + j),
                            "{r:?} j={j} raw={raw}"
                        );
                    }
                }
                for &raw in &raws {
                    for j in 0..n - j0 {
                        let mut block = [0u8; 5];
                        let len = n - j0 - j;
                        pc.apply_block(&[raw; 5][..len], j, &mut block[..len]);
                        for (i, &q) in block[..len].iter().enumerate() {
                            assert_eq!(q, r.apply(raw, j0 + j + i), "{r:?} block at {j}");
                        }
                    }
                }
            }
            assert!(
                PerChannel::new(r, 1, n, n).is_err(),
                "channels past the rule"
            );
        }
    }

    #[test]
    fn problems_reject_what_they_cannot_describe() {
        assert!(weight_zero_points(&[1, 2], 3).is_err());
        assert!(weight_zero_points(&[-129], 3).is_err());
        assert_eq!(weight_zero_points(&[-128], 2).unwrap(), vec![-128, -128]);
        assert!(check_activation_zero_point(256).is_err());
        let ok = QGemm {
            m: 1,
            n: 1,
            k: 1,
            a: &[1],
            a_zero_point: 0,
            b: &[1],
            b_zero_points: &[0],
        };
        assert!(ok.validate().is_ok());
        assert!(QGemm {
            k: usize::MAX,
            ..ok
        }
        .validate()
        .is_err());
        let r = Requant::Qnnpack(QnnpackRequant::new(1.0, &[1.0], None, 2, 1.0, 0, false));
        assert!(r.validate(3).is_err());
        assert!(r.channels(1, 2).unwrap().validate(1).is_ok());
    }
}
