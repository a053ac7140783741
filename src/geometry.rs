//! Geometry of windowed ops: kernel, stride, padding, dilation, groups and output sizes.
//!
//! Shared by the reference ops, the optimized kernels and the engine rules that pick a kernel path
//! from a layer's shape. Knows nothing about numerics.

use crate::{Error, Result};

/// Conv2d hyper-parameters (PyTorch's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2dParams {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Conv2dParams {
    /// A square `kernel × kernel` window with stride 1, no dilation and `padding` on every side.
    pub fn square(
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        kernel: usize,
        padding: usize,
    ) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel_size: [kernel, kernel],
            stride: [1, 1],
            padding: [padding, padding],
            dilation: [1, 1],
            groups,
        }
    }

    /// Checks the parameters and an NCHW input shape; returns `(N, OH, OW)`.
    pub fn output_dims(&self, input_shape: &[usize]) -> Result<(usize, usize, usize)> {
        let bad = |why: String| Err(Error::shape("conv2d", why));
        if input_shape.len() != 4 {
            return bad(format!("input must be NCHW, got shape {input_shape:?}"));
        }
        let g = self.groups;
        if g == 0 || !self.in_channels.is_multiple_of(g) || !self.out_channels.is_multiple_of(g) {
            return bad(format!(
                "groups {g} must divide in_channels {} and out_channels {}",
                self.in_channels, self.out_channels
            ));
        }
        if input_shape[1] != self.in_channels {
            return bad(format!(
                "input has {} channels, layer expects {}",
                input_shape[1], self.in_channels
            ));
        }
        if self.stride.contains(&0) || self.dilation.contains(&0) || self.kernel_size.contains(&0) {
            return bad("stride, dilation and kernel size must be positive".into());
        }
        let mut out = [0usize; 2];
        for d in 0..2 {
            let span = self.dilation[d]
                .checked_mul(self.kernel_size[d] - 1)
                .and_then(|s| s.checked_add(1));
            let padded = self.padding[d]
                .checked_mul(2)
                .and_then(|p| p.checked_add(input_shape[2 + d]));
            let (Some(span), Some(padded)) = (span, padded) else {
                return bad(format!("kernel span or padded input overflows in dim {d}"));
            };
            if padded < span {
                return bad(format!(
                    "kernel span {span} exceeds padded input {padded} in dim {d}"
                ));
            }
            out[d] = (padded - span) / self.stride[d] + 1;
        }
        Ok((input_shape[0], out[0], out[1]))
    }

    /// Reduction length of one output: `KH·KW·ICg`.
    pub fn k(&self) -> usize {
        self.kernel_size[0] * self.kernel_size[1] * (self.in_channels / self.groups)
    }

    /// Depthwise: every group has one input channel.
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.in_channels && self.groups > 1
    }

    /// Expected weight shape `[OC, IC/groups, KH, KW]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel_size[0],
            self.kernel_size[1],
        ]
    }
}

/// Hyper-parameters of a 2-D pooling window (`max_pool2d`, `avg_pool2d`; PyTorch's names, the
/// stride already defaulted to the kernel size). Average pooling has no dilation (`[1, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool2dParams {
    pub kernel_size: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
}

/// The input rows (or columns) one output row of an average pool covers, as ATen computes them
/// (`AveragePool2d.cpp: avg_pool2d_out_frame`, `QuantizedOpKernels.cpp: _qavg_pool_nhwc_kernel`,
/// `cpu/AvgPoolKernel.cpp`): the window `[o·s − p, min(o·s − p + k, in + p))`, then clipped to
/// the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgSpan {
    /// First input index (clipped).
    pub start: usize,
    /// One past the last input index (clipped).
    pub end: usize,
    /// The window's length before clipping to the input, padding included but never beyond
    /// `in + p` (what `count_include_pad` divides by).
    pub padded: usize,
}

impl AvgSpan {
    /// Number of input elements in the span.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the span holds no input element.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

impl Pool2dParams {
    /// Checks that kernel, stride and dilation are positive.
    pub fn check_positive(&self, op: &str) -> Result<()> {
        if self.kernel_size.contains(&0) || self.stride.contains(&0) || self.dilation.contains(&0) {
            return Err(Error::invalid(
                op,
                format!(
                    "kernel size {:?}, stride {:?} and dilation {:?} must be positive",
                    self.kernel_size, self.stride, self.dilation
                ),
            ));
        }
        Ok(())
    }

