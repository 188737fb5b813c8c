//! Command-line interface (clap derive).

use std::path::PathBuf;

use circulant_model::{Head, Network};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::dist::{DistFlags, Master};
use crate::train::settings::{ValSplit, DEFAULTS};

/// Process settings the trainer makes at start, and how to override them.
const ENVIRONMENT: &str = "\
Environment (the trainer's settings at start; set a variable to override it):
  RAYON_NUM_THREADS             CPU threads of the layers [default: available cores]
                                (image decoding: --workers)
  CANDLE_NUM_THREADS            threads of candle's element-wise ops [default: 1, one thread
                                pool instead of two taking turns]
  MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_
                                glibc heap settings; by default the trainer keeps freed memory
                                mapped (faster steps, up to ~1 GiB held)
  CIRCULANT_NO_HUGE_PAGES       1: keep the kernel's default pages for large buffers (by
                                default the trainer asks for transparent huge pages for
                                blocks of 4 MiB and more: faster batch-1 dense layers)
  CIRCULANT_KEEP_DENORMALS      1: compute with denormal floats instead of as 0 (by default
                                the trainer flushes them, as TensorFlow does: much faster on
                                Intel CPUs once gradients get tiny)
  CIRCULANT_KEEP_DEVICE_MEMORY  0: leave the CUDA memory pool's default (freed GPU memory
                                released at every step) instead of keeping it";

/// How `trainer train` runs on several GPUs and nodes.
const DATA_PARALLEL: &str = "\
Data-parallel training (a trainer built with --features nccl):
  One node:      trainer train --gpus N ...   starts N worker processes, one per GPU, and waits
  Several nodes: trainer train --gpus N --nnodes K --node-rank R --master ADDR:PORT ... on each
                 node (R = 0..K-1; ADDR:PORT on node 0, the same everywhere)
  Under a launcher (torchrun, SLURM, ...), each process may instead get WORLD_SIZE, RANK,
  LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment (LOCAL_RANK picks the GPU).
  --batch-size is per process: each step trains on N*K*batch-size images. Rank 0 alone writes
  the run directory. Batch norm keeps per-process statistics (rank 0's are saved).";

/// Train, evaluate and run networks with circulant fully-connected heads.
#[derive(Parser, Debug)]
#[command(
    name = "trainer",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = ENVIRONMENT
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a network (or resume a run) and write checkpoints, metrics.jsonl and curves.png.
    #[command(after_help = DATA_PARALLEL)]
    Train(Box<TrainArgs>),
    /// Top-1 (and top-5) accuracy and loss of a checkpoint on a dataset's test split.
    Eval(EvalArgs),
    /// Class and probabilities for PNG/JPEG images.
    Predict(PredictArgs),
    /// Network, heads, parameters per layer and compression of a checkpoint.
    Info(InfoArgs),
    /// Copy a checkpoint with its weights stored as f16 or bf16 (half the size) or f32.
    Export(ExportArgs),
    /// Training and inference images/s of a network on random data (the training step of
    /// `train`; inference as `predict` runs it).
    Bench(BenchArgs),
    /// Measure image-folder decode throughput (images/s) of the training pipeline.
    #[command(hide = true)]
    BenchDecode(BenchDecodeArgs),
}

/// Parses the command line; `train --help` shows the defaults of [`DEFAULTS`].
pub fn parse() -> Cli {
    let cmd = Cli::command().mut_subcommand("train", |mut train| {
        for (id, default) in DEFAULTS {
            train = train.mut_arg(*id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {default}]"))
            });
        }
        train
    });
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// A dataset the trainer can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST idx files (raw or .gz) from --data-dir, or the Hugging Face hub.
    Mnist,
    /// Fashion-MNIST idx files from --data-dir, /usr/share/datasets/fashion-mnist, or the hub.
    FashionMnist,
    /// CIFAR-10 binary batches (data_batch_*.bin, test_batch.bin) or an image folder.
    Cifar10,
    /// DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg; without test/, DIR/val/ is the test
    /// split (ImageNet's layout). Validation images come out of train/ (--val-split).
    Imagefolder,
    /// Generated, learnable data for smoke tests (no files needed).
    Synthetic,
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Imagefolder => "imagefolder",
            DatasetKind::Synthetic => "synthetic",
        };
        f.write_str(s)
    }
}

/// Optimizer choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD with momentum, optional Nesterov, L2 weight decay.
    Sgd,
    /// Adam with decoupled weight decay.
    Adamw,
}

/// Learning-rate schedule (after the linear warmup).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Constant learning rate.
    Const,
    /// Multiply by --gamma every --step-epochs epochs.
    Step,
    /// Cosine decay to zero at the end of the last epoch.
    Cosine,
}

fn parse_network(s: &str) -> Result<Network, String> {
    s.parse::<Network>().map_err(|e| e.to_string())
}

fn parse_head(s: &str) -> Result<Head, String> {
    s.parse::<Head>().map_err(|e| e.to_string())
}

