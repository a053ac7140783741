//! The f32 `exp`, `expm1` and `tanh` that PyTorch's quantized kernels call on x86-64 Linux,
//! reproduced bit for bit.
//!
//! Two libraries are involved:
//!
//! - [`sleef`]: the vector bodies of ATen's kernels (`Vectorized<float>::exp / expm1 / tanh` in
//!   `aten/src/ATen/cpu/vec/vec256/vec256_float.h`) call `Sleef_expf8_u10`, `Sleef_expm1f8_u10`
//!   and `Sleef_tanhf8_u10`. libtorch's SLEEF dispatcher picks the AVX2 variant on every AVX2
//!   CPU, which evaluates with FMA. Algorithms: shibatch/sleef `src/libm/sleefsimdsp.c`
//!   (`xexpf`, `expk2f`, `xexpm1f`, `xtanhf`), double-float helpers `src/common/df.h` (the
//!   `ENABLE_FMA_SP` branch), lane helpers `src/arch/helperavx2.h` and constants
//!   `src/common/misc.h`.
//! - [`glibc`]: the scalar tails and QNNPACK's lookup tables call glibc's `expf`, `expm1f` and
//!   `tanhf` (glibc 2.27–2.40 on x86-64). `expf` is `sysdeps/ieee754/flt-32/e_expf.c` with the
//!   table of `e_exp2f_data.c`, built twice (`sysdeps/x86_64/fpu/multiarch/e_expf.c`): glibc
//!   picks the FMA build on CPUs with FMA and AVX2, where the compiler fused the
//!   multiply-adds, and the SSE2 build elsewhere. `expm1f` and `tanhf` are the SunPro
//!   (fdlibm) `s_expm1f.c` and `s_tanhf.c`, plain f32 arithmetic (glibc 2.41 replaced them by
//!   CORE-MATH code; this module models the older ones).
//!
//! Every function was compared with the real one over all 2^32 f32 inputs (the SLEEF symbols
//! exported by libtorch_cpu.so of torch 2.15.0, glibc 2.36's libm): no mismatch, NaN results
//! compared as NaN. Results are computed with correctly rounded f32 / f64 operations and
//! `mul_add` (a single rounding, like `vfmadd`), so they do not depend on the host CPU.

/// SLEEF's single-precision AVX2 u10 functions, one lane at a time.
#[allow(clippy::excessive_precision)]
pub mod sleef {
    /// `0.693145751953125f`: the high part of ln 2 (`L2Uf`, `misc.h`).
    const L2U: f32 = 0.693145751953125;
    /// `1.428606765330187045e-06f`: the low part of ln 2 (`L2Lf`).
    const L2L: f32 = 1.428606765330187045e-06;
    /// `1/ln 2` rounded to f32 (`R_LN2f`), the same f32 as `LOG2_E`.
    const R_LN2: f32 = std::f32::consts::LOG2_E;

    /// A double-float: the unevaluated sum `x + y` (SLEEF `vfloat2`).
    #[derive(Debug, Clone, Copy)]
    struct Df {
        x: f32,
        y: f32,
    }

    const fn df(x: f32, y: f32) -> Df {
        Df { x, y }
    }

    /// `vfmapn`: `x·y − z` with one rounding.
    #[inline]
    fn fmapn(x: f32, y: f32, z: f32) -> f32 {
        x.mul_add(y, -z)
    }

    /// `vfmanp`: `−x·y + z` with one rounding.
    #[inline]
    fn fmanp(x: f32, y: f32, z: f32) -> f32 {
        (-x).mul_add(y, z)
    }

    /// `vrint_vi2_vf` (`cvtps2dq`): round half to even, `i32::MIN` when out of range or NaN.
    #[inline]
    fn rint(v: f32) -> i32 {
        crate::numerics::requant::round_ne_i32(v)
    }

    /// `vpow2i_vf_vi2`: `2^q` built in the exponent field (wrapping, like the vector shifts).
    #[inline]
    fn pow2i(q: i32) -> f32 {
        f32::from_bits((q.wrapping_add(0x7f) as u32).wrapping_shl(23))
    }

    /// `vldexp2_vf_vf_vi2`: `d · 2^(q>>1) · 2^(q − (q>>1))`, two roundings.
    #[inline]
    fn ldexp2(d: f32, q: i32) -> f32 {
        let h = q >> 1;
        d * pow2i(h) * pow2i(q.wrapping_sub(h))
    }

