//! `trainer train`: a run from its settings to its checkpoints, metrics and test result.
//!
//! A run holds out a validation split of the training data, validates on it after every epoch
//! and keeps the best epoch's weights in `best.safetensors`; the test split is evaluated once,
//! when training stops. Resuming a run that has nothing left to do changes nothing.
//!
//! A data-parallel run (`--gpus`, or WORLD_SIZE in the environment) runs this in every rank:
//! each trains on its shard of every global batch (`dist::shard`) with gradients summed over
//! the ranks; rank 0 alone writes the run directory (`output`).

mod accum;
mod checkpointer;
mod output;
mod run_dir;
pub mod settings;
pub mod step;
mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use circulant_model::{InputSpec, Model, ModelConfig};

use crate::checkpoint::{self, LoadedState, TrainState, BEST_FILE, MODEL_FILE};
use crate::cli::TrainArgs;
use crate::data::loader::{default_workers, LoaderConfig};
use crate::data::transform::default_min_crop_scale;
use crate::data::{self, derive_seed, DataOptions, Loader, Shape, Source, Subset};
use crate::dist::shard::{self, EpochShard};
use crate::dist::{self, Plan, Role, World};
use crate::eval::{self, EvalResult};
use crate::metrics::{EpochRecord, StepRecord, TestRecord};
use crate::progress;
use checkpointer::Checkpointer;
use output::Output;
use run_dir::RunDir;
use settings::{TrainConfig, ValSplit};
pub use step::Trainer;

/// `trainer train`: one process, the launcher of this node's workers (`--gpus N`), or one
/// worker of a data-parallel run.
pub fn run(args: TrainArgs) -> Result<()> {
    let world = match dist::plan(&args.dist_flags(), |k| std::env::var(k).ok())? {
        Plan::Single => None,
        Plan::Launch(launch) => {
            dist::require_nccl(&format!("--gpus {}", launch.gpus))?;
            return dist::launch::launch_trainer(&launch);
        }
        Plan::Worker(w) => {
            dist::require_nccl(&format!("WORLD_SIZE={}", w.size))?;
            Some(w)
        }
    };
    let device = crate::device::parse(&device_spec(&args, world.as_ref())?)?;
    crate::runtime::prepare_device(&device);
    let role = Role::of_rank(world.as_ref().map_or(0, |w| w.rank));
    let (dir, resumed) = match &args.resume {
        Some(path) => {
            if args.out.as_ref().is_some_and(|o| o != path) {
                bail!("--resume continues a run in its own directory; drop --out");
            }
            let dir = if role.writes() {
                RunDir::existing(path)?
            } else {
                RunDir::detached(path)
            };
            let loaded = checkpoint::load_state(dir.path(), &device)?;
            (dir, Some(loaded))
        }
        None => {
            // Check the options before creating anything.
            let (config, _) = settings::resolve(&args, None)?;
            let dir = match (&args.out, role.writes()) {
                (Some(out), true) => RunDir::fresh(out)?,
                (None, true) => RunDir::fresh_numbered(&default_out(&config))?,
                (Some(out), false) => RunDir::detached(out),
                (None, false) => RunDir::detached(&default_out(&config)),
            };
            (dir, None)
        }
    };
    let result = train_in(&dir, role, &args, resumed, &device, world.as_ref());
    if result.is_err() {
        dir.discard_if_unused();
    }
    result
}

/// The device to train on: `--device` (default cpu, or cuda with `--gpus 1`), or in a
/// data-parallel run the GPU of the rank's LOCAL_RANK.
fn device_spec(args: &TrainArgs, world: Option<&World>) -> Result<String> {
    let given = args
        .device
        .as_deref()
        .map(|d| d.trim().to_ascii_lowercase());
    match (world, given.as_deref()) {
        (Some(w), None | Some("cuda")) => dist::device_spec(w),
        (Some(_), Some(d)) => bail!(
            "--device {d}: in a data-parallel run each rank trains on the GPU of its LOCAL_RANK \
             (modulo the GPUs visible); drop --device"
        ),
        (None, Some("cpu")) if args.gpus.is_some() => {
            bail!("--gpus trains on GPUs but --device is cpu; drop one of them")
        }
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) if args.gpus.is_some() => Ok("cuda".to_string()),
        (None, None) => Ok("cpu".to_string()),
    }
}