fn parse_master(s: &str) -> Result<Master, String> {
    s.parse()
}

/// Options of `trainer train`. An option not given takes its default (see
/// `crate::train::settings::DEFAULTS`, which `--help` shows), or, with --resume, the value
/// stored in the run being resumed.
#[derive(Args, Debug, Default, Clone)]
pub struct TrainArgs {
    /// Dataset to train on [required unless --resume]
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetKind>,
    /// Directory with the dataset files (idx files, CIFAR batches, or train/ and val/ folders)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Network: mnist-cnn, mlp, cifar-cnn, alexnet [required unless --resume]
    #[arg(long, value_parser = parse_network, value_name = "NETWORK")]
    pub model: Option<Network>,
    /// Fully-connected head: dense; circulant (the paper's layer: one vector of weights per
    /// layer, the smallest); block:<b> (a grid of b×b circulant blocks: about b times fewer
    /// weights than dense, and closer to its accuracy than circulant; block:1 is dense)
    #[arg(long, value_parser = parse_head, value_name = "HEAD")]
    pub head: Option<Head>,
    /// Head of the last FC layer, the classifier. `--head circulant
    /// --classifier-head dense` keeps the classifier dense, as the paper does for AlexNet's fc8
    #[arg(long, value_parser = parse_head, value_name = "HEAD")]
    pub classifier_head: Option<Head>,
    /// Number of epochs
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training images held out for validation (best.safetensors is chosen on them): a count
    /// (5000) or a fraction (0.1, 10%), drawn at random from the seed; 0 trains on every image and
    /// chooses no best
    #[arg(long, value_name = "N|FRACTION")]
    pub val_split: Option<ValSplit>,
    /// Mini-batch size per process: per GPU with --gpus (each step then trains on
    /// GPUs x nodes x this many images)
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Optimizer
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Peak learning rate
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum (0 disables it)
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Use Nesterov momentum with SGD
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay: L2 for sgd, decoupled for adamw
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule after warmup
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Step schedule: epochs between decays
    #[arg(long)]
    pub step_epochs: Option<usize>,
    /// Step schedule: decay factor
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Linear warmup length in optimizer steps
    #[arg(long, value_name = "STEPS")]
    pub warmup: Option<u64>,
    /// Device: cpu, cuda or cuda:N
    #[arg(long)]
    pub device: Option<String>,
    /// Seed for weights, data order, dropout and augmentation
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory for checkpoints and metrics (it must not hold a run already)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run whose train_state.safetensors is in DIR, in DIR. A run that already
    /// trained its --epochs (or --max-steps) and was tested is left as it is
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Stop after N optimizer steps in total (for smoke runs); the schedule still spans --epochs
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// Also checkpoint every N optimizer steps (checkpoints are always written after each epoch)
    #[arg(long, value_name = "N")]
    pub save_every: Option<u64>,
    /// Image side for imagefolder / cifar10 image folders
    #[arg(long, value_name = "PIXELS")]
    pub image_size: Option<usize>,
    /// Smallest crop area fraction for random-resized-crop
    #[arg(long)]
    pub min_crop_scale: Option<f64>,
    /// Image decode threads
    #[arg(long)]
    pub workers: Option<usize>,
    /// Synthetic dataset: training images
    #[arg(long)]
    pub synthetic_train: Option<usize>,
    /// Synthetic dataset: test images
    #[arg(long)]
    pub synthetic_test: Option<usize>,
    /// Synthetic dataset: number of classes
    #[arg(long)]
    pub synthetic_classes: Option<usize>,
    /// Write a line of training metrics to metrics-steps.jsonl every N steps (0: never). The
    /// training loss and accuracy are read from the device only at those steps, at checkpoints
    /// and at the end of an epoch: on a GPU a larger N means fewer waits for it
    #[arg(long, value_name = "N")]
    pub log_every: Option<u64>,
    /// Do not draw progress bars (they are also hidden when stderr is not a terminal)
    #[arg(long)]
    pub no_progress: bool,
    /// Train on N GPUs of this node, one worker process each, with gradients averaged by NCCL
    /// (built with --features nccl). --batch-size is per GPU
    #[arg(long, value_name = "N", help_heading = "Data-parallel training")]
    pub gpus: Option<usize>,
    /// Nodes taking part, each running the same command with its --node-rank
    #[arg(long, value_name = "K", help_heading = "Data-parallel training")]
    pub nnodes: Option<usize>,
    /// This node's index, 0..K-1; node 0 runs rank 0 (which writes the run directory)
    #[arg(long, value_name = "R", help_heading = "Data-parallel training")]
    pub node_rank: Option<usize>,
    /// Address of node 0 and a free TCP port there, for the rendezvous
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_master, help_heading = "Data-parallel training")]
    pub master: Option<Master>,
    /// How long ranks wait for each other at start
    #[arg(long, value_name = "SECONDS", help_heading = "Data-parallel training")]
    pub rendezvous_timeout: Option<u64>,
    /// Train without dropout (the forward pass of evaluation; refused for networks with batch
    /// norm). For tests that compare runs whose dropout masks would differ
    #[arg(long, hide = true)]
    pub no_dropout: bool,
    /// Training arithmetic: f32, or bf16 mixed precision (bf16 activations, convolutions and
    /// dense products; f32 weights, optimizer state, batch norms, max pools, circulant
    /// transforms, loss, evaluation and checkpoints). bf16 needs a CUDA device [default: f32]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

