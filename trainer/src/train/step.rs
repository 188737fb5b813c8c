//! One optimizer step: the training computation shared by `trainer train` and `trainer bench`.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use circulant_model::{Mode, Model};

use crate::cli::OptimizerKind;
use crate::data::{derive_seed, Shape};
use crate::dist::GradSync;
use crate::optim::{AdamW, Optimizer, Schedule, Sgd};
use crate::train::accum::{step_figures, DeviceStats};
use crate::train::settings::TrainConfig;
use crate::train::upload::Upload;

/// A model with its optimizer and learning-rate schedule.
pub struct Trainer {
    pub model: Model,
    pub optimizer: Box<dyn Optimizer>,
    schedule: Schedule,
    seed: u64,
    shape: Shape,
    /// Train in evaluation mode: no dropout (networks without batch norm only).
    no_dropout: bool,
    /// Dtype of the forward pass's activations (f32, or bf16 for mixed precision).
    compute: candle_core::DType,
    /// Set in a data-parallel run: the gradient sums over the ranks.
    dist: Option<Dist>,
    /// The running loss and correct predictions of the steps taken, on the device: every step
    /// adds to them, the caller reads and resets them.
    pub stats: DeviceStats,
    upload: Upload,
}

struct Dist {
    sync: GradSync,
    /// The trainable parameters, in the order their gradients are summed.
    params: Vec<Var>,
}

/// What one step computed. Its loss and correct predictions went into [`Trainer::stats`].
pub struct StepResult {
    /// Learning rate of the step.
    pub lr: f64,
    /// Samples of the batch (over every rank).
    pub samples: u64,
}

impl Trainer {
    /// Wraps `model` with the optimizer and schedule of `config`, for epochs of
    /// `steps_per_epoch` steps.
    pub fn new(model: Model, config: &TrainConfig, steps_per_epoch: u64) -> Result<Self> {
        let a = &config.adjustable;
        if config.run.no_dropout
            && model
                .tensors()
                .iter()
                .any(|(n, _)| n.ends_with("running_mean"))
        {
            bail!(
                "--no-dropout trains with the evaluation forward pass, which would freeze the \
                 batch norm of {}",
                config.run.network
            );
        }
        config.run.precision.check_device(model.device())?;
        let optimizer: Box<dyn Optimizer> = match config.run.optimizer {
            OptimizerKind::Sgd => Box::new(Sgd::new(
                model.trainable(),
                a.momentum,
                a.nesterov,
                a.weight_decay,
            )?),
            OptimizerKind::Adamw => Box::new(AdamW::new(model.trainable(), a.weight_decay)?),
        };
        let schedule = Schedule {
            kind: a.schedule,
            base_lr: a.lr,
            warmup: a.warmup,
            total_steps: a.epochs as u64 * steps_per_epoch,
            step_size: a.step_epochs as u64 * steps_per_epoch,
            gamma: a.gamma,
        };
        let shape = Shape::of(&model.config().input);
        let stats = DeviceStats::new(model.device())?;
        let upload = Upload::new(model.device());
        Ok(Trainer {
            model,
            optimizer,
            schedule,
            seed: config.run.seed,
            shape,
            no_dropout: config.run.no_dropout,
            compute: config.run.precision.compute_dtype(),
            dist: None,
            stats,
            upload,
        })
    }

    /// Makes the steps data-parallel: gradients are summed over the ranks of `sync`.
    pub fn with_sync(mut self, sync: GradSync) -> Self {
        let params = self.model.trainable().into_iter().map(|(_, v)| v).collect();
        self.dist = Some(Dist { sync, params });
        self
    }

