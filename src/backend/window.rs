//! Window reductions (max / sum pools, adaptive average, integer means) over NHWC codes:
//! separable passes over channel-contiguous vectors (u8 max, u16/u32 sums), and each result's
//! requantization as a table lookup — the plan's [`WindowOp::finish`] tabulated once per
//! [`WindowOp::finish_class`] over every accumulator a window can reach, so the formulas stay
//! the plan's (`src/ops/pool/*.rs`) by construction.

use crate::ops::{Reduction, WindowOp};
use crate::{Error, Result};
use std::collections::HashMap;

/// Tables above this many entries in all are not built (the caller calls `finish` instead).
const MAX_TABLE_ENTRIES: usize = 1 << 22;

/// A table entry for an accumulator whose `finish` is undefined or not a u8.
const UNDEFINED: u16 = 0x100;

/// [`WindowOp::finish`] tabulated per output position's class.
#[derive(Debug)]
pub struct FinishTables {
    /// Per output position `oy·OW + ox`: its table.
    class: Vec<u32>,
    /// Per class: the code of each accumulator `0..len` ([`UNDEFINED`] where there is none).
    tables: Vec<Vec<u16>>,
    /// Whether every table maps each accumulator to itself (max pools).
    identity: bool,
}

impl FinishTables {
    /// Tabulates `w.finish` for input qparams `(scale, zero_point)`, where `w` gives every output
    /// position a class and each class's table stays small; `rows` / `cols`: the taps of each
    /// output row / column.
    pub fn build(
        w: &dyn WindowOp,
        (scale, zero_point): (f64, i64),
        rows: &[Vec<usize>],
        cols: &[Vec<usize>],
    ) -> Option<Self> {
        let max = match w.reduction() {
            Reduction::Max => true,
            Reduction::Sum => false,
            Reduction::FloatPlane { .. } => return None,
        };
        let ow = cols.len();
        let mut keys: HashMap<u64, u32> = HashMap::new();
        // Per class: a representative position and the largest accumulator it must cover.
        let mut reps: Vec<(usize, usize)> = Vec::new();
        let mut class = Vec::with_capacity(rows.len() * ow);
        for (oy, r) in rows.iter().enumerate() {
            for (ox, c) in cols.iter().enumerate() {
                let key = w.finish_class(oy, ox)?;
                let top = if max { 255 } else { 255 * r.len() * c.len() };
                let next = reps.len() as u32;
                let k = *keys.entry(key).or_insert(next);
                if k == next {
                    reps.push((oy * ow + ox, top));
                }
                let rep = &mut reps[k as usize];
                rep.1 = rep.1.max(top);
                class.push(k);
            }
        }
        if reps.iter().map(|r| r.1 + 1).sum::<usize>() > MAX_TABLE_ENTRIES {
            return None;
        }
        // Logical result `j` of image 0, channel 0 at position `p` is `j = p`.
        let tables: Vec<Vec<u16>> = reps
            .iter()
            .map(|&(j, top)| {
                (0..=top)
                    .map(|acc| {
                        w.finish(j, acc as i64, 0.0, scale, zero_point)
                            .and_then(|v| u8::try_from(v).ok())
                            .map_or(UNDEFINED, u16::from)
                    })
                    .collect()
            })
            .collect();
        let identity = tables
            .iter()
            .all(|t| t.iter().enumerate().all(|(a, &v)| usize::from(v) == a));
        Some(FinishTables {
            class,
            tables,
            identity,
        })
    }

    /// The code of accumulator `acc` at output position `pos` (`None`: undefined).
    pub fn code(&self, pos: usize, acc: i64) -> Option<u8> {
        let t = &self.tables[self.class[pos] as usize];
        let v = *usize::try_from(acc).ok().and_then(|a| t.get(a))?;
        u8::try_from(v).ok()
    }
}