impl TrainArgs {
    /// The options that ask for several processes.
    pub fn dist_flags(&self) -> DistFlags {
        DistFlags {
            gpus: self.gpus,
            nnodes: self.nnodes,
            node_rank: self.node_rank,
            master: self.master.clone(),
        }
    }
}

/// Options of `trainer eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint (model.safetensors or best.safetensors), or hf://owner/repo[/file][@rev]
    /// (built with the `hub` feature)
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Dataset whose test split is evaluated
    #[arg(long, value_enum)]
    pub dataset: DatasetKind,
    /// Directory with the dataset files
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Mini-batch size
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Image decode threads [default: number of CPUs]
    #[arg(long)]
    pub workers: Option<usize>,
    /// Synthetic dataset: seed it was generated with (the training run's --seed)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Synthetic dataset: test images
    #[arg(long, default_value_t = 256)]
    pub synthetic_test: usize,
    /// Print {"accuracy", "loss", "samples"[, "top5"]} as JSON
    #[arg(long)]
    pub json: bool,
}

/// Options of `trainer predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Checkpoint (model.safetensors or best.safetensors), or hf://owner/repo[/file][@rev]
    /// (built with the `hub` feature)
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Device: cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object per image: {"file", "class", "label", "probabilities", "top"}
    #[arg(long)]
    pub json: bool,
    /// Show the K most probable classes of each image
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub top_k: usize,
    /// PNG or JPEG images, or directories (every PNG/JPEG inside, sorted by name). Images are
    /// fitted to the network's input: resized (shorter side to the input size, centre crop) and
    /// converted to grey or RGB as it expects; the first image that needed it is reported once
    #[arg(required = true, value_name = "IMAGE|DIR")]
    pub images: Vec<PathBuf>,
}

/// Options of `trainer info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Checkpoint file, or hf://owner/repo[/file][@rev] (built with the `hub` feature)
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// How `export` stores the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoredDtype {
    /// 32-bit floats (exact).
    F32,
    /// IEEE half precision: half the size, ~3 significant digits.
    F16,
    /// bfloat16: half the size, f32's range, ~2 significant digits.
    Bf16,
}

/// Options of `trainer export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint to read
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Storage dtype of the copy. Loading converts back to f32: inference computes in f32
    #[arg(long, value_enum)]
    pub dtype: StoredDtype,
    /// File to write
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Training arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    F32,
    /// bfloat16 mixed precision (CUDA only: candle's CPU matmul has no bf16 kernel).
    Bf16,
}

impl Precision {
    /// The dtype of the activations.
    pub fn compute_dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }

    /// Refuses bf16 on a CPU device, with the reason.
    pub fn check_device(self, device: &candle_core::Device) -> anyhow::Result<()> {
        if self == Precision::Bf16 && device.is_cpu() {
            anyhow::bail!(
                "--precision bf16 needs a CUDA device (--device cuda): candle's CPU matmul has no \
                 bf16 kernel"
            );
        }
        Ok(())
    }
}

/// Options of `trainer bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Network: mnist-cnn, mlp, cifar-cnn, alexnet
    #[arg(long, value_parser = parse_network, value_name = "NETWORK")]
    pub model: Network,
    /// Fully-connected head: dense, circulant, block:<b>
    #[arg(long, value_parser = parse_head, value_name = "HEAD", default_value = "circulant")]
    pub head: Head,
    /// Mini-batch size
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed steps (training steps, then inference batches)
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps before each measurement
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Optimizer of the training step
    #[arg(long, value_enum, default_value = "adamw")]
    pub optimizer: OptimizerKind,
    /// Device: cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Print {"network","head","batch","device","precision","train_img_s","infer_img_s"}
    #[arg(long)]
    pub json: bool,
}

/// Options of the hidden `trainer bench-decode`.
#[derive(Args, Debug)]
pub struct BenchDecodeArgs {
    /// Image folder (with train/<class>/*) to read
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// First write N synthetic JPEGs (10 classes) into DIR/train
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    /// Side of generated images
    #[arg(long, default_value_t = 256)]
    pub generate_size: u32,
    /// Output image side
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Channels of the output (3 = RGB, 1 = grey)
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Decode threads [default: number of CPUs]
    #[arg(long)]
    pub workers: Option<usize>,
    /// Mini-batch size
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Use the evaluation transform (resize + center crop) instead of training augmentation
    #[arg(long)]
    pub eval: bool,
}
