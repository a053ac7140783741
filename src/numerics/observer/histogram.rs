//! `torch.ao.quantization.observer.HistogramObserver` (torch 2.15.0), bit for bit on x86-64
//! with `torch.set_num_threads(1)`.
//!
//! Every tensor operation the Python observer performs is reproduced with the dtype PyTorch uses
//! for it. The facts that matter (all verified against torch 2.15.0, CPU capability AVX2):
//!
//! * `torch.histc` (ATen `Histogram.cpp: histogram_histc_out`, `cpu/HistogramKernel.cpp`,
//!   `LINEAR_INTERPOLATION`): the outer edges are chosen in `f64`, converted to `f32` by
//!   `linspace`, and the bin of `v` is `(int64)(f32(f32(v − L)·bins) / f32(R − L))`, the last edge
//!   belonging to the last bin. Only `linspace[0]` and `linspace[bins]` are used; with an overflowing
//!   step they are NaN and nothing is counted. An `min == max` range is widened by
//!   `bins_edges_correction`: `L = min(f64(next_down_f32(v)), v − 1)`, `R = max(f64(next_up_f32(v)), v + 1)`.
//! * A quotient too large for `int64` converts to `INT64_MIN` (`cvttss2si`); the kernel then
//!   indexes `hist[INT64_MIN]`, whose byte offset wraps to 0: such elements land in bin 0.
//! * `torch.linspace` (ATen `cpu/RangeFactoriesKernel.cpp`, f32): `step = f32(end − start) / f32(steps − 1)`,
//!   element `i < steps/2` is `fma(step, i, start)`, the others `fma(−step, steps − 1 − i, end)`:
//!   the compiler contracts both into FMAs.
//! * `torch.sum` of an f32 vector (ATen `cpu/SumKernel.cpp: cascade_sum`) is a cascade of 8-lane
//!   vector partial sums (AVX2 `Vectorized<float>`), 4-way ILP, 16-step levels; see
//!   [`crate::numerics::sum`].
//! * `torch.cumsum` of f32 accumulates in `f64` and rounds each prefix to `f32`.
//! * A 0-dim f32 tensor compared with a Python float (`cSum[l] < next_alpha * total`) compares in
//!   `f32`: the double is rounded to f32 first.
//! * A Python float operand of an f32 tensor op is rounded to f32 first; `_compute_quantization_error`
//!   computes `bin_width` and `dst_bin_width` in `f64` (`.item()`), then every tensor op in f32.
//! * `torch.div(..., rounding_mode="floor")` is Python-style floor division (`fmod`, fix-ups); the
//!   vectorised body and the scalar tail differ only when `|a / b| = ∞`.
//! * `torch.bucketize(right=True)` is ATen's `cus_upper_bound` binary search; `bincount` with f32
//!   weights accumulates sequentially in f32.
//!
//! NaN: torch raises in `histc` ("range of [nan, nan] is not finite") for any batch containing NaN;
//! [`HistogramObserver::forward`] returns an error and leaves the state unchanged (torch, on a first
//! batch, has already copied NaN into `min_val`/`max_val` before raising).

use crate::numerics::qparams::{
    calculate_qmin_qmax, observer_qparams, torch_max, torch_min, ObserverQParamsConfig, QDType,
    QScheme,
};
use crate::numerics::sum::{torch_sum_f32, LANES};
use crate::{Error, Result};

/// Configuration of a [`HistogramObserver`]: its bins, and the quant range, dtype, qscheme and
/// `eps` every observer resolves ([`ObserverQParamsConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramConfig {
    /// Number of histogram bins (`bins`, default 2048).
    pub bins: usize,
    /// Sub-bins per bin when re-binning after a range change (16 in torch, not configurable there).
    pub upsample_rate: usize,
    /// Dtype, qscheme, resolved quant range and `eps`.
    pub qparams: ObserverQParamsConfig,
}