/// A window reduction of NHWC codes straight into NHWC output codes.
#[derive(Debug)]
pub struct NhwcWindows<'a> {
    /// `N, C, H, W` of the input.
    pub in_dims: [usize; 4],
    /// Each output row's / column's input taps.
    pub rows: &'a [Vec<usize>],
    pub cols: &'a [Vec<usize>],
    pub max: bool,
    pub finish: &'a FinishTables,
}

impl NhwcWindows<'_> {
    /// Whether [`NhwcWindows::run`] takes these windows (sums of a row's taps fit in u16).
    pub fn supports(cols: &[Vec<usize>]) -> bool {
        cols.iter().all(|c| c.len() <= 257)
    }

    /// Reduces `x` (NHWC) into `out` (NHWC, `N × OH × OW × C`).
    pub fn run(&self, x: &[u8], out: &mut [u8]) -> Result<()> {
        let [n, c, h, w] = self.in_dims;
        let (oh, ow) = (self.rows.len(), self.cols.len());
        if x.len() != n * h * w * c || out.len() != n * oh * ow * c {
            return Err(Error::shape("window op", "NHWC buffers of other sizes"));
        }
        if self.max {
            let mut across = vec![0u8; h * ow * c];
            for (img, dst) in x
                .chunks_exact(h * w * c)
                .zip(out.chunks_exact_mut(oh * ow * c))
            {
                self.max_image(img, &mut across, dst);
                if !self.finish.identity {
                    self.lookup_u8(dst)?;
                }
            }
            return Ok(());
        }
        let mut across = vec![0u16; h * ow * c];
        let mut down = vec![0u32; c];
        for (img, dst) in x
            .chunks_exact(h * w * c)
            .zip(out.chunks_exact_mut(oh * ow * c))
        {
            self.sum_image(img, &mut across, &mut down, dst)?;
        }
        Ok(())
    }

    /// Max over each window of one image (`across`: per input row, the max over each output
    /// column's taps).
    fn max_image(&self, img: &[u8], across: &mut [u8], dst: &mut [u8]) {
        let [_, c, _, w] = self.in_dims;
        let ow = self.cols.len();
        for (line, acr) in img.chunks_exact(w * c).zip(across.chunks_exact_mut(ow * c)) {
            for (taps, d) in self.cols.iter().zip(acr.chunks_exact_mut(c)) {
                max_taps(d, taps.iter().map(|&x| &line[x * c..(x + 1) * c]));
            }
        }
        for (taps, drow) in self.rows.iter().zip(dst.chunks_exact_mut(ow * c)) {
            for (ox, d) in drow.chunks_exact_mut(c).enumerate() {
                let at = |y: usize| &across[(y * ow + ox) * c..(y * ow + ox + 1) * c];
                max_taps(d, taps.iter().map(|&y| at(y)));
            }
        }
    }

    /// Sums over each window of one image, each looked up in its class's table.
    fn sum_image(
        &self,
        img: &[u8],
        across: &mut [u16],
        down: &mut [u32],
        dst: &mut [u8],
    ) -> Result<()> {
        let [_, c, _, w] = self.in_dims;
        let ow = self.cols.len();
        for (line, acr) in img.chunks_exact(w * c).zip(across.chunks_exact_mut(ow * c)) {
            for (taps, d) in self.cols.iter().zip(acr.chunks_exact_mut(c)) {
                d.fill(0);
                for &x in taps {
                    for (a, &q) in d.iter_mut().zip(&line[x * c..(x + 1) * c]) {
                        *a += u16::from(q);
                    }
                }
            }
        }
        // A window's sum fits in 16 bits for the usual small windows: the vertical pass then
        // adds twice the lanes per instruction.
        let most = |v: &[Vec<usize>]| v.iter().map(Vec::len).max().unwrap_or(0);
        let bad = if 255 * most(self.rows) * most(self.cols) <= usize::from(u16::MAX) {
            self.down_lookup::<u16>(across, &mut vec![0; down.len()], dst)
        } else {
            self.down_lookup::<u32>(across, down, dst)
        };
        undefined(bad)
    }

    /// The vertical pass of [`NhwcWindows::sum_image`] in accumulators `A` (wide enough for every
    /// window's sum), each sum looked up in its class's table; returns the OR of the entries.
    fn down_lookup<A>(&self, across: &[u16], down: &mut [A], dst: &mut [u8]) -> u16
    where
        A: Copy + Default + std::ops::AddAssign + From<u16> + Into<u64>,
    {
        let c = self.in_dims[1];
        let ow = self.cols.len();
        let mut bad = 0u16;
        for (oy, (taps, drow)) in self
            .rows
            .iter()
            .zip(dst.chunks_exact_mut(ow * c))
            .enumerate()
        {
            for (ox, d) in drow.chunks_exact_mut(c).enumerate() {
                down.fill(A::default());
                for &y in taps {
                    let src = &across[(y * ow + ox) * c..(y * ow + ox + 1) * c];
                    for (a, &s) in down.iter_mut().zip(src) {
                        *a += A::from(s);
                    }
                }
                let t = &self.finish.tables[self.finish.class[oy * ow + ox] as usize];
                for (o, &a) in d.iter_mut().zip(down.iter()) {
                    let v = usize::try_from(a.into())
                        .ok()
                        .and_then(|a| t.get(a).copied())
                        .unwrap_or(UNDEFINED);
                    bad |= v;
                    *o = v as u8;
                }
            }
        }
        bad
    }

    /// Looks up max results (NHWC, one image) in their tables.
    fn lookup_u8(&self, dst: &mut [u8]) -> Result<()> {
        let c = self.in_dims[1];
        let mut bad = 0u16;
        for (pos, d) in dst.chunks_exact_mut(c).enumerate() {
            let t = &self.finish.tables[self.finish.class[pos] as usize];
            for o in d {
                let v = t[usize::from(*o)];
                bad |= v;
                *o = v as u8;
            }
        }
        undefined(bad)
    }
}

