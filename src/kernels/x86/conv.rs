//! Quantized conv2d on the packed x86 GEMM, and FBGEMM-style depthwise 3×3.
//!
//! # Conv2d as a GEMM, without an im2col matrix
//! Weights are PyTorch's `[OC, IC/groups, KH, KW]` int8. Each group is one GEMM with
//! `M = OH·OW` output pixels, `N = OC/groups` and `K = KH·KW·(IC/groups)` in the order
//! **`(ky, kx, ic)`** (ic fastest), the order of FBGEMM's `PackAWithIm2Col` on the channels-last
//! input PyTorch hands it (weights are permuted to `[OC][KH][KW][IC/G]` at prepack). The order
//! fixes the `vpmaddubsw` pairs in the pair-saturating model; for exact accumulation any order
//! gives the same result.
//!
//! The input of each group is copied once into a channels-last image padded with the input zero
//! point (as FBGEMM pads). In that image the `KW·ICg` values of one kernel row are contiguous,
//! so a row of the GEMM's A is `KH` segments of the image and the micro-kernels read them in
//! place (`AOperand` with `RowMap::Pixels` in the parent module): no im2col
//! matrix is written, and A costs one pass over the input instead of `KH·KW` copies of it. This
//! needs segments that are whole kernel steps (`KW·ICg` a multiple of 4 bytes, or of 2 values for
//! the widened exact kernel; with a horizontal dilation, `ICg` alone); other shapes, and the
//! portable kernel, take an explicit im2col. [`Conv2d::run`] reads and writes NCHW or
//! channels-last tensors ([`Layout`]; channels-last is FBGEMM's native layout and saves the
//! transposes).
//!
//! # Depthwise 3×3
//! [`Depthwise3x3`] models FBGEMM's depthwise kernel (`GenerateI8Depthwise.cc`), which saturates
//! even on VNNI CPUs: taps in row-major order, pairs (0,1),(2,3),(4,5),(6,7),(8,0) saturated to
//! int16 by `vpmaddubsw`. Stride 1 runs the AVX2 kernel (32 output pixels per step, taps
//! interleaved with `vpunpck*` like FBGEMM); other strides and the exact model use the scalar
//! reference path below.
//!
//! Both are checked against [`reference::conv2d`], the one scalar conv model.

use super::avx2::{self, DwChannel};
use super::{AOperand, DenseA, Format, Kernel, PackedLinear, RowMap, Sink};
pub use crate::geometry::Conv2dParams;
pub use crate::kernels::quant::Layout;
use crate::kernels::quant::{self, check_activation_zero_point, PerChannel};
use crate::kernels::{reference, Accumulation, Isa, Output, QConv, QuantConv, Requant};
use crate::{Error, Result};

thread_local! {
    /// The padded channels-last image of [`Conv2d::run`], reused across calls.
    static IMG: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The im2col matrix of [`Conv2d::run`], reused across calls.
    static COLS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks conv geometry that does not depend on the input.
fn check_params(p: &Conv2dParams) -> Result<()> {
    if p.groups == 0
        || p.in_channels == 0
        || p.out_channels == 0
        || !p.in_channels.is_multiple_of(p.groups)
        || !p.out_channels.is_multiple_of(p.groups)
    {
        return Err(Error::invalid(
            "conv2d channels",
            format!(
                "{} in, {} out, groups {}: need ≥ 1 channel and groups dividing both",
                p.in_channels, p.out_channels, p.groups
            ),
        ));
    }
    for (what, v) in [
        ("kernel size", p.kernel_size),
        ("stride", p.stride),
        ("dilation", p.dilation),
    ] {
        if v.contains(&0) {
            return Err(Error::invalid(
                format!("conv2d {what}"),
                format!("{v:?} must be ≥ 1"),
            ));
        }
    }
    Ok(())
}

/// `(OH, OW)` of an `nb × C × h × w` input.
fn out_hw(p: &Conv2dParams, nb: usize, h: usize, w: usize) -> Result<(usize, usize)> {
    let (_, oh, ow) = p.output_dims(&[nb, p.in_channels, h, w])?;
    Ok((oh, ow))
}

fn check_input(x: &[u8], nb: usize, c: usize, h: usize, w: usize, a_zp: i32) -> Result<()> {
    if x.len() != nb * c * h * w {
        return Err(Error::shape(
            "conv2d input",
            format!(
                "expected {nb}×{c}×{h}×{w} = {} values, got {}",
                nb * c * h * w,
                x.len()
            ),
        ));
    }
    check_activation_zero_point(a_zp)
}

/// Output element types of a conv: requantized u8, or the int32 accumulators before it.
trait OutElem: Copy + Default {
    fn sink(buf: &mut [Self]) -> Sink<'_>;
}

impl OutElem for u8 {
    fn sink(buf: &mut [u8]) -> Sink<'_> {
        Sink::U8(buf)
    }
}

