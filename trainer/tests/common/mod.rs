//! Helpers shared by the trainer's end-to-end tests: running the binary, reading its files.
#![allow(dead_code)] // each test binary uses a subset

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use safetensors::SafeTensors;
use serde_json::Value;

/// The binary, with a fixed thread count so that runs are comparable bit for bit, and as one
/// process even under a launcher that set WORLD_SIZE, RANK and LOCAL_RANK.
pub fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.env("RAYON_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("TRAINER_PLOT_FONT");
    for v in ["WORLD_SIZE", "RANK", "LOCAL_RANK"] {
        c.env_remove(v);
    }
    c
}

pub fn run(args: &[&str]) -> Output {
    trainer().args(args).output().expect("cannot run trainer")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs and requires success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "trainer {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Runs and requires the clean failure: exit code 1, one `error: ...` line containing `want`,
/// no panic. Returns the error line.
pub fn fails(args: &[&str], want: &str) -> String {
    let o = run(args);
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "trainer {args:?}: expected exit code 1\nstdout:\n{}\nstderr:\n{err}",
        text(&o.stdout)
    );
    assert!(
        !err.contains("panicked"),
        "trainer {args:?} panicked:\n{err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no `error:` line for {args:?}:\n{err}"));
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "more than one error line:\n{err}"
    );
    assert!(
        line.contains(want),
        "trainer {args:?}: error line lacks {want:?}:\n{line}"
    );
    line.to_string()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// All tensors of a safetensors file: name -> (shape, bytes).
pub fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

pub fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file of a run directory but its lock: name -> bytes.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != ".trainer.lock")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// metrics-steps.jsonl without the throughput.
pub fn steps_without_timing(dir: &Path) -> Vec<Value> {
    without_timing(
        std::fs::read_to_string(dir.join("metrics-steps.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

/// Metrics without the wall-clock fields.
pub fn metrics_without_timing(dir: &Path) -> Vec<Value> {
    without_timing(metrics(dir))
}

pub fn without_timing(records: Vec<Value>) -> Vec<Value> {
    records
        .into_iter()
        .map(|mut v| {
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("images_per_sec");
            v
        })
        .collect()
}
