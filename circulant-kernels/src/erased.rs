//! Values whose float type (f32 or f64) is known only at run time, such as the spectra a
//! forward pass keeps for its backward pass: stored once, read back with their concrete type.

use candle_core::{bail, DType, Result};
use std::any::Any;
use std::sync::Arc;

/// A shared value of any `Send + Sync` type, read back with [`Erased::get`].
#[derive(Clone)]
pub(crate) struct Erased(Arc<dyn Any + Send + Sync>);

impl Erased {
    pub fn new<V: Any + Send + Sync>(value: V) -> Self {
        Self(Arc::new(value))
    }

    /// The value, if it is a `V`.
    pub fn get<V: Any>(&self) -> Option<&V> {
        self.0.downcast_ref()
    }
}

/// The common float type of an op's inputs: all f32 or all f64, otherwise an error naming
/// the op and the dtypes (the same on every device).
pub(crate) fn float_dtype(op: &str, dtypes: &[DType]) -> Result<DType> {
    match dtypes.first() {
        Some(&dt @ (DType::F32 | DType::F64)) if dtypes.iter().all(|&d| d == dt) => Ok(dt),
        _ => bail!("{op}: unsupported dtypes {dtypes:?}: inputs must all be f32 or all f64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_only_its_own_type() {
        let e = Erased::new(vec![1f32, 2.]);
        assert_eq!(e.get::<Vec<f32>>(), Some(&vec![1f32, 2.]));
        assert!(e.get::<Vec<f64>>().is_none());
    }

    #[test]
    fn float_dtype_accepts_one_float_type() {
        assert_eq!(float_dtype("op", &[DType::F64; 3]).unwrap(), DType::F64);
        let e = float_dtype("op", &[DType::F32, DType::F64])
            .unwrap_err()
            .to_string();
        assert!(e.contains("op: unsupported dtypes [F32, F64]"), "{e}");
        assert!(float_dtype("op", &[DType::BF16]).is_err());
        assert!(float_dtype("op", &[]).is_err());
    }
}
