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
