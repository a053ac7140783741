//! Observers (`torch/ao/quantization/observer.py`) and the fused QAT observer + fake-quant op.
//!
//! Every observer keeps PyTorch's f32 running statistics and produces qparams through
//! [`crate::numerics::qparams::observer_qparams`].

pub mod histogram;

use crate::numerics::qparams::{
    calculate_qmin_qmax, fbgemm_choose_qparams, observer_qparams, torch_max, torch_min,
    ObservedQParams, ObserverQParamsConfig, QDType, QScheme, QuantRange,
};
use crate::numerics::quantize::fake_quant;
use crate::{Error, Result};

/// Observer classes qparity models, by PyTorch's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ObserverClass {
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    HistogramObserver,
    PlaceholderObserver,
}

impl ObserverClass {
    /// Parses PyTorch's class name.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "MinMaxObserver" => Self::MinMaxObserver,
            "MovingAverageMinMaxObserver" => Self::MovingAverageMinMaxObserver,
            "PerChannelMinMaxObserver" => Self::PerChannelMinMaxObserver,
            "MovingAveragePerChannelMinMaxObserver" => Self::MovingAveragePerChannelMinMaxObserver,
            "HistogramObserver" => Self::HistogramObserver,
            "PlaceholderObserver" => Self::PlaceholderObserver,
            other => {
                return Err(Error::invalid(
                    "observer class",
                    format!("unknown observer {other:?}"),
                ))
            }
        })
    }

    /// Per-channel observers.
    pub fn is_per_channel(self) -> bool {
        matches!(
            self,
            Self::PerChannelMinMaxObserver | Self::MovingAveragePerChannelMinMaxObserver
        )
    }
}

/// A fully resolved observer configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverConfig {
    pub class: ObserverClass,
    pub dtype: QDType,
    pub qscheme: QScheme,
    pub range: QuantRange,
    pub reduce_range: bool,
    pub eps: f32,
    pub averaging_constant: f32,
    pub ch_axis: usize,
    pub bins: usize,
}

impl ObserverConfig {
    /// Resolves a configuration from the keyword arguments a user passes to PyTorch
    /// (defaults as in PyTorch's constructors).
    #[allow(clippy::too_many_arguments)]
    pub fn from_kwargs(
        class: ObserverClass,
        dtype: Option<QDType>,
        qscheme: Option<QScheme>,
        reduce_range: Option<bool>,
        quant_min: Option<i64>,
        quant_max: Option<i64>,
        eps: Option<f64>,
        averaging_constant: Option<f64>,
        ch_axis: Option<i64>,
        bins: Option<i64>,
    ) -> Result<Self> {
        let dtype = dtype.unwrap_or(QDType::Quint8);
        let qscheme = qscheme.unwrap_or(if class.is_per_channel() {
            QScheme::PerChannelAffine
        } else {
            QScheme::PerTensorAffine
        });
        if class.is_per_channel() != qscheme.is_per_channel() {
            return Err(Error::invalid(
                "qscheme",
                format!("{} does not fit {class:?}", qscheme.name()),
            ));
        }
        let reduce_range = reduce_range.unwrap_or(false);
        if reduce_range && qscheme.is_symmetric() && dtype == QDType::Quint8 {
            return Err(Error::invalid(
                "reduce_range",
                "Cannot reduce range for symmetric quantization for quint8",
            ));
        }
        let range = calculate_qmin_qmax(quant_min, quant_max, dtype, reduce_range)?;
        let eps = eps.unwrap_or(f32::EPSILON as f64) as f32;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::invalid(
                "eps",
                format!("{eps} is not a finite non-negative value"),
            ));
        }
        let averaging_constant = averaging_constant.unwrap_or(0.01) as f32;
        let ch_axis = ch_axis.unwrap_or(0);
        if ch_axis < 0 {
            return Err(Error::invalid("ch_axis", "negative axes are not supported"));
        }
        let bins = bins.unwrap_or(2048);
        if bins <= 0 {
            return Err(Error::invalid("bins", format!("{bins} must be positive")));
        }
        Ok(Self {
            class,
            dtype,
            qscheme,
            range,
            reduce_range,
            eps,
            averaging_constant,
            ch_axis: ch_axis as usize,
            bins: bins as usize,
        })
    }

    fn qparams_config(&self) -> ObserverQParamsConfig {
        ObserverQParamsConfig {
            dtype: self.dtype,
            qscheme: self.qscheme,
            range: self.range,
            eps: self.eps,
        }
    }
}

/// A running observer.
#[derive(Debug, Clone)]
pub struct Observer {
    pub cfg: ObserverConfig,
    /// Running minima (one per channel; one for per-tensor observers). Per-tensor observers start
    /// at +inf; per-channel ones start empty.
    pub min_val: Vec<f32>,
    /// Running maxima.
    pub max_val: Vec<f32>,
    hist: Option<histogram::HistogramObserver>,
}