impl OutElem for i32 {
    fn sink(buf: &mut [i32]) -> Sink<'_> {
        Sink::Raw(buf)
    }
}

/// How a conv feeds its GEMM: in place from the padded image, or through an im2col matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Segments of `seg_len` values; `dilated`: one segment per tap, else one per kernel row.
    Implicit {
        seg_len: usize,
        dilated: bool,
    },
    Im2col,
}

/// A quantized conv2d with packed weights: one [`PackedLinear`] per group, fed in place from a
/// padded channels-last image (see the module docs).
#[derive(Debug, Clone)]
pub struct Conv2d {
    p: Conv2dParams,
    groups: Vec<PackedLinear>,
    feed: Feed,
    /// Bytes per activation value in the kernel's format (2 for the widened exact kernel).
    elem: usize,
}

impl Conv2d {
    /// Packs `weights` (`[OC, IC/groups, KH, KW]`) for the fastest kernel of `accumulation`.
    pub fn new(
        weights: &[i8],
        p: Conv2dParams,
        weight_zero_points: &[i32],
        requant: Requant,
        accumulation: Accumulation,
    ) -> Result<Self> {
        Self::with_kernel(
            Kernel::best(accumulation),
            weights,
            p,
            weight_zero_points,
            requant,
        )
    }

    /// As [`Conv2d::new`] with an explicit kernel.
    pub fn with_kernel(
        kernel: Kernel,
        weights: &[i8],
        p: Conv2dParams,
        weight_zero_points: &[i32],
        requant: Requant,
    ) -> Result<Self> {
        Self::build(kernel, weights, p, weight_zero_points, Some(&requant))
    }

