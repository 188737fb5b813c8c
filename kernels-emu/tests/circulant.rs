//! The circulant op's per-frequency contractions (circulant.cu), f32 and f64, against the sums
//! in float64 on random half spectra, with kernels-cuda's launches and smaller grids.

mod common;

use common::{assert_close, grid_stride_launches, rng, uniform};
use kernels_emu::*;

type C = [f64; 2];

fn mul(a: C, b: C) -> C {
    [a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]]
}

fn conj(a: C) -> C {
    [a[0], -a[1]]
}

/// The three contractions of the docs in circulant.cu, with the real bins' imaginary parts
/// set to 0.
struct Reference {
    y: Vec<C>,
    dx: Vec<C>,
    dr: Vec<C>,
}

#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[C],
    r: &[C],
    g: &[C],
    n: usize,
    p: usize,
    q: usize,
    b: usize,
    scale: f64,
) -> Reference {
    let nf = b / 2 + 1;
    let real_bin = |f: usize| f == 0 || 2 * f == b;
    let finish = |mut v: C, f: usize| {
        if real_bin(f) {
            v[1] = 0.0;
        }
        [v[0] * scale, v[1] * scale]
    };
    let add = |a: C, b: C| [a[0] + b[0], a[1] + b[1]];
    let mut out = Reference {
        y: vec![],
        dx: vec![],
        dr: vec![],
    };
    for nn in 0..n {
        for i in 0..p {
            for f in 0..nf {
                let s = (0..q).fold([0.0; 2], |s, j| {
                    add(s, mul(r[(i * q + j) * nf + f], x[(nn * q + j) * nf + f]))
                });
                out.y.push(finish(s, f));
            }
        }
        for j in 0..q {
            for f in 0..nf {
                let s = (0..p).fold([0.0; 2], |s, i| {
                    add(
                        s,
                        mul(conj(r[(i * q + j) * nf + f]), g[(nn * p + i) * nf + f]),
                    )
                });
                out.dx.push(finish(s, f));
            }
        }
    }
    for i in 0..p {
        for j in 0..q {
            for f in 0..nf {
                let s = (0..n).fold([0.0; 2], |s, nn| {
                    add(
                        s,
                        mul(conj(x[(nn * q + j) * nf + f]), g[(nn * p + i) * nf + f]),
                    )
                });
                out.dr.push(finish(s, f));
            }
        }
    }
    out
}

