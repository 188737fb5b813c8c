//! Gradient buckets: consecutive tensors flattened into a few large contiguous ones, so that one
//! all-reduce call moves many gradients (PyTorch DDP's buckets, 25 MiB by default).

use std::ops::Range;

use anyhow::{bail, Result};
use candle_core::{Shape, Tensor};

/// Largest bucket, in bytes.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Groups consecutive tensors of `numels` elements into buckets of at most `max_elems`
/// elements; a larger tensor is a bucket of its own. Every index is in exactly one bucket.
pub fn plan(numels: &[usize], max_elems: usize) -> Vec<Range<usize>> {
    let mut buckets = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, &n) in numels.iter().enumerate() {
        if i > start && size + n > max_elems {
            buckets.push(start..i);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < numels.len() {
        buckets.push(start..numels.len());
    }
    buckets
}

/// The tensors, flattened and concatenated into one contiguous 1-D tensor.
pub fn flatten(tensors: &[Tensor]) -> Result<Tensor> {
    let Some(first) = tensors.first() else {
        bail!("cannot flatten an empty bucket");
    };
    if tensors
        .iter()
        .any(|t| t.dtype() != first.dtype() || !t.device().same_device(first.device()))
    {
        bail!("a bucket mixes dtypes or devices");
    }
    let flat = tensors
        .iter()
        .map(|t| t.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&flat, 0)?.contiguous()?)
}

/// Splits a tensor made by [`flatten`] back into tensors of `shapes`.
pub fn unflatten(flat: &Tensor, shapes: &[Shape]) -> Result<Vec<Tensor>> {
    let total: usize = shapes.iter().map(|s| s.elem_count()).sum();
    if flat.rank() != 1 || flat.elem_count() != total {
        bail!(
            "a bucket of shape {:?} cannot hold tensors of {total} elements",
            flat.dims()
        );
    }
    let mut start = 0;
    shapes
        .iter()
        .map(|s| {
            let n = s.elem_count();
            let t = flat.narrow(0, start, n)?.reshape(s.clone())?;
            start += n;
            Ok(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn plan_packs_consecutive_tensors_under_the_cap() {
        assert_eq!(plan(&[], 10), Vec::<Range<usize>>::new());
        assert_eq!(plan(&[3, 3, 3, 3], 10), vec![0..3, 3..4]);
        assert_eq!(plan(&[20, 1, 1, 30, 2], 10), vec![0..1, 1..3, 3..4, 4..5]);
        assert_eq!(plan(&[5, 5], 10), vec![0..2]);
        assert_eq!(plan(&[0, 0, 7], 7), vec![0..3]);
        // mlp's parameters in one 25 MiB bucket; alexnet's dense fc6 alone.
        let elems = BUCKET_BYTES / 4;
        assert_eq!(
            plan(&[784 * 1024, 1024, 1024 * 1024, 1024, 10240, 10], elems).len(),
            1
        );
        assert_eq!(
            plan(&[9216 * 4096, 4096, 4096 * 4096], elems),
            vec![0..1, 1..2, 2..3]
        );
    }

    #[test]
    fn flatten_then_unflatten_gives_the_tensors_back() -> Result<()> {
        let dev = Device::Cpu;
        let shapes: Vec<Shape> = vec![
            (3, 4).into(),
            ().into(),
            (2, 3, 5).into(),
            (0,).into(),
            (7,).into(),
            (1, 1, 2, 2).into(),
        ];
        let tensors = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Ok(Tensor::randn(i as f32, 1.0, s.clone(), &dev)?))
            .collect::<Result<Vec<_>>>()?;
        for bucket in plan(
            &shapes.iter().map(|s| s.elem_count()).collect::<Vec<_>>(),
            20,
        ) {
            let flat = flatten(&tensors[bucket.clone()])?;
            assert_eq!(flat.rank(), 1);
            assert!(flat.is_contiguous());
            let back = unflatten(&flat, &shapes[bucket.clone()])?;
            for (a, b) in back.iter().zip(&tensors[bucket]) {
                assert_eq!(a.dims(), b.dims());
                let (a, b) = (
                    a.flatten_all()?.to_vec1::<f32>()?,
                    b.flatten_all()?.to_vec1::<f32>()?,
                );
                assert_eq!(a, b);
            }
        }
        // Non-contiguous inputs (a transpose) flatten in their logical order.
        let t = Tensor::arange(0f32, 6., &dev)?.reshape((2, 3))?.t()?;
        let flat = flatten(std::slice::from_ref(&t))?;
        assert_eq!(flat.to_vec1::<f32>()?, vec![0., 3., 1., 4., 2., 5.]);
        assert_eq!(
            unflatten(&flat, &[(3, 2).into()])?[0].to_vec2::<f32>()?,
            t.to_vec2::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn bad_buckets_are_errors() {
        let dev = Device::Cpu;
        assert!(flatten(&[]).is_err());
        let a = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let b = Tensor::zeros(2, DType::F64, &dev).unwrap();
        assert!(flatten(&[a.clone(), b]).is_err());
        assert!(unflatten(&a, &[(3,).into()]).is_err());
        assert!(unflatten(&a.reshape((1, 2)).unwrap(), &[(2,).into()]).is_err());
    }
}