/// `runs/<dataset>-<network>-<head>[-<classifier head>-classifier]`.
fn default_out(c: &TrainConfig) -> PathBuf {
    let r = &c.run;
    let classifier = r
        .classifier_head
        .map(|h| format!("-{}-classifier", h.to_string().replace(':', "")))
        .unwrap_or_default();
    PathBuf::from("runs").join(format!(
        "{}-{}-{}{classifier}",
        r.dataset,
        r.network,
        r.head.to_string().replace(':', "")
    ))
}

/// The three splits of a run.
struct Splits {
    train: Arc<dyn Source>,
    val: Option<Arc<dyn Source>>,
    test: Arc<dyn Source>,
}

impl Splits {
    fn sizes(&self) -> [usize; 3] {
        [
            self.train.len(),
            self.val.as_ref().map_or(0, |v| v.len()),
            self.test.len(),
        ]
    }
}

fn train_in(
    dir: &RunDir,
    role: Role,
    args: &TrainArgs,
    resumed: Option<LoadedState>,
    device: &candle_core::Device,
    world: Option<&World>,
) -> Result<()> {
    let out = Output::new(dir, role);
    let (config, notes) = settings::resolve(args, resumed.as_ref().map(|l| &l.state.config))?;
    for n in notes.iter().filter(|_| role.writes()) {
        eprintln!("note: {n}");
    }
    if let Some(l) = &resumed {
        if let Some(msg) = nothing_to_do(&l.state, &config, args.max_steps, dir) {
            println!("{msg}");
            return Ok(());
        }
    }
    let (world_size, rank) = world.map_or((1, 0), |w| (w.size, w.rank));
    // Every rank waits here for the others, and has the same settings as they do.
    let sync = match world {
        Some(w) => {
            let secs = args
                .rendezvous_timeout
                .unwrap_or(settings::RENDEZVOUS_TIMEOUT);
            Some(dist::connect(w, device, Duration::from_secs(secs))?)
        }
        None => None,
    };

    let (dataset, splits, input) = open_data(&config, resumed.as_ref())?;
    let (model, state, optimizer_state) = match resumed {
        Some(l) => resume_from(l, &config, (&dataset, &splits), (world_size, role), device)?,
        None => {
            let (model, state) =
                build_model(&config, (&dataset, &splits), input, world_size, device)?;
            (model, state, None)
        }
    };
    let run = &config.run;
    let global_batch = run.batch_size * world_size;
    let steps_per_epoch = shard::steps_per_epoch(splits.train.len(), global_batch) as u64;
    let mut trainer = Trainer::new(model, &config, steps_per_epoch)?;
    if let Some(sync) = sync {
        trainer = trainer.with_sync(sync);
    }
    if let Some((tensors, step)) = optimizer_state {
        trainer
            .optimizer
            .load_state(&tensors, step)
            .context("cannot restore the optimizer state")?;
    }
    print_summary(
        &trainer.model,
        run,
        &dataset.description,
        &splits,
        world_size,
    );
    if args.resume.is_some() {
        println!(
            "resuming at epoch {}, batch {}, step {}; writing to {}",
            state.epoch + 1,
            state.batch_in_epoch,
            state.global_step,
            dir.path().display()
        );
        out.truncate_steps(state.global_step)?;
    } else {
        println!(
            "writing checkpoints and metrics to {}",
            dir.path().display()
        );
    }

    let workers = args.workers.unwrap_or_else(default_workers);
    let sample_len = Shape::of(&state.model.input).numel();
    let loader_cfg = LoaderConfig::new(run.batch_size, sample_len, workers)?;
    let eval_cfg = LoaderConfig {
        batch_size: run.batch_size.max(256),
        ..loader_cfg.clone()
    };
    let order = data::epoch_order(splits.train.len(), run.seed, state.epoch);
    trainer
        .stats
        .reset(state.accum.loss_sum, state.accum.correct, state.accum.seen)?;
    let checkpoints = Checkpointer::new(
        out,
        args.save_every,
        args.resume.as_ref().map(|_| state.global_step),
    );
    let mut r = Run {
        out,
        checkpoints,
        world_size,
        rank,
        config,
        trainer,
        read_step: state.global_step,
        state,
        splits,
        order,
        loader_cfg,
        eval_cfg,
        show_progress: !args.no_progress && role.writes(),
        max_steps: args.max_steps,
    };
    // What a resumed run had recorded at its last stop is outdated once it trains on.
    r.state.partial = None;
    r.state.test = None;
    while !r.training_done() {
        if !r.train_epoch()? {
            break;
        }
    }
    r.finish()
}