    /// `dfadd2_vf2_vf2_vf`.
    #[inline]
    fn add2_df_f(x: Df, y: f32) -> Df {
        let s = x.x + y;
        let v = s - x.x;
        let t = (x.x - (s - v)) + (y - v);
        df(s, t + x.y)
    }

    /// `dfadd2_vf2_vf2_vf2`.
    #[inline]
    fn add2_df_df(x: Df, y: Df) -> Df {
        let s = x.x + y.x;
        let v = s - x.x;
        let t = (x.x - (s - v)) + (y.x - v);
        df(s, t + (x.y + y.y))
    }

    /// `dfadd_vf2_vf_vf2` (requires `|x| ≥ |y|`).
    #[inline]
    fn add_f_df(x: f32, y: Df) -> Df {
        let s = x + y.x;
        df(s, ((x - s) + y.x) + y.y)
    }

    /// `dfadd_vf2_vf2_vf2` (requires `|x| ≥ |y|`).
    #[inline]
    fn add_df_df(x: Df, y: Df) -> Df {
        let s = x.x + y.x;
        df(s, (((x.x - s) + y.x) + x.y) + y.y)
    }

    /// `dfmul_vf2_vf2_vf` (FMA form).
    #[inline]
    fn mul_df_f(x: Df, y: f32) -> Df {
        let s = x.x * y;
        df(s, x.y.mul_add(y, fmapn(x.x, y, s)))
    }

    /// `dfmul_vf2_vf2_vf2` (FMA form).
    #[inline]
    fn mul_df_df(x: Df, y: Df) -> Df {
        let s = x.x * y.x;
        df(s, x.x.mul_add(y.y, x.y.mul_add(y.x, fmapn(x.x, y.x, s))))
    }

    /// `dfsqu_vf2_vf2` (FMA form).
    #[inline]
    fn squ(x: Df) -> Df {
        let s = x.x * x.x;
        df(s, (x.x + x.x).mul_add(x.y, fmapn(x.x, x.x, s)))
    }

    /// `dfrec_vf2_vf2` (FMA form).
    #[inline]
    fn rec(d: Df) -> Df {
        let s = 1.0 / d.x;
        df(s, s * fmanp(d.y, s, fmanp(d.x, s, 1.0)))
    }

    /// `dfdiv_vf2_vf2_vf2` (FMA form).
    #[inline]
    fn div(n: Df, d: Df) -> Df {
        let t = 1.0 / d.x;
        let s = n.x * t;
        let u = fmapn(t, n.x, s);
        let v = fmanp(d.y, t, fmanp(d.x, t, 1.0));
        df(s, s.mul_add(v, n.y.mul_add(t, u)))
    }

    /// `expk2f`: `e^d` as a double-float, for `d` a double-float.
    fn expk2f(d: Df) -> Df {
        let q = rint((d.x + d.y) * R_LN2);
        let qf = q as f32;
        let mut s = add2_df_f(d, qf * -L2U);
        s = add2_df_f(s, qf * -L2L);
        let mut u = 0.1980960224e-3f32;
        u = u.mul_add(s.x, 0.1394256484e-2);
        u = u.mul_add(s.x, 0.8333456703e-2);
        u = u.mul_add(s.x, 0.4166637361e-1);
        let mut t = add2_df_f(mul_df_f(s, u), 0.166666659414234244790680580464);
        t = add2_df_f(mul_df_df(s, t), 0.5);
        t = add2_df_df(s, mul_df_df(squ(s), t));
        t = add_f_df(1.0, t);
        let flush = d.x < -104.0;
        let scaled = |v: f32| if flush { 0.0 } else { ldexp2(v, q) };
        df(scaled(t.x), scaled(t.y))
    }

    /// `Sleef_expf8_u10` (AVX2), one lane: `e^d`, at most 1 ulp from the exact value.
    pub fn expf_u10(d: f32) -> f32 {
        let q = rint(d * R_LN2);
        let qf = q as f32;
        let mut s = qf.mul_add(-L2U, d);
        s = qf.mul_add(-L2L, s);
        let mut u = 0.000198527617612853646278381f32;
        u = u.mul_add(s, 0.00139304355252534151077271);
        u = u.mul_add(s, 0.00833336077630519866943359);
        u = u.mul_add(s, 0.0416664853692054748535156);
        u = u.mul_add(s, 0.166666671633720397949219);
        u = u.mul_add(s, 0.5);
        u = 1.0 + (s * s).mul_add(u, s);
        u = ldexp2(u, q);
        if d < -104.0 {
            u = 0.0;
        }
        if 100.0 < d {
            u = f32::INFINITY;
        }
        u
    }

