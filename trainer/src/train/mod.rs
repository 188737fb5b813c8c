//! `trainer train`: a run from its settings to its checkpoints, metrics and test result.
//!
//! A run holds out a validation split of the training data, validates on it after every epoch
//! and keeps the best epoch's weights in `best.safetensors`; the test split is evaluated once,
//! when training stops. Resuming a run that has nothing left to do changes nothing.

mod run_dir;
pub mod settings;
pub mod step;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use circulant_model::checkpoint::SaveOptions;
use circulant_model::{Model, ModelConfig};

use crate::checkpoint::{self, LoadedState, TrainState, BEST_FILE, MODEL_FILE};
use crate::cli::TrainArgs;
use crate::data::loader::{default_workers, LoaderConfig};
use crate::data::transform::default_min_crop_scale;
use crate::data::{self, derive_seed, DataOptions, Loader, Shape, Source, Subset};
use crate::eval::{self, EvalResult};
use crate::metrics::{self, EpochRecord, StepRecord, TestRecord};
use crate::{plot, progress};
use run_dir::RunDir;
use settings::{TrainConfig, ValSplit};
pub use step::Trainer;

/// `trainer train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let device = crate::device::parse(args.device.as_deref().unwrap_or("cpu"))?;
    crate::runtime::prepare_device(&device);
    let (dir, resumed) = match &args.resume {
        Some(path) => {
            if args.out.as_ref().is_some_and(|o| o != path) {
                bail!("--resume continues a run in its own directory; drop --out");
            }
            let dir = RunDir::existing(path)?;
            let loaded = checkpoint::load_state(dir.path(), &device)?;
            (dir, Some(loaded))
        }
        None => {
            // Check the options before creating anything.
            let (config, _) = settings::resolve(&args, None)?;
            let dir = match &args.out {
                Some(out) => RunDir::fresh(out)?,
                None => RunDir::fresh_numbered(&default_out(&config))?,
            };
            (dir, None)
        }
    };
    let result = train_in(&dir, &args, resumed, &device);
    if result.is_err() {
        dir.discard_if_unused();
    }
    result
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
    args: &TrainArgs,
    resumed: Option<LoadedState>,
    device: &candle_core::Device,
) -> Result<()> {
    let (config, notes) = settings::resolve(args, resumed.as_ref().map(|l| &l.state.config))?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    if let Some(l) = &resumed {
        if let Some(msg) = nothing_to_do(&l.state, &config, args.max_steps, dir) {
            println!("{msg}");
            return Ok(());
        }
    }

    // Input shape: the stored model's, or the network's default (optionally resized).
    let input = match &resumed {
        Some(l) => l.state.model.input.clone(),
        None => {
            let mut input = config.run.network.default_input();
            if let Some(s) = config.run.image_size {
                input.height = s;
                input.width = s;
            }
            input
        }
    };
    let shape = Shape::of(&input);
    let (run, adj) = (&config.run, &config.adjustable);
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

    let (model, state, optimizer_state) = match resumed {
        Some(l) => {
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
            if s.epoch < adj.epochs
                && l.order != data::epoch_order(splits.train.len(), run.seed, s.epoch)
            {
                bail!("the saved data order does not match this dataset and seed; resume with the same data");
            }
            let model = checkpoint::model_from_state(&l, device)?;
            let step = l.state.global_step;
            let mut st = l.state;
            st.config = config.clone();
            (model, st, Some((l.optimizer, step)))
        }
        None => {
            let mut mc = ModelConfig::new(run.network, run.head, dataset.num_classes, run.seed);
            if let (Some(head), Some(last)) = (run.classifier_head, run.network.fc_layers().last())
            {
                mc = mc.with_head(last, head);
            }
            mc.input = input.clone();
            let model = Model::new(mc.clone(), device)
                .with_context(|| format!("cannot build {} with {} heads", run.network, run.head))?;
            let mut st = TrainState::new(mc, config.clone(), splits.sizes());
            st.class_names = dataset.class_names.clone();
            (model, st, None)
        }
    };
    let steps_per_epoch = splits.train.len().div_ceil(run.batch_size) as u64;
    let mut trainer = Trainer::new(model, &config, steps_per_epoch)?;
    if let Some((tensors, step)) = optimizer_state {
        trainer
            .optimizer
            .load_state(&tensors, step)
            .context("cannot restore the optimizer state")?;
    }
    let report = trainer.model.param_report();
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
    println!(
        "data: {}: {tr} train / {va} validation / {te} test images",
        dataset.description
    );
    if args.resume.is_some() {
        println!(
            "resuming at epoch {}, batch {}, step {}; writing to {}",
            state.epoch + 1,
            state.batch_in_epoch,
            state.global_step,
            dir.path().display()
        );
        metrics::truncate_steps(dir.path(), state.global_step)?;
    } else {
        println!(
            "writing checkpoints and metrics to {}",
            dir.path().display()
        );
    }

    let workers = args.workers.unwrap_or_else(default_workers);
    let loader_cfg = LoaderConfig::new(run.batch_size, shape.numel(), workers)?;
    let eval_cfg = LoaderConfig {
        batch_size: run.batch_size.max(256),
        ..loader_cfg.clone()
    };
    let order = data::epoch_order(splits.train.len(), run.seed, state.epoch);
    let mut r = Run {
        dir,
        config,
        trainer,
        last_saved: args.resume.as_ref().map(|_| state.global_step),
        state,
        splits,
        order,
        loader_cfg,
        eval_cfg,
        steps_per_epoch,
        show_progress: !args.no_progress,
        max_steps: args.max_steps,
        save_every: args.save_every.filter(|&k| k > 0),
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
    dir: &'a RunDir,
    config: TrainConfig,
    trainer: Trainer,
    state: TrainState,
    splits: Splits,
    /// The sample order of the epoch in progress.
    order: Vec<u32>,
    loader_cfg: LoaderConfig,
    eval_cfg: LoaderConfig,
    steps_per_epoch: u64,
    show_progress: bool,
    max_steps: Option<u64>,
    save_every: Option<u64>,
    /// Step of the last checkpoint written (by this process or the one resumed).
    last_saved: Option<u64>,
}

impl Run<'_> {
    fn hit_max_steps(&self) -> bool {
        self.max_steps.is_some_and(|m| self.state.global_step >= m)
    }

    fn training_done(&self) -> bool {
        self.state.epoch >= self.config.adjustable.epochs || self.hit_max_steps()
    }

    /// Trains the rest of the current epoch; returns false when `--max-steps` stopped it.
    fn train_epoch(&mut self) -> Result<bool> {
        let epoch = self.state.epoch;
        let start = Instant::now();
        let bar = progress::bar(
            self.steps_per_epoch,
            format!("epoch {}/{}", epoch + 1, self.config.adjustable.epochs),
            self.show_progress,
        );
        bar.set_position(self.state.batch_in_epoch as u64);
        let augment = derive_seed(self.config.run.seed, &[0xA6, epoch as u64]);
        let loader = Loader::spawn(
            self.splits.train.clone(),
            Arc::new(self.order.clone()),
            self.state.batch_in_epoch,
            Some(augment),
            &self.loader_cfg,
        );
        let mut images = 0u64;
        let mut lr = self.trainer.lr(self.state.global_step);
        for batch in loader {
            let batch = batch?;
            if batch.index != self.state.batch_in_epoch {
                bail!(
                    "internal error: batch {} arrived while expecting batch {}",
                    batch.index,
                    self.state.batch_in_epoch
                );
            }
            let n = batch.labels.len() as u64;
            let step = self
                .trainer
                .step(batch.images, &batch.labels, self.state.global_step)?;
            lr = step.lr;
            if !step.loss.is_finite() {
                bar.abandon();
                return Err(self.diverged(step.loss, lr));
            }
            let st = &mut self.state;
            st.accum.loss_sum += step.loss * n as f64;
            st.accum.correct += step.correct;
            st.accum.seen += n;
            st.global_step += 1;
            st.batch_in_epoch += 1;
            images += n;
            let (loss, acc) = self.train_means();
            let per_sec = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
            bar.inc(1);
            bar.set_message(progress::train_message(loss, acc, per_sec, lr));
            let st = &self.state;
            let log_every = self.config.adjustable.log_every;
            if log_every > 0 && st.global_step.is_multiple_of(log_every) {
                metrics::append_step(
                    self.dir.path(),
                    &StepRecord {
                        epoch: epoch + 1,
                        step: st.global_step,
                        lr,
                        loss: step.loss,
                        train_loss: loss,
                        train_acc: acc,
                        images_per_sec: per_sec,
                    },
                )?;
            }
            let epoch_done = st.batch_in_epoch as u64 >= self.steps_per_epoch;
            if !epoch_done && self.hit_max_steps() {
                bar.finish_and_clear();
                self.end_partial_epoch(lr, start, images)?;
                return Ok(false);
            }
            let periodic = self
                .save_every
                .is_some_and(|k| self.state.global_step.is_multiple_of(k));
            if !epoch_done && periodic {
                self.save()?;
            }
        }
        bar.finish_and_clear();
        if (self.state.batch_in_epoch as u64) < self.steps_per_epoch {
            bail!(
                "the data loader stopped after {} of {} batches",
                self.state.batch_in_epoch,
                self.steps_per_epoch
            );
        }
        self.end_epoch(lr, start, images)?;
        Ok(true)
    }

    /// The running training loss and accuracy of the epoch in progress.
    fn train_means(&self) -> (f64, f64) {
        let a = &self.state.accum;
        let seen = a.seen.max(1) as f64;
        (a.loss_sum / seen, a.correct as f64 / seen)
    }

    fn diverged(&self, loss: f64, lr: f64) -> anyhow::Error {
        let kept = match self.last_saved {
            Some(s) => format!(
                "the last checkpoint in {} (step {s}) is intact",
                self.dir.path().display()
            ),
            None => "no checkpoint was written".to_string(),
        };
        anyhow::anyhow!(
            "the training loss became {loss} at epoch {}, step {} (lr {lr:.3e}): training \
             diverged and was stopped; {kept}. Lower --lr or add --warmup{}",
            self.state.epoch + 1,
            self.state.global_step + 1,
            if self.last_saved.is_some() {
                ", then --resume"
            } else {
                ""
            }
        )
    }

    fn validate(&self) -> Result<Option<EvalResult>> {
        let Some(val) = &self.splits.val else {
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
        self.order = data::epoch_order(self.splits.train.len(), self.config.run.seed, st.epoch);
        self.save()?;
        if improved {
            self.save_model(BEST_FILE)?;
        }
        self.write_metrics()?;
        self.print_epoch(&record, improved);
        Ok(())
    }

    fn end_partial_epoch(&mut self, lr: f64, start: Instant, images: u64) -> Result<()> {
        let record = self.record(lr, start, images, true)?;
        self.print_epoch(&record, false);
        self.state.partial = Some(record);
        self.save()
    }

    /// Writes the train state, then the model (each atomically).
    fn save(&mut self) -> Result<()> {
        self.save_state()?;
        self.save_model(MODEL_FILE)?;
        self.last_saved = Some(self.state.global_step);
        Ok(())
    }

    /// Writes `train_state.safetensors`: everything a resume needs.
    fn save_state(&self) -> Result<()> {
        checkpoint::save_state(
            self.dir.path(),
            &self.state,
            &self.trainer.model,
            self.trainer.optimizer.state(),
            &self.order,
        )
    }

    /// Writes the model, with the class names in its metadata.
    fn save_model(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        let options = SaveOptions {
            class_names: self.state.class_names.clone(),
            ..Default::default()
        };
        self.trainer
            .model
            .save_with(&path, &options)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn write_metrics(&self) -> Result<()> {
        let st = &self.state;
        metrics::write_jsonl(
            self.dir.path(),
            &st.history,
            st.partial.as_ref(),
            st.test.as_ref(),
        )?;
        let mut records = st.history.clone();
        records.extend(st.partial.clone());
        if let Err(e) = plot::draw(&self.dir.join(plot::CURVES_FILE), &self.title(), &records) {
            eprintln!("warning: {e:#}");
        }
        Ok(())
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
        if self.last_saved != Some(self.state.global_step) {
            self.save()?;
        }
        if self.hit_max_steps() && self.state.epoch < self.config.adjustable.epochs {
            println!(
                "stopped after {} steps (--max-steps); continue with --resume {}",
                self.state.global_step,
                self.dir.path().display()
            );
        }
        let (name, tested) = if self.state.best_val_acc.is_some() {
            let best = Model::load(self.dir.join(BEST_FILE), self.trainer.model.device())
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
        self.save_state()?;
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
        println!("checkpoint: {}", self.dir.join(MODEL_FILE).display());
        match self.state.best_val_acc {
            Some(b) => println!(
                "best: {} (validation accuracy {:.2}%)",
                self.dir.join(BEST_FILE).display(),
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