impl HistogramConfig {
    /// Mirrors `HistogramObserver(bins, dtype, qscheme, reduce_range, quant_min, quant_max, eps)`,
    /// resolving the quant range with [`calculate_qmin_qmax`].
    pub fn from_torch_args(
        bins: usize,
        dtype: QDType,
        qscheme: QScheme,
        reduce_range: bool,
        quant_min: Option<i64>,
        quant_max: Option<i64>,
        eps: f32,
    ) -> Result<Self> {
        let cfg = HistogramConfig {
            bins,
            upsample_rate: 16,
            qparams: ObserverQParamsConfig {
                dtype,
                qscheme,
                range: calculate_qmin_qmax(quant_min, quant_max, dtype, reduce_range)?,
                eps,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.bins == 0 || self.bins > (1 << 24) {
            return Err(Error::invalid(
                "bins",
                format!("{} is not in 1..=2^24", self.bins),
            ));
        }
        if self.upsample_rate == 0 || self.bins.saturating_mul(self.upsample_rate) > (1 << 24) {
            return Err(Error::invalid(
                "upsample_rate",
                format!(
                    "bins·upsample_rate must be in 1..=2^24 (bins {}, rate {})",
                    self.bins, self.upsample_rate
                ),
            ));
        }
        let r = &self.qparams.range;
        if r.quant_min >= r.quant_max {
            return Err(Error::invalid(
                "quant range",
                format!(
                    "quant_min {} must be < quant_max {}",
                    r.quant_min, r.quant_max
                ),
            ));
        }
        if self.qparams.qscheme.is_per_channel() {
            return Err(Error::invalid(
                "qscheme",
                "HistogramObserver is per-tensor only",
            ));
        }
        Ok(())
    }
}

/// The observer's state: running min/max and the `bins`-entry f32 histogram, exactly as torch's
/// buffers `min_val`, `max_val`, `histogram`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramObserver {
    cfg: HistogramConfig,
    /// Running minimum (`+inf` before the first non-empty batch).
    pub min_val: f32,
    /// Running maximum (`-inf` before the first non-empty batch).
    pub max_val: f32,
    /// Histogram over `[min_val, max_val]`, `cfg.bins` entries.
    pub histogram: Vec<f32>,
}

impl HistogramObserver {
    /// A fresh observer (`min_val = +inf`, `max_val = −inf`, zero histogram). Errors on an
    /// unusable configuration (zero bins, empty quant range, ...).
    pub fn new(cfg: HistogramConfig) -> Result<Self> {
        cfg.validate()?;
        let bins = cfg.bins;
        Ok(HistogramObserver {
            cfg,
            min_val: f32::INFINITY,
            max_val: f32::NEG_INFINITY,
            histogram: vec![0.0; bins],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HistogramConfig {
        &self.cfg
    }

    /// `HistogramObserver.forward(x)` for a flattened f32 batch. ±inf elements are dropped; a batch
    /// with a NaN is rejected (state unchanged).
    pub fn forward(&mut self, x: &[f32]) -> Result<()> {
        if x.is_empty() {
            return Ok(());
        }
        if x.iter().any(|v| v.is_nan()) {
            return Err(Error::invalid(
                "HistogramObserver input",
                "NaN in batch (torch.histc raises: range of [nan, nan] is not finite)",
            ));
        }
        let filtered: Vec<f32>;
        let x = if x.iter().any(|v| v.is_infinite()) {
            filtered = x.iter().copied().filter(|v| v.is_finite()).collect();
            if filtered.is_empty() {
                return Ok(());
            }
            &filtered[..]
        } else {
            x
        };
        let (x_min, x_max) = aminmax(x);
        let bins = self.cfg.bins;

        if self.min_val == f32::INFINITY || self.max_val == f32::NEG_INFINITY {
            let hist = histc(x, bins, x_min, x_max)?;
            self.min_val = x_min;
            self.max_val = x_max;
            self.histogram = hist;
            return Ok(());
        }

        let (cur_min, cur_max) = (self.min_val, self.max_val);
        // combined_min = torch.min(new_min, min_val), likewise max: 0-dim tensors.
        let new_min = torch_min(x_min, cur_min);
        let new_max = torch_max(x_max, cur_max);
        let update = histc(x, bins, new_min, new_max)?;
        let combined: Vec<f32> = if new_min == cur_min && new_max == cur_max {
            self.histogram
                .iter()
                .zip(&update)
                .map(|(a, b)| a + b)
                .collect()
        } else if cur_min == cur_max {
            // _combine_histograms: all earlier mass sits at one value.
            let bin_value = torch_sum_f32(&self.histogram);
            let one = histc(&[cur_min], bins, new_min, new_max)?;
            one.iter()
                .zip(&update)
                .map(|(o, u)| o * bin_value + u)
                .collect()
        } else {
            let transformed = self.upscale_histogram(cur_min, cur_max, new_min, new_max);
            update
                .iter()
                .zip(&transformed)
                .map(|(u, t)| u + t)
                .collect()
        };
        self.histogram = combined;
        self.min_val = new_min;
        self.max_val = new_max;
        Ok(())
    }

    /// `_upscale_histogram`: splits each old bin into `upsample_rate` equal sub-bins at the
    /// midpoints of `linspace(orig_min, orig_max, bins·rate + 1)` and re-bins them into
    /// `linspace(new_min, new_max, bins + 1)` (bucketize right=True, weighted bincount).
    fn upscale_histogram(
        &self,
        orig_min: f32,
        orig_max: f32,
        new_min: f32,
        new_max: f32,
    ) -> Vec<f32> {
        let bins = self.cfg.bins;
        let rate = self.cfg.upsample_rate;
        let n = bins * rate;
        let rate_f = rate as f32;
        // bin_size = (orig_max - orig_min) / (bins * upsample_rate): f32 sub, f32 true division.
        let bin_size = (orig_max - orig_min) / (n as f32);
        let half = 0.5f32 * bin_size;
        let bounds = linspace_f32(new_min, new_max, bins + 1);
        let mids = Linspace::new(orig_min, orig_max, n + 1);
        // For sorted boundaries the upper bound is unique, so a forward walk from the previous
        // answer gives the same index as ATen's binary search; otherwise follow its probes.
        let sorted = bounds.windows(2).all(|w| w[0] <= w[1]);
        let mut out = vec![0.0f32; bins];
        let mut prev_mid = f32::NEG_INFINITY;
        let mut pos = 0usize;
        for (j, &count) in self.histogram.iter().enumerate() {
            // repeat_interleave(rate) / rate: every sub-bin of bin j weighs count / rate.
            let weight = count / rate_f;
            for i in j * rate..(j + 1) * rate {
                let mid = mids.at(i) + half;
                if sorted && mid >= prev_mid {
                    while pos < bounds.len() && bounds[pos] <= mid {
                        pos += 1;
                    }
                } else {
                    pos = upper_bound(&bounds, mid);
                }
                prev_mid = if mid.is_nan() { f32::INFINITY } else { mid };
                let b = (pos as i64 - 1).clamp(0, bins as i64 - 1) as usize;
                // bincount(weights) accumulates in f32, in index order.
                out[b] += weight;
            }
        }
        out
    }

    /// `_non_linear_param_search()`: the `(new_min, new_max)` handed to `_calculate_qparams`.
    pub fn search_range(&self) -> (f32, f32) {
        let bins = self.cfg.bins;
        let bin_width = (self.max_val - self.min_val) / bins as f32;
        let total = torch_sum_f32(&self.histogram) as f64;
        let csum = cumsum_f32(&self.histogram);
        let monotone = csum.windows(2).all(|w| w[0] <= w[1]) && csum.iter().all(|v| !v.is_nan());

        let stepsize = 1e-5f64;
        let mut alpha = 0.0f64;
        let mut beta = 1.0f64;
        let mut start_bin = 0usize;
        let mut end_bin = bins - 1;
        let mut norm_min = f64::INFINITY;
        while alpha < beta {
            let next_alpha = alpha + stepsize;
            let next_beta = beta - stepsize;
            // `cSum[l] < next_alpha * total`: 0-dim f32 tensor vs Python float -> f32 compare.
            let lo_thr = (next_alpha * total) as f32;
            let hi_thr = (next_beta * total) as f32;
            let (l, r) = if monotone {
                let l = start_bin + csum[start_bin..end_bin].partition_point(|&c| c < lo_thr);
                // r: last index in (start_bin, end_bin] with !(csum > hi_thr), else start_bin.
                let r = start_bin + csum[start_bin + 1..=end_bin].partition_point(|&c| c <= hi_thr);
                (l, r)
            } else {
                let mut l = start_bin;
                while l < end_bin && csum[l] < lo_thr {
                    l += 1;
                }
                let mut r = end_bin;
                while r > start_bin && csum[r] > hi_thr {
                    r -= 1;
                }
                (l, r)
            };
            let mut next_start = start_bin;
            let mut next_end = end_bin;
            if (l - start_bin) > (end_bin - r) {
                next_start = l;
                alpha = next_alpha;
            } else {
                next_end = r;
                beta = next_beta;
            }
            if next_start == start_bin && next_end == end_bin {
                continue;
            }
            let norm = self.compute_quantization_error(next_start, next_end);
            if norm > norm_min {
                break;
            }
            norm_min = norm;
            start_bin = next_start;
            end_bin = next_end;
        }
        let new_min = self.min_val + bin_width * start_bin as f32;
        let new_max = self.min_val + bin_width * (end_bin + 1) as f32;
        (new_min, new_max)
    }

    /// `_compute_quantization_error(next_start_bin, next_end_bin)` (L2 norm), as the Python float
    /// it returns.
    fn compute_quantization_error(&self, next_start_bin: usize, next_end_bin: usize) -> f64 {
        let bins = self.cfg.bins;
        let dst_nbins = (1u64 << self.cfg.qparams.dtype.bits()) as f64;
        // Python floats (f64) from .item().
        let bin_width = (self.max_val as f64 - self.min_val as f64) / bins as f64;
        let dst_bin_width =
            bin_width * (next_end_bin as f64 - next_start_bin as f64 + 1.0) / dst_nbins;
        if dst_bin_width == 0.0 {
            return 0.0;
        }
        // Python floats as operands of f32 tensor ops are rounded to f32.
        let bw = bin_width as f32;
        let dbw = dst_bin_width as f32;
        let half_dbw = (dst_bin_width / 2.0) as f32; // dst_bin_width / 2 (also torch.tensor(...))
        let neg_half_dbw = (-dst_bin_width / 2.0) as f32;
        let dst_max = (dst_nbins - 1.0) as f32;
        // _get_norm(torch.tensor(-w/2), torch.tensor(w/2), density): the 0-dim part.
        let inner_norm =
            (half_dbw * half_dbw * half_dbw - neg_half_dbw * neg_half_dbw * neg_half_dbw) / 3.0f32;
        let neg_cube = neg_half_dbw * neg_half_dbw * neg_half_dbw;
        // cpu_kernel_vec: the body runs in blocks of 2·8 lanes, the tail with the scalar op.
        let vec_end = bins / 16 * 16;
        let mut norm = vec![0.0f32; bins];
        for (i, slot) in norm.iter_mut().enumerate() {
            let vectorised = i < vec_end;
            let src_bin_begin = (i as f32 - next_start_bin as f32) * bw;
            let src_bin_end = src_bin_begin + bw;
            let dst_bin_of_begin =
                clamp_f32(div_floor_f32(src_bin_begin, dbw, vectorised), 0.0, dst_max);
            let dst_bin_of_begin_center = (dst_bin_of_begin + 0.5f32) * dbw;
            let dst_bin_of_end =
                clamp_f32(div_floor_f32(src_bin_end, dbw, vectorised), 0.0, dst_max);
            let density = self.histogram[i] / bw;

            let mut acc = 0.0f32;
            let delta_begin = src_bin_begin - dst_bin_of_begin_center;
            let delta_end = half_dbw; // torch.ones(bins) * (w / 2)
            let n1 = (delta_end * delta_end * delta_end - delta_begin * delta_begin * delta_begin)
                / 3.0f32;
            acc += density * n1;

            acc += (dst_bin_of_end - dst_bin_of_begin - 1.0f32) * (density * inner_norm);

            let dst_bin_of_end_center = dst_bin_of_end * dbw + half_dbw;
            let delta_end = src_bin_end - dst_bin_of_end_center;
            let n3 = (delta_end * delta_end * delta_end - neg_cube) / 3.0f32;
            acc += density * n3;
            *slot = acc;
        }
        torch_sum_f32(&norm) as f64
    }

    /// `calculate_qparams()`: `(scale, zero_point)`. Before any data: `(1.0, 0)`.
    pub fn calculate_qparams(&self) -> Result<(f32, i64)> {
        if self.min_val == f32::INFINITY && self.max_val == f32::NEG_INFINITY {
            return Ok((1.0, 0));
        }
        let (new_min, new_max) = self.search_range();
        let q = observer_qparams(&self.cfg.qparams, &[new_min], &[new_max])?;
        Ok((q.scale[0], q.zero_point[0]))
    }
}

/// `static_cast<int64_t>(float)` as x86 `cvttss2si` (64-bit) does it.
fn f32_to_i64_x86(x: f32) -> i64 {
    if !(-9.223372e18..9.223372e18).contains(&x) {
        i64::MIN
    } else {
        x as i64
    }
}

/// ATen clamp with scalar bounds: `min(max(a, lo), hi)`, NaN propagates.
fn clamp_f32(a: f32, lo: f32, hi: f32) -> f32 {
    if a.is_nan() {
        return a;
    }
    let a = if a < lo { lo } else { a };
    if hi < a {
        hi
    } else {
        a
    }
}

/// `torch.div(a, b, rounding_mode="floor")` for f32: `c10::div_floor_floating` (scalar tail) or
/// `div_floor_floating_vec` (vector body, with its fix-up for `|a/b| = ∞`).
/// Source: ATen `cpu/BinaryOpsKernel.cpp`, `c10/util/generic_math.h`.
fn div_floor_f32(a: f32, b: f32, vectorised: bool) -> f32 {
    let basic_div = a / b;
    if b == 0.0 {
        return basic_div;
    }
    let rem = a % b; // fmod
    let floor_num = if vectorised && basic_div.abs() == f32::INFINITY && a.abs() != f32::INFINITY {
        a
    } else {
        a - rem
    };
    let mut div = floor_num / b;
    if rem != 0.0 && ((b < 0.0) != (rem < 0.0)) {
        div -= 1.0;
    }
    if div == 0.0 {
        return 0.0f32.copysign(basic_div);
    }
    let mut floordiv = div.floor();
    if div - floordiv > 0.5 {
        floordiv += 1.0;
    }
    floordiv
}

/// `torch.aminmax` of a non-empty NaN-free f32 slice, including the sign of a zero result: ATen
/// `cpu/ReduceAllOpsKernel.cpp` + `vec::reduce2_all` (8-lane AVX2 vectors, `_mm256_min_ps(a, b)`
/// keeps `b` on ties, final shuffle tree `f(f(f(v0,v4), f(v2,v6)), f(f(v1,v5), f(v3,v7)))`;
/// under 8 elements a sequential `acc = f(acc, x[i])`).
fn aminmax(x: &[f32]) -> (f32, f32) {
    fn vmin(a: f32, b: f32) -> f32 {
        if a < b {
            a
        } else {
            b
        }
    }
    fn vmax(a: f32, b: f32) -> f32 {
        if a > b {
            a
        } else {
            b
        }
    }
    fn reduce(x: &[f32], f: fn(f32, f32) -> f32) -> f32 {
        let n = x.len();
        if n < LANES {
            return x[1..].iter().fold(x[0], |acc, &v| f(acc, v));
        }
        let mut acc = [0.0f32; LANES];
        acc.copy_from_slice(&x[..LANES]);
        let full = n - n % LANES;
        let mut d = LANES;
        while d < full {
            for (a, &v) in acc.iter_mut().zip(&x[d..d + LANES]) {
                *a = f(*a, v);
            }
            d += LANES;
        }
        // Masked tail: only the first n - d lanes take the new values.
        for (a, &v) in acc.iter_mut().zip(&x[d..]) {
            *a = f(*a, v);
        }
        let v = acc;
        f(
            f(f(v[0], v[4]), f(v[2], v[6])),
            f(f(v[1], v[5]), f(v[3], v[7])),
        )
    }
    (reduce(x, vmin), reduce(x, vmax))
}

/// `std::nexttoward(float v, target)` for `target = ±FLT_MAX`.
fn next_toward_limit(v: f32, up: bool) -> f32 {
    let limit = if up { f32::MAX } else { f32::MIN };
    if v == limit {
        v
    } else if up {
        v.next_up()
    } else {
        v.next_down()
    }
}

/// `torch.histc(x, bins, min, max)` on f32 (ATen `histogram_histc_out` + `LINEAR_INTERPOLATION`).
fn histc(x: &[f32], bins: usize, min: f32, max: f32) -> Result<Vec<f32>> {
    let mut left = min as f64;
    let mut right = max as f64;
    if left == right && !x.is_empty() {
        let (lo, hi) = aminmax(x);
        left = lo as f64;
        right = hi as f64;
    }
    if left == right {
        // bins_edges_correction for Float.
        left = (next_toward_limit(left as f32, false) as f64).min(left - 1.0);
        right = (next_toward_limit(right as f32, true) as f64).max(right + 1.0);
    }
    if !left.is_finite() || !right.is_finite() {
        return Err(Error::invalid(
            "torch.histc range",
            format!("[{left}, {right}] is not finite"),
        ));
    }
    if left >= right {
        return Err(Error::invalid(
            "torch.histc range",
            "max must be larger than min",
        ));
    }
    let edges = Linspace::new(left as f32, right as f32, bins + 1);
    let lo = edges.at(0);
    let hi = edges.at(bins);
    let nb = bins as f32;
    let mut hist = vec![0.0f32; bins];
    for &v in x {
        if !(v >= lo && v <= hi) {
            continue;
        }
        let mut pos = f32_to_i64_x86((v - lo) * nb / (hi - lo));
        if pos == bins as i64 {
            pos -= 1;
        }
        // hist[INT64_MIN]: the byte offset INT64_MIN·4 wraps to 0 (x86-64 address arithmetic).
        let idx = if pos == i64::MIN { 0 } else { pos };
        match usize::try_from(idx).ok().filter(|&i| i < bins) {
            Some(i) => hist[i] += 1.0,
            None => {
                return Err(Error::invalid(
                    "torch.histc",
                    format!(
                        "bin index {pos} for {v} outside 0..{bins} (torch writes out of bounds)"
                    ),
                ))
            }
        }
    }
    Ok(hist)
}

/// `torch.linspace(start, end, steps)` in f32 on CPU, element by element.
struct Linspace {
    start: f32,
    end: f32,
    step: f32,
    steps: usize,
    halfway: usize,
}

impl Linspace {
    fn new(start: f32, end: f32, steps: usize) -> Self {
        // step_t = float: (end - start) / (steps - 1), the integer converted to float.
        let step = if steps > 1 {
            (end - start) / ((steps - 1) as f32)
        } else {
            end - start
        };
        Linspace {
            start,
            end,
            step,
            steps,
            halfway: steps / 2,
        }
    }

    /// Element `idx`: `start + step·idx` below halfway, `end − step·(steps − idx − 1)` from it on,
    /// each contracted to one FMA.
    fn at(&self, idx: usize) -> f32 {
        if idx < self.halfway {
            self.step.mul_add(idx as f32, self.start)
        } else {
            (-self.step).mul_add((self.steps - idx - 1) as f32, self.end)
        }
    }
}

fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let l = Linspace::new(start, end, steps);
    (0..steps).map(|i| l.at(i)).collect()
}

/// ATen `cus_upper_bound` over the whole slice: the first index whose value is `> val`,
/// following its exact probe sequence (so that a non-monotone linspace behaves the same).
fn upper_bound(bd: &[f32], val: f32) -> usize {
    let (mut start, mut end) = (0usize, bd.len());
    while start < end {
        let mid = start + ((end - start) >> 1);
        // `!(mid_val > val)`: NaN compares as "not greater".
        if bd[mid].partial_cmp(&val) != Some(std::cmp::Ordering::Greater) {
            start = mid + 1;
        } else {
            end = mid;
        }
    }
    start
}

/// `torch.cumsum` of an f32 vector: `f64` accumulator (`acc_type<float, /*is_cuda=*/false>`),
/// each prefix rounded to f32 (ATen `cpu/ReduceOpsKernel.cpp: cumsum_cpu_kernel`).
fn cumsum_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 0.0f64;
    x.iter()
        .map(|&v| {
            acc += v as f64;
            acc as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quint8() -> HistogramConfig {
        HistogramConfig::from_torch_args(
            2048,
            QDType::Quint8,
            QScheme::PerTensorAffine,
            false,
            None,
            None,
            f32::EPSILON,
        )
        .unwrap()
    }

    /// Deterministic pseudo-random f32 in [-1, 1) (xorshift), no external crates needed.
    fn rand_vec(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn total(h: &[f32]) -> f64 {
        h.iter().map(|&v| v as f64).sum()
    }

    #[test]
    fn first_batch_counts_every_finite_element_once() {
        let mut obs = HistogramObserver::new(quint8()).unwrap();
        let mut x = rand_vec(1, 1000, 3.0);
        x[10] = f32::INFINITY;
        x[20] = f32::NEG_INFINITY;
        obs.forward(&x).unwrap();
        assert_eq!(total(&obs.histogram), 998.0);
        let finite: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
        let (lo, hi) = aminmax(&finite);
        assert_eq!((obs.min_val, obs.max_val), (lo, hi));
        // The minimum lands in bin 0 and the maximum in the last bin.
        assert!(obs.histogram[0] >= 1.0);
        assert!(obs.histogram[2047] >= 1.0);
    }

    #[test]
    fn same_range_batches_add_exactly() {
        let mut obs = HistogramObserver::new(quint8()).unwrap();
        let x = rand_vec(2, 500, 1.0);
        obs.forward(&x).unwrap();
        let h1 = obs.histogram.clone();
        obs.forward(&x).unwrap();
        for (a, b) in obs.histogram.iter().zip(&h1) {
            assert_eq!(*a, 2.0 * b);
        }
    }

    #[test]
    fn range_growth_preserves_mass() {
        let mut obs = HistogramObserver::new(quint8()).unwrap();
        let mut n = 0usize;
        for (k, scale) in [1.0f32, 2.5, 0.5, 40.0, 1e3].iter().enumerate() {
            let x = rand_vec(10 + k as u64, 300 + 17 * k, *scale);
            n += x.len();
            obs.forward(&x).unwrap();
            let t = total(&obs.histogram);
            assert!((t - n as f64).abs() <= 1e-3 * n as f64, "mass {t} vs {n}");
        }
        assert!(obs.min_val <= -900.0 && obs.max_val >= 900.0);
    }

    #[test]
    fn all_equal_batches() {
        // The bin each value lands in (torch 2.15.0): histc widens an empty range to
        // [min(nexttoward(v, −∞), v − 1), max(nexttoward(v, +∞), v + 1)], which puts v in the
        // middle unless the f32 neighbours are more than 1 away (2^24: [2^24 − 1, 2^24 + 2]) or
        // the range overflows (±FLT_MAX).
        for (v, bin) in [
            (0.3f32, 1024),
            (-0.3, 1023),
            (5.0, 1024),
            (-5.0, 1024),
            (0.0, 1024),
            (1e30, 1024),
            (16777216.0, 682),
            (3e7, 1024),
            (-3e7, 1024),
            (f32::MAX, 2047),
            (-f32::MAX, 0),
            (1e-40, 1024),
        ] {
            let mut obs = HistogramObserver::new(quint8()).unwrap();
            obs.forward(&[v, v, v]).unwrap();
            assert_eq!((obs.min_val, obs.max_val), (v, v));
            assert_eq!(total(&obs.histogram), 3.0, "value {v}");
            assert_eq!(obs.histogram[bin], 3.0, "value {v}");
            // A second identical batch keeps the same single bin.
            let before = obs.histogram.clone();
            obs.forward(&[v]).unwrap();
            let nz: Vec<usize> = (0..2048).filter(|&i| obs.histogram[i] != 0.0).collect();
            let nz0: Vec<usize> = (0..2048).filter(|&i| before[i] != 0.0).collect();
            assert_eq!(nz, nz0);
            assert_eq!(total(&obs.histogram), 4.0);
            let (s, _) = obs.calculate_qparams().unwrap();
            assert!(s > 0.0);
        }
    }

    #[test]
    fn single_value_then_growth_moves_mass_to_its_bin() {
        let mut obs = HistogramObserver::new(quint8()).unwrap();
        obs.forward(&[2.0, 2.0]).unwrap();
        obs.forward(&[0.0, 4.0]).unwrap();
        assert_eq!((obs.min_val, obs.max_val), (0.0, 4.0));
        assert_eq!(obs.histogram[1024], 2.0);
        assert_eq!(obs.histogram[0], 1.0);
        assert_eq!(obs.histogram[2047], 1.0);
        assert_eq!(total(&obs.histogram), 4.0);
    }

    #[test]
    fn nan_is_rejected_and_state_kept() {
        let mut obs = HistogramObserver::new(quint8()).unwrap();
        assert!(obs.forward(&[1.0, f32::NAN]).is_err());
        assert_eq!(obs.min_val, f32::INFINITY);
        obs.forward(&[1.0, 2.0]).unwrap();
        let snapshot = obs.clone();
        assert!(obs.forward(&[f32::NAN]).is_err());
        assert_eq!(obs, snapshot);
    }

    #[test]
    fn only_infinities_and_empty_batches_change_nothing() {
        let mut obs = HistogramObserver::new(quint8()).unwrap();
        obs.forward(&[]).unwrap();
        obs.forward(&[f32::INFINITY, f32::NEG_INFINITY]).unwrap();
        assert_eq!(obs.min_val, f32::INFINITY);
        assert_eq!(obs.calculate_qparams().unwrap(), (1.0, 0));
    }

    #[test]
    fn search_range_stays_inside_observed_range() {
        let mut obs = HistogramObserver::new(quint8()).unwrap();
        let mut x = rand_vec(7, 4000, 1.0);
        x.push(50.0); // outlier that the L2 search should clip
        obs.forward(&x).unwrap();
        let (lo, hi) = obs.search_range();
        assert!(obs.min_val <= lo && lo <= hi && hi <= obs.max_val);
        assert!(hi < 50.0, "outlier not clipped: {hi}");
        let (scale, zp) = obs.calculate_qparams().unwrap();
        assert!(scale >= f32::EPSILON && (0..=255).contains(&zp));
    }

    #[test]
    fn symmetric_zero_points() {
        let x = rand_vec(3, 1000, 2.0);
        let cases = [
            (QDType::Quint8, false, None, 128),
            (QDType::Quint8, true, None, 128),
            (QDType::Quint8, false, Some((0, 127)), 63),
            (QDType::Qint8, false, None, 0),
        ];
        for (dtype, rr, custom, want_zp) in cases {
            let cfg = HistogramConfig::from_torch_args(
                2048,
                dtype,
                QScheme::PerTensorSymmetric,
                rr,
                custom.map(|c: (i64, i64)| c.0),
                custom.map(|c| c.1),
                f32::EPSILON,
            )
            .unwrap();
            let mut obs = HistogramObserver::new(cfg).unwrap();
            obs.forward(&x).unwrap();
            let (s, zp) = obs.calculate_qparams().unwrap();
            assert_eq!(zp, want_zp);
            let (lo, hi) = obs.search_range();
            let amax = (-lo.min(0.0)).max(hi.max(0.0));
            let r = obs.config().qparams.range;
            let (qmin, qmax) = (r.quant_min, r.quant_max);
            assert_eq!(s, amax / ((qmax - qmin) as f32 / 2.0));
        }
    }

    #[test]
    fn bad_configurations_are_errors() {
        assert!(HistogramObserver::new(HistogramConfig {
            bins: 0,
            ..quint8()
        })
        .is_err());
        assert!(HistogramConfig::from_torch_args(
            2048,
            QDType::Quint8,
            QScheme::PerTensorAffine,
            false,
            Some(1),
            Some(255),
            f32::EPSILON
        )
        .is_err());
        assert!(HistogramConfig::from_torch_args(
            2048,
            QDType::Quint8,
            QScheme::PerChannelAffine,
            false,
            None,
            None,
            f32::EPSILON
        )
        .is_err());
    }

    /// Bins and sub-bins are limited to 2^24 (an f32 counts every integer up to there), each
    /// limit inclusive; an upsample rate of 0 is refused.
    #[test]
    fn bin_counts_are_checked_at_their_limits() {
        let cfg = |bins: usize, upsample_rate: usize| HistogramConfig {
            bins,
            upsample_rate,
            ..quint8()
        };
        assert!(cfg(1 << 24, 1).validate().is_ok());
        assert!(cfg((1 << 24) + 1, 1).validate().is_err());
        assert!(cfg(2048, 0).validate().is_err());
        assert!(cfg(1 << 20, 16).validate().is_ok());
        assert!(cfg(1 << 20, 17).validate().is_err());
    }

    /// An observer whose minimum or maximum alone is unset (`±inf`, as torch's
    /// `is_uninitialized` tests with `or`) starts over from the batch.
    #[test]
    fn either_unset_bound_starts_the_histogram_over() {
        for (min_val, max_val) in [(-3.0, f32::NEG_INFINITY), (f32::INFINITY, 3.0)] {
            let mut obs = HistogramObserver::new(quint8()).unwrap();
            obs.min_val = min_val;
            obs.max_val = max_val;
            obs.histogram = vec![5.0; 2048];
            obs.forward(&[1.0, 2.0]).unwrap();
            assert_eq!((obs.min_val, obs.max_val), (1.0, 2.0));
            assert_eq!(total(&obs.histogram), 2.0);
        }
    }

    /// Sub-bins whose midpoints round to the new maximum (the range 1e7..1e7 + 1 in 32 768
    /// sub-bins) land in the last bin: `bucketize` returns the index past the end, which
    /// `_upscale_histogram` clamps.
    #[test]
    fn sub_bins_at_the_new_maximum_land_in_the_last_bin() {
        let mut obs = HistogramObserver::new(quint8()).unwrap();
        obs.forward(&[1.0e7, 1.0e7 + 1.0]).unwrap();
        obs.forward(&[0.0]).unwrap();
        assert_eq!((obs.min_val, obs.max_val), (0.0, 1.0e7 + 1.0));
        assert_eq!(obs.histogram[0], 1.0);
        assert_eq!(obs.histogram[2047], 2.0);
        assert_eq!(total(&obs.histogram), 3.0);
    }

    /// Bin `i` of a 2048-bin parabola peaking at 10 000 in bin 1024, zero from 200 bins away.
    fn parabola_count(i: i64) -> i64 {
        (10_000 - (i - 1024).pow(2) / 4).max(0)
    }

    /// 2048 bins: a parabola peaking at bin 1024 with one count at each end.
    fn parabola() -> Vec<f32> {
        let mut h: Vec<f32> = (0..2048i64).map(|i| parabola_count(i) as f32).collect();
        h[0] = 1.0;
        h[2047] = 1.0;
        h
    }

    /// 2048 bins: a ramp falling from 2000 to 0 at bin 2000, with one count in the last bin.
    fn ramp() -> Vec<f32> {
        let mut h: Vec<f32> = (0..2048i64).map(|i| (2000 - i).max(0) as f32).collect();
        h[2047] = 1.0;
        h
    }

    /// An observer with hand-set buffers (torch: assign `histogram`, `min_val`, `max_val`).
    fn hand_set(bins: usize, histogram: Vec<f32>, min_val: f32, max_val: f32) -> HistogramObserver {
        let mut obs = HistogramObserver::new(HistogramConfig { bins, ..quint8() }).unwrap();
        obs.histogram = histogram;
        obs.min_val = min_val;
        obs.max_val = max_val;
        obs
    }

    /// `_compute_quantization_error(start, end)` against torch 2.15.0 on hand-set buffers
    /// (`torch.set_num_threads(1)`), as f64 bits: ranges that cover the whole histogram, a
    /// middle part, a single bin and either end, on 2048 bins (the vectorised body) and on 20
    /// bins (16 in the body, 4 in the scalar tail); and the search on 20 bins and on a range of
    /// 2.048e-40, where every norm is NaN (the f32 density overflows), so the search never stops
    /// early.
    #[test]
    fn quantization_error_matches_torch_on_hand_set_histograms() {
        let small: Vec<f32> = (0..20).map(|i| ((7 * i) % 11 + 1) as f32).collect();
        // ((start bin, end bin), torch's norm as f64 bits)
        type Pins = &'static [((usize, usize), u64)];
        let cases: [(&str, HistogramObserver, Pins); 3] = [
            (
                "parabola",
                hand_set(2048, parabola(), -2.0, 2.0),
                &[
                    ((0, 2047), 0x404b_1f84_4000_0000),
                    ((100, 1900), 0x4045_0a13_e000_0000),
                    ((1000, 1050), 0x40e7_d233_4000_0000),
                    ((1024, 1024), 0x40f3_af79_0000_0000),
                    ((2000, 2047), 0x4162_9f5c_c000_0000),
                    ((0, 10), 0x4164_1619_a000_0000),
                    ((700, 1340), 0x4022_32a3_4000_0000),
                ],
            ),
            (
                "ramp",
                hand_set(2048, ramp(), -1.0, 3.0),
                &[
                    ((0, 2047), 0x4044_5af1_4000_0000),
                    ((100, 1900), 0x40a6_42b9_4000_0000),
                    ((1000, 1050), 0x4142_f584_4000_0000),
                    ((1024, 1024), 0x4144_5e45_0000_0000),
                    ((2000, 2047), 0x416d_1e00_6000_0000),
                    ((0, 10), 0x4152_ffca_a000_0000),
                    ((700, 1340), 0x412a_45f8_8000_0000),
                ],
            ),
            (
                "20 bins",
                hand_set(20, small.clone(), -0.7, 1.3),
                &[
                    ((0, 19), 0x3f43_ae2f_c000_0000),
                    ((3, 15), 0x3ff2_962a_e000_0000),
                    ((5, 5), 0x404a_fbe7_e000_0000),
                    ((0, 4), 0x4050_24fc_c000_0000),
                    ((12, 19), 0x4040_208d_a000_0000),
                ],
            ),
        ];
        for (name, obs, pins) in &cases {
            for &((start, end), bits) in pins.iter() {
                let norm = obs.compute_quantization_error(start, end);
                assert_eq!(norm.to_bits(), bits, "{name} ({start}, {end}): {norm}");
            }
        }
        let small_search = hand_set(20, small, -0.7, 1.3).search_range();
        assert_eq!(
            (small_search.0.to_bits(), small_search.1.to_bits()),
            (0xbf33_3333, 0x3f99_999a)
        );
        let tiny = hand_set(2048, parabola(), 0.0, f32::from_bits(0x0002_3ae6));
        assert!(tiny.compute_quantization_error(0, 2047).is_nan());
        // Counts of 1e-9 keep the density finite; one destination bin's width (f64 ≈ 3.9e-46)
        // rounds to 0.0 in f32, so floor division divides 0 by 0 at the start bin: NaN. Wider
        // destination bins give 0.0 (every cube underflows).
        let faint: Vec<f32> = parabola()
            .iter()
            .map(|&c| (c as f64 * 1e-9) as f32)
            .collect();
        let faint = hand_set(2048, faint, 0.0, f32::from_bits(0x0002_3ae6));
        assert!(faint.compute_quantization_error(1024, 1024).is_nan());
        assert_eq!(faint.compute_quantization_error(1000, 1050).to_bits(), 0);
        assert_eq!(faint.compute_quantization_error(0, 2047).to_bits(), 0);
        let (a, b) = tiny.search_range();
        assert_eq!((a.to_bits(), b.to_bits()), (0x0000_e4cf, 0x0000_e516));
    }

    /// Only both bounds unset is "no data yet" (`(1.0, 0)`). With one of them alone unset,
    /// torch 2.15.0 searches a range of infinite width and returns a NaN scale and zero
    /// point 0.
    #[test]
    fn one_unset_bound_gives_torchs_nan_scale() {
        for (min_val, max_val) in [(-3.0, f32::NEG_INFINITY), (f32::INFINITY, 3.0)] {
            let obs = hand_set(2048, vec![5.0; 2048], min_val, max_val);
            let (scale, zero_point) = obs.calculate_qparams().unwrap();
            assert!(scale.is_nan() && zero_point == 0, "{min_val} {max_val}");
        }
    }

    /// Where +0.0 and −0.0 tie for the minimum or maximum, `torch.aminmax` (2.15.0, AVX2 and
    /// AVX-512 builds alike) returns the zero its reduction order reaches last: under 8
    /// elements the last one; at 8 the shuffle tree's choice, not the last. (ATen's
    /// non-vectorised build returns +0.0 for the first case.)
    #[test]
    fn aminmax_returns_torchs_zero_on_signed_zero_ties() {
        let (p, n) = (0.0f32.to_bits(), (-0.0f32).to_bits());
        let cases: [(&[f32], u32, u32); 6] = [
            (
                &[1.0, 1.0, 1.0, -0.0, 1.0, 1.0, 0.0, 1.0],
                n,
                1.0f32.to_bits(),
            ),
            (
                &[-1.0, -1.0, -1.0, -0.0, -1.0, -1.0, 0.0, -1.0],
                (-1.0f32).to_bits(),
                n,
            ),
            (&[1.0, -0.0, 1.0, 0.0, 1.0], p, 1.0f32.to_bits()),
            (&[-1.0, -0.0, -1.0, 0.0, -1.0], (-1.0f32).to_bits(), p),
            (&[1.0, 0.0, 1.0, -0.0, 1.0], n, 1.0f32.to_bits()),
            (&[-1.0, 0.0, -1.0, -0.0, -1.0], (-1.0f32).to_bits(), n),
        ];
        for (x, lo, hi) in cases {
            let (a, b) = aminmax(x);
            assert_eq!((a.to_bits(), b.to_bits()), (lo, hi), "{x:?}");
            let mut obs = HistogramObserver::new(quint8()).unwrap();
            obs.forward(x).unwrap();
            assert_eq!((obs.min_val.to_bits(), obs.max_val.to_bits()), (lo, hi));
        }
    }

    /// `_non_linear_param_search` on hand-set buffers, against torch 2.15.0 (a
    /// `HistogramObserver(bins=2048)` with `histogram`, `min_val` and `max_val` assigned,
    /// `torch.set_num_threads(1)`): a parabola with one count at each end (trimmed on both
    /// sides), a decreasing ramp (trimmed on the right), and each with one negative count, which
    /// makes the cumulative sum non-monotone so that torch's scan loops decide, not a binary
    /// search; and a parabola whose counts are subnormal.
    #[test]
    fn search_range_matches_torch_on_hand_set_histograms() {
        let (parabola, ramp) = (parabola(), ramp());
        // Counts scaled into the subnormals: successive trims give the same norm (0 or a few
        // subnormals), and an equal norm does not stop the search (`norm > norm_min`).
        let subnormal_parabola = |k: f64| -> Vec<f32> {
            (0..2048i64)
                .map(|i| (parabola_count(i) as f64 * k) as f32)
                .collect()
        };
        let with = |h: &[f32], i: usize, v: f32| {
            let mut h = h.to_vec();
            h[i] = v;
            h
        };
        let cases = [
            (parabola.clone(), (-2.0, 2.0), (0xbec7_0000, 0x3ec6_0000)),
            (
                with(&parabola, 1000, -600_000.0),
                (-2.0, 2.0),
                (0xbec7_0000, 0x3ec7_0000),
            ),
            (ramp.clone(), (-1.0, 3.0), (0xbf80_0000, 0x4036_a000)),
            (
                with(&ramp, 30, -900_000.0),
                (-1.0, 3.0),
                (0xbf80_0000, 0x4035_4000),
            ),
            (
                subnormal_parabola(1e-42),
                (-2.0, 2.0),
                (0xbec7_0000, 0x3ec5_0000),
            ),
            (
                subnormal_parabola(1e-40),
                (-0.001f64 as f32, 0.001f64 as f32),
                (0xb94b_c6a8, 0x3927_efa0),
            ),
            // Counts 0, 0.03, 0.02, 0.01, …: the total is ATen's cascade sum, 30.72 (a sequential
            // f32 sum drifts from it and keeps the last bin).
            (
                (0..2048).map(|i| 0.01f32 * ((3 * i) % 4) as f32).collect(),
                (-1.0, 1.0),
                (0xbf7f_c000, 0x3f7f_c000),
            ),
        ];
        for (k, (histogram, (min_val, max_val), (lo, hi))) in cases.into_iter().enumerate() {
            let (a, b) = hand_set(2048, histogram, min_val, max_val).search_range();
            assert_eq!((a.to_bits(), b.to_bits()), (lo, hi), "case {k}: {a} {b}");
        }
    }

    /// The scan loops of `_non_linear_param_search` on small non-monotone histograms (16 and 20
    /// bins on [-1, 1]), against torch 2.15.0. Each case was found by running torch's search
    /// beside a copy with one comparison changed; the case pins that comparison:
    /// the left walk running past `end_bin`, `cSum[l] < next_alpha * total` at equality (the
    /// counts sum to 0, so every threshold is 0), the right walk running below `start_bin`, and
    /// `cSum[r] > next_beta * total` at equality (f32(50009 · (1 − 2e-5)) = 50008).
    #[test]
    fn scan_loops_match_torch_at_their_edges() {
        let cases: [(&str, &[f32], (u32, u32)); 4] = [
            (
                "left walk stops at end_bin",
                &[
                    -5000.0, 3.0, -2.0, 0.0, -1.0, 0.0, 3.0, 0.0, 5.0, 2.0, 5.0, 1.0, 2.0, 1.0,
                    0.0, 0.0, 0.0, 1.0, 3.0, 5.0,
                ],
                (0x3f66_6666, 0x3f80_0000),
            ),
            (
                "cSum[l] equal to the left threshold",
                &[
                    0.0, 0.0, -2.0, 3.0, 3.0, -1.0, 0.0, -2.0, 2.0, 5.0, -2.0, 0.0, -1.0, 3.0,
                    -2.0, -1.0, 0.0, -1.0, -2.0, -2.0,
                ],
                (0xbf80_0000, 0x3f80_0000),
            ),
            (
                "right walk stops at start_bin",
                &[
                    30000.0, 0.0, 3.0, 0.0, -2.0, -2.0, -2.0, -1.0, 2.0, 0.0, -2.0, 0.0, -1.0,
                    -1.0, 30000.0, 0.0,
                ],
                (0xbf80_0000, 0x3f40_0000),
            ),
            (
                "cSum[r] equal to the right threshold",
                &[
                    -1.0, 1.0, 1.0, 5.0, 2.0, 0.0, -1.0, 10000.0, 1.0, 1.0, -1.0, 30000.0, 0.0,
                    10000.0, 2.0, -1.0,
                ],
                (0xbf20_0000, 0x3f40_0000),
            ),
        ];
        for (name, h, (lo, hi)) in cases {
            let (a, b) = hand_set(h.len(), h.to_vec(), -1.0, 1.0).search_range();
            assert_eq!((a.to_bits(), b.to_bits()), (lo, hi), "{name}: {a} {b}");
        }
    }

    /// `torch.linspace` (f32) against torch 2.15.0 where an FMA and a multiply-then-add part:
    /// two elements of each half (`fma(step, i, start)` below `steps/2`,
    /// `fma(−step, steps − 1 − i, end)` from there on).
    #[test]
    fn linspace_is_fma_contracted_as_torchs() {
        // (start, end, steps) and (index, torch's bits) pairs.
        type Range = (f32, f32, usize);
        let cases: [(Range, [(usize, u32); 4]); 2] = [
            (
                (0.1, 0.7, 2049),
                [
                    (31, 0x3ddf_6667),
                    (36, 0x3de2_6667),
                    (1825, 0x3f22_7999),
                    (1830, 0x3f22_d999),
                ],
            ),
            (
                (-0.37, 0.91, 257),
                [
                    (22, 0xbe85_1eb9),
                    (50, 0xbdf5_c291),
                    (225, 0x3f41_47af),
                    (236, 0x3f4f_5c29),
                ],
            ),
        ];
        for ((a, b, n), pins) in cases {
            let v = linspace_f32(a, b, n);
            for (i, want) in pins {
                assert_eq!(v[i].to_bits(), want, "linspace({a}, {b}, {n})[{i}]");
            }
        }
    }

    /// `torch.cumsum` of f32 accumulates in f64 and rounds each prefix (torch 2.15.0): past 2^24
    /// an f32 accumulator would stay at 2^24.
    #[test]
    fn cumsum_accumulates_in_f64_as_torchs() {
        let h = [16_777_216.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 3.0];
        let torch = [
            16_777_216.0f32,
            16_777_216.0,
            16_777_218.0,
            16_777_220.0,
            16_777_220.0,
            16_777_220.0,
            16_777_222.0,
            16_777_222.0,
            16_777_224.0,
        ];
        assert_eq!(cumsum_f32(&h), torch);
    }

    /// `torch.histc` bins `v` at `f32(f32(v − L)·bins) / f32(R − L)`; at these values, next to a
    /// bin edge, `f32(v − L)/f32(R − L)·bins` gives the bin below (torch 2.15.0's bin pinned).
    #[test]
    fn histc_multiplies_by_bins_before_dividing_as_torch() {
        let cases: [(u32, u32, u32, usize, usize); 4] = [
            (0xbf34_221e, 0xbfeb_2220, 0xbe0c_4430, 6, 4),
            (0x3ebe_ffc4, 0xbf19_2fa9, 0x3f8d_01c6, 7, 4),
            (0xc0b7_7442, 0xc11f_c9e2, 0xc005_8dee, 13, 7),
            (0x3e5e_bf49, 0xbfd8_5759, 0x3fb4_7573, 13, 8),
        ];
        for (v, lo, hi, bins, want) in cases {
            let [v, lo, hi] = [v, lo, hi].map(f32::from_bits);
            let h = histc(&[v], bins, lo, hi).unwrap();
            let mut expected = vec![0.0f32; bins];
            expected[want] = 1.0;
            assert_eq!(h, expected, "histc([{v}], {bins}, {lo}, {hi})");
        }
    }

    #[test]
    fn linspace_hits_its_end_points_and_is_monotone() {
        for (a, b) in [(-1.0f32, 3.0f32), (0.1, 0.1000001), (-1e30, 1e30)] {
            let v = linspace_f32(a, b, 32769);
            assert_eq!(v[0], a);
            assert_eq!(v[32768], b);
            assert!(v.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn aminmax_values_are_the_extremes() {
        for n in [1usize, 2, 7, 8, 9, 15, 16, 17, 1000] {
            let x = rand_vec(n as u64, n, 5.0);
            let (lo, hi) = aminmax(&x);
            let want_lo = x.iter().fold(f32::INFINITY, |a, &b| a.min(b));
            let want_hi = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!((lo, hi), (want_lo, want_hi), "n = {n}");
        }
    }

    #[test]
    fn div_floor_matches_python_floor_division() {
        for (a, b) in [
            (7.0f32, 2.0f32),
            (-7.0, 2.0),
            (0.0, 3.0),
            (-0.5, 3.0),
            (6.0, 3.0),
        ] {
            let want = (a as f64 / b as f64).floor() as f32;
            assert_eq!(div_floor_f32(a, b, false), want, "{a} // {b}");
            assert_eq!(div_floor_f32(a, b, true), want, "{a} // {b}");
        }
    }
}