/// `torch.aminmax` over a slice, ignoring nothing: NaN propagates.
fn aminmax(x: &[f32]) -> (f32, f32) {
    let mut mn = f32::INFINITY;
    let mut mx = f32::NEG_INFINITY;
    for &v in x {
        if v.is_nan() {
            return (f32::NAN, f32::NAN);
        }
        mn = mn.min(v);
        mx = mx.max(v);
    }
    (mn, mx)
}

/// `a + c·(b − a)` in f32, the moving-average update.
#[inline]
fn ema(a: f32, b: f32, c: f32) -> f32 {
    a + c * (b - a)
}

impl Observer {
    /// A fresh observer (an error for histogram settings PyTorch would reject).
    pub fn new(cfg: ObserverConfig) -> Result<Self> {
        let per_tensor = !cfg.class.is_per_channel();
        let hist = (cfg.class == ObserverClass::HistogramObserver)
            .then(|| {
                histogram::HistogramObserver::new(histogram::HistogramConfig {
                    bins: cfg.bins,
                    upsample_rate: 16,
                    qparams: cfg.qparams_config(),
                })
            })
            .transpose()?;
        Ok(Self {
            min_val: if per_tensor {
                vec![f32::INFINITY]
            } else {
                vec![]
            },
            max_val: if per_tensor {
                vec![f32::NEG_INFINITY]
            } else {
                vec![]
            },
            cfg,
            hist,
        })
    }

    /// Feeds one batch. `shape` is the batch's shape (needed by per-channel observers).
    pub fn forward(&mut self, x: &[f32], shape: &[usize]) -> Result<()> {
        if shape.iter().product::<usize>() != x.len() {
            return Err(Error::shape(
                "observer input",
                format!("shape {shape:?} does not hold {} elements", x.len()),
            ));
        }
        if x.is_empty() {
            return Ok(());
        }
        let c = self.cfg.averaging_constant;
        match self.cfg.class {
            ObserverClass::PlaceholderObserver => {}
            ObserverClass::HistogramObserver => {
                let h = self.hist.as_mut().expect("histogram state");
                h.forward(x)?;
                self.min_val = vec![h.min_val];
                self.max_val = vec![h.max_val];
            }
            ObserverClass::MinMaxObserver => {
                let (mn, mx) = aminmax(x);
                self.min_val[0] = torch_min(mn, self.min_val[0]);
                self.max_val[0] = torch_max(mx, self.max_val[0]);
            }
            ObserverClass::MovingAverageMinMaxObserver => {
                let (mn, mx) = aminmax(x);
                if self.min_val[0] == f32::INFINITY && self.max_val[0] == f32::NEG_INFINITY {
                    self.min_val[0] = mn;
                    self.max_val[0] = mx;
                } else {
                    self.min_val[0] = ema(self.min_val[0], mn, c);
                    self.max_val[0] = ema(self.max_val[0], mx, c);
                }
            }
            ObserverClass::PerChannelMinMaxObserver
            | ObserverClass::MovingAveragePerChannelMinMaxObserver => {
                let (mn, mx) = per_channel_aminmax(x, shape, self.cfg.ch_axis)?;
                if self.min_val.is_empty() {
                    self.min_val = mn;
                    self.max_val = mx;
                } else if self.min_val.len() != mn.len() {
                    return Err(Error::shape(
                        "per-channel observer input",
                        format!(
                            "{} channels after {} in earlier batches",
                            mn.len(),
                            self.min_val.len()
                        ),
                    ));
                } else if self.cfg.class == ObserverClass::PerChannelMinMaxObserver {
                    for i in 0..mn.len() {
                        self.min_val[i] = torch_min(mn[i], self.min_val[i]);
                        self.max_val[i] = torch_max(mx[i], self.max_val[i]);
                    }
                } else {
                    for i in 0..mn.len() {
                        self.min_val[i] = ema(self.min_val[i], mn[i], c);
                        self.max_val[i] = ema(self.max_val[i], mx[i], c);
                    }
                }
            }
        }
        Ok(())
    }

    /// `calculate_qparams()`.
    pub fn calculate_qparams(&self) -> Result<ObservedQParams> {
        if let Some(h) = &self.hist {
            let (scale, zp) = h.calculate_qparams()?;
            return Ok(ObservedQParams {
                scale: vec![scale],
                zero_point: vec![zp],
            });
        }
        observer_qparams(&self.cfg.qparams_config(), &self.min_val, &self.max_val)
    }

    /// The histogram of a HistogramObserver.
    pub fn histogram(&self) -> Option<&[f32]> {
        self.hist.as_ref().map(|h| h.histogram.as_slice())
    }
}