    /// [`Conv2d::with_kernel`] with an optional rule (without one, only [`Conv2d::run_raw`]).
    pub(crate) fn build(
        kernel: Kernel,
        weights: &[i8],
        p: Conv2dParams,
        weight_zero_points: &[i32],
        requant: Option<&Requant>,
    ) -> Result<Self> {
        check_params(&p)?;
        if let Some(r) = requant {
            r.validate(p.out_channels)?;
        }
        let [kh, kw] = p.kernel_size;
        let (icg, ocg) = (p.in_channels / p.groups, p.out_channels / p.groups);
        let k = kh * kw * icg;
        if weights.len() != p.out_channels * k {
            return Err(Error::shape(
                "conv2d weights",
                format!(
                    "expected {}×{}×{}×{} = {} values, got {}",
                    p.out_channels,
                    icg,
                    kh,
                    kw,
                    p.out_channels * k,
                    weights.len()
                ),
            ));
        }
        let zps = quant::weight_zero_points(weight_zero_points, p.out_channels)?;
        let mut groups = Vec::with_capacity(p.groups);
        for g in 0..p.groups {
            // Reorder [oc][ic][ky][kx] → [oc][ky][kx][ic].
            let mut wg = vec![0i8; ocg * k];
            for o in 0..ocg {
                let src = &weights[(g * ocg + o) * k..(g * ocg + o + 1) * k];
                for ic in 0..icg {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            wg[o * k + (ky * kw + kx) * icg + ic] = src[(ic * kh + ky) * kw + kx];
                        }
                    }
                }
            }
            let rq = requant
                .map(|r| r.channels(g * ocg, (g + 1) * ocg))
                .transpose()?;
            groups.push(PackedLinear::build(
                kernel,
                &wg,
                ocg,
                k,
                &zps[g * ocg..(g + 1) * ocg],
                rq.as_ref(),
            )?);
        }
        let (elem, per_step) = match kernel.format() {
            Format::Pair16 { .. } => (2, 2),
            Format::Quad8 { .. } | Format::Tile { .. } => (1, 4),
            Format::Plain => (1, 0),
        };
        let dilated = p.dilation[1] > 1;
        let seg_len = if dilated { icg } else { kw * icg };
        let feed = if per_step > 0 && seg_len.is_multiple_of(per_step) {
            Feed::Implicit { seg_len, dilated }
        } else {
            Feed::Im2col
        };
        Ok(Self {
            p,
            groups,
            feed,
            elem,
        })
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.groups[0].kernel()
    }

    /// Whether the GEMM reads its activations in place from the padded image (no im2col matrix).
    pub fn is_implicit(&self) -> bool {
        matches!(self.feed, Feed::Implicit { .. })
    }

    /// Runs the conv on `x` (`nb × IC × h × w` values in `layout`, raw u8 with zero point
    /// `a_zp`), writing the requantized u8 output (`nb × OC × OH × OW` in the same layout) to
    /// `out`; returns `(OH, OW)`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        layout: Layout,
        x: &[u8],
        nb: usize,
        h: usize,
        w: usize,
        a_zp: i32,
        out: &mut [u8],
    ) -> Result<(usize, usize)> {
        self.groups[0].rule()?;
        self.run_layout(layout, x, nb, h, w, a_zp, out)
    }

    /// The zero-point-folded int32 accumulators `raw` that [`Conv2d::run`] requantizes.
    #[allow(clippy::too_many_arguments)]
    pub fn run_raw(
        &self,
        layout: Layout,
        x: &[u8],
        nb: usize,
        h: usize,
        w: usize,
        a_zp: i32,
        out: &mut [i32],
    ) -> Result<(usize, usize)> {
        self.run_layout(layout, x, nb, h, w, a_zp, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_layout<T: OutElem>(
        &self,
        layout: Layout,
        x: &[u8],
        nb: usize,
        h: usize,
        w: usize,
        a_zp: i32,
        out: &mut [T],
    ) -> Result<(usize, usize)> {
        let p = &self.p;
        check_input(x, nb, p.in_channels, h, w, a_zp)?;
        let (oh, ow) = out_hw(p, nb, h, w)?;
        let oc = p.out_channels;
        if out.len() != nb * oc * oh * ow {
            return Err(Error::shape(
                "conv2d output",
                format!("expected {} values, got {}", nb * oc * oh * ow, out.len()),
            ));
        }
        let [kh, kw] = p.kernel_size;
        let [sy, sx] = p.stride;
        let [dy, dx] = p.dilation;
        let [pt, pl] = p.padding;
        let (c, icg, ocg) = (p.in_channels, p.in_channels / p.groups, oc / p.groups);
        let k = kh * kw * icg;
        let (ph, pw) = (h + 2 * pt, w + 2 * pl);
        let m = oh * ow;
        let e = self.elem;
        let vw = match (self.feed, self.groups[0].kernel().format()) {
            (Feed::Implicit { .. }, Format::Tile { .. }) => virtual_width(sy, sx, pw, oh, ow),
            _ => None,
        };
        // GEMM rows: the output pixels, or the pixels over the virtual width.
        let (gm, gw) = vw.map_or((m, ow), |vw| (oh * vw, vw));
        // Image offset (in values) of GEMM row i's window, and of the segments within it.
        let pix = |i: usize| ((i / gw) * sy * pw + (i % gw) * sx) * icg;
        let segs: Vec<usize> = match self.feed {
            Feed::Implicit { dilated: false, .. } => (0..kh).map(|ky| ky * dy * pw * icg).collect(),
            Feed::Implicit { dilated: true, .. } => (0..kh)
                .flat_map(|ky| (0..kw).map(move |kx| (ky * dy * pw + kx * dx) * icg))
                .collect(),
            Feed::Im2col => Vec::new(),
        };
        // 64 bytes of slack: im2col copies whole 8-byte words past a window's last value. The
        // windows of the last virtual pixels run past the image: padding values too.
        let seg_end = match self.feed {
            Feed::Implicit { seg_len, .. } => segs.iter().max().map_or(0, |s| s + seg_len),
            Feed::Im2col => 0,
        };
        // Values an implicit feed reads from the image's start.
        let reads = pix(gm.saturating_sub(1)) + seg_end;
        let img_len = (ph * pw * icg + 64).max(reads);
        // An unpadded channels-last input of one group is its own image (e.g. a 1×1 conv) when
        // the reads stay inside it: read in place, not copied.
        let direct = |b: usize| {
            matches!(self.feed, Feed::Implicit { .. })
                && pt == 0
                && pl == 0
                && layout == Layout::Nhwc
                && icg == c
                && e == 1
                && b * h * w * c + reads <= x.len()
        };
        // A buffer reused across calls: the padding is refilled with this call's zero point, the
        // interior is written below.
        let mut buf = IMG.with_borrow_mut(std::mem::take);
        if buf.len() < img_len {
            buf.resize(img_len, 0);
        }
        let img = &mut buf[..img_len];
        let zp = a_zp as u8;
        let row_len = pw * icg;
        img[..pt * row_len].fill(zp);
        img[(pt + h) * row_len..].fill(zp);
        for y in pt..pt + h {
            let row = &mut img[y * row_len..(y + 1) * row_len];
            row[..pl * icg].fill(zp);
            row[(pl + w) * icg..].fill(zp);
        }
        let mut wide = Vec::new();
        let mut tmp = vec![T::default(); if layout == Layout::Nchw { m * ocg } else { 0 }];
        let seg_bytes: Vec<usize> = segs.iter().map(|s| s * e).collect();
        for b in 0..nb {
            let in_place = direct(b);
            for (g, lin) in self.groups.iter().enumerate() {
                // The group's channels into the padded channels-last image.
                for y in (0..h).filter(|_| !in_place) {
                    let row = &mut img[((y + pt) * pw + pl) * icg..][..w * icg];
                    match layout {
                        Layout::Nhwc if icg == c => {
                            row.copy_from_slice(&x[(b * h + y) * w * c..][..w * c]);
                        }
                        Layout::Nhwc => {
                            let src = &x[(b * h + y) * w * c..][..w * c];
                            for (d, s) in row.chunks_exact_mut(icg).zip(src.chunks_exact(c)) {
                                d.copy_from_slice(&s[g * icg..(g + 1) * icg]);
                            }
                        }
                        Layout::Nchw => {
                            for ci in 0..icg {
                                let src = &x[((b * c + g * icg + ci) * h + y) * w..][..w];
                                for (d, &s) in row[ci..].iter_mut().step_by(icg).zip(src) {
                                    *d = s;
                                }
                            }
                        }
                    }
                }
                // The output rows `r0 .. r0 + rows` of this image and group as a sink.
                macro_rules! sink {
                    ($r0:expr, $rows:expr) => {
                        match layout {
                            Layout::Nhwc => {
                                let o = &mut out[(b * m + $r0) * oc..][..$rows * oc];
                                (T::sink(o), oc, g * ocg)
                            }
                            Layout::Nchw => (T::sink(&mut tmp[$r0 * ocg..][..$rows * ocg]), ocg, 0),
                        }
                    };
                }
                let img: &[u8] = if in_place { &x[b * h * w * c..] } else { img };
                match self.feed {
                    Feed::Implicit { seg_len, .. } => {
                        let row_sums: Vec<i32> = if lin.symmetric() {
                            Vec::new()
                        } else {
                            (0..gm)
                                .map(|i| {
                                    segs.iter()
                                        .flat_map(|&s| &img[pix(i) + s..][..seg_len])
                                        .map(|&v| v as i32)
                                        .sum()
                                })
                                .collect()
                        };
                        let bytes = if e == 2 {
                            wide.clear();
                            wide.extend(img.iter().flat_map(|&v| [v, 0]));
                            &wide[..]
                        } else {
                            img
                        };
                        let rows = RowMap::Pixels {
                            ow: gw,
                            dy: sy * pw * icg * e,
                            dx: sx * icg * e,
                        };
                        let steps = seg_len * e / 4;
                        let a = AOperand::new(bytes, gm, rows, &seg_bytes, steps, &row_sums);
                        let (sink, out_ld, out_off) = sink!(0, m);
                        let virtual_rows = vw.map(|vw| (vw, ow));
                        lin.run_operand(&a, a_zp, sink, out_ld, out_off, virtual_rows);
                    }
                    Feed::Im2col => {
                        // AMX reads whole 64-byte K steps: rows as long as the packed K keep
                        // the tile reads in place (the stem conv: 147 values in 192 bytes).
                        let kp = match lin.kernel().format() {
                            Format::Tile { .. } => lin.packed.kp,
                            _ => super::pad4(k),
                        };
                        // Written and multiplied in chunks of about 128 KiB that stay in L2, into
                        // a buffer reused across calls.
                        let mc = (128 * 1024 / kp).max(32) / 32 * 32;
                        COLS.with_borrow_mut(|cols| {
                            if cols.len() < mc.min(m) * kp {
                                cols.resize(mc.min(m) * kp, 0);
                            }
                            let geo = Im2col {
                                kh,
                                kw,
                                icg,
                                sy,
                                sx,
                                dy,
                                dx,
                                pw,
                                ow,
                                kp,
                            };
                            for r0 in (0..m).step_by(mc) {
                                let rows = mc.min(m - r0);
                                let chunk = &mut cols[..rows * kp];
                                geo.fill(chunk, r0, img);
                                let dense =
                                    DenseA::new(lin.kernel(), chunk, rows, k, kp, !lin.symmetric());
                                let (sink, out_ld, out_off) = sink!(r0, rows);
                                let a = dense.operand(&[0]);
                                lin.run_operand(&a, a_zp, sink, out_ld, out_off, None);
                            }
                        });
                    }
                }
                if layout == Layout::Nchw {
                    let ob = &mut out[(b * oc + g * ocg) * m..][..ocg * m];
                    for (px, row) in tmp.chunks_exact(ocg).enumerate() {
                        for (o, &v) in row.iter().enumerate() {
                            ob[o * m + px] = v;
                        }
                    }
                }
            }
        }
        IMG.with_borrow_mut(|b| *b = buf);
        Ok((oh, ow))
    }
}

/// The virtual output width of an implicit conv on the AMX kernel, whose tiles read 16 equally
/// spaced GEMM rows in place. Output pixels are equally spaced only within an output row (the
/// image is wider than the output); computed over a virtual width `vw` with `vw·sx = sy·pw`,
/// every row is `sx·ICg` values after the one before, across output rows too, so no tile needs
/// gathering. The `vw − ow` extra pixels of each row read windows that run into the next image
/// row (or the slack after the image) and are dropped by the epilogue. Taken when it adds at most
/// a quarter more 32-row blocks (stride 1: `vw = pw`, e.g. 58 for 56×56 and 9 for 7×7 with
/// padding 1).
fn virtual_width(sy: usize, sx: usize, pw: usize, oh: usize, ow: usize) -> Option<usize> {
    let vw = (sy * pw).is_multiple_of(sx).then_some(sy * pw / sx)?;
    let blocks = |rows: usize| rows.div_ceil(32);
    (vw > ow && oh * vw >= 32 && 4 * blocks(oh * vw) <= 5 * blocks(oh * ow)).then_some(vw)
}

/// An explicit im2col: rows of `kp` bytes, the `k` values in `(ky, kx, ic)` order, then bytes
/// left unspecified: no kernel reads them into a product (`DenseA` borrows such rows only for the
/// `Quad8` and `Tile` formats, whose packed weights are zero past `k`; the other formats copy the
/// first `k` values of each row).
struct Im2col {
    kh: usize,
    kw: usize,
    icg: usize,
    sy: usize,
    sx: usize,
    dy: usize,
    dx: usize,
    pw: usize,
    ow: usize,
    kp: usize,
}

impl Im2col {
    /// Writes rows `r0 ..` (as many as `chunk` holds) from the padded image `img` (with at least
    /// 64 bytes of slack past its last pixel).
    fn fill(&self, chunk: &mut [u8], r0: usize, img: &[u8]) {
        let len = self.kw * self.icg;
        // Without a horizontal dilation the KW·ICg values of a kernel row are contiguous (the
        // 7×7 stem conv on 3 channels: 21 bytes); they are copied as a fixed number of 8-byte
        // words when the excess stays inside the A row: the next kernel row overwrites it, or it
        // lies past `k` (a short copy of a run-time length is a `memcpy` call).
        let words = len.div_ceil(8);
        if self.dx == 1 && (self.kh - 1) * len + 8 * words <= self.kp {
            match words {
                1 => return self.fill_fixed::<8>(chunk, r0, img),
                2 => return self.fill_fixed::<16>(chunk, r0, img),
                3 => return self.fill_fixed::<24>(chunk, r0, img),
                4 => return self.fill_fixed::<32>(chunk, r0, img),
                _ => {}
            }
        }
        let icg = self.icg;
        let (mut oy, mut ox) = (r0 / self.ow, r0 % self.ow);
        for arow in chunk.chunks_exact_mut(self.kp) {
            for ky in 0..self.kh {
                let row = ((oy * self.sy + ky * self.dy) * self.pw + ox * self.sx) * icg;
                let dst = &mut arow[ky * len..(ky + 1) * len];
                if self.dx == 1 {
                    copy_row(dst, &img[row..row + len]);
                } else {
                    for (kx, d) in dst.chunks_exact_mut(icg).enumerate() {
                        let src = row + kx * self.dx * icg;
                        d.copy_from_slice(&img[src..src + icg]);
                    }
                }
            }
            ox += 1;
            if ox == self.ow {
                (oy, ox) = (oy + 1, 0);
            }
        }
    }

    /// [`Im2col::fill`] with kernel rows copied as `L` bytes (no horizontal dilation).
    fn fill_fixed<const L: usize>(&self, chunk: &mut [u8], r0: usize, img: &[u8]) {
        let len = self.kw * self.icg;
        let (mut oy, mut ox) = (r0 / self.ow, r0 % self.ow);
        for arow in chunk.chunks_exact_mut(self.kp) {
            let mut row = (oy * self.sy * self.pw + ox * self.sx) * self.icg;
            for ky in 0..self.kh {
                let src: &[u8; L] = img[row..row + L].try_into().expect("L bytes");
                arow[ky * len..ky * len + L].copy_from_slice(src);
                row += self.dy * self.pw * self.icg;
            }
            ox += 1;
            if ox == self.ow {
                (oy, ox) = (oy + 1, 0);
            }
        }
    }
}

/// `dst.copy_from_slice(src)` in 8-byte pieces of constant size (the last one overlapping),
/// which the compiler inlines: image rows are short, and a `memcpy` call per row cost a sixth of
/// the depthwise kernel's time.
#[inline]
fn copy_row(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if n < 8 || dst.len() != n {
        dst.copy_from_slice(src);
        return;
    }
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        d.copy_from_slice(s);
    }
    if !n.is_multiple_of(8) {
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    }
}

