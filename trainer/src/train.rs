//! The training loop: configuration (fresh or resumed), epochs, checkpoints, metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use circulant_model::{Head, Mode, Model, ModelConfig, Network};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState, BEST_FILE, CLASSES_FILE, MODEL_FILE, STATE_FILE};
use crate::cli::{DatasetKind, OptimizerKind, ScheduleKind, TrainArgs};
use crate::data::loader::{default_workers, LoaderConfig};
use crate::data::transform::default_min_crop_scale;
use crate::data::{self, derive_seed, DataOptions, Loader, Shape};
use crate::eval::{self, EvalResult};
use crate::metrics::{self, EpochRecord};
use crate::optim::{AdamW, Optimizer, Schedule, Sgd};
use crate::{plot, progress};

/// The settings of a run, stored in its train state. The first group must stay the same when
/// resuming; the second may be changed (e.g. more epochs).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub dataset: DatasetKind,
    pub network: Network,
    pub head: Head,
    /// Head of the last FC layer when it differs from `head` (runs before this option: none).
    #[serde(default)]
    pub classifier_head: Option<Head>,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub seed: u64,
    pub image_size: Option<usize>,
    pub synthetic_train: usize,
    pub synthetic_test: usize,
    pub synthetic_classes: usize,

    pub data_dir: Option<PathBuf>,
    pub epochs: usize,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub schedule: ScheduleKind,
    pub step_epochs: usize,
    pub gamma: f64,
    pub warmup: u64,
    pub min_crop_scale: Option<f64>,
}

fn show<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default()
}

/// Builds the run configuration from the command line, or from the stored configuration of the
/// run being resumed plus the options that may change. Returns notes about changed options.
pub fn resolve(
    args: &TrainArgs,
    stored: Option<&TrainConfig>,
) -> Result<(TrainConfig, Vec<String>)> {
    let Some(s) = stored else {
        let Some(dataset) = args.dataset else {
            bail!("--dataset is required (mnist, fashion-mnist, cifar10, imagefolder or synthetic), unless you --resume a run");
        };
        let Some(network) = args.model else {
            bail!("--model is required (mnist-cnn, mlp, cifar-cnn or alexnet), unless you --resume a run");
        };
        let optimizer = args.optimizer.unwrap_or(OptimizerKind::Sgd);
        let sgd = optimizer == OptimizerKind::Sgd;
        let c = TrainConfig {
            dataset,
            network,
            head: args.head.unwrap_or(Head::Circulant),
            classifier_head: args.classifier_head,
            batch_size: args.batch_size.unwrap_or(64),
            optimizer,
            seed: args.seed.unwrap_or(0),
            image_size: args.image_size,
            synthetic_train: args.synthetic_train.unwrap_or(512),
            synthetic_test: args.synthetic_test.unwrap_or(256),
            synthetic_classes: args.synthetic_classes.unwrap_or(10),
            data_dir: args.data_dir.clone(),
            epochs: args.epochs.unwrap_or(10),
            lr: args.lr.unwrap_or(if sgd { 0.05 } else { 1e-3 }),
            momentum: args.momentum.unwrap_or(0.9),
            nesterov: args.nesterov,
            weight_decay: args.weight_decay.unwrap_or(if sgd { 0.0 } else { 0.01 }),
            schedule: args.schedule.unwrap_or(ScheduleKind::Cosine),
            step_epochs: args.step_epochs.unwrap_or(30),
            gamma: args.gamma.unwrap_or(0.1),
            warmup: args.warmup.unwrap_or(0),
            min_crop_scale: args.min_crop_scale,
        };
        validate(&c)?;
        return Ok((c, Vec::new()));
    };
    fn must<T: PartialEq + Serialize>(name: &str, given: Option<T>, stored: &T) -> Result<()> {
        match given {
            Some(g) if g != *stored => bail!(
                "--{name} {} differs from the run being resumed ({}); a resumed run keeps its {name}: \
                 drop the option, or start a new run in another --out",
                show(&g),
                show(stored)
            ),
            _ => Ok(()),
        }
    }
    must("dataset", args.dataset, &s.dataset)?;
    must("model", args.model, &s.network)?;
    must("head", args.head, &s.head)?;
    must(
        "classifier-head",
        args.classifier_head.map(Some),
        &s.classifier_head,
    )?;
    must("batch-size", args.batch_size, &s.batch_size)?;
    must("optimizer", args.optimizer, &s.optimizer)?;
    must("seed", args.seed, &s.seed)?;
    must("image-size", args.image_size.map(Some), &s.image_size)?;
    must("synthetic-train", args.synthetic_train, &s.synthetic_train)?;
    must("synthetic-test", args.synthetic_test, &s.synthetic_test)?;
    must(
        "synthetic-classes",
        args.synthetic_classes,
        &s.synthetic_classes,
    )?;

    let mut c = s.clone();
    let mut notes = Vec::new();
    fn change<T: PartialEq + Serialize + Clone>(
        name: &str,
        given: Option<T>,
        slot: &mut T,
        notes: &mut Vec<String>,
    ) {
        if let Some(g) = given {
            if g != *slot {
                notes.push(format!(
                    "--{name} changed from {} to {}",
                    show(slot),
                    show(&g)
                ));
                *slot = g;
            }
        }
    }
    change(
        "data-dir",
        args.data_dir.clone().map(Some),
        &mut c.data_dir,
        &mut notes,
    );
    change("epochs", args.epochs, &mut c.epochs, &mut notes);
    change("lr", args.lr, &mut c.lr, &mut notes);
    change("momentum", args.momentum, &mut c.momentum, &mut notes);
    change(
        "nesterov",
        args.nesterov.then_some(true),
        &mut c.nesterov,
        &mut notes,
    );
    change(
        "weight-decay",
        args.weight_decay,
        &mut c.weight_decay,
        &mut notes,
    );
    change("schedule", args.schedule, &mut c.schedule, &mut notes);
    change(
        "step-epochs",
        args.step_epochs,
        &mut c.step_epochs,
        &mut notes,
    );
    change("gamma", args.gamma, &mut c.gamma, &mut notes);
    change("warmup", args.warmup, &mut c.warmup, &mut notes);
    change(
        "min-crop-scale",
        args.min_crop_scale.map(Some),
        &mut c.min_crop_scale,
        &mut notes,
    );
    validate(&c)?;
    Ok((c, notes))
}

