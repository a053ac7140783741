//! Portable implementations of the planned u8 ops around conv and linear, shared by every
//! backend: elementwise ops, movements and cats as lookup tables over the plan's value functions
//! (exact by construction: each table entry is the plan's function of that code), window
//! reductions (pools, mean) over the plan's taps with the plan's requantization, and the model
//! input's quantize node.

use super::window::{FinishTables, NhwcWindows};
use super::{check_out, Prepared};
use crate::engine::flow::Flow;
use crate::ops::aten_vec::VectorAdd;
use crate::ops::{Lowered, MemoryFormat, Meta, Pointwise, Reduction, Value, WindowOp};
use crate::{Error, Result};

/// Prepares a pointwise, window or quantize stage (`None` for other stages, or where a plan's
/// value function leaves a code undefined).
pub fn prepare(stage: Lowered<'_>, inputs: &[Meta<'_>]) -> Result<Option<Box<dyn Prepared>>> {
    Ok(match stage {
        Lowered::Pointwise(p) => {
            PointwiseRun::new(p, inputs)?.map(|r| Box::new(r) as Box<dyn Prepared>)
        }
        Lowered::Window(w) => {
            let mut r = WindowRun::new(w, inputs)?;
            r.set_layouts(false, None);
            Some(Box::new(r))
        }
        Lowered::Quantize(q) => Some(Box::new(QuantizeRun {
            shape: q.shape().to_vec(),
            nhwc: false,
        })),
        Lowered::Dequantize(d) => {
            let (qparams, _) = quantized_metas("dequantize", inputs)?;
            let &[(scale, zero_point)] = &qparams[..] else {
                return Err(Error::invalid("dequantize", "takes one input"));
            };
            let mut table = [0f32; 256];
            for (q, t) in table.iter_mut().enumerate() {
                *t = d.dequantize(q as u8, scale, zero_point);
            }
            Some(Box::new(DequantizeRun {
                shape: d.shape().to_vec(),
                qparams: (scale, zero_point),
                table,
            }))
        }
        Lowered::IntegerLayer(_) => None,
    })
}

/// As [`prepare`], for a runner that keeps activations in memory order (each input as its
/// `memory_format` lays it out, the output in `out_format`'s order).
pub fn prepare_in_memory(
    stage: Lowered<'_>,
    inputs: &[Meta<'_>],
    out_format: MemoryFormat,
) -> Result<Option<Box<dyn Prepared>>> {
    Ok(match stage {
        Lowered::Pointwise(p) => {
            let out_map = memory_positions(p.shape(), out_format);
            let in_maps: Vec<_> = inputs
                .iter()
                .map(|m| memory_positions(m.shape, m.memory_format))
                .collect();
            PointwiseRun::build(p, inputs, out_map.as_deref(), &in_maps)?
                .map(|r| Box::new(r) as Box<dyn Prepared>)
        }
        Lowered::Window(w) => {
            let mut r = WindowRun::new(w, inputs)?;
            let nhwc_in = inputs
                .first()
                .is_some_and(|m| memory_positions(m.shape, m.memory_format).is_some());
            r.set_layouts(nhwc_in, memory_positions(w.out_shape(), out_format));
            Some(Box::new(r))
        }
        Lowered::Quantize(q) => Some(Box::new(QuantizeRun {
            shape: q.shape().to_vec(),
            nhwc: memory_positions(q.shape(), out_format).is_some(),
        })),
        Lowered::Dequantize(_) => {
            if inputs
                .iter()
                .any(|m| memory_positions(m.shape, m.memory_format).is_some())
            {
                None
            } else {
                prepare(stage, inputs)?
            }
        }
        Lowered::IntegerLayer(_) => None,
    })
}

/// The memory position of each logical element of a tensor held in `format` (`None`: logical
/// order, also for channels-last tensors with one channel or one pixel).
pub fn memory_positions(shape: &[usize], format: MemoryFormat) -> Option<Vec<usize>> {
    match (format, shape) {
        (MemoryFormat::ChannelsLast, &[n, c, h, w]) if c > 1 && h * w > 1 => {
            let mut v = Vec::with_capacity(n * c * h * w);
            for b in 0..n {
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            v.push(((b * h + y) * w + x) * c + ch);
                        }
                    }
                }
            }
            Some(v)
        }
        _ => None,
    }
}