/// Geometry of a depthwise 3×3 conv over `c` channels.
fn dw_params(c: usize, stride: (usize, usize), padding: (usize, usize)) -> Conv2dParams {
    Conv2dParams {
        in_channels: c,
        out_channels: c,
        kernel_size: [3, 3],
        stride: [stride.0, stride.1],
        padding: [padding.0, padding.1],
        dilation: [1, 1],
        groups: c.max(1),
    }
}

/// Depthwise 3×3 conv (`groups = channels`, one output channel per input channel) with
/// FBGEMM's accumulation model by default (see the module docs).
#[derive(Debug, Clone)]
pub struct Depthwise3x3 {
    c: usize,
    stride: (usize, usize),
    padding: (usize, usize),
    acc: Accumulation,
    w: Vec<i8>,
    b_zp: Vec<i32>,
    col_off: Vec<i32>,
    rq: PerChannel,
}

impl Depthwise3x3 {
    /// FBGEMM depthwise: `weights` is `[C, 1, 3, 3]`, zero points 1 or `C`.
    pub fn new(
        weights: &[i8],
        channels: usize,
        stride: (usize, usize),
        padding: (usize, usize),
        weight_zero_points: &[i32],
        requant: Requant,
    ) -> Result<Self> {
        Self::with_accumulation(
            weights,
            channels,
            stride,
            padding,
            weight_zero_points,
            requant,
            Accumulation::PairSaturatingI16,
        )
    }