    /// `Sleef_expm1f8_u10` (AVX2), one lane: `e^a − 1`.
    pub fn expm1f_u10(a: f32) -> f32 {
        let d = add2_df_f(expk2f(df(a, 0.0)), -1.0);
        let mut x = d.x + d.y;
        if a > 88.72283172607421875 {
            x = f32::INFINITY;
        }
        if a < -16.635532333438687426013570 {
            x = -1.0;
        }
        if a.to_bits() == (-0.0f32).to_bits() {
            x = -0.0;
        }
        x
    }

    /// `Sleef_tanhf8_u10` (AVX2), one lane.
    pub fn tanhf_u10(x: f32) -> f32 {
        let a = x.abs();
        let d = expk2f(df(a, 0.0));
        let e = rec(d);
        let d = div(add_df_df(d, df(-e.x, -e.y)), add_df_df(d, e));
        let mut y = d.x + d.y;
        if a > 8.664339742 || y.is_nan() {
            y = 1.0;
        }
        // vmulsign: the sign of x on y.
        y = f32::from_bits(y.to_bits() ^ (x.to_bits() & 0x8000_0000));
        if x.is_nan() {
            // vor with an all-ones mask.
            y = f32::from_bits(u32::MAX);
        }
        y
    }
}

/// glibc's f32 `expf`, `expm1f` and `tanhf` on x86-64 (glibc 2.27–2.40).
pub mod glibc {
    /// `__exp2f_data.tab`: `bits(2^(i/32)) − (i << 47)` (`e_exp2f_data.c`).
    const TAB: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];
    /// `0x1.8p+52`: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f64 = f64::from_bits(0x4338000000000000);
    /// `32/ln 2` (`invln2_scaled`).
    const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
    /// `poly_scaled`: the cubic for `2^(r/32) − 1`, highest degree first.
    const C: [f64; 3] = [
        f64::from_bits(0x3ebc6af84b912394),
        f64::from_bits(0x3f2ebfce50fac4f3),
        f64::from_bits(0x3f962e42ff0c52d6),
    ];

    /// Which of glibc's two `expf` builds runs (`sysdeps/x86_64/fpu/multiarch/e_expf.c`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ExpfBuild {
        /// `__expf_fma`: chosen when the CPU has FMA and AVX2; the compiler fused
        /// `InvLn2N·x + SHIFT`, `InvLn2N·x − kd` and the polynomial's multiply-adds.
        Fma,
        /// `__expf_sse2`: every product and sum rounded separately.
        Sse2,
    }

    impl ExpfBuild {
        /// The build glibc selects on a CPU (every AVX2 CPU has FMA).
        pub fn for_cpu(avx2: bool) -> Self {
            if avx2 {
                ExpfBuild::Fma
            } else {
                ExpfBuild::Sse2
            }
        }
    }

    /// glibc `expf` (`sysdeps/ieee754/flt-32/e_expf.c`), as built for `build`.
    pub fn expf(x: f32, build: ExpfBuild) -> f32 {
        let bits = x.to_bits();
        let abstop = (bits >> 20) & 0x7ff;
        if abstop >= 0x42b {
            // |x| >= 88, inf or NaN.
            if bits == f32::NEG_INFINITY.to_bits() {
                return 0.0;
            }
            if abstop >= 0x7f8 {
                return x + x;
            }
            if x > f32::from_bits(0x42b17217) {
                // __math_oflowf: 0x1p97f · 0x1p97f.
                let h = f32::from_bits(0x70000000);
                return h * h;
            }
            if x < f32::from_bits(0xc2cff1b4) {
                // __math_uflowf: 0x1p-95f · 0x1p-95f.
                let t = f32::from_bits(0x10000000);
                return t * t;
            }
            if x < f32::from_bits(0xc2ce8ecf) {
                // __math_may_uflowf: 0x1.4p-75f · 0x1.4p-75f.
                let t = f32::from_bits(0x1a200000);
                return t * t;
            }
        }
        let xd = x as f64;
        let (kd, r) = match build {
            ExpfBuild::Fma => {
                let kd = INV_LN2_N.mul_add(xd, SHIFT);
                let k = kd - SHIFT;
                (kd, INV_LN2_N.mul_add(xd, -k))
            }
            ExpfBuild::Sse2 => {
                let z = INV_LN2_N * xd;
                let kd = z + SHIFT;
                (kd, z - (kd - SHIFT))
            }
        };
        let ki = kd.to_bits();
        let t = TAB[(ki % 32) as usize].wrapping_add(ki.wrapping_shl(47));
        let s = f64::from_bits(t);
        let y = match build {
            ExpfBuild::Fma => {
                let z = C[0].mul_add(r, C[1]);
                let r2 = r * r;
                let y = C[2].mul_add(r, 1.0);
                z.mul_add(r2, y)
            }
            ExpfBuild::Sse2 => {
                let z = C[0] * r + C[1];
                let r2 = r * r;
                let y = C[2] * r + 1.0;
                z * r2 + y
            }
        };
        (y * s) as f32
    }

    /// glibc `expm1f` (SunPro `sysdeps/ieee754/flt-32/s_expm1f.c`): `e^x − 1` in f32 arithmetic.
    pub fn expm1f(x: f32) -> f32 {
        const O_THRESHOLD: f32 = f32::from_bits(0x42b17180);
        const LN2_HI: f32 = f32::from_bits(0x3f317180);
        const LN2_LO: f32 = f32::from_bits(0x3717f7d1);
        const INV_LN2: f32 = f32::from_bits(0x3fb8aa3b);
        const Q1: f32 = f32::from_bits(0xbd088889);
        const Q2: f32 = f32::from_bits(0x3ad00d01);
        const Q3: f32 = f32::from_bits(0xb8a670cd);
        const Q4: f32 = f32::from_bits(0x36867e54);
        const Q5: f32 = f32::from_bits(0xb457edbb);
        const HUGE: f32 = 1.0e30;
        const TINY: f32 = 1.0e-30;

        let mut x = x;
        let hx_signed = x.to_bits();
        let negative = hx_signed & 0x8000_0000 != 0;
        let hx = hx_signed & 0x7fff_ffff;

        if hx >= 0x4195_b844 {
            // |x| >= 27·ln 2
            if hx >= 0x42b1_7218 {
                if hx > 0x7f80_0000 {
                    return x + x; // NaN
                }
                if hx == 0x7f80_0000 {
                    return if negative { -1.0 } else { x };
                }
                if x > O_THRESHOLD {
                    return HUGE * HUGE;
                }
            }
            if negative {
                return TINY - 1.0;
            }
        }

        let k: i32;
        let mut c = 0.0f32;
        if hx > 0x3eb1_7218 {
            // |x| > 0.5·ln 2
            let (hi, lo);
            if hx < 0x3f85_1592 {
                // and |x| < 1.5·ln 2
                if !negative {
                    hi = x - LN2_HI;
                    lo = LN2_LO;
                    k = 1;
                } else {
                    hi = x + LN2_HI;
                    lo = -LN2_LO;
                    k = -1;
                }
            } else {
                k = (INV_LN2 * x + if negative { -0.5 } else { 0.5 }) as i32;
                let t = k as f32;
                hi = x - t * LN2_HI;
                lo = t * LN2_LO;
            }
            x = hi - lo;
            c = (hi - x) - lo;
        } else if hx < 0x3300_0000 {
            // |x| < 2^-25: x itself (the source's `x − ((huge+x) − (huge+x))`).
            let t = HUGE + x;
            return x - (t - (HUGE + x));
        } else {
            k = 0;
        }

        let hfx = 0.5 * x;
        let hxs = x * hfx;
        let r1 = 1.0 + hxs * (Q1 + hxs * (Q2 + hxs * (Q3 + hxs * (Q4 + hxs * Q5))));
        let t = 3.0 - r1 * hfx;
        let mut e = hxs * ((r1 - t) / (6.0 - x * t));
        if k == 0 {
            return x - (x * e - hxs);
        }
        e = x * (e - c) - c;
        e -= hxs;
        if k == -1 {
            return 0.5 * (x - e) - 0.5;
        }
        if k == 1 {
            return if x < -0.25 {
                -2.0 * (e - (x + 0.5))
            } else {
                1.0 + 2.0 * (x - e)
            };
        }
        let add_exponent = |y: f32| f32::from_bits(y.to_bits().wrapping_add((k as u32) << 23));
        if k <= -2 || k > 56 {
            let y = add_exponent(1.0 - (e - x));
            return y - 1.0;
        }
        if k < 23 {
            let t = f32::from_bits(0x3f80_0000 - (0x0100_0000u32 >> k)); // 1 − 2^-k
            add_exponent(t - (e - x))
        } else {
            let t = f32::from_bits(((0x7f - k) as u32) << 23); // 2^-k
            add_exponent(x - (e + t) + 1.0)
        }
    }

    /// glibc `tanhf` (SunPro `sysdeps/ieee754/flt-32/s_tanhf.c`), built on [`expm1f`].
    pub fn tanhf(x: f32) -> f32 {
        let jx = x.to_bits();
        let ix = jx & 0x7fff_ffff;
        let negative = jx & 0x8000_0000 != 0;
        if ix >= 0x7f80_0000 {
            // tanh(±inf) = ±1, tanh(NaN) = NaN.
            return if negative {
                1.0 / x - 1.0
            } else {
                1.0 / x + 1.0
            };
        }
        let z = if ix < 0x41b0_0000 {
            // |x| < 22
            if ix == 0 {
                return x;
            }
            if ix < 0x2400_0000 {
                // |x| < 2^-55
                return x * (1.0 + x);
            }
            if ix >= 0x3f80_0000 {
                // |x| >= 1
                let t = expm1f(x.abs() + x.abs());
                1.0 - 2.0 / (t + 2.0)
            } else {
                let t = expm1f(-2.0 * x.abs());
                -t / (t + 2.0)
            }
        } else {
            1.0 - 1.0e-30
        };
        if negative {
            -z
        } else {
            z
        }
    }
}

