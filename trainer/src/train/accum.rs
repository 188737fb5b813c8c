//! The running training loss and accuracy of an epoch, summed on the device.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Running sums of an epoch's training loss and correct predictions, kept on the device. Adding
/// a step queues a few small device operations and waits for nothing; [`DeviceStats::read`]
/// copies the sums to the host, and so waits for every step added before it.
///
/// The sums are f64 and grow by `mean loss × samples` step by step: the additions, in the same
/// order, of the host-side accumulation they replace (`checkpoint::EpochAccum`), so that they
/// read the same values bit for bit.
pub struct DeviceStats {
    /// [loss sum, correct predictions]: f64, shape (2,).
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
    /// The mean loss of the last step added since the last reset; None before the first.
    pub last_loss: Option<f64>,
}

impl DeviceStats {
    /// Zero sums on `device`.
    pub fn new(device: &Device) -> Result<Self> {
        Ok(DeviceStats {
            sums: Tensor::zeros(2, DType::F64, device)?,
            last_loss: None,
        })
    }

    /// Restarts the sums at `loss_sum` and `correct`: zero for a new epoch, the saved values
    /// for one resumed part way.
    pub fn reset(&mut self, loss_sum: f64, correct: u64) -> Result<()> {
        self.sums = Tensor::new(&[loss_sum, correct as f64], self.sums.device())?;
        self.last_loss = None;
        Ok(())
    }

    /// Adds a step on the device: `loss`, the mean cross-entropy (a scalar) of `logits`
    /// (samples × classes) against `labels` (u32, one per sample). A sample counts as correct
    /// when its label is the argmax of its logits.
    pub fn add(&mut self, loss: &Tensor, logits: &Tensor, labels: &Tensor) -> Result<()> {
        let n = labels.dim(0)?;
        // Detached: the sums must not hold on to the step's autograd graph (its activations).
        let loss = loss.detach().to_dtype(DType::F64)?;
        let correct = logits
            .detach()
            .argmax(1)?
            .eq(labels)?
            .to_dtype(DType::F64)?
            .sum_all()?;
        let step = Tensor::stack(&[(&loss * n as f64)?, correct], 0)?;
        self.sums = (&self.sums + step)?;
        self.last_loss = Some(loss);
        Ok(())
    }

    /// Adds a step whose figures are on the host already (a data-parallel step, whose
    /// statistics were summed over the ranks): mean `loss` over `samples`, `correct` of them.
    pub fn add_host(&mut self, loss: f64, samples: u64, correct: u64) -> Result<()> {
        let device = self.sums.device().clone();
        let step = Tensor::new(&[loss * samples as f64, correct as f64], &device)?;
        self.sums = (&self.sums + step)?;
        self.last_loss = Some(Tensor::new(loss, &device)?);
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
        let (loss_sum, correct) = (values[0], values[1]);
        if !(correct >= 0.0 && correct.fract() == 0.0) {
            bail!("internal error: a correct-prediction count of {correct}");
        }
        Ok(StatsRead {
            loss_sum,
            correct: correct as u64,
            last_loss: values.get(2).copied(),
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
            last_loss: None,
        };
        assert_eq!(s.read()?, empty);
        // Rows 0 and 2 are right (a tie counts for the lower class), row 1 wrong.
        let logits = Tensor::new(&[[1.0f32, 0.0], [2.0, 3.0], [5.0, 5.0]], &dev)?;
        let labels = Tensor::new(&[0u32, 0, 0], &dev)?;
        s.add(&Tensor::new(0.5f32, &dev)?, &logits, &labels)?;
        s.add_host(0.25, 4, 3)?;
        let want = StatsRead {
            loss_sum: 0.5 * 3.0 + 0.25 * 4.0,
            correct: 2 + 3,
            last_loss: Some(0.25),
        };
        assert_eq!(s.read()?, want);
        s.reset(7.0, 9)?;
        assert_eq!(
            s.read()?,
            StatsRead {
                loss_sum: 7.0,
                correct: 9,
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
