//! Values the Winograd transforms run on: the same entry of 4 ([`V4`], any CPU), 8 ([`V8`],
//! x86-64 with AVX) or 16 ([`V16`], AVX-512) channels' patches or tiles' products (and single
//! `f32`s, for the filter transforms), and [`with_lanes`], which runs a transform on the widest
//! the CPU has.

use std::ops::{Add, Mul, Sub};

/// Channels per block of the blocked input: one AVX-512 register of f32.
pub(super) const LANES: usize = 16;

/// What a 1-d transform needs of its values (sums, differences, constant multiples), and how
/// they are read from and written to runs of `WIDTH` channels.
pub(super) trait Lane:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f32, Output = Self>
{
    const ZERO: Self;
    /// Channels per value.
    const WIDTH: usize;
    /// The value of `src[..WIDTH]`.
    fn load(src: &[f32]) -> Self;
    /// Writes the value to `dst[..WIDTH]`.
    fn store(self, dst: &mut [f32]);
}

impl Lane for f32 {
    const ZERO: Self = 0.0;
    const WIDTH: usize = 1;

    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        src[0]
    }

    #[inline(always)]
    fn store(self, dst: &mut [f32]) {
        dst[0] = self;
    }
}

/// Four `f32`s in plain Rust, which the compiler maps to whatever vector registers the target
/// has without asking the CPU (SSE2 on x86-64, NEON on aarch64).
#[derive(Clone, Copy)]
pub(super) struct V4([f32; 4]);

impl Add for V4 {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        let (a, b) = (self.0, o.0);
        Self([a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]])
    }
}

impl Sub for V4 {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        let (a, b) = (self.0, o.0);
        Self([a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3]])
    }
}

impl Mul<f32> for V4 {
    type Output = Self;
    #[inline(always)]
    fn mul(self, k: f32) -> Self {
        let a = self.0;
        Self([a[0] * k, a[1] * k, a[2] * k, a[3] * k])
    }
}

impl Lane for V4 {
    const ZERO: Self = Self([0.0; 4]);
    const WIDTH: usize = 4;

    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        Self(src[..4].try_into().expect("4 values"))
    }

    #[inline(always)]
    fn store(self, dst: &mut [f32]) {
        dst[..4].copy_from_slice(&self.0);
    }
}

/// The widest values the transforms run on: [`Width::Avx512`] ([`V16`]), [`Width::Avx`]
/// ([`V8`]) or [`Width::Portable`] ([`V4`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) enum Width {
    Portable,
    Avx,
    Avx512,
}

/// The widest [`Width`] this CPU runs (detection is cached by std).
pub(super) fn width() -> Width {
    #[cfg(target_arch = "x86_64")]
    let widest = if std::arch::is_x86_feature_detected!("avx512f") {
        Width::Avx512
    } else if std::arch::is_x86_feature_detected!("avx") {
        Width::Avx
    } else {
        Width::Portable
    };
    #[cfg(not(target_arch = "x86_64"))]
    let widest = Width::Portable;
    #[cfg(test)]
    let widest = widest.min(test_cap::get());
    widest
}

/// Runs `$f::<generics…, L>(args…)` with the `L` of [`width`].
macro_rules! with_lanes {
    ($f:ident::<$($g:tt),*>($($arg:expr),* $(,)?)) => {{
        #[allow(unused_imports)]
        use $crate::conv::lanes::{self, Width};
        match lanes::width() {
            // SAFETY: the CPU has AVX-512F (the block is redundant where `$f` is unsafe).
            #[cfg(target_arch = "x86_64")]
            #[allow(unused_unsafe)]
            Width::Avx512 => unsafe {
                lanes::avx512(
                    #[inline(always)]
                    || $f::<$($g),*, lanes::V16>($($arg),*),
                )
            },
            // SAFETY: the CPU has AVX.
            #[cfg(target_arch = "x86_64")]
            #[allow(unused_unsafe)]
            Width::Avx => unsafe {
                lanes::avx(
                    #[inline(always)]
                    || $f::<$($g),*, lanes::V8>($($arg),*),
                )
            },
            _ => $f::<$($g),*, lanes::V4>($($arg),*),
        }
    }};
}
pub(super) use with_lanes;