/// The dequantize node at a graph's output: a 256-entry table of the plan's f32 values.
#[derive(Debug)]
pub struct DequantizeRun {
    shape: Vec<usize>,
    qparams: (f64, i64),
    table: [f32; 256],
}

impl Prepared for DequantizeRun {
    fn kernel(&self) -> &'static str {
        "lut-f32"
    }

    fn out_shape(&self) -> &[usize] {
        &self.shape
    }

    fn run(&self, _stage: Lowered<'_>, _inputs: &[&Value], _out: &mut [u8]) -> Result<()> {
        Err(Error::invalid("dequantize", "its output is f32"))
    }

    fn f32_output(&self) -> bool {
        true
    }

    fn run_f32(&self, _stage: Lowered<'_>, inputs: &[&Value], out: &mut [f32]) -> Result<()> {
        let n = self.shape.iter().product::<usize>();
        let x = codes("dequantize", inputs, &[self.qparams], &[n])?[0];
        if out.len() != n {
            return Err(Error::shape("dequantize", "output buffer length"));
        }
        for (o, &q) in out.iter_mut().zip(x) {
            *o = self.table[q as usize];
        }
        Ok(())
    }
}

/// Per input: `(scale, zero_point)`, and element counts.
type QMetas = (Vec<(f64, i64)>, Vec<usize>);

/// The qparams and lengths of quantized inputs.
fn quantized_metas(what: &str, inputs: &[Meta<'_>]) -> Result<QMetas> {
    let qparams = inputs
        .iter()
        .map(|m| m.qparams(what))
        .collect::<Result<Vec<_>>>()?;
    let lens = inputs.iter().map(|m| m.shape.iter().product()).collect();
    Ok((qparams, lens))
}

/// The u8 codes of `inputs`, checked against the qparams and lengths prepared for.
fn codes<'v>(
    what: &str,
    inputs: &[&'v Value],
    qparams: &[(f64, i64)],
    lens: &[usize],
) -> Result<Vec<&'v [u8]>> {
    if inputs.len() != qparams.len() {
        return Err(Error::invalid(
            what,
            format!(
                "prepared for {} inputs, got {}",
                qparams.len(),
                inputs.len()
            ),
        ));
    }
    inputs
        .iter()
        .zip(qparams.iter().zip(lens))
        .map(|(v, (&qp, &len))| {
            let q = v.quantized(what)?;
            if (q.scale, q.zero_point) != qp || q.data.len() != len {
                return Err(Error::shape(
                    what,
                    "input qparams or length differ from the prepared ones",
                ));
            }
            Ok(&q.data[..])
        })
        .collect()
}

/// Where a run reads one operand: input `input`, element `start + t·stride` for its `t`-th
/// output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Src {
    input: usize,
    start: usize,
    stride: isize,
}

impl Src {
    fn at(&self, t: usize) -> usize {
        (self.start as isize + self.stride * t as isize) as usize
    }
}

/// Consecutive output elements taking one value function, their operands at fixed strides.
#[derive(Debug, Clone, Copy)]
struct Run {
    out: usize,
    len: usize,
    f: usize,
    src: [Src; 2],
}

/// A [`Pointwise`] plan as tables and runs.
#[derive(Debug)]
pub struct PointwiseRun {
    shape: Vec<usize>,
    arity: usize,
    qparams: Vec<(f64, i64)>,
    lens: Vec<usize>,
    /// Per value function (those some element takes): its codes, indexed by `qa` or `qa·256 + qb`.
    tables: Vec<Vec<u8>>,
    /// Per value function: ATen's vector `qadd` lambda in SIMD, where the function is one and
    /// the SIMD kernel equals its table on every pair of codes.
    simd_add: Vec<Option<VectorAdd>>,
    /// Per value function: whether it is the identity on codes (a unary table `t[q] = q`, e.g. a
    /// cat input that shares the output's qparams): its runs are copies.
    identity: Vec<bool>,
    runs: Vec<Run>,
}

