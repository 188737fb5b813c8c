//! Shape bookkeeping and input validation for the (block-)circulant projection.

use candle_core::{bail, Result, Shape};

/// Sizes of one call: `n` batch rows, a `p × q` grid of `b × b` circulant blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub n: usize,
    pub p: usize,
    pub q: usize,
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
