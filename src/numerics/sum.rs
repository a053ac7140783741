//! PyTorch's f32 summation on x86 CPUs: ATen's cascade sum (`torch.sum`, `torch.mean` and
//! everything built on them), reproduced in its exact order of additions.
//!
//! Source: PyTorch `aten/src/ATen/native/cpu/SumKernel.cpp` (`cascade_sum`, `multi_row_sum`,
//! `row_sum`, `vectorized_inner_sum`, `vectorized_outer_sum`, `scalar_outer_sum`). The kernel is
//! registered with `REGISTER_DISPATCH`, so the AVX2 build (`Vectorized<float>` = 8 lanes) runs
//! under both the AVX2 and the AVX512 CPU capability. One thread is modelled (`at::parallel_reduce`
//! splits the outer range when several threads run).
//!
//! TensorIterator hands the kernel a 2-D loop: `size0` reduced elements (the reduced dimensions
//! coalesced, moved first) for each of `size1` outputs. Which algorithm sums an output depends on
//! the strides of those two dimensions ([`cascade_sum_2d`]):
//!
//! - reduced elements contiguous and `size0 ≥ 8` (`vectorized_inner_sum`): 8 lanes, lane `l`
//!   summing elements `8v + l` with [`row_sum`]; then `0 + leftovers + lane 0 + … + lane 7`;
//! - outputs contiguous and `size1 ≥ 8` (`vectorized_outer_sum`): outputs in blocks of 32 are
//!   summed by a plain [`multi_row_sum`] each, the rest by [`row_sum`];
//! - otherwise, reduced stride below the output stride (`scalar_inner_sum`): [`row_sum`] each;
//! - otherwise (`scalar_outer_sum`): outputs in groups of 4 by [`multi_row_sum`], the rest by
//!   [`row_sum`].
//!
//! `multi_row_sum` adds elements into a level-0 accumulator in chunks of `2^level_power`
//! (`level_power = max(4, CeilLog2(n) / 4)`), carrying each full chunk up through 4 levels;
//! `row_sum` splits the sequence into 4 interleaved partial sums (`multi_row_sum` over `n / 4`
//! rows of 4), adds the leftovers to partial 0 and then partials 1, 2, 3. The result is added to
//! the zero-filled output (`0 + s`).

/// Number of f32 lanes in ATen's `Vectorized<float>` of the AVX2 build.
pub const LANES: usize = 8;

type Lanes = [f32; LANES];

/// Addition used by the cascade: a scalar or an 8-lane vector.
trait CascadeValue: Copy {
    const ZERO: Self;
    fn add(self, other: Self) -> Self;
}

impl CascadeValue for f32 {
    const ZERO: Self = 0.0;
    fn add(self, other: Self) -> Self {
        self + other
    }
}

impl CascadeValue for Lanes {
    const ZERO: Self = [0.0; LANES];
    fn add(self, other: Self) -> Self {
        let mut out = self;
        for (o, b) in out.iter_mut().zip(other) {
            *o += b;
        }
        out
    }
}

/// `utils::CeilLog2` (`aten/src/ATen/native/cpu/utils.h`).
fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// ATen `multi_row_sum<acc, NROWS>` over rows `0..size`, where `load(i, k)` is row `i` column `k`.
fn multi_row_sum_n<T: CascadeValue, const NROWS: usize>(
    size: usize,
    load: impl Fn(usize, usize) -> T,
) -> [T; NROWS] {
    const NUM_LEVELS: usize = 4;
    let level_power = 4.max(ceil_log2(size) / NUM_LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[T::ZERO; NROWS]; NUM_LEVELS];
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                *a = a.add(load(i, k));
            }
            i += 1;
        }
        for j in 1..NUM_LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (hi, lo) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                *hi = hi.add(*lo);
                *lo = T::ZERO;
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            *a = a.add(load(i, k));
        }
        i += 1;
    }
    for j in 1..NUM_LEVELS {
        let level = acc[j];
        for (a, l) in acc[0].iter_mut().zip(level) {
            *a = a.add(l);
        }
    }
    acc[0]
}

/// ATen `row_sum` (4-way ILP over `multi_row_sum`) of `size` values `load(i)`.
fn row_sum_t<T: CascadeValue>(size: usize, load: impl Fn(usize) -> T) -> T {
    let size_ilp = size / 4;
    let mut partial = multi_row_sum_n::<T, 4>(size_ilp, |i, k| load(i * 4 + k));
    for i in size_ilp * 4..size {
        partial[0] = partial[0].add(load(i));
    }
    for k in 1..4 {
        partial[0] = partial[0].add(partial[k]);
    }
    partial[0]
}

/// ATen's `multi_row_sum` of one sequence (one column): the plain cascade.
pub fn multi_row_sum(size: usize, load: impl Fn(usize) -> f32) -> f32 {
    multi_row_sum_n::<f32, 1>(size, |i, _| load(i))[0]
}

/// ATen's `row_sum` of one sequence: 4 interleaved cascades, leftovers, then the partials.
pub fn row_sum(size: usize, load: impl Fn(usize) -> f32) -> f32 {
    row_sum_t(size, load)
}

