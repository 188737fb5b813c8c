//! Batch norm kernels (batch_norm.cu), launched in kernels-cuda's order (statistics: 2
//! launches; forward: 1; backward: 3), against the float64 formulas.

mod common;

use common::{assert_close, grid_stride_launches, rng, to_f32, uniform};
use kernels_emu::{
    bn_backward_dx_f32, bn_finish_grads_f32, bn_finish_stats_f32, bn_forward_f32,
    bn_partial_grads_f32, bn_partial_stats_f32, launch, shapes, Threads,
};

const EPS: f64 = 1e-5;

struct Reference {
    mean: Vec<f64>,
    var: Vec<f64>,
    y: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
}

/// Train-mode batch norm and its gradients in float64, from the definitions.
fn reference(
    x: &[f64],
    dy: &[f64],
    gamma: &[f64],
    beta: &[f64],
    n: usize,
    c: usize,
    hw: usize,
) -> Reference {
    let m = (n * hw) as f64;
    let at = |ni: usize, ch: usize, e: usize| (ni * c + ch) * hw + e;
    let mut r = Reference {
        mean: vec![0.0; c],
        var: vec![0.0; c],
        y: vec![0.0; x.len()],
        dx: vec![0.0; x.len()],
        dgamma: vec![0.0; c],
        dbeta: vec![0.0; c],
    };
    for ch in 0..c {
        let idx: Vec<usize> = (0..n)
            .flat_map(|ni| (0..hw).map(move |e| at(ni, ch, e)))
            .collect();
        let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / m;
        let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / m;
        let inv_std = 1.0 / (var + EPS).sqrt();
        let xhat = |i: usize| (x[i] - mean) * inv_std;
        let dbeta: f64 = idx.iter().map(|&i| dy[i]).sum();
        let dgamma: f64 = idx.iter().map(|&i| dy[i] * xhat(i)).sum();
        for &i in &idx {
            r.y[i] = xhat(i) * gamma[ch] + beta[ch];
            r.dx[i] = gamma[ch] * inv_std * (dy[i] - dbeta / m - xhat(i) * dgamma / m);
        }
        (r.mean[ch], r.var[ch], r.dgamma[ch], r.dbeta[ch]) = (mean, var, dgamma, dbeta);
    }
    r
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Statistics, forward and backward through the kernels with `splits` reduction blocks per
/// channel, checked against `reference`.
fn check(n: usize, c: usize, hw: usize, splits: u32, offset: f64, seed: u64) {
    let what = format!("n {n}, c {c}, hw {hw}, splits {splits}");
    let mut rng = rng(seed);
    let len = n * c * hw;
    // An offset far from 0 tests the shifted one-pass variance.
    let x64: Vec<f64> = uniform(&mut rng, len, -1.0, 1.0)
        .iter()
        .map(|v| v + offset)
        .collect();
    let x = to_f32(&x64);
    let dy = to_f32(&uniform(&mut rng, len, -1.0, 1.0));
    let gamma = to_f32(&uniform(&mut rng, c, 0.5, 1.5));
    let beta = to_f32(&uniform(&mut rng, c, -0.5, 0.5));
    let want = reference(
        &widen(&x),
        &widen(&dy),
        &widen(&gamma),
        &widen(&beta),
        n,
        c,
        hw,
    );
    let (nu, cu, hwu) = (n as u32, c as u32, hw as u32);
    let (reduce, channels) = (shapes::bn_reduce(cu, splits), shapes::per_channel(cu));
    let (xp, dyp) = (x.as_ptr(), dy.as_ptr());
    let (gp, bp) = (gamma.as_ptr(), beta.as_ptr());

    let mut partial = vec![f64::NAN; 2 * c * splits as usize];
    let mut stats = vec![f32::NAN; 2 * c];
    let (pp, sp) = (partial.as_mut_ptr(), stats.as_mut_ptr());
    // SAFETY: the argument lists of batch_norm.cu; the buffers hold the sizes passed.
    unsafe {
        launch(reduce, Threads::Synced, || {
            bn_partial_stats_f32(xp, pp, nu, cu, hwu)
        });
        launch(channels, Threads::Serial, || {
            bn_finish_stats_f32(xp, pp, sp, nu, cu, hwu, splits)
        });
    }
    assert_close(
        &widen(&stats[..c]),
        &want.mean,
        1e-6,
        &format!("{what}: mean"),
    );
    assert_close(
        &widen(&stats[c..]),
        &want.var,
        1e-5,
        &format!("{what}: variance"),
    );

    for shape in grid_stride_launches(len) {
        let mut y = vec![f32::NAN; len];
        let yp = y.as_mut_ptr();
        // SAFETY: as above.
        unsafe {
            launch(shape, Threads::Serial, || {
                bn_forward_f32(xp, sp, gp, bp, yp, len, cu, hwu, EPS as f32)
            })
        };
        assert_close(&widen(&y), &want.y, 2e-5, &format!("{what}: y"));
    }

    let mut partial = vec![f64::NAN; 2 * c * splits as usize];
    let mut grads = vec![f32::NAN; 2 * c];
    let mut coef = vec![f32::NAN; 3 * c];
    let (pp, grp, cp) = (partial.as_mut_ptr(), grads.as_mut_ptr(), coef.as_mut_ptr());
    // SAFETY: as above.
    unsafe {
        launch(reduce, Threads::Synced, || {
            bn_partial_grads_f32(dyp, xp, sp, pp, nu, cu, hwu)
        });
        launch(channels, Threads::Serial, || {
            bn_finish_grads_f32(pp, sp, gp, grp, cp, nu, cu, hwu, splits, EPS)
        });
    }
    assert_close(
        &widen(&grads[..c]),
        &want.dgamma,
        1e-5,
        &format!("{what}: dgamma"),
    );
    assert_close(
        &widen(&grads[c..]),
        &want.dbeta,
        1e-5,
        &format!("{what}: dbeta"),
    );
    for shape in grid_stride_launches(len) {
        let mut dx = vec![f32::NAN; len];
        let dxp = dx.as_mut_ptr();
        // SAFETY: as above.
        unsafe {
            launch(shape, Threads::Serial, || {
                bn_backward_dx_f32(xp, dyp, sp, cp, dxp, len, cu, hwu)
            })
        };
        assert_close(&widen(&dx), &want.dx, 1e-4, &format!("{what}: dx"));
    }
}

#[test]
fn one_reduction_block_per_channel() {
    check(3, 5, 35, shapes::bn_splits(3 * 35), 0.0, 1);
}

#[test]
fn several_blocks_per_channel_some_of_them_empty() {
    // 105 values per channel over 40 blocks: 35 slices of 3, then 5 empty blocks.
    check(3, 5, 35, 40, 0.0, 2);
    check(2, 3, 49, 3, 0.0, 3);
}

#[test]
fn kernels_cuda_splits_of_a_large_channel() {
    // 2 * 12,300 values per channel: kernels-cuda takes 7 blocks, the last one short.
    let splits = shapes::bn_splits(2 * 12_300);
    assert_eq!(splits, 7);
    check(2, 2, 12_300, splits, 0.0, 4);
}

#[test]
fn statistics_of_values_far_from_zero() {
    check(4, 3, 64, 2, 100.0, 5);
}