    /// As [`Depthwise3x3::new`] with another accumulation model (`Exact` runs the scalar path).
    pub fn with_accumulation(
        weights: &[i8],
        channels: usize,
        stride: (usize, usize),
        padding: (usize, usize),
        weight_zero_points: &[i32],
        requant: Requant,
        acc: Accumulation,
    ) -> Result<Self> {
        check_params(&dw_params(channels, stride, padding))?;
        if weights.len() != channels * 9 {
            return Err(Error::shape(
                "depthwise weights",
                format!(
                    "expected {channels}×1×3×3 = {} values, got {}",
                    channels * 9,
                    weights.len()
                ),
            ));
        }
        let b_zp = quant::weight_zero_points(weight_zero_points, channels)?;
        let col_off = (0..channels)
            .map(|c| {
                weights[c * 9..c * 9 + 9]
                    .iter()
                    .map(|&v| v as i32)
                    .sum::<i32>()
                    - 9 * b_zp[c]
            })
            .collect();
        let rq = PerChannel::new(&requant, 0, channels, channels)?;
        Ok(Self {
            c: channels,
            stride,
            padding,
            acc,
            w: weights.to_vec(),
            b_zp,
            col_off,
            rq,
        })
    }

    fn params(&self) -> Conv2dParams {
        dw_params(self.c, self.stride, self.padding)
    }