/// `vectorized_inner_sum` of one contiguous sequence of `size ≥ 8` values.
fn vectorized_inner(size: usize, load: impl Fn(usize) -> f32) -> f32 {
    let vec_size = size / LANES;
    let v: Lanes = row_sum_t(vec_size, |i| std::array::from_fn(|l| load(i * LANES + l)));
    let mut fin = 0.0f32;
    for k in vec_size * LANES..size {
        fin += load(k);
    }
    for lane in v {
        fin += lane;
    }
    fin
}

/// ATen's `cascade_sum` for one 2-D reduction loop: `size0` reduced elements for each of `size1`
/// outputs, element `(i, j)` = `load(i, j)`, with the element strides of the two dimensions
/// (what decides the algorithm, see the module documentation). Returns the `size1` sums as they
/// land in the zero-filled output.
pub fn cascade_sum_2d(
    size0: usize,
    size1: usize,
    stride0: usize,
    stride1: usize,
    load: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let mut out = vec![0.0f32; size1];
    if stride0 == 1 && size0 >= LANES {
        for (j, o) in out.iter_mut().enumerate() {
            *o += vectorized_inner(size0, |i| load(i, j));
        }
    } else if stride1 == 1 && size1 >= LANES {
        let blocks = size1 / (4 * LANES) * (4 * LANES);
        for (j, o) in out.iter_mut().enumerate() {
            *o += if j < blocks {
                multi_row_sum(size0, |i| load(i, j))
            } else {
                row_sum(size0, |i| load(i, j))
            };
        }
    } else if stride0 < stride1 {
        for (j, o) in out.iter_mut().enumerate() {
            *o += row_sum(size0, |i| load(i, j));
        }
    } else {
        let groups = size1 / 4 * 4;
        for (j, o) in out.iter_mut().enumerate() {
            *o += if j < groups {
                multi_row_sum(size0, |i| load(i, j))
            } else {
                row_sum(size0, |i| load(i, j))
            };
        }
    }
    out
}

/// `torch.sum` of a contiguous f32 vector on CPU (one output, reduced elements contiguous).
pub fn torch_sum_f32(x: &[f32]) -> f32 {
    cascade_sum_2d(x.len(), 1, 1, 0, |i, _| x[i])[0]
}