fn validate(c: &TrainConfig) -> Result<()> {
    if c.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    if c.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !(c.lr.is_finite() && c.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", c.lr);
    }
    if !(0.0..1.0).contains(&c.momentum) {
        bail!("--momentum must be in [0, 1), got {}", c.momentum);
    }
    if c.nesterov && c.momentum == 0.0 {
        bail!("--nesterov needs a non-zero --momentum");
    }
    if !(c.weight_decay.is_finite() && c.weight_decay >= 0.0) {
        bail!("--weight-decay must be >= 0, got {}", c.weight_decay);
    }
    if c.step_epochs == 0 {
        bail!("--step-epochs must be at least 1");
    }
    if let Some(s) = c.min_crop_scale {
        if !(s > 0.0 && s <= 1.0) {
            bail!("--min-crop-scale must be in (0, 1], got {s}");
        }
    }
    if c.image_size == Some(0) {
        bail!("--image-size must be at least 1");
    }
    Ok(())
}

fn default_out(c: &TrainConfig) -> PathBuf {
    let classifier = c
        .classifier_head
        .map(|h| format!("-{}-classifier", h.to_string().replace(':', "")))
        .unwrap_or_default();
    PathBuf::from("runs").join(format!(
        "{}-{}-{}{classifier}",
        c.dataset,
        c.network,
        c.head.to_string().replace(':', "")
    ))
}

