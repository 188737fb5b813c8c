//! `trainer train` options for data-parallel training, on the CPU: the help, and the clear error
//! of every inconsistent or unsupported request (the GPU runs are in `nccl.rs`).

mod common;

use common::{s, text, trainer};

/// Runs `trainer train` on synthetic data with `args` and the environment `env`, and requires
/// exit status 1 with one `error:` line containing `want`, and nothing written.
fn refused(args: &[&str], env: &[(&str, &str)], want: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = trainer()
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--out",
            s(&out),
        ])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?} {env:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(want),
        "{args:?} {env:?}: {} lacks {want:?}",
        lines[0]
    );
    assert!(!out.exists(), "{args:?} {env:?} created the run directory");
}

const WORKER: &[(&str, &str)] = &[
    ("WORLD_SIZE", "2"),
    ("RANK", "1"),
    ("LOCAL_RANK", "1"),
    ("MASTER_ADDR", "127.0.0.1"),
    ("MASTER_PORT", "29999"),
];

#[test]
fn help_documents_data_parallel_training() {
    let o = trainer().args(["train", "--help"]).output().unwrap();
    let help = text(&o.stdout);
    for want in [
        "--gpus <N>",
        "--nnodes <K>",
        "--node-rank <R>",
        "--master <ADDR:PORT>",
        "--rendezvous-timeout <SECONDS>",
        "Mini-batch size per process: per GPU with --gpus",
        "WORLD_SIZE, RANK,",
        "Rank 0 alone writes",
        "Batch norm keeps per-process statistics",
    ] {
        assert!(help.contains(want), "train --help lacks {want:?}:\n{help}");
    }
    assert!(
        !help.contains("--no-dropout"),
        "--no-dropout is for tests only"
    );
}

#[test]
fn inconsistent_requests_are_refused() {
    refused(&["--gpus", "0"], &[], "--gpus must be at least 1");
    refused(
        &["--gpus", "2", "--nnodes", "2"],
        &[],
        "needs --master ADDR:PORT",
    );
    refused(&["--nnodes", "2"], &[], "go with --gpus");
    refused(&["--gpus", "1", "--device", "cpu"], &[], "--device is cpu");
    refused(&[], &[("RANK", "1")], "RANK is set but WORLD_SIZE is not");
    refused(
        &[],
        &[("WORLD_SIZE", "2"), ("RANK", "2")],
        "RANK=2 must be below WORLD_SIZE=2",
    );
    refused(
        &["--gpus", "4"],
        WORKER,
        "makes 4 processes but WORLD_SIZE=2",
    );
    let o = trainer()
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--master",
            "node0",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("'node0' is not ADDR:PORT"));
}

#[cfg(not(feature = "nccl"))]
#[test]
fn several_processes_need_the_nccl_feature() {
    let how = "cargo build --release -p trainer --features nccl";
    refused(&["--gpus", "2"], &[], how);
    refused(
        &[
            "--gpus",
            "2",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master",
            "n0:1",
        ],
        &[],
        how,
    );
    refused(&[], WORKER, how);
    refused(
        &["--gpus", "2"],
        WORKER,
        "WORLD_SIZE=2 asks for several training processes",
    );
}

/// A run under WORLD_SIZE=1 (a launcher's one-process job) is an ordinary run.
#[test]
fn a_world_of_one_is_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = trainer()
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--synthetic-train",
            "64",
            "--synthetic-test",
            "16",
            "--max-steps",
            "2",
            "--no-progress",
            "--out",
            s(&out),
        ])
        .envs([("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.join("model.safetensors").is_file());
}
