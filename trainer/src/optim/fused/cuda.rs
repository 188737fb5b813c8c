//! The in-place ops on CUDA tensors: one kernels-cuda launch per tensor and op.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CudaStorage, DType, Layout, Result};
use kernels_cuda::{contiguous_view, FftFloat, Update};

/// Runs `update` on `dst` from one or two sources (a one-source update reads only the first),
/// all f32 or all f64 on one device.
pub(super) fn update(
    name: &str,
    update: Update,
    dst: &mut CudaStorage,
    dst_l: &Layout,
    srcs: &[(&CudaStorage, &Layout)],
) -> Result<()> {
    let dtype = dst.dtype();
    let id = dst.device().id();
    if srcs
        .iter()
        .any(|(s, _)| s.dtype() != dtype || s.device().id() != id)
    {
        bail!("{name}: f32 or f64 operands of one dtype on one device")
    }
    match dtype {
        DType::F32 => run::<f32>(name, update, dst, dst_l, srcs),
        DType::F64 => run::<f64>(name, update, dst, dst_l, srcs),
        _ => bail!("{name}: f32 or f64 operands of one dtype"),
    }
}

fn run<T: FftFloat>(
    name: &str,
    update: Update,
    dst: &mut CudaStorage,
    dst_l: &Layout,
    srcs: &[(&CudaStorage, &Layout)],
) -> Result<()> {
    let views = srcs
        .iter()
        .map(|&(s, l)| contiguous_view::<T>(name, s, l))
        .collect::<Result<Vec<_>>>()?;
    let (s1, s2) = match views.as_slice() {
        [s1] => (s1, s1),
        [s1, s2] => (s1, s2),
        _ => bail!("{name}: one or two sources, got {}", views.len()),
    };
    let Some((start, end)) = dst_l.contiguous_offsets() else {
        bail!("{name}: expected a contiguous tensor")
    };
    let dev = dst.device().clone();
    let mut d = dst.as_cuda_slice_mut::<T>()?.slice_mut(start..end);
    kernels_cuda::update_in_place(&dev, update, &mut d, s1, s2)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, InplaceOp2, InplaceOp3, Tensor, Var};
    use circulant_kernels::testing::{assert_close, cuda_device};

    use super::super::{supported, AdamWUpdate, Moment, SgdBuffer, SgdUpdate};
    use crate::optim::{AdamW, Optimizer, Sgd};

    type Apply = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<()>>;

    /// Pseudo-random values in [-1, 1) (or [0, 1) when `positive`): a small LCG.
    fn values(len: usize, seed: u64, positive: bool) -> Vec<f64> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                if positive {
                    u
                } else {
                    2.0 * u - 1.0
                }
            })
            .collect()
    }

    fn host(t: &Tensor) -> candle_core::Result<Vec<f64>> {
        t.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()
    }

    fn op2(op: impl InplaceOp2 + 'static) -> Apply {
        Box::new(move |d, s1, _| d.inplace_op2(s1, &op))
    }

    fn op3(op: impl InplaceOp3 + 'static) -> Apply {
        Box::new(move |d, s1, s2| d.inplace_op3(s1, s2, &op))
    }

    fn ops() -> Vec<(&'static str, Apply)> {
        let sgd = |momentum, nesterov| SgdUpdate {
            lr: 0.1,
            momentum,
            nesterov,
            weight_decay: 1e-3,
        };
        vec![
            (
                "moment",
                op2(Moment {
                    decay: 0.9,
                    square: false,
                }),
            ),
            (
                "moment squared",
                op2(Moment {
                    decay: 0.999,
                    square: true,
                }),
            ),
            (
                "adamw",
                op3(AdamWUpdate {
                    lr: 1e-2,
                    weight_decay: 0.01,
                    c1: 1.0 - 0.9f64.powi(3),
                    c2: 1.0 - 0.999f64.powi(3),
                    eps: 1e-8,
                }),
            ),
            (
                "sgd buffer",
                op3(SgdBuffer {
                    momentum: 0.9,
                    weight_decay: 1e-3,
                }),
            ),
            ("sgd plain", op3(sgd(0.0, false))),
            ("sgd nesterov", op3(sgd(0.9, true))),
            ("sgd momentum", op3(sgd(0.9, false))),
        ]
    }

    /// Each op on the GPU against the CPU op on the same operands, f32 and f64, at lengths that
    /// are not multiples of the block width; the GPU destination is a view at an offset into a
    /// larger tensor whose other elements must stay as they were.
    #[test]
    fn ops_match_the_cpu_ops() -> candle_core::Result<()> {
        let Some(dev) = cuda_device() else {
            return Ok(());
        };
        const PAD: usize = 5;
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-13 };
            for len in [1, 1000, 70_001] {
                let (dst, s1, s2) = (
                    values(len, 1, false),
                    values(len, 2, false),
                    values(len, 3, true),
                );
                let tensor = |v: &[f64], device: &Device| {
                    Tensor::from_slice(v, v.len(), device)?.to_dtype(dtype)
                };
                for (name, apply) in ops() {
                    let case = format!("{name} {dtype:?} len {len}");
                    let cpu = tensor(&dst, &Device::Cpu)?;
                    apply(
                        &cpu,
                        &tensor(&s1, &Device::Cpu)?,
                        &tensor(&s2, &Device::Cpu)?,
                    )?;

                    let padded = [vec![7.0; PAD], dst.clone(), vec![-7.0; PAD]].concat();
                    let whole = tensor(&padded, &dev)?;
                    let gpu = whole.narrow(0, PAD, len)?;
                    assert!(supported(&gpu), "{case}: not supported on CUDA");
                    apply(&gpu, &tensor(&s1, &dev)?, &tensor(&s2, &dev)?)?;

                    let whole = host(&whole)?;
                    assert_close(&case, &whole[PAD..PAD + len], &host(&cpu)?, tol);
                    assert_eq!(&whole[..PAD], [7.0; PAD], "{case}: before the view");
                    assert_eq!(&whole[PAD + len..], [-7.0; PAD], "{case}: after the view");
                }
            }
        }
        Ok(())
    }

    /// Three steps of AdamW and of SGD (Nesterov, weight decay) on CUDA, where they now take
    /// the fused kernels, against the same steps on the CPU.
    #[test]
    fn optimizer_steps_match_the_cpu() -> anyhow::Result<()> {
        let Some(dev) = cuda_device() else {
            return Ok(());
        };
        let init = values(4099, 4, false);
        let run = |device: &Device, adamw: bool| -> anyhow::Result<Vec<f64>> {
            let var = Var::from_tensor(
                &Tensor::from_slice(&init, init.len(), device)?.to_dtype(DType::F32)?,
            )?;
            let params = vec![("w".to_string(), var.clone())];
            let mut opt: Box<dyn Optimizer> = if adamw {
                Box::new(AdamW::new(params, 0.01)?)
            } else {
                Box::new(Sgd::new(params, 0.9, true, 1e-3)?)
            };
            for _ in 0..3 {
                let loss =
                    ((var.as_tensor().sqr()?.sum_all()? * 0.5)? + var.as_tensor().sum_all()?)?;
                opt.step(&loss.backward()?, 1e-2)?;
            }
            Ok(host(var.as_tensor())?)
        };
        for adamw in [true, false] {
            let what = if adamw { "adamw" } else { "sgd" };
            assert_close(what, &run(&dev, adamw)?, &run(&Device::Cpu, adamw)?, 1e-6);
        }
        Ok(())
    }
}
