//! The settings of a training run, split into what defines the run (it must match when the run
//! is resumed) and what may change on resume, with every default in one place: [`DEFAULTS`] is
//! what `resolve` applies and what `trainer train --help` shows.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Result};
use circulant_model::{Head, Network};
use serde::{Deserialize, Serialize};

use crate::cli::{DatasetKind, OptimizerKind, Precision, ScheduleKind, TrainArgs};

/// The defaults of `trainer train`, as (option id, shown value). Options whose default depends
/// on others say so.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("head", "circulant"),
    ("classifier_head", "same as --head"),
    ("epochs", "10"),
    ("batch_size", "64"),
    (
        "optimizer",
        "adamw for circulant and block heads, sgd for dense",
    ),
    (
        "lr",
        "0.05 for sgd; for adamw 0.003 with circulant and block heads, 0.001 with dense",
    ),
    ("momentum", "0.9"),
    ("weight_decay", "0 for sgd, 0.01 for adamw"),
    ("schedule", "cosine"),
    ("step_epochs", "30"),
    ("gamma", "0.1"),
    ("warmup", "0"),
    ("seed", "0"),
    ("device", "cpu"),
    (
        "val_split",
        "5000 for mnist, fashion-mnist and cifar10; elsewhere 2% of the training images, at \
         least 10 per class, at most 20%",
    ),
    ("log_every", "50"),
    (
        "out",
        "runs/<dataset>-<model>-<head>, or runs/<...>-2, -3, ... when that holds a run",
    ),
    ("image_size", "the network's input size"),
    ("min_crop_scale", "0.08, or 0.35 below 128 px"),
    ("workers", "number of CPUs"),
    ("synthetic_train", "512"),
    ("synthetic_test", "256"),
    ("synthetic_classes", "10"),
    ("nnodes", "1"),
    ("node_rank", "0"),
    (
        "master",
        "127.0.0.1 and a free port with one node; required with --nnodes > 1",
    ),
    ("rendezvous_timeout", "300"),
];

/// Seconds ranks wait for each other at start (`--rendezvous-timeout`).
pub const RENDEZVOUS_TIMEOUT: u64 = 300;

const EPOCHS: usize = 10;
const BATCH_SIZE: usize = 64;
const MOMENTUM: f64 = 0.9;
const STEP_EPOCHS: usize = 30;
const GAMMA: f64 = 0.1;
const SYNTHETIC_TRAIN: usize = 512;
const SYNTHETIC_TEST: usize = 256;
const SYNTHETIC_CLASSES: usize = 10;
const LOG_EVERY: u64 = 50;

/// How many training images to hold out for validation: a count or a fraction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValSplit {
    Images(usize),
    Fraction(f64),
}

impl FromStr for ValSplit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad =
            || format!("'{s}' is neither a number of images (5000) nor a fraction (0.1, 10%)");
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            return ValSplit::fraction(p / 100.0).ok_or_else(bad);
        }
        if let Ok(n) = s.parse::<usize>() {
            return Ok(ValSplit::Images(n));
        }
        let f: f64 = s.parse().map_err(|_| bad())?;
        ValSplit::fraction(f).ok_or_else(bad)
    }
}

impl std::fmt::Display for ValSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValSplit::Images(n) => write!(f, "{n}"),
            ValSplit::Fraction(x) => write!(f, "{x}"),
        }
    }
}

impl ValSplit {
    fn fraction(f: f64) -> Option<Self> {
        (0.0..1.0).contains(&f).then_some(ValSplit::Fraction(f))
    }