/// Per-channel `aminmax` along `axis`.
pub fn per_channel_aminmax(
    x: &[f32],
    shape: &[usize],
    axis: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if axis >= shape.len() {
        return Err(Error::shape(
            "per-channel input",
            format!("ch_axis {axis} but the input has {} dims", shape.len()),
        ));
    }
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut mn = vec![f32::INFINITY; channels];
    let mut mx = vec![f32::NEG_INFINITY; channels];
    let mut nan = vec![false; channels];
    for (i, &v) in x.iter().enumerate() {
        let c = (i / inner) % channels;
        if v.is_nan() {
            nan[c] = true;
        }
        mn[c] = mn[c].min(v);
        mx[c] = mx[c].max(v);
    }
    for c in 0..channels {
        if nan[c] {
            mn[c] = f32::NAN;
            mx[c] = f32::NAN;
        }
    }
    Ok((mn, mx))
}

/// State of `torch.fused_moving_avg_obs_fake_quant` (what `FusedMovingAvgObsFakeQuantize` keeps
/// in its buffers).
#[derive(Debug, Clone, PartialEq)]
pub struct FusedState {
    pub running_min: Vec<f32>,
    pub running_max: Vec<f32>,
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
}

impl FusedState {
    /// The buffers of an untrained `FusedMovingAvgObsFakeQuantize` with `n` channels: running
    /// minima +inf, maxima −inf, scales 1 and zero points 0 (`torch/ao/quantization/fake_quantize.py`).
    pub fn untrained(n: usize) -> Self {
        FusedState {
            running_min: vec![f32::INFINITY; n],
            running_max: vec![f32::NEG_INFINITY; n],
            scale: vec![1.0; n],
            zero_point: vec![0; n],
        }
    }
}

/// Settings of `fused_moving_avg_obs_fake_quant`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedConfig {
    pub averaging_const: f32,
    pub quant_min: i64,
    pub quant_max: i64,
    pub ch_axis: usize,
    pub per_row_fake_quant: bool,
    pub symmetric_quant: bool,
}

/// One call of `fused_moving_avg_obs_fake_quant` (ATen `fused_obs_fake_quant.cpp`): updates the
/// running min/max by the moving average (first call: the batch's own), chooses qparams with
/// FBGEMM's `ChooseQuantizationParams`, and fake-quantizes with them (per row: the per-channel
/// kernel, [`fake_quant::per_channel`]; otherwise the per-tensor one). With fake quantization off,
/// only the statistics move: qparams are chosen only when fake quantization is on. Returns the output.
pub fn fused_moving_avg_obs_fake_quant(
    x: &[f32],
    shape: &[usize],
    state: &mut FusedState,
    cfg: &FusedConfig,
    observer_on: bool,
    fake_quant_on: bool,
) -> Result<Vec<f32>> {
    if shape.iter().product::<usize>() != x.len() {
        return Err(Error::shape(
            "fused fake-quant input",
            format!("shape {shape:?} does not hold {} elements", x.len()),
        ));
    }
    let (qmin, qmax) = (cfg.quant_min, cfg.quant_max);
    if cfg.per_row_fake_quant {
        let axis = cfg.ch_axis;
        if observer_on {
            let (mn, mx) = per_channel_aminmax(x, shape, axis)?;
            if state.running_min.len() != mn.len() {
                state.running_min = vec![f32::INFINITY; mn.len()];
                state.running_max = vec![f32::NEG_INFINITY; mn.len()];
            }
            for i in 0..mn.len() {
                state.running_min[i] = moving(state.running_min[i], mn[i], cfg.averaging_const);
                state.running_max[i] = moving(state.running_max[i], mx[i], cfg.averaging_const);
            }
        }
        if !fake_quant_on {
            return Ok(x.to_vec());
        }
        {
            let n = state.running_min.len();
            let (s, z): (Vec<f32>, Vec<i32>) = (0..n)
                .map(|i| {
                    let q = fbgemm_choose_qparams(
                        state.running_min[i],
                        state.running_max[i],
                        qmin as i32,
                        qmax as i32,
                        cfg.symmetric_quant,
                    );
                    (q.scale, q.zero_point)
                })
                .unzip();
            state.scale = s;
            state.zero_point = z;
        }
        let channels = shape[axis];
        if state.scale.len() != channels {
            return Err(Error::shape(
                "fused fake-quant",
                format!("{} scales for {channels} channels", state.scale.len()),
            ));
        }
        let inner: usize = shape[axis + 1..].iter().product();
        Ok(x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / inner) % channels;
                fake_quant::per_channel(v, state.scale[c], state.zero_point[c] as i64, qmin, qmax).0
            })
            .collect())
    } else {
        if observer_on {
            let (mn, mx) = aminmax(x);
            if state.running_min.is_empty() {
                state.running_min = vec![f32::INFINITY];
                state.running_max = vec![f32::NEG_INFINITY];
            }
            state.running_min[0] = moving(state.running_min[0], mn, cfg.averaging_const);
            state.running_max[0] = moving(state.running_max[0], mx, cfg.averaging_const);
        }
        if !fake_quant_on {
            return Ok(x.to_vec());
        }
        if !state.running_min.is_empty() {
            let q = fbgemm_choose_qparams(
                state.running_min[0],
                state.running_max[0],
                qmin as i32,
                qmax as i32,
                cfg.symmetric_quant,
            );
            state.scale = vec![q.scale];
            state.zero_point = vec![q.zero_point];
        }
        let (s, z) = (state.scale[0], state.zero_point[0] as i64);
        Ok(x.iter()
            .map(|&v| fake_quant::per_tensor(v, s, z, qmin, qmax).0)
            .collect())
    }
}