impl PointwiseRun {
    /// Tabulates `p` for inputs with these metas; `None` where a used value function is
    /// undefined or leaves 0..=255 for some code.
    pub fn new(p: &dyn Pointwise, inputs: &[Meta<'_>]) -> Result<Option<Self>> {
        Self::build(p, inputs, None, &[])
    }

    /// As [`PointwiseRun::new`] in memory order: `out_map` / `in_maps[k]` give the memory
    /// position of each logical element of the output / input `k` (`None`: logical order).
    pub fn build(
        p: &dyn Pointwise,
        inputs: &[Meta<'_>],
        out_map: Option<&[usize]>,
        in_maps: &[Option<Vec<usize>>],
    ) -> Result<Option<Self>> {
        let what = "pointwise op";
        let (qparams, lens) = quantized_metas(what, inputs)?;
        let arity = p.arity();
        if !(1..=2).contains(&arity) {
            return Err(Error::invalid(what, format!("arity {arity}")));
        }
        let n: usize = p.shape().iter().product();
        // Output memory position -> logical element.
        let logical_of: Option<Vec<usize>> = out_map.map(|m| {
            let mut inv = vec![0; m.len()];
            for (i, &pos) in m.iter().enumerate() {
                inv[pos] = i;
            }
            inv
        });
        if logical_of.as_ref().is_some_and(|l| l.len() != n) {
            return Err(Error::shape(what, "output layout of another size"));
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut used = vec![false; p.functions()];
        for pos in 0..n {
            let i = logical_of.as_ref().map_or(pos, |l| l[pos]);
            let (f, mut srcs) = p.source(i);
            for (k, x) in srcs.iter_mut().take(arity) {
                if let Some(Some(m)) = in_maps.get(*k) {
                    *x = *m.get(*x).ok_or_else(|| {
                        Error::shape(what, format!("element {i} reads outside input {k}"))
                    })?;
                }
            }
            for &(k, x) in &srcs[..arity] {
                if lens.get(k).is_none_or(|&l| x >= l) {
                    return Err(Error::shape(
                        what,
                        format!("element {i} reads input {k} at {x}, outside the input"),
                    ));
                }
            }
            *used
                .get_mut(f)
                .ok_or_else(|| Error::invalid(what, format!("element {i} takes function {f}")))? =
                true;
            if let Some(r) = runs.last_mut() {
                if r.f == f && extend(r, &srcs) {
                    continue;
                }
            }
            runs.push(Run {
                out: pos,
                len: 1,
                f,
                src: srcs.map(|(input, start)| Src {
                    input,
                    start,
                    stride: 0,
                }),
            });
        }
        let size = 1usize << (8 * arity);
        let mut tables = Vec::with_capacity(used.len());
        for (f, &u) in used.iter().enumerate() {
            if !u {
                tables.push(Vec::new());
                continue;
            }
            let mut t = Vec::with_capacity(size);
            for c in 0..size {
                let codes = if arity == 1 {
                    [c as u8, 0]
                } else {
                    [(c >> 8) as u8, c as u8]
                };
                match p.value(f, &qparams, codes).map(u8::try_from) {
                    Some(Ok(v)) => t.push(v),
                    _ => return Ok(None),
                }
            }
            tables.push(t);
        }
        let simd_add = tables
            .iter()
            .enumerate()
            .map(|(f, t)| {
                let v = p.vector_add(f, &qparams)?;
                (arity == 2 && t.len() == 1 << 16 && simd_add_matches(&v, t)).then_some(v)
            })
            .collect();
        let identity = tables
            .iter()
            .map(|t| arity == 1 && t.iter().enumerate().all(|(q, &v)| usize::from(v) == q))
            .collect();
        Ok(Some(PointwiseRun {
            shape: p.shape().to_vec(),
            arity,
            qparams,
            lens,
            tables,
            simd_add,
            identity,
            runs,
        }))
    }
}

/// Runs `v` on SIMD over `a`, `b` into `out`; `false` where there is no SIMD kernel.
fn simd_add(v: &VectorAdd, a: &[u8], b: &[u8], out: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::kernels::x86::binary::add_u8(
        &crate::kernels::x86::binary::AddLambda {
            a: (v.a.scale, v.a.premul),
            b: (v.b.scale, v.b.premul),
            relu: v.relu,
            inv: v.inv,
            zero_point: v.zero_point,
        },
        a,
        b,
        out,
    );
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (v, a, b, out);
        false
    }
}

/// Whether the SIMD kernel of `v` gives table `t`'s code (index `qa·256 + qb`) for every pair.
fn simd_add_matches(v: &VectorAdd, t: &[u8]) -> bool {
    let a: Vec<u8> = (0..1usize << 16).map(|i| (i >> 8) as u8).collect();
    let b: Vec<u8> = (0..1usize << 16).map(|i| i as u8).collect();
    let mut out = vec![0u8; 1 << 16];
    simd_add(v, &a, &b, &mut out) && out == t
}

/// Extends run `r` by one element reading `srcs`, if they continue its strides.
fn extend(r: &mut Run, srcs: &[(usize, usize); 2]) -> bool {
    let mut next = r.src;
    for (s, &(input, x)) in next.iter_mut().zip(srcs) {
        if s.input != input {
            return false;
        }
        let stride = x as isize - s.start as isize;
        if r.len == 1 {
            s.stride = stride;
        } else if s.at(r.len) != x {
            return false;
        }
    }
    r.src = next;
    r.len += 1;
    true
}

impl Prepared for PointwiseRun {
    fn kernel(&self) -> &'static str {
        if self.simd_add.iter().any(Option::is_some) {
            "simd-add"
        } else if self.identity.iter().all(|&i| i) {
            "copy"
        } else {
            "lut"
        }
    }

    fn out_shape(&self) -> &[usize] {
        &self.shape
    }

    fn run(&self, _stage: Lowered<'_>, inputs: &[&Value], out: &mut [u8]) -> Result<()> {
        let what = "pointwise op";
        check_out(what, &self.shape, out)?;
        let x = codes(what, inputs, &self.qparams, &self.lens)?;
        for r in &self.runs {
            let t = &self.tables[r.f];
            let o = &mut out[r.out..r.out + r.len];
            let [a, b] = r.src;
            let xa = x[a.input];
            match (self.arity, a.stride) {
                (1, 1) if self.identity[r.f] => {
                    o.copy_from_slice(&xa[a.start..a.start + r.len]);
                }
                (1, 1) => {
                    for (o, &q) in o.iter_mut().zip(&xa[a.start..a.start + r.len]) {
                        *o = t[q as usize];
                    }
                }
                (1, _) => {
                    for (k, o) in o.iter_mut().enumerate() {
                        *o = t[xa[a.at(k)] as usize];
                    }
                }
                _ => {
                    let xb = x[b.input];
                    if (a.stride, b.stride) == (1, 1) {
                        let (sa, sb) =
                            (&xa[a.start..a.start + r.len], &xb[b.start..b.start + r.len]);
                        if let Some(v) = &self.simd_add[r.f] {
                            if simd_add(v, sa, sb, o) {
                                continue;
                            }
                        }
                        for ((o, &qa), &qb) in o.iter_mut().zip(sa).zip(sb) {
                            *o = t[(qa as usize) << 8 | qb as usize];
                        }
                    } else {
                        for (k, o) in o.iter_mut().enumerate() {
                            *o = t[(xa[a.at(k)] as usize) << 8 | xb[b.at(k)] as usize];
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A [`WindowOp`] plan with its taps laid out.
#[derive(Debug)]
pub struct WindowRun {
    in_dims: [usize; 4],
    out_dims: [usize; 4],
    out_shape: Vec<usize>,
    reduction: Reduction,
    rows: Vec<Vec<usize>>,
    cols: Vec<Vec<usize>>,
    /// The logical result at each output position, where it is not the identity.
    source: Option<Vec<usize>>,
    qparams: (f64, i64),
    /// The input is held NHWC (memory order of a channels-last tensor).
    nhwc_in: bool,
    /// The memory position of each logical output element (`None`: logical order).
    out_map: Option<Vec<usize>>,
    /// The plan's `finish` tabulated per output position (`None`: called per result).
    finish: Option<FinishTables>,
    /// The input and the output are both in NHWC memory order, results unscrambled: the
    /// windows reduce straight into the output ([`NhwcWindows`]).
    direct: bool,
}

impl WindowRun {
    /// Sets the layouts: the input held NHWC, the output at `out_map`'s positions.
    fn set_layouts(&mut self, nhwc_in: bool, out_map: Option<Vec<usize>>) {
        let [_, c, h, w] = self.in_dims;
        // Memory order equals NHWC order for one channel or one pixel.
        let in_nhwc = nhwc_in || c == 1 || h * w == 1;
        let out_nhwc = out_map == memory_positions(&self.out_dims, MemoryFormat::ChannelsLast);
        self.nhwc_in = nhwc_in;
        self.out_map = out_map;
        self.direct = in_nhwc
            && out_nhwc
            && self.source.is_none()
            && self.finish.is_some()
            && NhwcWindows::supports(&self.cols);
    }

    pub fn new(w: &dyn WindowOp, inputs: &[Meta<'_>]) -> Result<Self> {
        let what = "window op";
        let (qparams, lens) = quantized_metas(what, inputs)?;
        let (in_dims, out_dims) = (w.in_dims(), w.out_dims());
        if qparams.len() != 1 || lens[0] != in_dims.iter().product::<usize>() {
            return Err(Error::shape(what, "one input of the planned shape"));
        }
        let taps = |axis: usize| -> Result<Vec<Vec<usize>>> {
            (0..out_dims[2 + axis])
                .map(|o| {
                    let t = w.taps(axis, o);
                    if t.iter().any(|&x| x >= in_dims[2 + axis]) {
                        return Err(Error::shape(what, "a tap outside the input"));
                    }
                    Ok(t)
                })
                .collect()
        };
        let n: usize = out_dims.iter().product();
        if w.out_shape().iter().product::<usize>() != n {
            return Err(Error::shape(
                what,
                "output shape and results differ in size",
            ));
        }
        let source: Vec<usize> = (0..n).map(|i| w.source(i)).collect();
        if source.iter().any(|&j| j >= n) {
            return Err(Error::shape(what, "an output reads a result out of range"));
        }
        let identity = source.iter().enumerate().all(|(i, &j)| i == j);
        let (rows, cols) = (taps(0)?, taps(1)?);
        let finish = FinishTables::build(w, qparams[0], &rows, &cols);
        Ok(WindowRun {
            in_dims,
            out_dims,
            out_shape: w.out_shape().to_vec(),
            reduction: w.reduction(),
            rows,
            cols,
            source: (!identity).then_some(source),
            qparams: qparams[0],
            nhwc_in: false,
            out_map: None,
            finish,
            direct: false,
        })
    }

    /// Max / sum reductions of an NHWC input, in logical (NCHW) result order.
    fn reduce_nhwc(&self, x: &[u8]) -> Vec<i64> {
        let [n, c, h, w] = self.in_dims;
        let [_, _, oh, ow] = self.out_dims;
        let max = self.reduction == Reduction::Max;
        let mut acc = vec![0i64; n * c * oh * ow];
        let mut v = vec![0u32; c];
        for b in 0..n {
            let img = &x[b * h * w * c..(b + 1) * h * w * c];
            for (oy, rows) in self.rows.iter().enumerate() {
                for (ox, cols) in self.cols.iter().enumerate() {
                    v.iter_mut().for_each(|a| *a = 0);
                    for &y in rows {
                        for &xx in cols {
                            let px = &img[(y * w + xx) * c..(y * w + xx + 1) * c];
                            if max {
                                v.iter_mut()
                                    .zip(px)
                                    .for_each(|(a, &q)| *a = (*a).max(q as u32));
                            } else {
                                v.iter_mut().zip(px).for_each(|(a, &q)| *a += q as u32);
                            }
                        }
                    }
                    for (ch, &a) in v.iter().enumerate() {
                        acc[((b * c + ch) * oh + oy) * ow + ox] = i64::from(a);
                    }
                }
            }
        }
        acc
    }

    /// Every logical result's reduction: integer accumulators, or f32 plane sums.
    fn reduce(&self, x: &[u8]) -> (Vec<i64>, Vec<f32>) {
        let [n, c, h, w] = self.in_dims;
        let [_, _, oh, ow] = self.out_dims;
        if self.nhwc_in && !matches!(self.reduction, Reduction::FloatPlane { .. }) {
            let acc = self.reduce_nhwc(x);
            let zeros = vec![0f32; acc.len()];
            return (acc, zeros);
        }
        if let Reduction::FloatPlane { channels_last } = self.reduction {
            let (s, z) = self.qparams;
            let mut dq = [0f32; 256];
            for (q, d) in dq.iter_mut().enumerate() {
                *d = Flow::ConvertFx.dequantize(q as i64, s, z);
            }
            let f: Vec<f32> = x.iter().map(|&q| dq[q as usize]).collect();
            let sums = crate::numerics::sum::sum_hw(&f, self.in_dims, channels_last);
            return (vec![0; sums.len()], sums);
        }
        // Separable: each input row reduced over every output column's taps, then those over
        // every output row's taps (max and integer sums do not depend on the order).
        let max = self.reduction == Reduction::Max;
        let mut acc = Vec::with_capacity(n * c * oh * ow);
        let mut across = vec![0u32; h * ow];
        let mut down = vec![0u32; ow];
        for plane in x.chunks_exact(h * w) {
            for (line, dst) in plane.chunks_exact(w).zip(across.chunks_exact_mut(ow)) {
                for (d, cols) in dst.iter_mut().zip(&self.cols) {
                    let taps = cols.iter().map(|&x| line[x] as u32);
                    *d = if max {
                        taps.max().unwrap_or(0)
                    } else {
                        taps.sum()
                    };
                }
            }
            for rows in &self.rows {
                down.iter_mut().for_each(|d| *d = 0);
                for &y in rows {
                    let src = &across[y * ow..(y + 1) * ow];
                    if max {
                        down.iter_mut()
                            .zip(src)
                            .for_each(|(d, &s)| *d = (*d).max(s));
                    } else {
                        down.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
                    }
                }
                acc.extend(down.iter().map(|&d| i64::from(d)));
            }
        }
        let zeros = vec![0f32; acc.len()];
        (acc, zeros)
    }
}

impl Prepared for WindowRun {
    fn kernel(&self) -> &'static str {
        match (self.reduction, self.direct) {
            (Reduction::Max, true) => "window-max-nhwc",
            (Reduction::Sum, true) => "window-sum-nhwc",
            (Reduction::Max, _) => "window-max",
            (Reduction::Sum, _) => "window-sum",
            (Reduction::FloatPlane { .. }, _) => "plane-float-sum",
        }
    }

    fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    fn run(&self, stage: Lowered<'_>, inputs: &[&Value], out: &mut [u8]) -> Result<()> {
        let what = "window op";
        let Lowered::Window(w) = stage else {
            return Err(Error::invalid(what, "prepared for a window op's plan"));
        };
        check_out(what, &self.out_shape, out)?;
        let len = self.in_dims.iter().product();
        let x = codes(what, inputs, &[self.qparams], &[len])?[0];
        if let (true, Some(finish)) = (self.direct, &self.finish) {
            let windows = NhwcWindows {
                in_dims: self.in_dims,
                rows: &self.rows,
                cols: &self.cols,
                max: self.reduction == Reduction::Max,
                finish,
            };
            return windows.run(x, out);
        }
        // The plane sums read logical order.
        let logical: Vec<u8>;
        let x = match (self.reduction, self.nhwc_in) {
            (Reduction::FloatPlane { .. }, true) => {
                let map = memory_positions(&self.in_dims, MemoryFormat::ChannelsLast);
                logical = map.map_or_else(|| x.to_vec(), |m| m.iter().map(|&p| x[p]).collect());
                &logical[..]
            }
            _ => x,
        };
        let (acc, sums) = self.reduce(x);
        let (s, z) = self.qparams;
        let positions = self.out_dims[2] * self.out_dims[3];
        let results = acc
            .iter()
            .zip(&sums)
            .enumerate()
            .map(|(j, (&a, &f))| {
                match &self.finish {
                    Some(t) => t.code(j % positions, a).map(i64::from),
                    None => w.finish(j, a, f, s, z),
                }
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(|| Error::invalid(what, format!("result {j} is undefined or not a u8")))
            })
            .collect::<Result<Vec<u8>>>()?;
        match (&self.source, &self.out_map) {
            (None, None) => out.copy_from_slice(&results),
            (Some(src), None) => {
                for (o, &j) in out.iter_mut().zip(src) {
                    *o = results[j];
                }
            }
            (src, Some(map)) => {
                for (i, &p) in map.iter().enumerate() {
                    out[p] = results[src.as_ref().map_or(i, |s| s[i])];
                }
            }
        }
        Ok(())
    }
}

/// The quantize node on the model's f32 input.
#[derive(Debug)]
pub struct QuantizeRun {
    shape: Vec<usize>,
    /// The output is held NHWC (a 4-D channels-last tensor), else in logical order.
    nhwc: bool,
}

impl Prepared for QuantizeRun {
    fn kernel(&self) -> &'static str {
        "quantize"
    }

    fn out_shape(&self) -> &[usize] {
        &self.shape
    }

    fn run(&self, stage: Lowered<'_>, inputs: &[&Value], out: &mut [u8]) -> Result<()> {
        let what = "quantize";
        let Lowered::Quantize(q) = stage else {
            return Err(Error::invalid(what, "prepared for a quantize node's plan"));
        };
        check_out(what, &self.shape, out)?;
        let x = inputs
            .first()
            .ok_or_else(|| Error::invalid(what, "no input"))?
            .f32s(what)?;
        if x.len() != out.len() {
            return Err(Error::shape(what, "input length differs from the plan"));
        }
        let nhwc = self.nhwc;
        let mut tmp = Vec::new();
        let dst = if nhwc {
            tmp.resize(out.len(), 0);
            &mut tmp[..]
        } else {
            &mut out[..]
        };
        let ok = match q.avx2_rule() {
            Some((inv, zp)) => {
                quantize_avx2_all(x, inv, zp, dst);
                true
            }
            None => q.quantize_all(x, dst),
        };
        if nhwc {
            let &[n, c, h, w] = &self.shape[..] else {
                return Err(Error::shape(what, "an NHWC output that is not 4-D"));
            };
            nchw_to_nhwc(&tmp, [n, c, h, w], out);
        }
        if !ok {
            return Err(Error::invalid(what, "a value has no u8 code (NaN)"));
        }
        Ok(())
    }
}

/// FBGEMM's `QuantizeAvx2` rule of every value (see [`crate::numerics::quantize::aten`]).
fn quantize_avx2_all(x: &[f32], inv: f32, zp: i32, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    crate::kernels::x86::quantize::quantize_u8(x, inv, zp, out);
    #[cfg(not(target_arch = "x86_64"))]
    for (o, &v) in out.iter_mut().zip(x) {
        *o = crate::numerics::quantize::aten::quantize_avx2(v, inv, zp, 0, 255) as u8;
    }
}

/// NCHW `x` (dims `[n, c, h, w]`) to NHWC `out`.
pub fn nchw_to_nhwc(x: &[u8], [n, c, h, w]: [usize; 4], out: &mut [u8]) {
    let hw = h * w;
    // `max(1)`: an empty image has no chunk (and no element to move).
    for (src, dst) in x
        .chunks_exact((c * hw).max(1))
        .zip(out.chunks_exact_mut((c * hw).max(1)))
        .take(n)
    {
        for (p, px) in dst.chunks_exact_mut(c).enumerate() {
            for (ch, o) in px.iter_mut().enumerate() {
                *o = src[ch * hw + p];
            }
        }
    }
}

/// NHWC `x` (dims `[n, c, h, w]`) to NCHW `out`.
pub fn nhwc_to_nchw(x: &[u8], [n, c, h, w]: [usize; 4], out: &mut [u8]) {
    let hw = h * w;
    for (src, dst) in x
        .chunks_exact((c * hw).max(1))
        .zip(out.chunks_exact_mut((c * hw).max(1)))
        .take(n)
    {
        for (p, px) in src.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                dst[ch * hw + p] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::bound::Pred;
    use crate::numerics::test_rng::Rng;
    use crate::ops::quantize::FlowQuantize;
    use crate::ops::{Op, OutQParams};
    use crate::tensor::Tensor;

    /// The model input's quantize node, logical and NHWC outputs (odd channel counts, lengths
    /// off the vector width, specials), against the plan's per-element prediction.
    #[test]
    fn quantize_runs_match_the_reference_prediction() {
        let mut r = Rng::new(11, 4);
        for case in 0..60u64 {
            let dims = [
                1 + case as usize % 2,
                1 + (case as usize * 7) % 5,
                3 + case as usize % 9,
                17,
            ];
            let n: usize = dims.iter().product();
            let mut x: Vec<f32> = (0..n)
                .map(|_| (r.bits() % 100_000) as f32 / 5_000.0 - 10.0)
                .collect();
            x[0] = f32::NAN;
            x[n / 2] = f32::INFINITY;
            x[n - 1] = -1e30;
            let v = Value::Tensor(Tensor::f32(dims.to_vec(), x));
            let out = OutQParams {
                scale: 0.001 + (r.bits() % 1000) as f64 / 300.0,
                zero_point: (r.bits() % 256) as i64,
                quant_min: 0,
                quant_max: 255,
            };
            let ctx = crate::ops::pool::test_ctx(Flow::ConvertFx, crate::engine::Engine::Fbgemm);
            let plan = FlowQuantize.plan(&ctx, &[v.meta()], Some(&out)).unwrap();
            let want: Vec<u8> = plan.predict(&[&v]).unwrap()[0]
                .ints()
                .unwrap()
                .iter()
                .map(|p| match p {
                    Pred::Exact(c) => *c as u8,
                    Pred::Ambiguous { .. } => panic!("convert_fx quantize is exact"),
                })
                .collect();
            let low = plan.lowered().unwrap();
            for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
                let p = prepare_in_memory(low, &[v.meta()], format)
                    .unwrap()
                    .unwrap();
                let mut got = vec![0u8; n];
                p.run(low, &[&v], &mut got).unwrap();
                let expect = match memory_positions(&dims, format) {
                    None => want.clone(),
                    Some(map) => {
                        let mut m = vec![0u8; n];
                        for (&c, &pos) in want.iter().zip(&map) {
                            m[pos] = c;
                        }
                        m
                    }
                };
                assert_eq!(got, expect, "case {case} {dims:?} {format:?}");
            }
        }
    }

    /// `add` / `add_relu` of channels-last tensors (lengths off the vector width) through the
    /// prepared pointwise run, SIMD where the CPU has it, against the plan's prediction.
    #[test]
    fn add_runs_match_the_reference_prediction() {
        let mut r = Rng::new(5, 6);
        let mut simd = 0;
        for case in 0..24usize {
            let dims = vec![1, 3 + case % 5, 5 + case % 7, 9];
            let n: usize = dims.iter().product();
            let q = |r: &mut Rng, fmt| {
                let mut t = crate::ops::QTensor::new(
                    dims.clone(),
                    (0..n).map(|_| r.bits() as u8).collect(),
                    0.005 + (r.bits() % 100) as f64 / 400.0,
                    (r.bits() % 256) as i64,
                );
                t.memory_format = fmt;
                t
            };
            let (a, b) = (
                q(&mut r, MemoryFormat::ChannelsLast),
                q(&mut r, MemoryFormat::ChannelsLast),
            );
            let out = OutQParams {
                scale: 0.01 + (r.bits() % 100) as f64 / 300.0,
                zero_point: (r.bits() % 256) as i64,
                quant_min: 0,
                quant_max: 255,
            };
            let op = crate::ops::add::Add {
                relu: case % 2 == 1,
            };
            let (va, vb) = (Value::Quantized(a.clone()), Value::Quantized(b.clone()));
            let ctx = crate::ops::pool::test_ctx(Flow::ConvertFx, crate::engine::Engine::Fbgemm);
            let plan = op.plan(&ctx, &[va.meta(), vb.meta()], Some(&out)).unwrap();
            let want: Vec<u8> = plan.predict(&[&va, &vb]).unwrap()[0]
                .ints()
                .unwrap()
                .iter()
                .map(|p| match p {
                    Pred::Exact(c) => *c as u8,
                    Pred::Ambiguous { .. } => panic!("add is exact"),
                })
                .collect();
            let low = plan.lowered().unwrap();
            let fmt = MemoryFormat::ChannelsLast;
            let p = prepare_in_memory(low, &[va.meta(), vb.meta()], fmt)
                .unwrap()
                .unwrap();
            let map = memory_positions(&dims, fmt).unwrap();
            let mem = |t: &crate::ops::QTensor| {
                let mut m = t.clone();
                for (&v, &pos) in t.data.iter().zip(&map) {
                    m.data[pos] = v;
                }
                Value::Quantized(m)
            };
            let mut got = vec![0u8; n];
            p.run(low, &[&mem(&a), &mem(&b)], &mut got).unwrap();
            let expect: Vec<u8> = (0..n)
                .map(|i| want[map.iter().position(|&m| m == i).unwrap()])
                .collect();
            assert_eq!(got, expect, "case {case} {}", p.kernel());
            simd += usize::from(p.kernel() == "simd-add");
        }
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::Isa::Avx2.detected() {
            assert!(simd > 0, "no case ran the SIMD add");
        }
        let _ = simd;
    }
}
