//! The dropout mask kernel (dropout.cu) against circulant-model's CPU mask: the same bits.

mod common;

use candle_core::{DType, Device, Tensor};
use common::grid_stride_launches;
use kernels_emu::{dropout_mask_f32, launch, Threads};

#[test]
fn dropout_mask_matches_the_cpu_mask() -> candle_core::Result<()> {
    for (len, p, seed) in [
        (1000, 0.3f32, 1u64),
        (777, 0.5, 0xdead_beef),
        (64, 0.9, u64::MAX),
    ] {
        let ones = Tensor::ones(len, DType::F32, &Device::Cpu)?;
        let want = circulant_model::dropout(&ones, p, seed)
            .map_err(candle_core::Error::wrap)?
            .to_vec1::<f32>()?;
        // As circulant-model's dropout passes them to kernels-cuda.
        let threshold = (f64::from(p) * 4_294_967_296.0) as u32;
        let scale = 1.0 / (1.0 - p);
        for shape in grid_stride_launches(len) {
            let mut got = vec![f32::NAN; len];
            let out = got.as_mut_ptr();
            // SAFETY: dropout_mask_f32's arguments; `got` holds `len` values.
            unsafe {
                launch(shape, Threads::Serial, || {
                    dropout_mask_f32(out, len, seed, threshold, scale)
                })
            };
            assert_eq!(got, want, "len {len}, p {p}, seed {seed}");
        }
        let kept = want.iter().filter(|&&v| v != 0.0).count() as f32 / len as f32;
        assert!((kept - (1.0 - p)).abs() < 0.1, "kept {kept} at p {p}");
    }
    Ok(())
}