/// The dataset of a run, its three splits and the input every sample takes: the stored model's
/// when resuming, or the network's default (resized by `--image-size`).
fn open_data(
    config: &TrainConfig,
    resumed: Option<&LoadedState>,
) -> Result<(data::Dataset, Splits, InputSpec)> {
    let (run, adj) = (&config.run, &config.adjustable);
    let input = match resumed {
        Some(l) => l.state.model.input.clone(),
        None => {
            let mut input = run.network.default_input();
            if let Some(s) = run.image_size {
                input.height = s;
                input.width = s;
            }
            input
        }
    };
    let shape = Shape::of(&input);
    let dataset = data::open(&DataOptions {
        kind: run.dataset,
        data_dir: adj.data_dir.clone(),
        input: input.clone(),
        seed: run.seed,
        need_train: true,
        synthetic_train: run.synthetic_train,
        synthetic_test: run.synthetic_test,
        synthetic_classes: run.synthetic_classes,
        min_crop_scale: adj
            .min_crop_scale
            .unwrap_or_else(|| default_min_crop_scale(shape)),
    })?;
    let n_train = dataset.train.len();
    if n_train == 0 || dataset.test.len() == 0 {
        bail!(
            "the dataset has {n_train} training and {} test images; both must be non-empty",
            dataset.test.len()
        );
    }
    let n_val = ValSplit::resolve(run.val_split, run.dataset, n_train, dataset.num_classes)?;
    let (train_idx, val_idx) = data::split_indices(n_train, n_val, run.seed);
    let splits = Splits {
        train: Arc::new(Subset::new(dataset.train.clone(), train_idx)),
        val: (n_val > 0)
            .then(|| Arc::new(Subset::new(dataset.train.clone(), val_idx)) as Arc<dyn Source>),
        test: dataset.test.clone(),
    };
    Ok((dataset, splits, input))
}

/// The model, training state and optimizer state (with its step) of a resumed run, after
/// checking that the data is what it trained on.
fn resume_from(
    l: LoadedState,
    config: &TrainConfig,
    (dataset, splits): (&data::Dataset, &Splits),
    (world_size, role): (usize, Role),
    device: &candle_core::Device,
) -> Result<(Model, TrainState, Option<OptimizerState>)> {
    let s = &l.state;
    if s.model.num_classes != dataset.num_classes {
        bail!(
            "the run being resumed has {} classes but the dataset now has {}",
            s.model.num_classes,
            dataset.num_classes
        );
    }
    if [s.train_len, s.val_len, s.test_len] != splits.sizes() {
        bail!(
            "the run being resumed had {} train / {} validation / {} test images, the \
             dataset now gives {:?}; resume with the same data",
            s.train_len,
            s.val_len,
            s.test_len,
            splits.sizes()
        );
    }
    if s.epoch < config.adjustable.epochs
        && l.order != data::epoch_order(splits.train.len(), config.run.seed, s.epoch)
    {
        bail!(
            "the saved data order does not match this dataset and seed; resume with the same data"
        );
    }
    if s.world_size != world_size && role.writes() {
        eprintln!(
            "note: the run was trained by {} process(es), now by {world_size}: from here \
             on its batches differ (the sample order of each epoch is the same)",
            s.world_size
        );
    }
    let model = checkpoint::model_from_state(&l, device)?;
    let step = l.state.global_step;
    let mut st = l.state;
    st.config = config.clone();
    st.world_size = world_size;
    Ok((model, st, Some((l.optimizer, step))))
}

