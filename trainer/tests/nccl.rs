//! Data-parallel training on the GPU (`--features nccl`): two ranks of batch 32 train `mlp`
//! (without dropout) to the weights of one process of batch 64, and rank 0 alone writes the run.
//!
//! Skips, printing why, when no CUDA device is usable; fails instead under
//! `CIRCULANT_REQUIRE_CUDA=1`. With one GPU both ranks share it, which NCCL allows from 2.30 on
//! under `NCCL_MULTI_RANK_GPU_ENABLE=1` (set here). `TRAINER_BIN` names the trainer to run
//! (default: the one cargo built), for running this test binary on another machine.
#![cfg(feature = "nccl")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;

fn trainer() -> Command {
    let bin = std::env::var_os("TRAINER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trainer")));
    let mut c = Command::new(bin);
    c.env("NCCL_MULTI_RANK_GPU_ENABLE", "1")
        .env("NCCL_DEBUG", "VERSION")
        .env("HF_HUB_OFFLINE", "1");
    for v in [
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
    ] {
        c.env_remove(v);
    }
    c
}

/// Whether a CUDA device is usable; panics when none is but `CIRCULANT_REQUIRE_CUDA=1`.
fn cuda_usable() -> bool {
    let err = match candle_core::Device::new_cuda(0) {
        Ok(_) => return true,
        Err(e) => e.to_string(),
    };
    if std::env::var("CIRCULANT_REQUIRE_CUDA").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("CIRCULANT_REQUIRE_CUDA is set but no CUDA device is usable: {err}");
    }
    eprintln!(
        "skipping: no CUDA device: {} (set CIRCULANT_REQUIRE_CUDA=1 to fail instead)",
        err.lines().next().unwrap_or_default()
    );
    false
}

fn run(out: &Path, extra: &[&str]) -> Output {
    // 1251 images: 19 steps of 64 and a last one of 35 (18 + 17 on two ranks).
    let o = trainer()
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--no-dropout",
            "--synthetic-train",
            "1251",
            "--synthetic-test",
            "64",
            "--val-split",
            "0",
            "--epochs",
            "1",
            "--optimizer",
            "sgd",
            "--seed",
            "5",
            "--log-every",
            "5",
            "--no-progress",
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "trainer {extra:?} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}{}",
        o.status,
        if stderr.contains("same GPU") || stderr.contains("Duplicate GPU") {
            "\n(two ranks on one GPU need NCCL >= 2.30 with NCCL_MULTI_RANK_GPU_ENABLE=1)"
        } else {
            ""
        }
    );
    o
}

fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, data)
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn two_ranks_of_32_train_like_one_process_of_64() {
    if !cuda_usable() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run(&one, &["--device", "cuda", "--batch-size", "64"]);
    let o = run(&two, &["--gpus", "2", "--batch-size", "32"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("data-parallel: 2 processes x batch 32 = 64 images per step"),
        "{stdout}"
    );
    // Rank 0 alone wrote, the same files as the one-process run.
    assert_eq!(names(&one), names(&two));
    let (a, b) = (
        tensors(&one.join("model.safetensors")),
        tensors(&two.join("model.safetensors")),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, x) in &a {
        let diff = x
            .iter()
            .zip(&b[name])
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        eprintln!("{name}: max |difference| {diff:e}");
        assert!(diff <= 1e-5, "{name} differs by {diff} after 20 steps");
    }
    // The same steps, and losses over the whole batch.
    let steps = |d: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("metrics-steps.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (sa, sb) = (steps(&one), steps(&two));
    assert_eq!(sa.len(), 4);
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!(x["step"], y["step"]);
        let (l1, l2) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!(
            (l1 - l2).abs() <= 1e-4 * l1.abs().max(1.0),
            "loss {l1} vs {l2}"
        );
    }
}
