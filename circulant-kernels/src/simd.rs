//! Kernels compiled twice: for the baseline target and, on x86-64, for AVX2 with FMA, picked
//! at run time (rustfft picks its own AVX code; this covers the loops around the transforms).

/// Whether this CPU runs the AVX2 + FMA variants (cached by std after the first call).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(test)]
    if tests::BASELINE_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Defines `fn name<T: Real>(..) -> R` from its body twice, as built and (on x86-64) with AVX2
/// and FMA enabled, and calls the second when the CPU has them. Helpers the body calls must be
/// `#[inline(always)]` to be compiled into both.
macro_rules! with_avx2 {
    (
        $(#[$meta:meta])*
        fn $name:ident<$t:ident: Real>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block
    ) => {
        $(#[$meta])*
        fn $name<$t: Real>($($arg: $ty),*) -> $ret {
            #[allow(clippy::too_many_arguments)]
            #[inline(always)]
            fn body<$t: Real>($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                fn avx2<$t: Real>($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if $crate::simd::has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use with_avx2;

#[cfg(test)]
pub(crate) mod tests {
    use crate::cpu;
    use kernels_cuda::Dims;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Makes [`super::has_avx2_fma`] answer false (this test only: the variants agree bit for
    /// bit, so other tests running meanwhile see the same results either way).
    pub(crate) static BASELINE_ONLY: AtomicBool = AtomicBool::new(false);

    /// Forward output and packed gradients of one call.
    fn run(x: &[f32], r: &[f32], g: &[f32], d: Dims) -> (Vec<f32>, Vec<f32>) {
        let rs = cpu::weight_spectra(r, d).unwrap();
        let (y, xs) = cpu::forward(x, &rs, d).unwrap();
        (y, cpu::backward(&xs, &rs, g, d).unwrap())
    }

    // Rust does not fuse multiplies and adds on its own, so both builds of the kernels must
    // round identically: any difference is a bug in one of them.
    #[test]
    fn avx2_and_baseline_variants_agree_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(7);
        for (n, p, q, b) in [
            (5, 2, 3, 12),
            (1, 1, 1, 4096),
            (6, 1, 2, 1000),
            (3, 3, 1, 7),
        ] {
            let d = Dims { n, p, q, b };
            let mut rand = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
            };
            let (x, r, g) = (rand(n * q * b), rand(p * q * b), rand(n * p * b));
            let fast = run(&x, &r, &g, d);
            BASELINE_ONLY.store(true, Ordering::Relaxed);
            #[cfg(target_arch = "x86_64")]
            assert!(!super::has_avx2_fma());
            let baseline = run(&x, &r, &g, d);
            BASELINE_ONLY.store(false, Ordering::Relaxed);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast.0), bits(&baseline.0), "y, {d:?}");
            assert_eq!(bits(&fast.1), bits(&baseline.1), "gradients, {d:?}");
        }
    }
}