    /// Whether every tensor of the model (weights and running statistics) is finite: one small
    /// read from the device.
    pub fn weights_finite(&self) -> Result<bool> {
        // 0 × x is 0 for a finite x and NaN for inf or NaN; the sum keeps any NaN.
        let zeros = self
            .model
            .tensors()
            .into_iter()
            .map(|(_, t)| t.affine(0.0, 0.0)?.to_dtype(DType::F32)?.sum_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        if zeros.is_empty() {
            return Ok(true);
        }
        Ok(Tensor::stack(&zeros, 0)?.sum_all()?.to_scalar::<f32>()? == 0.0)
    }

    /// Learning rate at `global_step`.
    pub fn lr(&self, global_step: u64) -> f64 {
        self.schedule.lr(global_step)
    }

    /// The forward mode of step `global_step`. Rank 0 (and a one-process run) draws the
    /// dropout masks of the step's seed; other ranks mix in their rank, so that their masks
    /// differ.
    fn mode(&self, global_step: u64) -> Mode {
        if self.no_dropout {
            return Mode::Eval;
        }
        let mut dropout_seed = derive_seed(self.seed, &[0xD0, global_step]);
        if let Some(rank) = self.dist.as_ref().map(|d| d.sync.rank()).filter(|&r| r > 0) {
            dropout_seed = derive_seed(dropout_seed, &[rank as u64]);
        }
        Mode::Train { dropout_seed }
    }

    /// A batch of normalised CHW images (concatenated) as the input tensor of a step, on the
    /// model's device. On a GPU the copy is queued without waiting for the steps before it.
    pub fn upload(&mut self, images: Vec<f32>) -> Result<Tensor> {
        self.upload.images(images, self.shape)
    }

    /// Step number `global_step` (0-based) on the images `x` (from [`Trainer::upload`]) with
    /// `labels`: forward, cross-entropy, backward, optimizer update. Waits for nothing on the
    /// device.
    pub fn step(&mut self, x: &Tensor, labels: &[u32], global_step: u64) -> Result<StepResult> {
        self.step_part(Some(x), labels, labels.len(), global_step)
    }

    /// Step `global_step` on this rank's part (`x` and `labels`, possibly none) of a global
    /// batch of `global_batch` samples. In a data-parallel run each rank weighs its mean loss by
    /// its share of the batch, and the gradients are summed over the ranks: the update is the
    /// one-process update on the whole batch.
    ///
    /// The step only queues work on the device; its loss, correct predictions and samples go
    /// into [`Trainer::stats`] (in a data-parallel step, summed over the ranks), where a read
    /// reveals a non-finite loss or ranks that disagree. With NCCL the sums stay on the device;
    /// a collective on the host waits for them.
    pub fn step_part(
        &mut self,
        x: Option<&Tensor>,
        labels: &[u32],
        global_batch: usize,
        global_step: u64,
    ) -> Result<StepResult> {
        let n = labels.len();
        if self.dist.is_none() && n != global_batch {
            bail!("internal error: a one-process step on {n} of {global_batch} samples");
        }
        if global_batch == 0 || n > global_batch {
            bail!("internal error: a step on {n} of {global_batch} samples");
        }
        let lr = self.lr(global_step);
        let mode = self.mode(global_step);
        let device = self.model.device().clone();
        // Forward and backward on this rank's samples.
        let mut local = None;
        if let Some(x) = x.filter(|_| n > 0) {
            if x.dim(0)? != n {
                bail!("internal error: {} images for {n} labels", x.dim(0)?);
            }
            let y = Tensor::from_slice(labels, n, &device)?;
            let logits = self.model.forward_mixed(x, mode, self.compute)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            local = Some((logits, loss, y));
        }
        let Some(dist) = &mut self.dist else {
            let Some((logits, loss, y)) = local else {
                bail!("internal error: an empty one-process step");
            };
            self.stats.add(&loss, &logits, &y)?;
            let grads = loss.backward()?;
            self.optimizer.step(&grads, lr)?;
            return Ok(StepResult {
                lr,
                samples: n as u64,
            });
        };
        // Data-parallel: gradients of (n / global_batch) × mean loss, and the figures of the
        // step (loss sum, correct, samples), summed over the ranks in one go, on the device.
        let mut tensors = Vec::with_capacity(dist.params.len() + 1);
        let figures = match &local {
            Some((logits, loss, y)) => {
                let grads = (loss * (n as f64 / global_batch as f64))?.backward()?;
                for p in &dist.params {
                    tensors.push(match grads.get(p.as_tensor()) {
                        Some(g) => g.clone(),
                        None => p.as_tensor().zeros_like()?,
                    });
                }
                step_figures(loss, logits, y)?.to_dtype(DType::F32)?
            }
            None => {
                for p in &dist.params {
                    tensors.push(p.as_tensor().zeros_like()?);
                }
                Tensor::zeros(3, DType::F32, &device)?
            }
        };
        tensors.push(figures);
        let mut summed = dist.sync.sum(&tensors)?;
        let Some(figures) = summed.pop() else {
            bail!("internal error: no step figures");
        };
        self.stats.add_figures(&figures)?;
        let mut grads = GradStore::default();
        for (p, g) in dist.params.iter().zip(summed) {
            grads.insert(p.as_tensor(), g);
        }
        self.optimizer.step(&grads, lr)?;
        Ok(StepResult {
            lr,
            samples: global_batch as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{DatasetKind, TrainArgs};
    use crate::dist::reduce::testing::thread_group;
    use crate::dist::reduce::Collective;
    use crate::dist::shard::EpochShard;
    use crate::eval;
    use crate::train::accum::StatsRead;
    use crate::train::settings;
    use circulant_model::{ModelConfig, Network};

    const SAMPLES: usize = 52;
    const D: usize = 28 * 28;

    /// Deterministic images and labels.
    fn data() -> (Vec<f32>, Vec<u32>) {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        let images = (0..SAMPLES * D).map(|_| next() - 0.5).collect();
        let labels = (0..SAMPLES).map(|_| (next() * 10.0) as u32 % 10).collect();
        (images, labels)
    }

    fn trainer(optimizer: &str) -> Trainer {
        let args = TrainArgs {
            dataset: Some(DatasetKind::Synthetic),
            model: Some(Network::Mlp),
            optimizer: Some(match optimizer {
                "sgd" => OptimizerKind::Sgd,
                _ => OptimizerKind::Adamw,
            }),
            lr: Some(if optimizer == "sgd" { 0.05 } else { 1e-3 }),
            no_dropout: true,
            ..Default::default()
        };
        let (config, _) = settings::resolve(&args, None).unwrap();
        let mc = ModelConfig::new(Network::Mlp, config.run.head, 10, 3);
        let model = Model::new(mc, &candle_core::Device::Cpu).unwrap();
        Trainer::new(model, &config, 10).unwrap()
    }

    /// The weights and the statistics read after an epoch of `world` ranks × `batch`,
    /// in-process ranks as threads.
    fn train(world: usize, batch: usize, optimizer: &'static str) -> (Vec<Vec<f32>>, StatsRead) {
        let runs: Vec<_> = thread_group(world)
            .into_iter()
            .map(|comm| {
                std::thread::spawn(move || {
                    let (images, labels) = data();
                    let rank = comm.rank();
                    let mut t = trainer(optimizer).with_sync(GradSync::new(Box::new(comm)));
                    let shard = EpochShard::new(SAMPLES, batch, world, rank, 0, 0).unwrap();
                    for k in 0..shard.steps() {
                        let part = shard.rank_range(k);
                        let x = t
                            .upload(images[part.start * D..part.end * D].to_vec())
                            .unwrap();
                        let x = Some(&x).filter(|_| !part.is_empty());
                        let g = shard.global_range(k).len();
                        let r = t.step_part(x, &labels[part], g, k as u64).unwrap();
                        assert_eq!(r.samples, g as u64);
                    }
                    (weights(&t), t.stats.read().unwrap())
                })
            })
            .collect();
        let mut out: Vec<_> = runs.into_iter().map(|h| h.join().unwrap()).collect();
        for (w, stats) in &out[1..] {
            assert_eq!(*w, out[0].0, "the ranks' weights differ");
            assert_eq!(*stats, out[0].1, "the ranks' statistics differ");
        }
        out.swap_remove(0)
    }

    fn weights(t: &Trainer) -> Vec<Vec<f32>> {
        t.model
            .trainable()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Ranks × per-rank batch give the weights of one process with the whole batch, also over
    /// an uneven last batch (52 = 3 × 16 + 4: 3 ranks of 16, then 2 + 1 + 1, or 4 ranks of 4
    /// then 1 + 1 + 1 + 1, or 5 ranks of 5 and a last batch of 2 + 0 + 0 + ...).
    #[test]
    fn ranks_together_take_the_one_process_step() {
        for optimizer in ["sgd", "adamw"] {
            for (world, batch) in [(2, 8), (3, 16), (4, 4), (5, 5)] {
                let one = {
                    let (images, labels) = data();
                    let mut t = trainer(optimizer);
                    let g = world * batch;
                    for (k, (x, y)) in images.chunks(g * D).zip(labels.chunks(g)).enumerate() {
                        let x = t.upload(x.to_vec()).unwrap();
                        t.step(&x, y, k as u64).unwrap();
                    }
                    (weights(&t), t.stats.read().unwrap())
                };
                let many = train(world, batch, optimizer);
                let diff = max_diff(&one.0, &many.0);
                assert!(
                    diff < 1e-5,
                    "{optimizer}, {world} x {batch}: weights differ by {diff}"
                );
                // The statistics, summed on the device over the ranks (the loss in f32).
                let (a, b) = (one.1, many.1);
                assert_eq!((a.correct, a.samples), (b.correct, b.samples));
                assert_eq!(a.samples, SAMPLES as u64);
                assert!((a.loss_sum - b.loss_sum).abs() < 1e-5 * a.loss_sum);
                let (la, lb) = (a.last_loss.unwrap(), b.last_loss.unwrap());
                assert!((la - lb).abs() < 1e-5 * la, "last loss {la} vs {lb}");
                assert!(
                    max_diff(&one.0, &weights(&trainer(optimizer))) > 1e-3,
                    "no training"
                );
            }
        }
    }

    /// Ranks that disagree on a batch (here rank 1 trains on 8 of the 32 samples rank 0 counts
    /// on, so 8 are missing) show it in the samples of their statistics, which the training
    /// loop checks at every read.
    #[test]
    fn disagreeing_ranks_show_in_the_samples() {
        let runs: Vec<_> = thread_group(2)
            .into_iter()
            .map(|comm| {
                std::thread::spawn(move || {
                    let (images, labels) = data();
                    let n = if comm.rank() == 0 { 16 } else { 8 };
                    let mut t = trainer("sgd").with_sync(GradSync::new(Box::new(comm)));
                    let x = t.upload(images[..n * D].to_vec()).unwrap();
                    let r = t.step_part(Some(&x), &labels[..n], 32, 0).unwrap();
                    (r.samples, t.stats.read().unwrap().samples)
                })
            })
            .collect();
        for h in runs {
            assert_eq!(h.join().unwrap(), (32, 24));
        }
    }

    /// The loss and correct predictions summed on the device over several steps, read once, are
    /// the sums of each step's figures computed on the host.
    #[test]
    fn device_stats_sum_the_steps() -> Result<()> {
        let (images, labels) = data();
        // Without dropout the step's forward pass is the evaluation one.
        let mut t = trainer("sgd");
        let device = candle_core::Device::Cpu;
        let (mut loss_sum, mut correct, mut last) = (0.0f64, 0u64, 0.0);
        // 52 samples: batches of 16, 16, 16 and 4.
        for (k, (x, y)) in images.chunks(16 * D).zip(labels.chunks(16)).enumerate() {
            let n = y.len();
            let logits = t
                .model
                .forward(&Tensor::from_slice(x, (n, 1, 28, 28), &device)?, Mode::Eval)?;
            let y_dev = Tensor::from_slice(y, n, &device)?;
            last = candle_nn::loss::cross_entropy(&logits, &y_dev)?.to_scalar::<f32>()? as f64;
            loss_sum += last * n as f64;
            correct += eval::score(&eval::host_logits(&logits)?, y)?.1;
            let x = t.upload(x.to_vec())?;
            let r = t.step(&x, y, k as u64)?;
            assert_eq!(r.samples, n as u64);
        }
        assert!(correct > 0 && loss_sum > 0.0);
        let read = t.stats.read()?;
        assert_eq!((read.loss_sum, read.correct), (loss_sum, correct));
        assert_eq!(read.last_loss, Some(last));
        Ok(())
    }

    #[test]
    fn no_dropout_is_refused_with_batch_norm() {
        let args = TrainArgs {
            dataset: Some(DatasetKind::Synthetic),
            model: Some(Network::CifarCnn),
            no_dropout: true,
            ..Default::default()
        };
        let (config, _) = settings::resolve(&args, None).unwrap();
        let mc = ModelConfig::new(Network::CifarCnn, config.run.head, 10, 3);
        let model = Model::new(mc, &candle_core::Device::Cpu).unwrap();
        let e = Trainer::new(model, &config, 1).err().unwrap().to_string();
        assert!(e.contains("batch norm"), "{e}");
    }
}
