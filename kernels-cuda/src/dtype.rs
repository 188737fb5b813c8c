//! Element types the GPU path computes in: f32 (cuFFT R2C / C2R) and f64 (D2Z / Z2D).

use candle_core::cuda::CudaDType;
use cudarc::cufft::{result::CufftError, sys, CudaFft};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A real element type with a cuFFT real-to-complex / complex-to-real transform pair.
pub trait FftFloat:
    sealed::Sealed + CudaDType + DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static
{
    /// The interleaved complex type of the half spectrum (`float2` / `double2`).
    type Complex: DeviceRepr + ValidAsZeroBits + Send + Sync + 'static;
    /// Suffix of the kernel names in `circulant.cu`.
    const SUFFIX: &'static str;
    /// The forward (real-to-complex) transform type.
    const FORWARD: sys::cufftType;
    /// The inverse (complex-to-real) transform type.
    const INVERSE: sys::cufftType;

    /// Converts a scale factor to this type.
    fn from_f64(v: f64) -> Self;

    /// Runs the forward transform planned in `plan`.
    fn exec_forward<S: DevicePtr<Self>, D: DevicePtrMut<Self::Complex>>(
        plan: &CudaFft,
        input: &S,
        output: &mut D,
    ) -> Result<(), CufftError>;

    /// Runs the inverse transform planned in `plan` (unnormalised; overwrites `input`).
    fn exec_inverse<S: DevicePtrMut<Self::Complex>, D: DevicePtrMut<Self>>(
        plan: &CudaFft,
        input: &mut S,
        output: &mut D,
    ) -> Result<(), CufftError>;
}

impl FftFloat for f32 {
    type Complex = sys::float2;
    const SUFFIX: &'static str = "f32";
    const FORWARD: sys::cufftType = sys::cufftType::CUFFT_R2C;
    const INVERSE: sys::cufftType = sys::cufftType::CUFFT_C2R;

    fn from_f64(v: f64) -> Self {
        v as f32
    }

    fn exec_forward<S: DevicePtr<f32>, D: DevicePtrMut<sys::float2>>(
        plan: &CudaFft,
        input: &S,
        output: &mut D,
    ) -> Result<(), CufftError> {
        plan.exec_r2c(input, output)
    }

    fn exec_inverse<S: DevicePtrMut<sys::float2>, D: DevicePtrMut<f32>>(
        plan: &CudaFft,
        input: &mut S,
        output: &mut D,
    ) -> Result<(), CufftError> {
        plan.exec_c2r(input, output)
    }
}

impl FftFloat for f64 {
    type Complex = sys::double2;
    const SUFFIX: &'static str = "f64";
    const FORWARD: sys::cufftType = sys::cufftType::CUFFT_D2Z;
    const INVERSE: sys::cufftType = sys::cufftType::CUFFT_Z2D;

    fn from_f64(v: f64) -> Self {
        v
    }

    fn exec_forward<S: DevicePtr<f64>, D: DevicePtrMut<sys::double2>>(
        plan: &CudaFft,
        input: &S,
        output: &mut D,
    ) -> Result<(), CufftError> {
        plan.exec_d2z(input, output)
    }

    fn exec_inverse<S: DevicePtrMut<sys::double2>, D: DevicePtrMut<f64>>(
        plan: &CudaFft,
        input: &mut S,
        output: &mut D,
    ) -> Result<(), CufftError> {
        plan.exec_z2d(input, output)
    }
}