#[cfg(test)]
mod pins;

#[cfg(test)]
mod tests {
    use super::glibc::{self, ExpfBuild};
    use super::{pins, sleef};

    fn check(name: &str, table: &[(u32, u32)], f: impl Fn(f32) -> f32) {
        assert!(
            table.len() > 100,
            "{name}: the table is too short to mean much"
        );
        for &(x, y) in table {
            let (x, want) = (f32::from_bits(x), f32::from_bits(y));
            let got = f(x);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{name}({x:e} = {:#010x}): real {want:e} ({:#010x}), ours {got:e} ({:#010x})",
                x.to_bits(),
                want.to_bits(),
                got.to_bits()
            );
        }
    }

    #[test]
    fn sleef_matches_the_real_avx2_u10_functions() {
        check("Sleef_expf8_u10", pins::SLEEF_EXPF, sleef::expf_u10);
        check("Sleef_expm1f8_u10", pins::SLEEF_EXPM1F, sleef::expm1f_u10);
        check("Sleef_tanhf8_u10", pins::SLEEF_TANHF, sleef::tanhf_u10);
    }

    #[test]
    fn glibc_matches_the_real_libm() {
        check("expf (FMA build)", pins::GLIBC_EXPF, |x| {
            glibc::expf(x, ExpfBuild::Fma)
        });
        check("expf (SSE2 build)", pins::GLIBC_EXPF_SSE2, |x| {
            glibc::expf(x, ExpfBuild::Sse2)
        });
        check("expm1f", pins::GLIBC_EXPM1F, glibc::expm1f);
        check("tanhf", pins::GLIBC_TANHF, glibc::tanhf);
    }

    #[test]
    fn the_libraries_differ_where_the_tables_say() {
        // Each table holds inputs where SLEEF and glibc disagree: swapping the libraries must
        // fail there, so the pinned values discriminate.
        let differs = |table: &[(u32, u32)], f: &dyn Fn(f32) -> f32| {
            table
                .iter()
                .filter(|&&(x, y)| {
                    let got = f(f32::from_bits(x));
                    !(got.to_bits() == y || (got.is_nan() && f32::from_bits(y).is_nan()))
                })
                .count()
        };
        assert!(differs(pins::SLEEF_EXPF, &|x| glibc::expf(x, ExpfBuild::Fma)) > 0);
        assert!(differs(pins::SLEEF_EXPM1F, &glibc::expm1f) > 0);
        assert!(differs(pins::SLEEF_TANHF, &glibc::tanhf) > 0);
        assert!(differs(pins::GLIBC_EXPM1F, &sleef::expm1f_u10) > 0);
        assert!(differs(pins::GLIBC_TANHF, &sleef::tanhf_u10) > 0);
        assert!(differs(pins::GLIBC_EXPF, &|x| glibc::expf(x, ExpfBuild::Sse2)) > 0);
    }
}