    /// The stricter padding rule of ATen's quantized pooling kernels and of the float average
    /// pool: `p ≤ k/2` in both dimensions (`Pooling.cpp: q_maxpool_2d`, `Pool.h:
    /// pool2d_shape_check` with dilation 1).
    pub fn check_half_kernel_padding(&self, op: &str) -> Result<()> {
        for d in 0..2 {
            if self.padding[d] > self.kernel_size[d] / 2 {
                return Err(Error::invalid(
                    op,
                    format!(
                        "padding {:?} must be at most half of kernel size {:?}",
                        self.padding, self.kernel_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The output height and width PyTorch allocates (`Pool.h: pooling_output_shape`):
    /// `⌊(in + 2p − d(k−1) − 1 + (ceil ? s−1 : 0)) / s⌋ + 1`, minus one in ceil mode when the last
    /// window would start beyond `in + p`. Checks `p ≤ ((k−1)d + 1)/2` (the rule every pool
    /// path applies) and that both sizes are at least 1.
    pub fn output_size(&self, op: &str, input: [usize; 2]) -> Result<[usize; 2]> {
        self.check_positive(op)?;
        let mut out = [0usize; 2];
        for d in 0..2 {
            let (i, k, s, p, dil) = (
                input[d] as i128,
                self.kernel_size[d] as i128,
                self.stride[d] as i128,
                self.padding[d] as i128,
                self.dilation[d] as i128,
            );
            if p > ((k - 1) * dil + 1) / 2 {
                return Err(Error::invalid(
                    op,
                    format!(
                        "padding {p} exceeds half of the effective kernel size {}",
                        (k - 1) * dil + 1
                    ),
                ));
            }
            let num = i + 2 * p - dil * (k - 1) - 1 + if self.ceil_mode { s - 1 } else { 0 };
            let mut o = num.div_euclid(s) + 1;
            if self.ceil_mode && (o - 1) * s >= i + p {
                o -= 1;
            }
            if o < 1 || i < 1 {
                return Err(Error::shape(
                    op,
                    format!(
                        "input {input:?} with kernel {:?}, stride {:?}, padding {:?}, dilation \
                         {:?} gives an empty output",
                        self.kernel_size, self.stride, self.padding, self.dilation
                    ),
                ));
            }
            out[d] = usize::try_from(o).map_err(|_| Error::shape(op, "output size overflows"))?;
        }
        Ok(out)
    }

    /// The input indices of output `o`'s window in dimension `d` (0 = height) as ATen's max pool
    /// takes them (`Pooling.cpp: spatial_dilated_max_pooling`, `_qmaxpool_2d_nhwc_kernel`, the
    /// float `max_pool2d`): every `dilation`-th index from `o·s − p`, padding taps skipped.
    pub fn max_taps(&self, d: usize, o: usize, input: usize) -> impl Iterator<Item = usize> {
        let (s, p, k, dil) = (
            self.stride[d] as i64,
            self.padding[d] as i64,
            self.kernel_size[d] as i64,
            self.dilation[d] as i64,
        );
        let start = o as i64 * s - p;
        let end = (start + (k - 1) * dil + 1).min(input as i64);
        (0..k)
            .map(move |t| start + t * dil)
            .filter(move |&i| i >= 0 && i < end)
            .map(|i| i as usize)
    }

    /// The input indices QNNPACK's max pool reads for output `o` in dimension `d`
    /// (`qnnpack/src/indirection.c: pytorch_qnnp_indirection_init_maxpool2d`): tap `t` reads
    /// `min(max(o·s + t·d − p, 0), in − 1)`, so padding taps repeat the border element.
    pub fn clamped_taps(&self, d: usize, o: usize, input: usize) -> impl Iterator<Item = usize> {
        let (s, p, dil) = (self.stride[d], self.padding[d], self.dilation[d]);
        (0..self.kernel_size[d]).map(move |t| (o * s + t * dil).saturating_sub(p).min(input - 1))
    }

    /// Output `o`'s average-pool span in dimension `d` (dilation is not part of average pooling).
    pub fn avg_span(&self, d: usize, o: usize, input: usize) -> AvgSpan {
        let (s, p, k) = (
            self.stride[d] as i64,
            self.padding[d] as i64,
            self.kernel_size[d] as i64,
        );
        let start = o as i64 * s - p;
        let end = (start + k).min(input as i64 + p);
        AvgSpan {
            start: start.max(0) as usize,
            end: end.clamp(0, input as i64) as usize,
            padded: (end - start).max(0) as usize,
        }
    }
}

/// Bounds `[start, end)` of output `o`'s window of an adaptive average pool from `input` to
/// `output` elements, in f32 as ATen's quantized kernels compute them
/// (`AdaptiveAveragePooling.cpp: start_index / end_index`): `⌊f32(o·in)/out⌋`,
/// `⌈f32((o+1)·in)/out⌉`.
pub fn adaptive_bounds_f32(o: usize, output: usize, input: usize) -> (usize, usize) {
    let start = ((o * input) as f32 / output as f32).floor() as usize;
    let end = (((o + 1) * input) as f32 / output as f32).ceil() as usize;
    (start, end)
}

/// The same bounds in integers, as ATen's float kernels compute them
/// (`aten/src/ATen/native/AdaptivePooling.h: start_index / end_index`).
pub fn adaptive_bounds(o: usize, output: usize, input: usize) -> (usize, usize) {
    let start = (o / output) * input + ((o % output) * input) / output;
    let end = ((o + 1) * input).div_ceil(output);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(k: usize, s: usize, p: usize, d: usize, ceil: bool) -> Pool2dParams {
        Pool2dParams {
            kernel_size: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [d, d],
            ceil_mode: ceil,
        }
    }

    #[test]
    fn pool_output_sizes_follow_pooling_output_shape() {
        // googlenet: 3x3 s2 ceil on 112 → 56 (floor would give 55).
        assert_eq!(
            pool(3, 2, 0, 1, true).output_size("p", [112, 112]).unwrap(),
            [56, 56]
        );
        assert_eq!(
            pool(3, 2, 0, 1, false)
                .output_size("p", [112, 112])
                .unwrap(),
            [55, 55]
        );
        // resnet: 3x3 s2 p1 on 16 → 8.
        assert_eq!(
            pool(3, 2, 1, 1, false).output_size("p", [16, 16]).unwrap(),
            [8, 8]
        );
        // Ceil mode keeps a last window that starts inside input + left padding, drops one
        // that would start beyond it. in 4, k 2, s 2, p 1: ⌊(4+2−1−1+1)/2⌋+1 = 3, window 2
        // starts at 2·2 = 4 < 4 + 1: kept.
        assert_eq!(
            pool(2, 2, 1, 1, true).output_size("p", [4, 4]).unwrap(),
            [3, 3]
        );
        // in 3, k 3, s 3, p 1: ⌊(3+2−2−1+2)/3⌋+1 = 2; window 1 starts at 3 < 3 + 1: kept.
        assert_eq!(
            pool(3, 3, 1, 1, true).output_size("p", [3, 3]).unwrap(),
            [2, 2]
        );
        // in 2, k 2, s 3, p 1: ⌊(2+2−1−1+2)/3⌋+1 = 2; window 1 starts at 3 ≥ 2 + 1: dropped.
        assert_eq!(
            pool(2, 3, 1, 1, true).output_size("p", [2, 2]).unwrap(),
            [1, 1]
        );
        // Errors: padding beyond half the effective kernel, empty outputs, zero strides.
        assert!(pool(2, 1, 2, 1, false).output_size("p", [8, 8]).is_err());
        assert!(pool(3, 1, 0, 1, false).output_size("p", [2, 8]).is_err());
        assert!(pool(3, 0, 0, 1, false).output_size("p", [8, 8]).is_err());
        // Dilation widens the allowed padding but not the quantized kernels' rule.
        let dilated = pool(3, 1, 2, 2, false);
        assert!(dilated.output_size("p", [8, 8]).is_ok());
        assert!(dilated.check_half_kernel_padding("p").is_err());
    }

    #[test]
    fn max_taps_skip_padding_and_qnnpack_clamps_it() {
        let p = pool(3, 1, 2, 2, false);
        // Output 0: taps at −2, 0, 2: ATen skips −2, QNNPACK reads row 0 twice.
        assert_eq!(p.max_taps(0, 0, 5).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(p.clamped_taps(0, 0, 5).collect::<Vec<_>>(), vec![0, 0, 2]);
        // Output 4 of a 5-row input: taps 2, 4, 6 → ATen 2, 4; QNNPACK 2, 4, 4.
        assert_eq!(p.max_taps(0, 4, 5).collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(p.clamped_taps(0, 4, 5).collect::<Vec<_>>(), vec![2, 4, 4]);
    }

    #[test]
    fn avg_spans_count_padding_up_to_the_padded_input() {
        let p = pool(3, 2, 1, 1, true);
        // in 4: output 0 covers −1..2 → [0, 2), padded 3.
        assert_eq!(
            p.avg_span(0, 0, 4),
            AvgSpan {
                start: 0,
                end: 2,
                padded: 3
            }
        );
        // output 2 (ceil mode) covers 3..6, cut at in + p = 5 → [3, 4), padded 2.
        assert_eq!(
            p.avg_span(0, 2, 4),
            AvgSpan {
                start: 3,
                end: 4,
                padded: 2
            }
        );
    }

    #[test]
    fn adaptive_bounds_agree_in_float_and_integers() {
        for input in 1..64 {
            for output in 1..=input + 3 {
                for o in 0..output {
                    assert_eq!(
                        adaptive_bounds_f32(o, output, input),
                        adaptive_bounds(o, output, input),
                        "o {o} of {output} from {input}"
                    );
                }
            }
        }
        assert_eq!(adaptive_bounds(1, 3, 7), (2, 5));
    }
}
