//! Shape bookkeeping and input validation for the (block-)circulant projection, shared by the
//! CPU path (circulant-kernels) and the GPU path; built with or without the `cuda` feature.

use candle_core::{bail, Error, Result, Shape};

/// Sizes of one call: `x` is (n, q*b), `r` is (p, q, b), `y` is (n, p*b), all row-major: `n`
/// batch rows, a `p × q` grid of `b × b` circulant blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch rows.
    pub n: usize,
    /// Output blocks.
    pub p: usize,
    /// Input blocks.
    pub q: usize,
    /// Block size (FFT length).
    pub b: usize,
}

impl Dims {
    /// Validates `x: (..., q*b)` against `r: (p, q, b)` and returns the sizes.
    pub fn new(op: &str, x: &[usize], r: &[usize]) -> Result<Self> {
        let &[p, q, b] = r else {
            bail!("{op}: r must have rank 3 (p, q, b), got shape {r:?}")
        };
        if p == 0 || q == 0 || b == 0 {
            bail!("{op}: every dim of r (p, q, b) must be at least 1, got shape {r:?}")
        }
        let Some((&last, batch)) = x.split_last() else {
            bail!("{op}: x must have rank >= 1 (..., q*b), got a scalar")
        };
        if last != q * b {
            bail!(
                "{op}: x has shape {x:?} and r has shape {r:?}: the last dim of x must be q*b = {}",
                q * b
            )
        }
        Ok(Self {
            n: batch.iter().product(),
            p,
            q,
            b,
        })
    }

    /// Output shape for an input of shape `x`: the last dim becomes `p*b`.
    pub fn out_shape(&self, x: &Shape) -> Shape {
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.p * self.b;
        }
        Shape::from(dims)
    }

    /// Length of the packed backward result: `dx` (n*q*b) then `dr` (p*q*b).
    pub fn packed_grad_len(&self) -> usize {
        self.n * self.q * self.b + self.p * self.q * self.b
    }

    fn mul(&self, factors: &[usize]) -> Result<usize> {
        factors
            .iter()
            .try_fold(1usize, |acc, &f| acc.checked_mul(f))
            .ok_or_else(|| Error::Msg(format!("circulant: sizes {self:?} overflow usize")).bt())
    }

    /// Elements of `x`: n * q * b.
    pub fn x_len(&self) -> Result<usize> {
        self.mul(&[self.n, self.q, self.b])
    }

    /// Elements of `r`: p * q * b.
    pub fn r_len(&self) -> Result<usize> {
        self.mul(&[self.p, self.q, self.b])
    }

    /// Elements of `y` (and of its gradient): n * p * b.
    pub fn y_len(&self) -> Result<usize> {
        self.mul(&[self.n, self.p, self.b])
    }

    /// Bins of a real FFT's half spectrum: b/2 + 1.
    pub fn nf(&self) -> usize {
        self.b / 2 + 1
    }

    /// Whether some size is 0 (the output is empty or all zeros).
    pub fn is_degenerate(&self) -> bool {
        self.n == 0 || self.p == 0 || self.q == 0 || self.b == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_matching_shapes() {
        let d = Dims::new("op", &[2, 3, 12], &[5, 3, 4]).unwrap();
        assert_eq!(
            d,
            Dims {
                n: 6,
                p: 5,
                q: 3,
                b: 4
            }
        );
        assert_eq!(d.out_shape(&Shape::from((2, 3, 12))).dims(), &[2, 3, 20]);
        assert_eq!(d.packed_grad_len(), 6 * 12 + 5 * 12);
        assert_eq!((d.x_len().unwrap(), d.r_len().unwrap()), (6 * 12, 5 * 12));
        assert_eq!((d.y_len().unwrap(), d.nf()), (6 * 20, 3));
        assert!(!d.is_degenerate());
        let huge = Dims {
            n: usize::MAX,
            p: 2,
            q: 1,
            b: 1,
        };
        assert!(huge.y_len().unwrap_err().to_string().contains("overflow"));
    }

    #[test]
    fn rejects_bad_shapes_with_names() {
        let e = Dims::new("op", &[2, 10], &[2, 3, 4])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[2, 10]") && e.contains("[2, 3, 4]") && e.contains("12"),
            "{e}"
        );
        let e = Dims::new("op", &[], &[1, 1, 4]).unwrap_err().to_string();
        assert!(e.contains("scalar"), "{e}");
        let e = Dims::new("op", &[4], &[1, 4]).unwrap_err().to_string();
        assert!(e.contains("rank 3") && e.contains("[1, 4]"), "{e}");
        let e = Dims::new("op", &[0], &[1, 1, 0]).unwrap_err().to_string();
        assert!(e.contains("at least 1") && e.contains("[1, 1, 0]"), "{e}");
    }
}