/// The f32 sums over `(H, W)` of a 4-D `N×C×H×W` tensor (values in logical NCHW order) as
/// `torch.sum(x, (2, 3))` / `torch.mean` compute them for its layout: NCHW-contiguous (rows of
/// `H·W` contiguous values, also any tensor with `C = 1` or `H·W = 1`) or channels-last (`H·W`
/// positions of `C` contiguous channels, summed per image). Returns `N·C` sums in NC order.
pub fn sum_hw(x: &[f32], shape: [usize; 4], channels_last: bool) -> Vec<f32> {
    let [n, c, h, w] = shape;
    let hw = h * w;
    if !channels_last || c == 1 || hw == 1 {
        cascade_sum_2d(hw, n * c, 1, hw, |i, j| x[j * hw + i])
    } else {
        let mut out = Vec::with_capacity(n * c);
        for b in 0..n {
            let img = &x[b * c * hw..(b + 1) * c * hw];
            out.extend(cascade_sum_2d(hw, c, c, 1, |i, j| img[j * hw + i]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cascade_sum_is_a_sum() {
        for n in [0usize, 1, 5, 7, 8, 9, 63, 64, 65, 2048, 5000] {
            let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
            let exact: f64 = x.iter().map(|&v| v as f64).sum();
            assert_eq!(torch_sum_f32(&x) as f64, exact, "n = {n}");
        }
        // Order matters for inexact sums: 1 + 2^-24·k is not summed left to right.
        let mut x = vec![2f32.powi(-25); 64];
        x[0] = 1.0;
        let left_to_right = x.iter().fold(0.0f32, |a, &b| a + b);
        assert_ne!(torch_sum_f32(&x), left_to_right);
    }

    #[test]
    fn orders_differ_as_the_kernel_says() {
        // 17 values: 1 then 16 halves of an ulp of 1. A left-to-right sum loses every half ulp
        // (ties to even); so does the plain cascade, whose first 16-step chunk starts at 1; the
        // 4 partials of row_sum keep three quarters of them.
        let tiny = 2f32.powi(-24);
        let x: Vec<f32> = std::iter::once(1.0).chain(vec![tiny; 16]).collect();
        let seq = x.iter().fold(0.0f32, |a, &b| a + b);
        assert_eq!(seq, 1.0);
        assert_eq!(multi_row_sum(x.len(), |i| x[i]), 1.0);
        // Partial 0 holds 1 + 4·tiny (lost), partials 1..3 hold 4·tiny each (exact) and join
        // after: 1 + 4 tiny = 1 + 2^-22 is representable, then + 4 tiny twice more.
        assert_eq!(row_sum(x.len(), |i| x[i]), 1.0 + 12.0 * tiny);
        // The channels-last layout sums each channel over positions: with C = 3 (< 8 lanes)
        // the scalar outer path takes row_sum per channel, as contiguous H·W < 8 rows do.
        // `channels(c)`: c channels (NCHW order) each holding the 17 values.
        let channels = |c: usize| -> Vec<f32> { x.iter().copied().cycle().take(c * 17).collect() };
        let shape = [1, 3, 17, 1];
        let t = channels(3);
        let cl = sum_hw(&t, shape, true);
        assert_eq!(cl, vec![1.0 + 12.0 * tiny; 3]);
        // C = 5 (< 8 lanes, so not the vectorized outer path): channels in whole groups of 4
        // take the plain cascade, which loses all 16 half ulps; channel 4 takes row_sum.
        let cl5 = sum_hw(&channels(5), [1, 5, 17, 1], true);
        assert_eq!(cl5, [1.0, 1.0, 1.0, 1.0, 1.0 + 12.0 * tiny]);
        // Contiguous rows of 17 ≥ 8 values take the 8-lane inner path: lane 0 holds 1 + tiny
        // (= 1), lanes 1..7 hold 2·tiny each; the leftover (tiny) comes first, is lost when lane 0
        // joins, and the other lanes survive.
        let nchw = sum_hw(&t, shape, false);
        assert_eq!(nchw, vec![1.0 + 14.0 * tiny; 3]);
    }

    #[test]
    fn ceil_log2_is_atens() {
        // `CeilLog2`: 1 up to 2, then the bit length of `x - 1`.
        let cases = [
            (0, 1),
            (1, 1),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (1 << 20, 20),
        ];
        for (x, want) in cases {
            assert_eq!(ceil_log2(x), want, "x = {x}");
        }
        assert_eq!(ceil_log2((1 << 23) + 1), 24);
        assert_eq!(ceil_log2(1 << 23), 23);
    }

    #[test]
    fn long_rows_add_in_wider_chunks() {
        // 2^20 rows: level_power = max(4, 20 / 4) = 5, chunks of 32. The first chunk starts at 1
        // and loses its 31 half ulps; every later chunk is 32 of them, exact, and so is every
        // carry (multiples of 2^-19 below 2). Chunks of 16 would lose only 15.
        let n = 1usize << 20;
        let tiny = 2f32.powi(-24);
        let load = |i: usize| if i == 0 { 1.0 } else { tiny };
        assert_eq!(multi_row_sum(n, load), 1.0 + (n - 32) as f32 * tiny);
        // Just below 2^19 + 1 rows the chunks are 16 wide.
        let m = 1usize << 19;
        assert_eq!(multi_row_sum(m, load), 1.0 + (m - 16) as f32 * tiny);
    }

    #[test]
    fn chunks_carry_up_through_the_levels() {
        // 1, then one half ulp at the start of every later 16-value chunk. Chunks 1..15 join
        // level 1, which holds 1: each half ulp is lost. Level 1 carries to level 2 every 16
        // chunks and level 2 to level 3 every 256, so every later half ulp meets other half ulps
        // first and survives: 1 + (M − 16)·tiny for M chunks (M even keeps every sum exact).
        // Carrying at other moments (or never) loses another number of them.
        let tiny = 2f32.powi(-24);
        for chunks in [18usize, 256, 300, 4098] {
            let n = 16 * chunks;
            let load = |i: usize| match i {
                0 => 1.0,
                _ if i.is_multiple_of(16) => tiny,
                _ => 0.0,
            };
            let want = 1.0 + (chunks - 16) as f32 * tiny;
            assert_eq!(multi_row_sum(n, load), want, "{chunks} chunks");
        }
    }

    #[test]
    fn short_contiguous_rows_take_row_sum() {
        // H·W = 7 < 8 contiguous values per output, 4 outputs: scalar_inner_sum, row_sum each.
        // Partial 0 gathers the leftovers (tiny + tiny), partial 3 holds the 1: 1 + 2·tiny. The
        // plain cascade (left to right) loses both.
        let tiny = 2f32.powi(-24);
        let row = [tiny, 0.0, 0.0, 1.0, tiny, 0.0, 0.0];
        assert_eq!(row.iter().fold(0.0f32, |a, &b| a + b), 1.0);
        let t: Vec<f32> = row.iter().copied().cycle().take(4 * 7).collect();
        assert_eq!(sum_hw(&t, [1, 4, 7, 1], false), [1.0 + 2.0 * tiny; 4]);
    }

    #[test]
    fn outer_blocks_of_32_use_the_plain_cascade() {
        // 40 channels: channels 0..32 are summed by multi_row_sum, 32..40 by row_sum.
        let tiny = 2f32.powi(-24);
        let (c, hw) = (40usize, 17usize);
        let mut t = vec![0.0f32; c * hw];
        for ch in 0..c {
            t[ch * hw] = 1.0;
            for p in 1..hw {
                t[ch * hw + p] = tiny;
            }
        }
        let s = sum_hw(&t, [1, c, hw, 1], true);
        assert!(s[..32].iter().all(|&v| v == 1.0));
        assert!(s[32..].iter().all(|&v| v == 1.0 + 12.0 * tiny));
    }
}
