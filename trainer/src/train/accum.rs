//! The running training loss and accuracy of an epoch, summed on the device.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Running sums of an epoch's training loss, correct predictions and samples, kept on the
/// device. Adding a step queues a few small device operations and waits for nothing;
/// [`DeviceStats::read`] copies the sums to the host, and so waits for every step added before
/// it.
///
/// The sums are f64 and grow by `mean loss × samples` step by step: the additions, in the same
/// order, of the host-side accumulation they replace (`checkpoint::EpochAccum`), so that they
/// read the same values bit for bit.
pub struct DeviceStats {
    /// [loss sum, correct predictions, samples]: f64, shape (3,).
    sums: Tensor,
    /// The mean loss of the last step added (an f64 scalar), for the step records.
    last_loss: Option<Tensor>,
}

/// The sums as read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsRead {
    /// Cross-entropy summed over the samples (each step's mean loss × its samples).
    pub loss_sum: f64,
    /// Correct top-1 predictions.
    pub correct: u64,
    /// Samples of the steps.
    pub samples: u64,
    /// The mean loss of the last step added since the last reset; None before the first.
    pub last_loss: Option<f64>,
}

/// A step's figures on the device, f64 of shape (3,): `loss` (the mean cross-entropy of
/// `logits`, a scalar) × the samples, the correct predictions and the samples. A sample counts
/// as correct when its label (u32, one per row of `logits`) is the argmax of its logits.
pub fn step_figures(loss: &Tensor, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let n = labels.dim(0)?;
    // Detached: the sums must not hold on to the step's autograd graph (its activations).
    let loss = loss.detach().to_dtype(DType::F64)?;
    let correct = logits
        .detach()
        .argmax(1)?
        .eq(labels)?
        .to_dtype(DType::F64)?
        .sum_all()?;
    let samples = Tensor::new(n as f64, loss.device())?;
    Ok(Tensor::stack(&[(&loss * n as f64)?, correct, samples], 0)?)
}

impl DeviceStats {
    /// Zero sums on `device`.
    pub fn new(device: &Device) -> Result<Self> {
        Ok(DeviceStats {
            sums: Tensor::zeros(3, DType::F64, device)?,
            last_loss: None,
        })
    }

    /// Restarts the sums at `loss_sum`, `correct` and `samples`: zero for a new epoch, the
    /// saved values for one resumed part way.
    pub fn reset(&mut self, loss_sum: f64, correct: u64, samples: u64) -> Result<()> {
        let sums = [loss_sum, correct as f64, samples as f64];
        self.sums = Tensor::new(&sums, self.sums.device())?;
        self.last_loss = None;
        Ok(())
    }

    /// Adds a step on the device: `loss`, the mean cross-entropy (a scalar) of `logits`
    /// (samples × classes) against `labels` (u32, one per sample); see [`step_figures`].
    pub fn add(&mut self, loss: &Tensor, logits: &Tensor, labels: &Tensor) -> Result<()> {
        self.add_figures(&step_figures(loss, logits, labels)?)
    }

    /// Adds a step's figures as [`step_figures`] lays them out, in any float dtype (a
    /// data-parallel step's, summed over the ranks).
    pub fn add_figures(&mut self, figures: &Tensor) -> Result<()> {
        let figures = figures.to_dtype(DType::F64)?;
        self.sums = (&self.sums + &figures)?;
        let (loss_sum, samples) = (figures.get(0)?, figures.get(2)?);
        // Over no samples (possible only for a bad data-parallel step) the mean is NaN.
        self.last_loss = Some((loss_sum / samples)?);
        Ok(())
    }

    /// Copies the sums (and the last step's loss) to the host in one transfer: waits for the
    /// device to finish every step added so far.
    pub fn read(&self) -> Result<StatsRead> {
        let values = match &self.last_loss {
            Some(l) => Tensor::cat(&[&self.sums, &l.reshape(1)?], 0)?,
            None => self.sums.clone(),
        }
        .to_vec1::<f64>()?;
        let count = |what: &str, v: f64| {
            if v >= 0.0 && v.fract() == 0.0 {
                Ok(v as u64)
            } else {
                bail!("internal error: a {what} count of {v}")
            }
        };
        Ok(StatsRead {
            loss_sum: values[0],
            correct: count("correct-prediction", values[1])?,
            samples: count("sample", values[2])?,
            last_loss: values.get(3).copied(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_steps_and_restarts() -> Result<()> {
        let dev = Device::Cpu;
        let mut s = DeviceStats::new(&dev)?;
        let empty = StatsRead {
            loss_sum: 0.0,
            correct: 0,
            samples: 0,
            last_loss: None,
        };
        assert_eq!(s.read()?, empty);
        // Rows 0 and 2 are right (a tie counts for the lower class), row 1 wrong.
        let logits = Tensor::new(&[[1.0f32, 0.0], [2.0, 3.0], [5.0, 5.0]], &dev)?;
        let labels = Tensor::new(&[0u32, 0, 0], &dev)?;
        s.add(&Tensor::new(0.5f32, &dev)?, &logits, &labels)?;
        // A data-parallel step's figures, summed over the ranks in f32.
        s.add_figures(&Tensor::new(&[1.0f32, 3.0, 4.0], &dev)?)?;
        let want = StatsRead {
            loss_sum: 0.5 * 3.0 + 1.0,
            correct: 2 + 3,
            samples: 3 + 4,
            last_loss: Some(0.25),
        };
        assert_eq!(s.read()?, want);
        s.reset(7.0, 9, 11)?;
        assert_eq!(
            s.read()?,
            StatsRead {
                loss_sum: 7.0,
                correct: 9,
                samples: 11,
                last_loss: None
            }
        );
        Ok(())
    }

    /// The sums keep numbers, not the autograd graph of the steps (which holds every
    /// activation of a forward pass: kept, it grew the memory with every step of an epoch).
    #[test]
    fn sums_do_not_hold_the_steps_graphs() -> Result<()> {
        let dev = Device::Cpu;
        let w = candle_core::Var::new(&[[1.0f32, -1.0], [0.5, 2.0]], &dev)?;
        let logits = w.as_tensor().affine(2.0, 0.0)?;
        let loss = logits.sum_all()?;
        assert!(loss.track_op() && logits.track_op());
        let mut s = DeviceStats::new(&dev)?;
        s.add(&loss, &logits, &Tensor::new(&[0u32, 1], &dev)?)?;
        assert!(!s.sums.track_op());
        assert!(!s.last_loss.as_ref().is_some_and(Tensor::track_op));
        assert_eq!(s.read()?.correct, 2);
        Ok(())
    }
}