    /// The number of validation images out of `n_train` (`None`: the dataset's default).
    pub fn resolve(
        spec: Option<ValSplit>,
        dataset: DatasetKind,
        n_train: usize,
        classes: usize,
    ) -> Result<usize> {
        let n = match spec {
            Some(ValSplit::Images(k)) => k,
            Some(ValSplit::Fraction(f)) => (f * n_train as f64).round() as usize,
            None => match dataset {
                DatasetKind::Mnist | DatasetKind::FashionMnist | DatasetKind::Cifar10
                    if n_train >= 25_000 =>
                {
                    5000
                }
                _ => (10 * classes).max(n_train / 50).min(n_train / 5),
            },
        };
        if n >= n_train {
            bail!(
                "--val-split {n} leaves no training images (the training split has {n_train}); \
                 choose fewer, or --val-split 0 to train on all of them"
            );
        }
        Ok(n)
    }
}

/// What defines a run: fixed when it is resumed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunSpec {
    pub dataset: DatasetKind,
    pub network: Network,
    pub head: Head,
    /// Head of the last FC layer when it differs from `head`.
    pub classifier_head: Option<Head>,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub seed: u64,
    pub image_size: Option<usize>,
    /// `None`: the dataset's default.
    pub val_split: Option<ValSplit>,
    pub synthetic_train: usize,
    pub synthetic_test: usize,
    pub synthetic_classes: usize,
    /// Trains without dropout (hidden `--no-dropout`, for tests).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_dropout: bool,
    /// Training arithmetic (runs before `--precision` existed are f32).
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: Precision,
}

fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}

/// What a resumed run may change (e.g. more epochs, another learning rate).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Adjustable {
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
    /// Steps between lines of metrics-steps.jsonl (0: none).
    pub log_every: u64,
}

/// The settings of a run, stored in its train state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub run: RunSpec,
    pub adjustable: Adjustable,
}

fn show<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default()
}

/// The optimizer when `--optimizer` is not given: circulant and block heads reach a lower error
/// with AdamW in the same epochs (docs/RESULTS.md, "Default recipe"), dense heads keep SGD.
fn default_optimizer(head: Head) -> OptimizerKind {
    match head {
        Head::Dense => OptimizerKind::Sgd,
        _ => OptimizerKind::Adamw,
    }
}

/// The learning rate when `--lr` is not given.
fn default_lr(optimizer: OptimizerKind, head: Head) -> f64 {
    match (optimizer, head) {
        (OptimizerKind::Sgd, _) => 0.05,
        (OptimizerKind::Adamw, Head::Dense) => 1e-3,
        (OptimizerKind::Adamw, _) => 3e-3,
    }
}

/// A fresh run's settings from the command line.
fn fresh(args: &TrainArgs) -> Result<TrainConfig> {
    let Some(dataset) = args.dataset else {
        bail!("--dataset is required (mnist, fashion-mnist, cifar10, imagefolder or synthetic), unless you --resume a run");
    };
    let Some(network) = args.model else {
        bail!(
            "--model is required (mnist-cnn, mlp, cifar-cnn or alexnet), unless you --resume a run"
        );
    };
    let head = args.head.unwrap_or(Head::Circulant);
    let optimizer = args.optimizer.unwrap_or(default_optimizer(head));
    let sgd = optimizer == OptimizerKind::Sgd;
    Ok(TrainConfig {
        run: RunSpec {
            dataset,
            network,
            head,
            classifier_head: args.classifier_head,
            batch_size: args.batch_size.unwrap_or(BATCH_SIZE),
            optimizer,
            seed: args.seed.unwrap_or(0),
            image_size: args.image_size,
            val_split: args.val_split,
            synthetic_train: args.synthetic_train.unwrap_or(SYNTHETIC_TRAIN),
            synthetic_test: args.synthetic_test.unwrap_or(SYNTHETIC_TEST),
            synthetic_classes: args.synthetic_classes.unwrap_or(SYNTHETIC_CLASSES),
            no_dropout: args.no_dropout,
            precision: args.precision.unwrap_or_default(),
        },
        adjustable: Adjustable {
            data_dir: args.data_dir.clone(),
            epochs: args.epochs.unwrap_or(EPOCHS),
            lr: args.lr.unwrap_or(default_lr(optimizer, head)),
            momentum: args.momentum.unwrap_or(MOMENTUM),
            nesterov: args.nesterov,
            weight_decay: args.weight_decay.unwrap_or(if sgd { 0.0 } else { 0.01 }),
            schedule: args.schedule.unwrap_or(ScheduleKind::Cosine),
            step_epochs: args.step_epochs.unwrap_or(STEP_EPOCHS),
            gamma: args.gamma.unwrap_or(GAMMA),
            warmup: args.warmup.unwrap_or(0),
            min_crop_scale: args.min_crop_scale,
            log_every: args.log_every.unwrap_or(LOG_EVERY),
        },
    })
}