/// Creates `out` and checks that files can be written there.
fn prepare_out(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| {
        format!(
            "cannot create output directory {} (--out); choose a writable directory",
            out.display()
        )
    })?;
    let probe = out.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"ok").with_context(|| {
        format!(
            "cannot write into output directory {} (--out); choose a writable directory",
            out.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Writes the train state, then the model (both atomic).
fn save_checkpoint(
    out: &Path,
    state: &TrainState,
    model: &Model,
    opt: &dyn Optimizer,
    order: &[u32],
) -> Result<()> {
    checkpoint::save_state(out, state, model, opt.state(), order)?;
    model
        .save(out.join(MODEL_FILE))
        .with_context(|| format!("cannot write {}", out.join(MODEL_FILE).display()))
}

/// `trainer train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let device = crate::device::parse(args.device.as_deref().unwrap_or("cpu"))?;
    let resumed = match &args.resume {
        Some(dir) => Some(checkpoint::load_state(dir, &device)?),
        None => None,
    };
    let (config, notes) = resolve(&args, resumed.as_ref().map(|l| &l.state.config))?;
    let out = args
        .out
        .clone()
        .or_else(|| args.resume.clone())
        .unwrap_or_else(|| default_out(&config));
    prepare_out(&out)?;
    if resumed.is_none() && out.join(STATE_FILE).exists() {
        bail!(
            "{} already holds a run ({STATE_FILE}); continue it with --resume {0}, or choose \
             another --out",
            out.display()
        );
    }
    for n in &notes {
        eprintln!("note: {n}");
    }

    // Input shape: the stored model's, or the network's default (optionally resized).
    let input = match &resumed {
        Some(l) => l.state.model.input.clone(),
        None => {
            let mut input = config.network.default_input();
            if let Some(s) = config.image_size {
                input.height = s;
                input.width = s;
            }
            input
        }
    };
    let shape = Shape::of(&input);
    let min_crop_scale = config
        .min_crop_scale
        .unwrap_or_else(|| default_min_crop_scale(shape));
    let dataset = data::open(&DataOptions {
        kind: config.dataset,
        data_dir: config.data_dir.clone(),
        input: input.clone(),
        seed: config.seed,
        need_train: true,
        synthetic_train: config.synthetic_train,
        synthetic_test: config.synthetic_test,
        synthetic_classes: config.synthetic_classes,
        min_crop_scale,
    })?;
    let (train_len, test_len) = (dataset.train.len(), dataset.test.len());
    if train_len == 0 || test_len == 0 {
        bail!("the dataset has {train_len} training and {test_len} test images; both must be non-empty");
    }

    let (model, mut state) = match &resumed {
        Some(l) => {
            let s = &l.state;
            if s.model.num_classes != dataset.num_classes {
                bail!(
                    "the run being resumed has {} classes but the dataset now has {}",
                    s.model.num_classes,
                    dataset.num_classes
                );
            }
            if (s.train_len, s.test_len) != (train_len, test_len) {
                bail!(
                    "the run being resumed had {} train / {} test images, the dataset now has \
                     {train_len} / {test_len}; resume with the same data",
                    s.train_len,
                    s.test_len
                );
            }
            if s.epoch < config.epochs
                && l.order != data::epoch_order(train_len, config.seed, s.epoch)
            {
                bail!("the saved data order does not match this dataset and seed; resume with the same data");
            }
            let model = checkpoint::model_from_state(l, &device)?;
            let mut st = s.clone();
            st.config = config.clone();
            (model, st)
        }
        None => {
            let mut mc = ModelConfig::new(
                config.network,
                config.head,
                dataset.num_classes,
                config.seed,
            );
            if let (Some(head), Some(last)) =
                (config.classifier_head, config.network.fc_layers().last())
            {
                mc = mc.with_head(last, head);
            }
            mc.input = input.clone();
            let model = Model::new(mc.clone(), &device).with_context(|| {
                format!("cannot build {} with {} heads", config.network, config.head)
            })?;
            let mut st = TrainState::new(mc, config.clone(), train_len, test_len);
            st.class_names = dataset.class_names.clone();
            (model, st)
        }
    };
    let mut opt: Box<dyn Optimizer> = match config.optimizer {
        OptimizerKind::Sgd => Box::new(Sgd::new(
            model.trainable(),
            config.momentum,
            config.nesterov,
            config.weight_decay,
        )?),
        OptimizerKind::Adamw => Box::new(AdamW::new(model.trainable(), config.weight_decay)?),
    };
    if let Some(l) = &resumed {
        opt.load_state(&l.optimizer, l.state.global_step)
            .context("cannot restore the optimizer state")?;
    }
    drop(resumed);
    if let Some(names) = &state.class_names {
        checkpoint::write_atomic(
            &out.join(CLASSES_FILE),
            serde_json::to_string(names)?.as_bytes(),
        )?;
    }

    let report = model.param_report();
    let classifier = config
        .classifier_head
        .map(|h| format!(" ({h} classifier)"))
        .unwrap_or_default();
    println!(
        "{} with {} heads{classifier}: {} parameters ({} dense-equivalent, {:.1}x smaller) on {}",
        config.network,
        config.head,
        report.total(),
        report.dense_equivalent_total(),
        report.compression(),
        dataset.description
    );
    if args.resume.is_some() {
        println!(
            "resuming at epoch {}, batch {}, step {}; writing to {}",
            state.epoch + 1,
            state.batch_in_epoch,
            state.global_step,
            out.display()
        );
    } else {
        println!("writing checkpoints and metrics to {}", out.display());
    }

    let workers = args.workers.unwrap_or_else(default_workers);
    let loader_cfg = LoaderConfig::new(config.batch_size, shape.numel(), workers)?;
    let eval_cfg = LoaderConfig {
        batch_size: config.batch_size.max(256),
        ..loader_cfg.clone()
    };
    let steps_per_epoch = train_len.div_ceil(config.batch_size) as u64;
    let schedule = Schedule {
        kind: config.schedule,
        base_lr: config.lr,
        warmup: config.warmup,
        total_steps: config.epochs as u64 * steps_per_epoch,
        step_size: config.step_epochs as u64 * steps_per_epoch,
        gamma: config.gamma,
    };
    let show_progress = !args.no_progress;
    let seed = config.seed;
    let mut last_saved: Option<u64> = args.resume.as_ref().map(|_| state.global_step);
    let mut last_eval: Option<EvalResult> = None;
    let mut stopped_early = false;

    if state.epoch >= config.epochs {
        println!(
            "the run has already finished its {} epochs; pass a larger --epochs to train longer",
            config.epochs
        );
    }
    while state.epoch < config.epochs {
        let epoch = state.epoch;
        let epoch_start = Instant::now();
        let order = Arc::new(data::epoch_order(train_len, seed, epoch));
        let augment = derive_seed(seed, &[0xA6, epoch as u64]);
        let bar = progress::bar(
            steps_per_epoch,
            format!("epoch {}/{}", epoch + 1, config.epochs),
            show_progress,
        );
        bar.set_position(state.batch_in_epoch as u64);
        let mut session_images = 0u64;
        let mut lr = schedule.lr(state.global_step);
        let loader = Loader::spawn(
            dataset.train.clone(),
            order.clone(),
            state.batch_in_epoch,
            Some(augment),
            &loader_cfg,
        );
        for batch in loader {
            let batch = batch?;
            if batch.index != state.batch_in_epoch {
                bail!(
                    "internal error: batch {} arrived while expecting batch {}",
                    batch.index,
                    state.batch_in_epoch
                );
            }
            let n = batch.labels.len();
            lr = schedule.lr(state.global_step);
            let x = Tensor::from_vec(batch.images, (n, shape.c, shape.h, shape.w), &device)?;
            let y = Tensor::from_vec(batch.labels.clone(), n, &device)?;
            let dropout_seed = derive_seed(seed, &[0xD0, state.global_step]);
            let logits = model.forward(&x, Mode::Train { dropout_seed })?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                bar.abandon();
                let kept = match last_saved {
                    Some(s) => format!(
                        "the last checkpoint in {} (step {s}) is intact",
                        out.display()
                    ),
                    None => "no checkpoint was written".to_string(),
                };
                bail!(
                    "the training loss became {loss_value} at epoch {}, step {} (lr {lr:.3e}): \
                     training diverged and was stopped; {kept}. Lower --lr or add --warmup{}",
                    epoch + 1,
                    state.global_step + 1,
                    if last_saved.is_some() {
                        ", then --resume"
                    } else {
                        ""
                    }
                );
            }
            let grads = loss.backward()?;
            opt.step(&grads, lr)?;
            let (_, correct, _) = eval::score(&eval::host_logits(&logits)?, &batch.labels)?;
            state.accum.loss_sum += loss_value * n as f64;
            state.accum.correct += correct;
            state.accum.seen += n as u64;
            state.global_step += 1;
            state.batch_in_epoch += 1;
            session_images += n as u64;
            bar.inc(1);
            let secs = epoch_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(progress::train_message(
                state.accum.loss_sum / state.accum.seen as f64,
                state.accum.correct as f64 / state.accum.seen as f64,
                session_images as f64 / secs,
                lr,
            ));
            let epoch_done = state.batch_in_epoch as u64 >= steps_per_epoch;
            let hit_max = args.max_steps.is_some_and(|m| state.global_step >= m);
            let periodic = args
                .save_every
                .is_some_and(|k| k > 0 && state.global_step % k == 0);
            if !epoch_done && (periodic || hit_max) {
                save_checkpoint(&out, &state, &model, opt.as_ref(), &order)?;
                last_saved = Some(state.global_step);
            }
            if hit_max && !epoch_done {
                stopped_early = true;
                break;
            }
        }
        let train_secs = epoch_start.elapsed().as_secs_f64();
        if stopped_early {
            bar.finish_and_clear();
            break;
        }
        if (state.batch_in_epoch as u64) < steps_per_epoch {
            bail!(
                "the data loader stopped after {} of {steps_per_epoch} batches",
                state.batch_in_epoch
            );
        }
        bar.set_prefix("validate");
        bar.set_length(test_len.div_ceil(eval_cfg.batch_size) as u64);
        bar.set_position(0);
        let val = eval::evaluate(
            &model,
            dataset.test.clone(),
            &eval_cfg,
            shape,
            dataset.num_classes,
            Some(&bar),
        )?;
        bar.finish_and_clear();
        let acc = &state.accum;
        let record = EpochRecord {
            epoch: epoch + 1,
            step: state.global_step,
            lr,
            train_loss: acc.loss_sum / acc.seen.max(1) as f64,
            train_acc: acc.correct as f64 / acc.seen.max(1) as f64,
            val_loss: val.loss,
            val_acc: val.accuracy,
            val_top5: val.top5,
            seconds: epoch_start.elapsed().as_secs_f64(),
            images_per_sec: session_images as f64 / train_secs.max(1e-9),
        };
        let improved = state.best_val_acc.is_none_or(|b| val.accuracy > b);
        if improved {
            state.best_val_acc = Some(val.accuracy);
        }
        state.history.push(record.clone());
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.accum = Default::default();
        let next_order = data::epoch_order(train_len, seed, state.epoch);
        save_checkpoint(&out, &state, &model, opt.as_ref(), &next_order)?;
        last_saved = Some(state.global_step);
        if improved {
            model
                .save(out.join(BEST_FILE))
                .with_context(|| format!("cannot write {}", out.join(BEST_FILE).display()))?;
        }
        metrics::write_jsonl(&out, &state.history)?;
        if let Err(e) = plot::draw(&out.join(plot::CURVES_FILE), &state.history) {
            eprintln!("warning: {e:#}");
        }
        let top5 = val
            .top5
            .map(|t| format!(" top5 {:.2}%", 100.0 * t))
            .unwrap_or_default();
        println!(
            "epoch {:>3}/{}  train loss {:.4} acc {:.2}%  val loss {:.4} acc {:.2}%{top5}  lr {:.2e}  {:.0} img/s  {:.1}s{}",
            record.epoch,
            config.epochs,
            record.train_loss,
            100.0 * record.train_acc,
            record.val_loss,
            100.0 * record.val_acc,
            record.lr,
            record.images_per_sec,
            record.seconds,
            if improved { "  *best" } else { "" }
        );
        last_eval = Some(val);
        if args.max_steps.is_some_and(|m| state.global_step >= m) && state.epoch < config.epochs {
            stopped_early = true;
            break;
        }
    }

    if stopped_early {
        println!(
            "stopped after {} steps (--max-steps); continue with --resume {}",
            state.global_step,
            out.display()
        );
    }
    let result = match last_eval {
        Some(r) if !stopped_early || state.batch_in_epoch == 0 => r,
        _ => {
            let bar = progress::bar(
                test_len.div_ceil(eval_cfg.batch_size) as u64,
                "evaluate".into(),
                show_progress,
            );
            let r = eval::evaluate(
                &model,
                dataset.test.clone(),
                &eval_cfg,
                shape,
                dataset.num_classes,
                Some(&bar),
            )?;
            bar.finish_and_clear();
            r
        }
    };
    if !out.join(MODEL_FILE).exists() {
        model.save(out.join(MODEL_FILE))?;
    }
    let top5 = result
        .top5
        .map(|t| format!(", top-5 {:.2}%", 100.0 * t))
        .unwrap_or_default();
    println!(
        "test accuracy: {:.2}%{top5} (loss {:.4}, {} images)",
        100.0 * result.accuracy,
        result.loss,
        result.samples
    );
    println!("checkpoint: {}", out.join(MODEL_FILE).display());
    if let Some(b) = state.best_val_acc {
        println!(
            "best: {} (test accuracy {:.2}%)",
            out.join(BEST_FILE).display(),
            100.0 * b
        );
    }
    Ok(())
}
