//! HistogramObserver (placeholder until the exact implementation lands; every use errors).

/// Settings of a histogram observer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramConfig {
    pub bins: usize,
    pub upsample_rate: usize,
    pub quant_min: i64,
    pub quant_max: i64,
    pub dtype_bits: u32,
    pub symmetric: bool,
    pub quint8_like: bool,
    pub has_customized_qrange: bool,
    pub eps: f32,
}

/// Histogram observer state.
#[derive(Debug, Clone)]
pub struct HistogramObserver {
    pub cfg: HistogramConfig,
    pub min_val: f32,
    pub max_val: f32,
    pub histogram: Vec<f32>,
}

impl HistogramObserver {
    /// A fresh observer.
    pub fn new(cfg: HistogramConfig) -> Self {
        Self {
            cfg,
            min_val: f32::INFINITY,
            max_val: f32::NEG_INFINITY,
            histogram: vec![0.0; cfg.bins],
        }
    }
    /// Not implemented yet: always an error.
    pub fn forward(&mut self, _x: &[f32]) -> crate::Result<()> {
        Err(crate::Error::invalid(
            "HistogramObserver",
            "not implemented yet",
        ))
    }
    /// Not implemented yet.
    pub fn calculate_qparams(&self) -> (f32, i64) {
        (f32::NAN, 0)
    }
}
