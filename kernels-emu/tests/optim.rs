//! Optimizer update kernels (optim.cu) against the documented formulas evaluated in Rust in the
//! same order (Rust never fuses multiply-adds): the same bits, in f32 and f64.

mod common;

use common::{grid_stride_launches, rng, uniform};
use kernels_emu::{launch, Threads};

macro_rules! optim_test {
    ($name:ident, $t:ty, $ema:ident, $adamw:ident, $buffer:ident, $update:ident) => {
        #[test]
        fn $name() {
            use kernels_emu::{$adamw, $buffer, $ema, $update};
            let len = 1031;
            let mut rng = rng(3);
            let vals = |rng: &mut _, lo, hi| -> Vec<$t> {
                uniform(rng, len, lo, hi).iter().map(|&x| x as $t).collect()
            };
            let (w0, g, m) = (
                vals(&mut rng, -1.0, 1.0),
                vals(&mut rng, -1.0, 1.0),
                vals(&mut rng, -0.1, 0.1),
            );
            let v = vals(&mut rng, 0.0, 0.01);
            let buf = vals(&mut rng, -0.5, 0.5);
            let (a, b, decay, lr, c1, c2, eps, mu, wd) = (
                0.9 as $t,
                0.1 as $t,
                0.999 as $t,
                0.003 as $t,
                0.271 as $t,
                0.0199 as $t,
                1e-8 as $t,
                0.9 as $t,
                5e-4 as $t,
            );

            // Runs `kernel` on a copy of `dst` with both launches; both must give `want`.
            let check = |what: &str, dst: &[$t], want: &[$t], kernel: &dyn Fn(*mut $t)| {
                for shape in grid_stride_launches(len) {
                    let mut got = dst.to_vec();
                    let p = got.as_mut_ptr();
                    // SAFETY: each kernel below gets `len`-element buffers.
                    unsafe { launch(shape, Threads::Serial, || kernel(p)) };
                    assert_eq!(got, want, "{what}, {shape:?}");
                }
            };
            let (gp, mp, vp, bp, wp) = (
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                buf.as_ptr(),
                w0.as_ptr(),
            );

            for square in [0, 1] {
                let want: Vec<$t> = (0..len)
                    .map(|i| a * m[i] + b * if square == 1 { g[i] * g[i] } else { g[i] })
                    .collect();
                check("ema", &m, &want, &|d| unsafe {
                    $ema(d, gp, len, a, b, square)
                });
            }
            let want: Vec<$t> = (0..len)
                .map(|i| w0[i] * decay - lr * ((m[i] / c1) / ((v[i] / c2).sqrt() + eps)))
                .collect();
            check("adamw", &w0, &want, &|d| unsafe {
                $adamw(d, mp, vp, len, decay, lr, c1, c2, eps)
            });
            let want: Vec<$t> = (0..len)
                .map(|i| mu * buf[i] + (g[i] + wd * w0[i]))
                .collect();
            check("sgd buffer", &buf, &want, &|d| unsafe {
                $buffer(d, gp, wp, len, mu, wd)
            });
            for rule in [0, 1, 2] {
                let want: Vec<$t> = (0..len)
                    .map(|i| {
                        let d = match rule {
                            0 => g[i] + wd * w0[i],
                            1 => (g[i] + wd * w0[i]) + mu * buf[i],
                            _ => buf[i],
                        };
                        w0[i] - lr * d
                    })
                    .collect();
                check(&format!("sgd rule {rule}"), &w0, &want, &|d| unsafe {
                    $update(d, gp, bp, len, lr, mu, wd, rule)
                });
            }
        }
    };
}

optim_test!(
    optim_f32_matches_the_formulas,
    f32,
    optim_ema_f32,
    optim_adamw_f32,
    optim_sgd_buffer_f32,
    optim_sgd_update_f32
);
optim_test!(
    optim_f64_matches_the_formulas,
    f64,
    optim_ema_f64,
    optim_adamw_f64,
    optim_sgd_buffer_f64,
    optim_sgd_update_f64
);