    /// Whether `run` takes the AVX2 path (strided convs: the stride-1 plane, subsampled; every
    /// output's taps and their pairing do not depend on the stride).
    pub fn is_simd(&self) -> bool {
        self.acc == Accumulation::PairSaturatingI16 && Isa::Avx2.detected()
    }

    /// Runs on NCHW `x` (`nb × C × h × w`), writing NCHW u8 to `out`; returns `(OH, OW)`.
    pub fn run(
        &self,
        x: &[u8],
        nb: usize,
        h: usize,
        w: usize,
        a_zp: i32,
        out: &mut [u8],
    ) -> Result<(usize, usize)> {
        let p = self.params();
        check_input(x, nb, self.c, h, w, a_zp)?;
        let (oh, ow) = out_hw(&p, nb, h, w)?;
        if out.len() != nb * self.c * oh * ow {
            return Err(Error::shape(
                "depthwise output",
                format!(
                    "expected {} values, got {}",
                    nb * self.c * oh * ow,
                    out.len()
                ),
            ));
        }
        if !self.is_simd() {
            let c = QConv {
                params: p,
                layout: Layout::Nchw,
                batch: nb,
                height: h,
                width: w,
                input: x,
                a_zero_point: a_zp,
                weight: &self.w,
                w_zero_points: &self.b_zp,
            };
            let (raw, hw) = reference::conv2d(self.acc, &c)?;
            for (i, (o, r)) in out.iter_mut().zip(raw).enumerate() {
                *o = self
                    .rq
                    .apply(r, reference::conv_channel(Layout::Nchw, i, self.c, hw));
            }
            return Ok((oh, ow));
        }
        let (pt, pl) = self.padding;
        let ps = w + 2 * pl + 34;
        let rows = h + 2 * pt;
        let mut plane = vec![a_zp as u8; rows * ps];
        // The stride-1 output of the padded plane; a strided conv reads every (sy, sx)-th value.
        let (sy, sx) = self.stride;
        let strided = (sy, sx) != (1, 1);
        let (oh1, ow1) = (rows - 2, w + 2 * pl - 2);
        let mut full = vec![0u8; if strided { oh1 * ow1 } else { 0 }];
        for b in 0..nb {
            for c in 0..self.c {
                let xc = &x[(b * self.c + c) * h * w..(b * self.c + c + 1) * h * w];
                for y in 0..h {
                    copy_row(
                        &mut plane[(y + pt) * ps + pl..(y + pt) * ps + pl + w],
                        &xc[y * w..(y + 1) * w],
                    );
                }
                let mut wc = [0i8; 9];
                wc.copy_from_slice(&self.w[c * 9..c * 9 + 9]);
                let ch = DwChannel {
                    w: wc,
                    b_zp: self.b_zp[c],
                    zc: a_zp.wrapping_mul(self.col_off[c]),
                    add_i: self.rq.add_i[c],
                    add_f: self.rq.add_f[c],
                    add_s: self.rq.add_s[c],
                    mult: self.rq.mult[c],
                    zp: self.rq.zp,
                    lo: self.rq.lo,
                };
                let o = &mut out[(b * self.c + c) * oh * ow..(b * self.c + c + 1) * oh * ow];
                if strided {
                    // SAFETY: is_simd() checked AVX2 and FMA (`Isa::Avx2`); ps = w + 2·pl + 34
                    // = ow1 + 36 ≥ ow1 + 34, the plane has h + 2·pt = oh1 + 2 rows, `full`
                    // has oh1·ow1 bytes.
                    unsafe { avx2::dw3x3_plane(&plane, ps, oh1, ow1, &ch, &mut full) };
                    for (oy, row) in o.chunks_exact_mut(ow).enumerate() {
                        let src = &full[oy * sy * ow1..];
                        for (ox, v) in row.iter_mut().enumerate() {
                            *v = src[ox * sx];
                        }
                    }
                } else {
                    // SAFETY: is_simd() checked AVX2 and FMA (`Isa::Avx2`); ps = w + 2·pl + 34 =
                    // ow + 36 ≥ ow + 34 for stride 1, the plane has h + 2·pt = oh + 2 rows, `o`
                    // has oh·ow bytes.
                    unsafe { avx2::dw3x3_plane(&plane, ps, oh, ow, &ch, o) };
                }
            }
        }
        Ok((oh, ow))
    }
}