fn spectrum(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<C> {
    uniform(rng, 2 * len, -1.0, 1.0)
        .chunks(2)
        .map(|c| [c[0], c[1]])
        .collect()
}

macro_rules! contraction_test {
    ($name:ident, $r:ty, $tol:expr, $contract:ident, $dx:ident, $dr:ident) => {
        #[test]
        fn $name() {
            // (n, p, q, b): odd and even b (a Nyquist bin or not), more bins than a dr block
            // is wide, more samples than its lanes, one block (p = q = 1).
            let cases = [
                (3, 2, 3, 7),
                (2, 3, 2, 8),
                (11, 2, 2, 70),
                (1, 1, 1, 5),
                (17, 1, 3, 33),
            ];
            let mut rng = rng(11);
            for (n, p, q, b) in cases {
                let nf = b / 2 + 1;
                let what = format!("n {n}, p {p}, q {q}, b {b}");
                let (x, r, g) = (
                    spectrum(&mut rng, n * q * nf),
                    spectrum(&mut rng, p * q * nf),
                    spectrum(&mut rng, n * p * nf),
                );
                let scale = 1.0 / b as f64;
                let want = reference(&x, &r, &g, n, p, q, b, scale);
                let narrow = |v: &[C]| -> Vec<Complex<$r>> {
                    v.iter().map(|c| [c[0] as $r, c[1] as $r]).collect()
                };
                let widen = |v: &[Complex<$r>]| -> Vec<f64> {
                    v.iter().flat_map(|c| [c[0] as f64, c[1] as f64]).collect()
                };
                let flat = |v: &[C]| -> Vec<f64> { v.iter().flatten().copied().collect() };
                let (xs, rs, gs) = (narrow(&x), narrow(&r), narrow(&g));
                let (xp, rp, gp) = (xs.as_ptr(), rs.as_ptr(), gs.as_ptr());
                let s = scale as $r;

                for shape in grid_stride_launches(n * p * nf) {
                    let mut y = vec![[<$r>::NAN; 2]; n * p * nf];
                    let yp = y.as_mut_ptr();
                    // SAFETY: circ_contract's arguments; the buffers hold the sizes passed.
                    unsafe {
                        launch(shape, Threads::Serial, || {
                            $contract(xp, rp, yp, n, p, q, nf, b, s)
                        })
                    };
                    assert_close(
                        &widen(&y),
                        &flat(&want.y),
                        $tol,
                        &format!("{what}: forward"),
                    );
                }
                for shape in grid_stride_launches(n * q * nf) {
                    let mut dx = vec![[<$r>::NAN; 2]; n * q * nf];
                    let dp = dx.as_mut_ptr();
                    // SAFETY: as above.
                    unsafe {
                        launch(shape, Threads::Serial, || {
                            $dx(gp, rp, dp, n, p, q, nf, b, s)
                        })
                    };
                    assert_close(&widen(&dx), &flat(&want.dx), $tol, &format!("{what}: dx"));
                }
                // kernels-cuda's grid (one block row per (i, j)), and a grid y of 1, where one
                // block row loops over every (i, j).
                let ours = shapes::contract_dr(nf, p, q).expect("a small grid");
                let one_row = LaunchShape {
                    grid: (ours.grid.0, 1, 1),
                    ..ours
                };
                for shape in [ours, one_row] {
                    let mut dr = vec![[<$r>::NAN; 2]; p * q * nf];
                    let dp = dr.as_mut_ptr();
                    // SAFETY: as above.
                    unsafe {
                        launch(shape, Threads::Synced, || {
                            $dr(xp, gp, dp, n, p, q, nf, b, s)
                        })
                    };
                    assert_close(
                        &widen(&dr),
                        &flat(&want.dr),
                        $tol,
                        &format!("{what}: dr, {shape:?}"),
                    );
                }
            }
        }
    };
}

contraction_test!(
    contractions_f32,
    f32,
    1e-5,
    circ_contract_f32,
    circ_contract_dx_f32,
    circ_contract_dr_f32
);
contraction_test!(
    contractions_f64,
    f64,
    1e-13,
    circ_contract_f64,
    circ_contract_dx_f64,
    circ_contract_dr_f64
);

macro_rules! length_one_test {
    ($name:ident, $r:ty, $r2c:ident, $c2r:ident) => {
        /// b = 1: the spectrum of a length-1 signal is the value, and back.
        #[test]
        fn $name() {
            let count = 1000;
            let values: Vec<$r> = uniform(&mut rng(5), count, -1.0, 1.0)
                .iter()
                .map(|&v| v as $r)
                .collect();
            for shape in grid_stride_launches(count) {
                let mut spectra = vec![[<$r>::NAN; 2]; count];
                let mut back = vec![<$r>::NAN; count];
                let (vp, sp, bp) = (values.as_ptr(), spectra.as_mut_ptr(), back.as_mut_ptr());
                // SAFETY: the kernels' arguments; every buffer holds `count` elements.
                unsafe {
                    launch(shape, Threads::Serial, || $r2c(vp, sp, count));
                    launch(shape, Threads::Serial, || $c2r(sp, bp, count));
                }
                let want: Vec<Complex<$r>> = values.iter().map(|&v| [v, 0.0]).collect();
                assert_eq!(spectra, want);
                assert_eq!(back, values);
            }
        }
    };
}

length_one_test!(length_one_f32, f32, circ_r2c_len1_f32, circ_c2r_len1_f32);
length_one_test!(length_one_f64, f64, circ_r2c_len1_f64, circ_c2r_len1_f64);