/// A fresh model for a new run, and its training state.
fn build_model(
    config: &TrainConfig,
    (dataset, splits): (&data::Dataset, &Splits),
    input: InputSpec,
    world_size: usize,
    device: &candle_core::Device,
) -> Result<(Model, TrainState)> {
    let run = &config.run;
    let mut mc = ModelConfig::new(run.network, run.head, dataset.num_classes, run.seed);
    if let (Some(head), Some(last)) = (run.classifier_head, run.network.fc_layers().last()) {
        mc = mc.with_head(last, head);
    }
    mc.input = input;
    let model = Model::new(mc.clone(), device)
        .with_context(|| format!("cannot build {} with {} heads", run.network, run.head))?;
    let mut st = TrainState::new(mc, config.clone(), splits.sizes());
    st.class_names = dataset.class_names.clone();
    st.world_size = world_size;
    Ok((model, st))
}

/// The run's first lines: the network and its parameters, the data, the processes.
fn print_summary(
    model: &Model,
    run: &settings::RunSpec,
    data: &str,
    splits: &Splits,
    world_size: usize,
) {
    let report = model.param_report();
    let classifier = run
        .classifier_head
        .map(|h| format!(" ({h} classifier)"))
        .unwrap_or_default();
    println!(
        "{} with {} heads{classifier}: {} parameters ({} dense-equivalent, {:.1}x smaller)",
        run.network,
        run.head,
        report.total(),
        report.dense_equivalent_total(),
        report.compression(),
    );
    let [tr, va, te] = splits.sizes();
    println!("data: {data}: {tr} train / {va} validation / {te} test images");
    if world_size > 1 {
        println!(
            "data-parallel: {world_size} processes x batch {} = {} images per step",
            run.batch_size,
            run.batch_size * world_size
        );
    }
}

/// A resumed run's optimizer tensors and the step they were saved at.
type OptimizerState = (std::collections::HashMap<String, candle_core::Tensor>, u64);

/// The message for a resumed run that has already trained and been tested as asked.
fn nothing_to_do(
    s: &TrainState,
    c: &TrainConfig,
    max_steps: Option<u64>,
    dir: &RunDir,
) -> Option<String> {
    let test = s.test.as_ref()?;
    let why = match max_steps {
        _ if s.epoch >= c.adjustable.epochs => {
            format!("already finished its {} epochs", c.adjustable.epochs)
        }
        Some(m) if s.global_step >= m => format!("already reached --max-steps {m}"),
        _ => return None,
    };
    Some(format!(
        "the run in {} {why} (step {}); nothing to do. Its test accuracy: {:.2}% ({}). Pass a \
         larger --epochs or --max-steps to train longer",
        dir.path().display(),
        s.global_step,
        100.0 * test.test_acc,
        test.checkpoint
    ))
}

/// A run in progress.
struct Run<'a> {
    out: Output<'a>,
    checkpoints: Checkpointer<'a>,
    /// Processes of the run, and this one's rank.
    world_size: usize,
    rank: usize,
    config: TrainConfig,
    trainer: Trainer,
    state: TrainState,
    splits: Splits,
    /// The sample order of the epoch in progress.
    order: Vec<u32>,
    loader_cfg: LoaderConfig,
    eval_cfg: LoaderConfig,
    show_progress: bool,
    max_steps: Option<u64>,
    /// Step at the last read of the training statistics from the device, which found them
    /// finite (or where the run started).
    read_step: u64,
}