/// `d` = the elementwise max of the vectors `taps` yields (0 for none).
fn max_taps<'x>(d: &mut [u8], mut taps: impl Iterator<Item = &'x [u8]>) {
    match taps.next() {
        Some(first) => d.copy_from_slice(first),
        None => d.fill(0),
    }
    for px in taps {
        for (a, &q) in d.iter_mut().zip(px) {
            *a = (*a).max(q);
        }
    }
}

/// An error where some looked-up entry was [`UNDEFINED`] (`bad`: the OR of all entries).
fn undefined(bad: u16) -> Result<()> {
    if bad & UNDEFINED != 0 {
        return Err(Error::invalid(
            "window op",
            "a result is undefined or not a u8",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::backend::portable::{memory_positions, prepare_in_memory};
    use crate::engine::flow::Flow;
    use crate::engine::Engine;
    use crate::numerics::bound::Pred;
    use crate::numerics::test_rng::Rng;
    use crate::ops::pool::adaptive::AdaptiveAvgPool2d;
    use crate::ops::pool::avg::AvgPool2d;
    use crate::ops::pool::max::MaxPool2d;
    use crate::ops::pool::mean::MeanHw;
    use crate::ops::pool::{same_qparams, test_ctx};
    use crate::ops::{MemoryFormat, Op, QTensor, Value};

    /// A random window op for an `h × w` input (some draws are arguments PyTorch rejects).
    fn random_op(r: &mut Rng, h: usize, w: usize) -> Box<dyn Op> {
        let mut pick = |n: usize| (r.bits() % n as u64) as usize;
        let k = [1 + pick(4), 1 + pick(4)];
        let stride = Some([1 + pick(3), 1 + pick(3)]);
        let padding = [pick(k[0] / 2 + 1), pick(k[1] / 2 + 1)];
        let ceil_mode = pick(2) == 1;
        match pick(5) {
            0 | 1 => Box::new(MaxPool2d {
                kernel_size: k,
                stride,
                padding,
                dilation: [1 + pick(2), 1 + pick(2)],
                ceil_mode,
            }),
            2 | 3 => Box::new(AvgPool2d {
                kernel_size: k,
                stride,
                padding,
                ceil_mode,
                count_include_pad: pick(2) == 1,
                divisor_override: (pick(4) == 0).then(|| 1 + pick(20) as i64),
            }),
            4 if pick(2) == 0 => Box::new(AdaptiveAvgPool2d {
                output_size: [1 + pick(h + 1), 1 + pick(w + 1)],
            }),
            _ => Box::new(MeanHw {
                dim: vec![2, 3],
                keepdim: pick(2) == 0,
            }),
        }
    }

    /// `logical` (row-major) codes laid out as `format` holds them.
    fn to_memory(shape: &[usize], format: MemoryFormat, logical: &[u8]) -> Vec<u8> {
        match memory_positions(shape, format) {
            None => logical.to_vec(),
            Some(map) => {
                let mut m = vec![0; logical.len()];
                for (&v, &p) in logical.iter().zip(&map) {
                    m[p] = v;
                }
                m
            }
        }
    }

    /// Random pools, adaptive pools and means (odd channel counts, padding, `ceil_mode`,
    /// `count_include_pad`, divisor overrides, both layouts, fbgemm and qnnpack) through the
    /// prepared window run, in memory order, against the plan's reference prediction.
    #[test]
    fn window_runs_match_the_reference_predictions() {
        let mut r = Rng::new(0x5eed_900f, 1);
        let (mut fast, mut ran) = (0, 0);
        for case in 0..1500 {
            let mut pick = |n: usize| (r.bits() % n as u64) as usize;
            let dims = [1 + pick(2), 1 + pick(21), 1 + pick(13), 1 + pick(13)];
            let formats = [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast];
            let (in_f, out_f) = (formats[pick(2)], formats[pick(4).min(1)]);
            let engine = [Engine::Fbgemm, Engine::Qnnpack][pick(4).min(1)];
            let mut r2 = Rng::new(case, 2);
            let op = random_op(&mut r2, dims[2], dims[3]);
            let n: usize = dims.iter().product();
            let data: Vec<u8> = (0..n).map(|_| r2.bits() as u8).collect();
            let scale = 0.001 + (r2.bits() % 1000) as f64 / 997.0;
            let mut x = QTensor::new(dims.to_vec(), data, scale, (r2.bits() % 256) as i64);
            x.memory_format = in_f;
            let v = Value::Quantized(x.clone());
            let ctx = test_ctx(Flow::ConvertFx, engine);
            let Ok(plan) = op.plan(&ctx, &[v.meta()], Some(&same_qparams(&x))) else {
                continue;
            };
            let want = plan.predict(&[&v]).unwrap().remove(0);
            let low = plan.lowered().expect("integer pools lower to window runs");
            let prepared = prepare_in_memory(low, &[v.meta()], out_f).unwrap().unwrap();
            let mut mem = x.clone();
            mem.data = to_memory(&dims, in_f, &x.data);
            let mut got = vec![0u8; want.shape.iter().product()];
            let res = prepared.run(low, &[&Value::Quantized(mem)], &mut got);
            let preds = want.ints().unwrap();
            let exact: Option<Vec<u8>> = preds
                .iter()
                .map(|p| match p {
                    Pred::Exact(v) => u8::try_from(*v).ok(),
                    Pred::Ambiguous { .. } => None,
                })
                .collect();
            let Some(exact) = exact else {
                assert!(
                    res.is_err(),
                    "case {case}: ambiguous prediction, run succeeded"
                );
                continue;
            };
            res.unwrap_or_else(|e| panic!("case {case} {op:?}: {e}"));
            let want_mem = to_memory(&want.shape, out_f, &exact);
            assert_eq!(
                got,
                want_mem,
                "case {case}: {op:?} on {dims:?} {in_f:?} -> {out_f:?} ({})",
                prepared.kernel()
            );
            ran += 1;
            fast += usize::from(prepared.kernel().ends_with("-nhwc"));
        }
        // Both the direct NHWC runs and the general path were exercised.
        assert!(
            ran > 800 && fast > 300 && ran - fast > 100,
            "ran {ran}, fast {fast}"
        );
    }
}