/// Builds the run configuration from the command line, or from the stored configuration of the
/// run being resumed plus the options that may change. Returns notes about changed options.
pub fn resolve(
    args: &TrainArgs,
    stored: Option<&TrainConfig>,
) -> Result<(TrainConfig, Vec<String>)> {
    let Some(s) = stored else {
        let c = fresh(args)?;
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
    let r = &s.run;
    must("dataset", args.dataset, &r.dataset)?;
    must("model", args.model, &r.network)?;
    must("head", args.head, &r.head)?;
    must(
        "classifier-head",
        args.classifier_head.map(Some),
        &r.classifier_head,
    )?;
    must("batch-size", args.batch_size, &r.batch_size)?;
    must("optimizer", args.optimizer, &r.optimizer)?;
    must("seed", args.seed, &r.seed)?;
    must("image-size", args.image_size.map(Some), &r.image_size)?;
    must("val-split", args.val_split.map(Some), &r.val_split)?;
    must("synthetic-train", args.synthetic_train, &r.synthetic_train)?;
    must("synthetic-test", args.synthetic_test, &r.synthetic_test)?;
    must(
        "synthetic-classes",
        args.synthetic_classes,
        &r.synthetic_classes,
    )?;
    must("no-dropout", args.no_dropout.then_some(true), &r.no_dropout)?;
    must("precision", args.precision, &r.precision)?;

    let mut c = s.clone();
    let mut notes = Vec::new();
    let mut change =
        |name: &str, given: Option<serde_json::Value>, slot: &mut serde_json::Value| {
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
        };
    // The adjustable settings go through JSON so that one loop handles every type.
    let mut adj = serde_json::to_value(&c.adjustable)?;
    let given = [
        (
            "data-dir",
            "data_dir",
            args.data_dir.as_ref().map(|d| serde_json::json!(d)),
        ),
        ("epochs", "epochs", args.epochs.map(|v| v.into())),
        ("lr", "lr", args.lr.map(|v| v.into())),
        ("momentum", "momentum", args.momentum.map(|v| v.into())),
        ("nesterov", "nesterov", args.nesterov.then_some(true.into())),
        (
            "weight-decay",
            "weight_decay",
            args.weight_decay.map(|v| v.into()),
        ),
        (
            "schedule",
            "schedule",
            args.schedule.map(|v| serde_json::json!(v)),
        ),
        (
            "step-epochs",
            "step_epochs",
            args.step_epochs.map(|v| v.into()),
        ),
        ("gamma", "gamma", args.gamma.map(|v| v.into())),
        ("warmup", "warmup", args.warmup.map(|v| v.into())),
        (
            "min-crop-scale",
            "min_crop_scale",
            args.min_crop_scale.map(|v| v.into()),
        ),
        ("log-every", "log_every", args.log_every.map(|v| v.into())),
    ];
    for (flag, field, value) in given {
        change(flag, value, &mut adj[field]);
    }
    c.adjustable = serde_json::from_value(adj)?;
    validate(&c)?;
    Ok((c, notes))
}

fn validate(c: &TrainConfig) -> Result<()> {
    let (r, a) = (&c.run, &c.adjustable);
    if a.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    if r.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", a.lr);
    }
    if !(0.0..1.0).contains(&a.momentum) {
        bail!("--momentum must be in [0, 1), got {}", a.momentum);
    }
    if a.nesterov && a.momentum == 0.0 {
        bail!("--nesterov needs a non-zero --momentum");
    }
    if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
        bail!("--weight-decay must be >= 0, got {}", a.weight_decay);
    }
    if a.step_epochs == 0 {
        bail!("--step-epochs must be at least 1");
    }
    if let Some(s) = a.min_crop_scale {
        if !(s > 0.0 && s <= 1.0) {
            bail!("--min-crop-scale must be in (0, 1], got {s}");
        }
    }
    if r.image_size == Some(0) {
        bail!("--image-size must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn val_split_parses_counts_and_fractions() {
        assert_eq!("5000".parse(), Ok(ValSplit::Images(5000)));
        assert_eq!("0".parse(), Ok(ValSplit::Images(0)));
        assert_eq!("0.1".parse(), Ok(ValSplit::Fraction(0.1)));
        assert_eq!("10%".parse(), Ok(ValSplit::Fraction(0.1)));
        for bad in ["-1", "1.5", "x", "100%"] {
            assert!(bad.parse::<ValSplit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn val_split_defaults_per_dataset() {
        let r = |s, d, n, c| ValSplit::resolve(s, d, n, c).unwrap();
        assert_eq!(r(None, DatasetKind::Mnist, 60_000, 10), 5000);
        assert_eq!(r(None, DatasetKind::Cifar10, 50_000, 10), 5000);
        // ImageNet-sized folder: 2%.
        assert_eq!(r(None, DatasetKind::Imagefolder, 1_281_167, 1000), 25_623);
        // Small folder: 10 per class, at most 20%.
        assert_eq!(r(None, DatasetKind::Imagefolder, 1000, 10), 100);
        assert_eq!(r(None, DatasetKind::Synthetic, 192, 10), 38);
        assert_eq!(
            r(Some(ValSplit::Fraction(0.25)), DatasetKind::Mnist, 100, 10),
            25
        );
        assert_eq!(r(Some(ValSplit::Images(0)), DatasetKind::Mnist, 100, 10), 0);
        assert!(
            ValSplit::resolve(Some(ValSplit::Images(100)), DatasetKind::Mnist, 100, 10).is_err()
        );
    }

    #[test]
    fn every_default_names_an_option() {
        use clap::CommandFactory;
        let cmd = crate::cli::Cli::command();
        let train = cmd.find_subcommand("train").unwrap();
        for (id, _) in DEFAULTS {
            assert!(
                train.get_arguments().any(|a| a.get_id() == id),
                "no option {id}"
            );
        }
    }

    #[test]
    fn optimizer_and_lr_defaults_follow_the_head() {
        use clap::Parser;
        let fresh_of = |extra: &[&str]| {
            let mut argv = vec![
                "trainer",
                "train",
                "--dataset",
                "mnist",
                "--model",
                "mnist-cnn",
            ];
            argv.extend(extra);
            let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
            let crate::cli::Command::Train(args) = cli.command else {
                panic!("not a train command")
            };
            let c = fresh(&args).unwrap();
            (c.run.optimizer, c.adjustable.lr, c.adjustable.weight_decay)
        };
        assert_eq!(fresh_of(&[]), (OptimizerKind::Adamw, 3e-3, 0.01));
        assert_eq!(
            fresh_of(&["--head", "block:64"]),
            (OptimizerKind::Adamw, 3e-3, 0.01)
        );
        assert_eq!(
            fresh_of(&["--head", "dense"]),
            (OptimizerKind::Sgd, 0.05, 0.0)
        );
        assert_eq!(
            fresh_of(&["--head", "dense", "--optimizer", "adamw"]),
            (OptimizerKind::Adamw, 1e-3, 0.01)
        );
        assert_eq!(
            fresh_of(&["--optimizer", "sgd"]),
            (OptimizerKind::Sgd, 0.05, 0.0)
        );
        assert_eq!(fresh_of(&["--lr", "0.2"]).1, 0.2);
    }
}