impl Run<'_> {
    fn hit_max_steps(&self) -> bool {
        self.max_steps.is_some_and(|m| self.state.global_step >= m)
    }

    fn training_done(&self) -> bool {
        self.state.epoch >= self.config.adjustable.epochs || self.hit_max_steps()
    }

    /// This rank's part of the rest of the current epoch (all of it in a one-process run).
    fn shard(&self) -> Result<EpochShard> {
        EpochShard::new(
            self.splits.train.len(),
            self.config.run.batch_size,
            self.world_size,
            self.rank,
            self.state.batch_in_epoch,
            self.state.accum.seen as usize,
        )
    }

    /// Trains the rest of the current epoch; returns false when `--max-steps` stopped it.
    fn train_epoch(&mut self) -> Result<bool> {
        let epoch = self.state.epoch;
        let start = Instant::now();
        let shard = self.shard()?;
        let steps = shard.steps();
        let bar = progress::bar(
            steps as u64,
            format!("epoch {}/{}", epoch + 1, self.config.adjustable.epochs),
            self.show_progress,
        );
        bar.set_position(self.state.batch_in_epoch as u64);
        let augment = derive_seed(self.config.run.seed, &[0xA6, epoch as u64]);
        let mut loader = Loader::spawn(
            self.splits.train.clone(),
            Arc::new(shard.local_order(&self.order)),
            0,
            Some(augment),
            &self.loader_cfg,
        );
        let mut images = 0u64;
        let mut lr = self.trainer.lr(self.state.global_step);
        for k in shard.first_step()..steps {
            // This rank's part of global batch k; only the last one may be empty.
            let (x, labels) = if shard.rank_range(k).is_empty() {
                (None, Vec::new())
            } else {
                let Some(batch) = loader.next() else {
                    bail!("the data loader stopped after {k} of {steps} batches");
                };
                let batch = batch?;
                if batch.index + shard.first_step() != k {
                    bail!(
                        "internal error: batch {} arrived while expecting batch {k}",
                        batch.index + shard.first_step()
                    );
                }
                (Some(self.trainer.upload(batch.images)?), batch.labels)
            };
            let global = shard.global_range(k).len();
            let step =
                self.trainer
                    .step_part(x.as_ref(), &labels, global, self.state.global_step)?;
            let n = step.samples;
            lr = step.lr;
            let st = &mut self.state;
            st.accum.seen += n;
            st.global_step += 1;
            st.batch_in_epoch += 1;
            images += n;
            bar.inc(1);
            // The loss and accuracy stay on the device but at the steps that need them: a
            // step record, a checkpoint, the end of the epoch.
            let st = &self.state;
            let log_every = self.config.adjustable.log_every;
            let log = log_every > 0 && st.global_step.is_multiple_of(log_every);
            let epoch_done = st.batch_in_epoch >= steps;
            let stop = !epoch_done && self.hit_max_steps();
            let periodic = !epoch_done && self.checkpoints.periodic_due(st.global_step);
            if log || stop || periodic {
                let step_loss = self.read_stats().inspect_err(|_| bar.abandon())?;
                let (loss, acc) = self.train_means();
                let per_sec = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(progress::train_message(loss, acc, per_sec, lr));
                if log {
                    let Some(step_loss) = step_loss else {
                        bail!(
                            "internal error: no loss recorded for step {}",
                            self.state.global_step
                        );
                    };
                    self.out.step(&StepRecord {
                        epoch: epoch + 1,
                        step: self.state.global_step,
                        lr,
                        loss: step_loss,
                        train_loss: loss,
                        train_acc: acc,
                        images_per_sec: per_sec,
                    })?;
                }
            }
            if stop {
                bar.finish_and_clear();
                self.end_partial_epoch(lr, start, images)?;
                return Ok(false);
            }
            if periodic {
                self.save()?;
            }
        }
        bar.finish_and_clear();
        self.end_epoch(lr, start, images)?;
        Ok(true)
    }

    /// The running training loss and accuracy of the epoch in progress.
    fn train_means(&self) -> (f64, f64) {
        let a = &self.state.accum;
        let seen = a.seen.max(1) as f64;
        (a.loss_sum / seen, a.correct as f64 / seen)
    }

    /// Reads the training statistics from the device into the state's accumulator (a sync with
    /// the device) and returns the last step's loss. Fails with the divergence error when the
    /// loss is no longer finite (the weights may then be too, and must not be saved), and when
    /// the ranks of a data-parallel run did not train on the samples they should have.
    fn read_stats(&mut self) -> Result<Option<f64>> {
        let r = self.trainer.stats.read()?;
        let seen = self.state.accum.seen;
        if r.samples != seen {
            bail!(
                "by step {} the ranks had trained on {} samples of epoch {}, not {seen}: are \
                 they running the same command on the same data?",
                self.state.global_step,
                r.samples,
                self.state.epoch + 1,
            );
        }
        if !r.loss_sum.is_finite() {
            let seen = self.state.accum.seen.max(1) as f64;
            let what = format!("the training loss became {}", r.loss_sum / seen);
            return Err(self.diverged(&what, self.read_step + 1));
        }
        let a = &mut self.state.accum;
        a.loss_sum = r.loss_sum;
        a.correct = r.correct;
        self.read_step = self.state.global_step;
        Ok(r.last_loss)
    }

    /// The error that stops a diverged run: `what` happened in the steps (numbered from 1) from
    /// `first` to the current one.
    fn diverged(&self, what: &str, first: u64) -> anyhow::Error {
        let last = self.state.global_step;
        let steps = if first >= last {
            format!("step {last}")
        } else {
            format!("steps {first}-{last}")
        };
        let lr = self.trainer.lr(last.saturating_sub(1));
        let kept = match self.checkpoints.last_saved() {
            Some(s) => format!(
                "the last checkpoint in {} (step {s}) is intact",
                self.out.dir().path().display()
            ),
            None => "no checkpoint was written".to_string(),
        };
        anyhow::anyhow!(
            "{what} at epoch {}, {steps} (lr {lr:.3e}): training diverged and was stopped; \
             {kept}. Lower --lr or add --warmup{}",
            self.state.epoch + 1,
            if self.checkpoints.last_saved().is_some() {
                ", then --resume"
            } else {
                ""
            }
        )
    }

    /// The validation figures (on the writer only: the other ranks report nothing).
    fn validate(&self) -> Result<Option<EvalResult>> {
        let Some(val) = self.splits.val.as_ref().filter(|_| self.out.writes()) else {
            return Ok(None);
        };
        eval::evaluate(
            &self.trainer.model,
            val.clone(),
            &self.eval_cfg,
            "validate",
            self.show_progress,
        )
        .map(Some)
    }

    /// The record of the epoch in progress, validated now.
    fn record(&self, lr: f64, start: Instant, images: u64, partial: bool) -> Result<EpochRecord> {
        // Training throughput: the clock stops before validation.
        let train_secs = start.elapsed().as_secs_f64();
        let val = self.validate()?;
        let (train_loss, train_acc) = self.train_means();
        Ok(EpochRecord {
            epoch: self.state.epoch + 1,
            step: self.state.global_step,
            lr,
            train_loss,
            train_acc,
            val_loss: val.as_ref().map(|v| v.loss),
            val_acc: val.as_ref().map(|v| v.accuracy),
            val_top5: val.as_ref().and_then(|v| v.top5),
            seconds: start.elapsed().as_secs_f64(),
            images_per_sec: images as f64 / train_secs.max(1e-9),
            partial,
        })
    }

    fn end_epoch(&mut self, lr: f64, start: Instant, images: u64) -> Result<()> {
        self.read_stats()?;
        let record = self.record(lr, start, images, false)?;
        let improved = record
            .val_acc
            .is_some_and(|a| self.state.best_val_acc.is_none_or(|b| a > b));
        if improved {
            self.state.best_val_acc = record.val_acc;
        }
        let st = &mut self.state;
        st.history.push(record.clone());
        st.epoch += 1;
        st.batch_in_epoch = 0;
        st.accum = Default::default();
        self.trainer.stats.reset(0.0, 0, 0)?;
        self.order = data::epoch_order(self.splits.train.len(), self.config.run.seed, st.epoch);
        self.save()?;
        if improved {
            self.checkpoints.save_best(&self.state, &self.trainer)?;
        }
        self.write_metrics()?;
        self.print_epoch(&record, improved);
        Ok(())
    }

    fn end_partial_epoch(&mut self, lr: f64, start: Instant, images: u64) -> Result<()> {
        self.read_stats()?;
        let record = self.record(lr, start, images, true)?;
        self.print_epoch(&record, false);
        self.state.partial = Some(record);
        self.save()
    }

    /// Writes the train state, then the model (each atomically), once the training statistics
    /// and the weights are read and found finite: a diverged run never overwrites the last good
    /// checkpoint.
    fn save(&mut self) -> Result<()> {
        self.read_stats()?;
        if !self.trainer.weights_finite()? {
            return Err(self.diverged("the weights became inf or NaN", self.state.global_step));
        }
        self.checkpoints
            .save(&self.state, &self.trainer, &self.order)
    }

    fn write_metrics(&self) -> Result<()> {
        self.out.metrics(&self.state, &self.title())
    }

    /// Names the run on its curves: network, heads, dataset, optimizer, learning rate.
    fn title(&self) -> String {
        let (r, a) = (&self.config.run, &self.config.adjustable);
        let classifier = r
            .classifier_head
            .map(|h| format!(", {h} classifier"))
            .unwrap_or_default();
        format!(
            "{} ({} heads{classifier}) on {}, {:?} lr {}",
            r.network, r.head, r.dataset, r.optimizer, a.lr
        )
        .replace("Sgd", "SGD")
        .replace("Adamw", "AdamW")
    }

    fn print_epoch(&self, r: &EpochRecord, best: bool) {
        if !self.out.writes() {
            return;
        }
        let val = match (r.val_loss, r.val_acc) {
            (Some(l), Some(a)) => {
                let top5 = r
                    .val_top5
                    .map(|t| format!(" top5 {:.2}%", 100.0 * t))
                    .unwrap_or_default();
                format!("  validation loss {l:.4} acc {:.2}%{top5}", 100.0 * a)
            }
            _ => String::new(),
        };
        println!(
            "epoch {:>3}/{}{}  train loss {:.4} acc {:.2}%{val}  lr {:.2e}  {:.0} img/s  {:.1}s{}",
            r.epoch,
            self.config.adjustable.epochs,
            if r.partial {
                format!(" (stopped at step {})", r.step)
            } else {
                String::new()
            },
            r.train_loss,
            100.0 * r.train_acc,
            r.lr,
            r.images_per_sec,
            r.seconds,
            if best { "  *best" } else { "" }
        );
    }

    /// Evaluates the test split once (on `best.safetensors` when validation chose one), records
    /// it in the state and metrics, and reports.
    fn finish(mut self) -> Result<()> {
        if self.checkpoints.last_saved() != Some(self.state.global_step) {
            self.save()?;
        }
        // The test split is evaluated and reported by the writer alone.
        if !self.out.writes() {
            return Ok(());
        }
        let dir = self.out.dir();
        if self.hit_max_steps() && self.state.epoch < self.config.adjustable.epochs {
            println!(
                "stopped after {} steps (--max-steps); continue with --resume {}",
                self.state.global_step,
                dir.path().display()
            );
        }
        let (name, tested) = if self.state.best_val_acc.is_some() {
            let best = Model::load(dir.join(BEST_FILE), self.trainer.model.device())
                .context("cannot load best.safetensors back for the test evaluation")?;
            (BEST_FILE, Some(best))
        } else {
            (MODEL_FILE, None)
        };
        let model = tested.as_ref().unwrap_or(&self.trainer.model);
        let r = eval::evaluate(
            model,
            self.splits.test.clone(),
            &self.eval_cfg,
            "test",
            self.show_progress,
        )?;
        let [train_images, val_images, test_images] = self.splits.sizes();
        self.state.test = Some(TestRecord {
            checkpoint: name.to_string(),
            epochs_done: self.state.epoch,
            step: self.state.global_step,
            test_loss: r.loss,
            test_acc: r.accuracy,
            test_top5: r.top5,
            train_images,
            val_images,
            test_images,
        });
        self.checkpoints
            .save_state(&self.state, &self.trainer, &self.order)?;
        self.write_metrics()?;
        let top5 = r
            .top5
            .map(|t| format!(", top-5 {:.2}%", 100.0 * t))
            .unwrap_or_default();
        println!(
            "test accuracy: {:.2}%{top5} (loss {:.4}, {} images, {name})",
            100.0 * r.accuracy,
            r.loss,
            r.samples
        );
        println!("checkpoint: {}", dir.join(MODEL_FILE).display());
        match self.state.best_val_acc {
            Some(b) => println!(
                "best: {} (validation accuracy {:.2}%)",
                dir.join(BEST_FILE).display(),
                100.0 * b
            ),
            None if val_images == 0 => {
                println!("no validation split (--val-split 0): no best.safetensors")
            }
            None => {}
        }
        Ok(())
    }
}