/// `calculate_moving_average`'s per-value rule: an infinite running value is replaced by the
/// batch's, otherwise `f32(r + f32(c · f32(cur − r)))`.
fn moving(r: f32, cur: f32, c: f32) -> f32 {
    if r.is_infinite() {
        cur
    } else {
        ema(r, cur, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(class: ObserverClass, eps: Option<f64>) -> Result<ObserverConfig> {
        ObserverConfig::from_kwargs(class, None, None, None, None, None, eps, None, None, None)
    }

    /// eps must be finite and ≥ 0 (PyTorch stores any float; a negative, infinite or NaN floor
    /// makes no scale qparity can check, so it is refused with a message naming eps).
    #[test]
    fn eps_must_be_finite_and_non_negative() {
        for bad in [-1e-3, -1.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            let err = config(ObserverClass::MinMaxObserver, Some(bad)).unwrap_err();
            assert!(err.to_string().contains("eps"), "{bad}: {err}");
        }
        for good in [0.0, 1e-10, f32::EPSILON as f64] {
            let cfg = config(ObserverClass::MinMaxObserver, Some(good)).unwrap();
            assert_eq!(cfg.eps, good as f32);
        }
    }

    /// MovingAverageMinMaxObserver copies the batch statistics only while both running values
    /// are still the initial (+inf, −inf); after a batch of +inf alone (min = max = +inf) the
    /// next batch goes through the moving average, whose inf − inf is NaN, as in torch 2.15.0
    /// (`observer.py` `MovingAverageMinMaxObserver.forward`).
    #[test]
    fn moving_average_copies_only_the_uninitialised_pair() {
        let cfg = config(ObserverClass::MovingAverageMinMaxObserver, None).unwrap();
        let mut obs = Observer::new(cfg.clone()).unwrap();
        obs.forward(&[f32::INFINITY, f32::INFINITY], &[2]).unwrap();
        assert_eq!(
            (obs.min_val[0], obs.max_val[0]),
            (f32::INFINITY, f32::INFINITY)
        );
        obs.forward(&[1.0, 2.0], &[2]).unwrap();
        assert!(obs.min_val[0].is_nan() && obs.max_val[0].is_nan());

        let mut obs = Observer::new(cfg).unwrap();
        obs.forward(&[f32::NEG_INFINITY, 3.0], &[2]).unwrap();
        obs.forward(&[1.0, 2.0], &[2]).unwrap();
        assert!(obs.min_val[0].is_nan());
        assert_eq!(obs.max_val[0], 3.0 + 0.01f32 * (2.0 - 3.0));
    }

    /// The fused op fake-quantizes per row with the per-channel kernel and otherwise with the
    /// per-tensor one, which part on +inf and on values beyond 2^63 steps (torch 2.15, running
    /// range −1..1 with the observer off: +inf and 1e30 give 0.9921 per tensor, −1.0079 per row).
    #[test]
    fn fused_fake_quant_uses_the_kernel_of_its_granularity() {
        let x = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, 3e9, 0.25];
        for per_row in [false, true] {
            let mut state = FusedState {
                running_min: vec![-1.0],
                running_max: vec![1.0],
                scale: vec![1.0],
                zero_point: vec![0],
            };
            let cfg = FusedConfig {
                averaging_const: 0.01,
                quant_min: 0,
                quant_max: 127,
                ch_axis: 0,
                per_row_fake_quant: per_row,
                symmetric_quant: false,
            };
            let y = fused_moving_avg_obs_fake_quant(&x, &[1, 6], &mut state, &cfg, false, true)
                .unwrap();
            let (s, z) = (state.scale[0], state.zero_point[0] as i64);
            let (lo, hi) = ((0 - z) as f32 * s, (127 - z) as f32 * s);
            let big = if per_row { lo } else { hi };
            assert_eq!(y[..5], [lo, big, lo, big, hi], "per row {per_row}");
            assert_eq!(y[5], fake_quant::per_tensor(0.25, s, z, 0, 127).0);
        }
    }
}
