//! Max pool kernels (max_pool.cu) against circulant-model's CPU op: the same values and the
//! same gradients, bit for bit (ties go to the first maximum in both).

mod common;

use candle_core::{Device, Tensor, Var};
use common::{grid_stride_launches, rng};
use kernels_emu::{launch, max_pool_bwd_f32, max_pool_fwd_f32, Threads};
use rand::Rng;

/// `(n, c, h, w, k, stride)`: overlapping (AlexNet's 3/2), tiling, stride 1, odd and
/// non-square sizes, windows that leave a margin.
const CASES: [(usize, usize, usize, usize, usize, usize); 5] = [
    (2, 3, 9, 7, 3, 2),
    (1, 2, 8, 8, 2, 2),
    (2, 2, 6, 5, 3, 1),
    (1, 3, 11, 13, 4, 3),
    (3, 1, 5, 5, 5, 5),
];

#[test]
fn max_pool_matches_the_cpu_op() -> candle_core::Result<()> {
    let mut rng = rng(7);
    for (case, &(n, c, h, w, k, s)) in CASES.iter().enumerate() {
        for relu in [false, true] {
            // Few distinct values, so windows often hold tied maxima (and, with relu, windows
            // whose maximum is not positive).
            let x: Vec<f32> = (0..n * c * h * w)
                .map(|_| rng.random_range(-3i32..4) as f32 * 0.5)
                .collect();
            let xv = Var::from_vec(x.clone(), (n, c, h, w), &Device::Cpu)?;
            let y = if relu {
                circulant_model::max_pool2d_relu(xv.as_tensor(), k, s)
            } else {
                circulant_model::max_pool2d(xv.as_tensor(), k, s)
            }
            .map_err(candle_core::Error::wrap)?;
            let (_, _, oh, ow) = y.dims4()?;
            let gy: Vec<f32> = (0..y.elem_count())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let gy_t = Tensor::from_vec(gy.clone(), y.shape(), &Device::Cpu)?;
            let grads = (y.clone() * gy_t)?.sum_all()?.backward()?;
            let want_y = y.flatten_all()?.to_vec1::<f32>()?;
            let want_dx = grads.get(xv.as_tensor()).expect("x has a gradient");
            let want_dx = want_dx.flatten_all()?.to_vec1::<f32>()?;

            let planes = n * c;
            for shape in grid_stride_launches(planes * oh * ow) {
                let mut got = vec![f32::NAN; want_y.len()];
                let (xp, yp) = (x.as_ptr(), got.as_mut_ptr());
                // SAFETY: max_pool_fwd_f32's arguments; x and y hold the sizes passed.
                unsafe {
                    launch(shape, Threads::Serial, || {
                        max_pool_fwd_f32(xp, yp, planes, h, w, oh, ow, k, s, relu.into())
                    })
                };
                assert_eq!(got, want_y, "case {case}, relu {relu}: forward");
            }
            for shape in grid_stride_launches(planes * h * w) {
                let mut got = vec![f32::NAN; x.len()];
                let (xp, gp, dp) = (x.as_ptr(), gy.as_ptr(), got.as_mut_ptr());
                // SAFETY: max_pool_bwd_f32's arguments; the buffers hold the sizes passed.
                unsafe {
                    launch(shape, Threads::Serial, || {
                        max_pool_bwd_f32(xp, gp, dp, planes, h, w, oh, ow, k, s, relu.into())
                    })
                };
                assert_eq!(got, want_dx, "case {case}, relu {relu}: gradient");
            }
        }
    }
    Ok(())
}
