//! Learning-rate schedules with linear warmup, as a pure function of the global step.

use crate::cli::ScheduleKind;

/// Learning rate at each optimizer step.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    /// Steps of linear warmup from base_lr / warmup to base_lr.
    pub warmup: u64,
    /// Total steps of the run (epochs * steps per epoch).
    pub total_steps: u64,
    /// Step schedule: decay every `step_size` steps by `gamma`.
    pub step_size: u64,
    pub gamma: f64,
}

impl Schedule {
    /// Learning rate for the update at 0-based global step `step`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.base_lr * (step + 1) as f64 / self.warmup as f64;
        }
        match self.kind {
            ScheduleKind::Const => self.base_lr,
            ScheduleKind::Step => {
                let k = step / self.step_size.max(1);
                self.base_lr * self.gamma.powi(k.min(i32::MAX as u64) as i32)
            }
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup).max(1);
                let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
                0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: u64) -> Schedule {
        Schedule {
            kind,
            base_lr: 0.1,
            warmup,
            total_steps: 100,
            step_size: 30,
            gamma: 0.1,
        }
    }

    #[test]
    fn warmup_then_shape() {
        let c = sched(ScheduleKind::Const, 10);
        assert!((c.lr(0) - 0.01).abs() < 1e-12);
        assert!((c.lr(9) - 0.1).abs() < 1e-12);
        assert_eq!(c.lr(50), 0.1);
        let s = sched(ScheduleKind::Step, 0);
        assert!((s.lr(29) - 0.1).abs() < 1e-12);
        assert!((s.lr(30) - 0.01).abs() < 1e-12);
        assert!((s.lr(65) - 0.001).abs() < 1e-12);
        let k = sched(ScheduleKind::Cosine, 0);
        assert!((k.lr(0) - 0.1).abs() < 1e-12);
        assert!((k.lr(50) - 0.05).abs() < 1e-12);
        assert!(k.lr(99) < 0.001);
        let kw = sched(ScheduleKind::Cosine, 20);
        assert!((kw.lr(20) - 0.1).abs() < 1e-12);
        assert!((kw.lr(60) - 0.05).abs() < 1e-12);
    }
}