/// FBGEMM's depthwise 3×3 conv ([`Depthwise3x3`], pair-saturating) as a [`QuantConv`]: 3×3
/// kernels, `groups = in = out channels`, no dilation, NCHW, requantized output only.
#[derive(Debug, Clone, Copy, Default)]
pub struct DepthwiseKernel;

impl QuantConv for DepthwiseKernel {
    fn name(&self) -> &'static str {
        "x86-depthwise3x3"
    }

    fn accumulation(&self) -> Accumulation {
        Accumulation::PairSaturatingI16
    }

    fn supports(&self, p: &Conv2dParams, layout: Layout) -> bool {
        layout == Layout::Nchw
            && p.kernel_size == [3, 3]
            && p.dilation == [1, 1]
            && p.groups == p.in_channels
            && p.out_channels == p.in_channels
    }

    fn raw_output(&self) -> bool {
        false
    }

    /// Prepares the weights on every call (a layer does it once with [`Depthwise3x3`]).
    fn qconv(&self, c: &QConv<'_>, out: Output<'_>) -> Result<(usize, usize)> {
        let hw = c.validate()?;
        c.check_output(out.len(), hw)?;
        let p = &c.params;
        if !self.supports(p, c.layout) {
            return Err(Error::invalid(
                "depthwise 3×3 conv",
                format!("{p:?} in {:?} is not a depthwise 3×3 NCHW conv", c.layout),
            ));
        }
        let Output::Requantized(rule, out) = out else {
            return Err(Error::invalid(
                "depthwise 3×3 conv",
                "requantization is fused: no raw output",
            ));
        };
        let dw = Depthwise3x3::new(
            c.weight,
            p.in_channels,
            (p.stride[0], p.stride[1]),
            (p.padding[0], p.padding[1]),
            c.w_zero_points,
            rule.clone(),
        )?;
        dw.run(c.input, c.batch, c.height, c.width, c.a_zero_point, out)
    }
}