#[cfg(test)]
pub(super) mod test_cap {
    //! A cap on [`super::width`] for tests of the narrower builds on wider CPUs.
    use super::Width;
    use std::sync::atomic::{AtomicU8, Ordering};

    static CAP: AtomicU8 = AtomicU8::new(Width::Avx512 as u8);

    pub(in crate::conv) fn get() -> Width {
        match CAP.load(Ordering::Relaxed) {
            0 => Width::Portable,
            1 => Width::Avx,
            _ => Width::Avx512,
        }
    }

    /// `f()` with [`super::width`] at most `cap`.
    pub(in crate::conv) fn with<R>(cap: Width, f: impl FnOnce() -> R) -> R {
        CAP.store(cap as u8, Ordering::Relaxed);
        let out = f();
        CAP.store(Width::Avx512 as u8, Ordering::Relaxed);
        out
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{avx, avx512, V16, V8};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lane, LANES};
    use std::arch::x86_64::*;
    use std::ops::{Add, Mul, Sub};

    /// `f()` compiled for AVX-512F (`f` inlined here).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(in crate::conv) unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// `f()` compiled for AVX (`f` inlined here).
    ///
    /// # Safety
    /// The CPU has AVX.
    #[target_feature(enable = "avx")]
    pub(in crate::conv) unsafe fn avx<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// Implements [`Lane`] for a wrapper of one x86 vector register.
    ///
    /// Its operations are plain functions around the intrinsics: they may only run inside
    /// [`avx512`] or [`avx`] (as the register needs), reached after [`super::width`] said the
    /// CPU has it, which is the only place the transforms use them.
    macro_rules! lane {
        ($name:ident, $reg:ty, $width:expr, $add:ident, $sub:ident, $mul:ident, $set1:ident,
         $load:ident, $store:ident) => {
            #[derive(Clone, Copy)]
            pub(in crate::conv) struct $name($reg);

            impl Add for $name {
                type Output = Self;
                #[inline(always)]
                fn add(self, other: Self) -> Self {
                    // SAFETY: only reached on CPUs with the instructions (see the macro's docs).
                    Self(unsafe { $add(self.0, other.0) })
                }
            }

            impl Sub for $name {
                type Output = Self;
                #[inline(always)]
                fn sub(self, other: Self) -> Self {
                    // SAFETY: as in `add`.
                    Self(unsafe { $sub(self.0, other.0) })
                }
            }

            impl Mul<f32> for $name {
                type Output = Self;
                #[inline(always)]
                fn mul(self, k: f32) -> Self {
                    // SAFETY: as in `add`.
                    Self(unsafe { $mul(self.0, $set1(k)) })
                }
            }

            impl Lane for $name {
                // SAFETY: the register is `$width` f32s.
                const ZERO: Self =
                    Self(unsafe { std::mem::transmute::<[f32; $width], $reg>([0.0; $width]) });
                const WIDTH: usize = $width;

                #[inline(always)]
                fn load(src: &[f32]) -> Self {
                    let src = &src[..$width];
                    // SAFETY: `$width` values are readable at `src`; instructions as in `add`.
                    Self(unsafe { $load(src.as_ptr()) })
                }

                #[inline(always)]
                fn store(self, dst: &mut [f32]) {
                    let dst = &mut dst[..$width];
                    // SAFETY: `$width` values are writable at `dst`; instructions as in `add`.
                    unsafe { $store(dst.as_mut_ptr(), self.0) }
                }
            }
        };
    }

    lane!(
        V16,
        __m512,
        LANES,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_mul_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps
    );
    lane!(
        V8,
        __m256,
        8,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps
    );
}
