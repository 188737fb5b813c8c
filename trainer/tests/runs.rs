//! End-to-end tests of run directories: resume that is safe to repeat, one writer at a time,
//! fresh directories for repeated commands, nothing left by a failed start, the validation
//! split, and `predict` on directories with `--top-k`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::*;

/// A small synthetic mlp run (192 training images: 154 trained on, 38 validation).
fn synthetic(out: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--synthetic-train",
        "192",
        "--synthetic-test",
        "64",
        "--no-progress",
        "--workers",
        "1",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    if let Some(out) = out {
        v.extend(["--out".to_string(), s(out).to_string()]);
    }
    // An option in `extra` replaces the default above.
    for pair in extra.chunks(2) {
        if let Some(i) = v.iter().position(|a| a == pair[0]) {
            v.drain(i..i + 2);
        }
    }
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn resuming_a_stopped_run_again_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = ok(&strs(&synthetic(Some(&out), &["--max-steps", "3"])));
    assert!(o.contains("stopped after 3 steps"), "{o}");
    let before = files(&out);
    // A scheduler re-running the same resume command: nothing trains, no file changes.
    for _ in 0..2 {
        let o = ok(&[
            "train",
            "--resume",
            s(&out),
            "--max-steps",
            "3",
            "--no-progress",
        ]);
        assert!(o.contains("already reached --max-steps 3"), "{o}");
        assert!(o.contains("nothing to do"), "{o}");
        assert_eq!(files(&out), before);
    }
    // A larger --max-steps trains on from step 3.
    let o = ok(&[
        "train",
        "--resume",
        s(&out),
        "--max-steps",
        "5",
        "--no-progress",
    ]);
    assert!(o.contains("resuming at epoch 1, batch 3, step 3"), "{o}");
    assert!(o.contains("stopped after 5 steps"), "{o}");
}

#[test]
fn one_trainer_writes_a_run_directory_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // Long enough to be interrupted: 3,900 images a epoch, 200 epochs.
    let long = synthetic(
        Some(&out),
        &[
            "--synthetic-train",
            "4000",
            "--epochs",
            "200",
            "--save-every",
            "2",
        ],
    );
    let mut first = trainer()
        .args(strs(&long))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !done() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no {what} after 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let busy = format!("another trainer (pid {}) is writing", first.id());
    // Before its first checkpoint, and after it: a second run and a resume are refused. The
    // lock is held once the file names the first run's pid (the file itself appears just
    // before the lock is taken).
    let lock = out.join(".trainer.lock");
    wait_until("locked .trainer.lock", &|| {
        std::fs::read_to_string(&lock).is_ok_and(|pid| pid == first.id().to_string())
    });
    fails(&strs(&long), &busy);
    wait_until("train_state.safetensors", &|| {
        out.join("train_state.safetensors").exists()
    });
    fails(&strs(&long), &busy);
    fails(&["train", "--resume", s(&out), "--no-progress"], &busy);
    assert_eq!(
        std::fs::read_to_string(out.join(".trainer.lock")).unwrap(),
        first.id().to_string()
    );
    assert!(first.try_wait().unwrap().is_none(), "the first run ended");
    first.kill().unwrap(); // SIGKILL: the lock goes with the process.
    first.wait().unwrap();
    let o = ok(&[
        "train",
        "--resume",
        s(&out),
        "--epochs",
        "1",
        "--no-progress",
    ]);
    assert!(o.contains("resuming at epoch 1"), "{o}");
    assert!(o.contains("test accuracy:"), "{o}");
}

#[test]
fn repeated_commands_get_fresh_directories_and_failures_leave_none() {
    let tmp = tempfile::tempdir().unwrap();
    let args = synthetic(None, &["--max-steps", "2"]);
    let in_tmp = |args: &[&str]| {
        let o = trainer()
            .args(args)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let o = in_tmp(&strs(&args));
    assert!(o.contains("runs/synthetic-mlp-circulant\n"), "{o}");
    let o = in_tmp(&strs(&args));
    assert!(o.contains("runs/synthetic-mlp-circulant-2\n"), "{o}");
    assert!(tmp
        .path()
        .join("runs/synthetic-mlp-circulant-2/model.safetensors")
        .is_file());

    // A start that fails leaves no directory behind, with or without --out.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let o = trainer()
        .args(["train", "--dataset", "fashion-mnist", "--model", "mlp"])
        .args(["--data-dir", s(&tmp.path().join("absent"))])
        .current_dir(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("four fashion-mnist idx files"), "{err}");
    assert_eq!(std::fs::read_dir(&bad).unwrap().count(), 0, "left behind");
    let out = tmp.path().join("x/y");
    fails(
        &[
            "train",
            "--dataset",
            "mnist",
            "--model",
            "mlp",
            "--data-dir",
            s(&tmp.path().join("absent")),
            "--out",
            s(&out),
        ],
        "does not exist",
    );
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn the_validation_split_chooses_best_and_can_be_turned_off() {
    let tmp = tempfile::tempdir().unwrap();
    let quarter = tmp.path().join("quarter");
    let o = ok(&strs(&synthetic(Some(&quarter), &["--val-split", "25%"])));
    assert!(
        o.contains("144 train / 48 validation / 64 test images"),
        "{o}"
    );
    fails(
        &["train", "--resume", s(&quarter), "--val-split", "0.1"],
        "--val-split",
    );

    let all = tmp.path().join("all");
    let o = ok(&strs(&synthetic(Some(&all), &["--val-split", "0"])));
    assert!(
        o.contains("192 train / 0 validation / 64 test images"),
        "{o}"
    );
    assert!(o.contains("no best.safetensors"), "{o}");
    assert!(!all.join("best.safetensors").exists());
    let m = metrics(&all);
    assert_eq!(m.len(), 3);
    assert!(m[0].get("val_acc").is_none(), "{}", m[0]);
    assert_eq!(m[2]["checkpoint"], "model.safetensors");
    assert_eq!(m[2]["val_images"], 0);

    fails(
        &strs(&synthetic(
            Some(&tmp.path().join("none")),
            &["--val-split", "192"],
        )),
        "leaves no training images",
    );
    // eval says what it evaluated.
    let e = ok(&[
        "eval",
        "--checkpoint",
        s(&all.join("model.safetensors")),
        "--dataset",
        "synthetic",
        "--synthetic-test",
        "64",
    ]);
    assert!(e.contains("on the 64 test images of synthetic"), "{e}");
}

#[test]
fn predict_takes_directories_and_reports_the_top_k() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    ok(&strs(&synthetic(Some(&out), &["--max-steps", "2"])));
    let ckpt = out.join("model.safetensors");
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for k in 0..3u32 {
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 7 + y * k) % 256) as u8]))
            .save(imgs.join(format!("{k}.png")))
            .unwrap();
    }
    // Two images of another size and colour: fitted, and said once.
    for k in 3..5u32 {
        image::RgbImage::from_fn(40, 30, |x, _| image::Rgb([x as u8 * 5, k as u8, 90]))
            .save(imgs.join(format!("{k}.jpg")))
            .unwrap();
    }
    std::fs::write(imgs.join("notes.txt"), b"not an image").unwrap();
    let o = trainer()
        .args([
            "predict",
            "--checkpoint",
            s(&ckpt),
            "--json",
            "--top-k",
            "3",
        ])
        .arg(&imgs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l["file"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(
        names[0].ends_with("0.png") && names[4].ends_with("4.jpg"),
        "{names:?}"
    );
    for l in &lines {
        let top = l["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let p: Vec<f64> = top
            .iter()
            .map(|t| t["probability"].as_f64().unwrap())
            .collect();
        assert!(p[0] >= p[1] && p[1] >= p[2], "{l}");
        assert_eq!(top[0]["class"], l["class"]);
        assert_eq!(top[0]["label"], l["label"]);
    }
    let err = text(&o.stderr);
    assert_eq!(err.matches("resized and converted").count(), 1, "{err}");
    assert!(err.contains("40x30 colour"), "{err}");
    let human = ok(&[
        "predict",
        "--checkpoint",
        s(&ckpt),
        "--top-k",
        "2",
        s(&imgs.join("0.png")),
    ]);
    assert_eq!(human.matches("probability").count(), 2, "{human}");
    fails(
        &[
            "predict",
            "--checkpoint",
            s(&ckpt),
            "--top-k",
            "0",
            s(&imgs),
        ],
        "--top-k",
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(
        &["predict", "--checkpoint", s(&ckpt), s(&empty)],
        "holds no PNG or JPEG",
    );
}

#[test]
fn export_writes_half_size_checkpoints_that_evaluate_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    ok(&strs(&synthetic(
        Some(&out),
        &["--max-steps", "20", "--val-split", "0"],
    )));
    let f32_file = out.join("model.safetensors");
    let eval = |ckpt: &Path| -> Value {
        serde_json::from_str(
            ok(&[
                "eval",
                "--checkpoint",
                s(ckpt),
                "--dataset",
                "synthetic",
                "--synthetic-test",
                "64",
                "--json",
            ])
            .trim(),
        )
        .unwrap()
    };
    let info = |ckpt: &Path| -> Value {
        serde_json::from_str(&ok(&["info", "--checkpoint", s(ckpt), "--json"])).unwrap()
    };
    let reference = eval(&f32_file);
    let names = info(&f32_file)["class_names"].clone();
    let full = std::fs::metadata(&f32_file).unwrap().len() as f64;
    for dtype in ["f16", "bf16"] {
        let half = tmp.path().join(format!("{dtype}.safetensors"));
        ok(&[
            "export",
            "--checkpoint",
            s(&f32_file),
            "--dtype",
            dtype,
            "--out",
            s(&half),
        ]);
        let ratio = std::fs::metadata(&half).unwrap().len() as f64 / full;
        assert!((0.45..0.55).contains(&ratio), "{dtype}: {ratio}");
        let i = info(&half);
        assert_eq!(i["dtype"], dtype, "{i}");
        assert_eq!(i["class_names"], names);
        let e = eval(&half);
        let diff =
            (e["accuracy"].as_f64().unwrap() - reference["accuracy"].as_f64().unwrap()).abs();
        assert!(diff <= 2.0 / 64.0, "{dtype}: {e} vs {reference}");
    }
    fails(
        &[
            "export",
            "--checkpoint",
            s(&f32_file),
            "--dtype",
            "f16",
            "--out",
            s(&f32_file),
        ],
        "--out must differ",
    );
}

#[test]
fn hub_checkpoints_need_the_hub_feature_or_a_cached_file() {
    if cfg!(feature = "hub") {
        // Without network access and with HF_HUB_OFFLINE=1 (set by trainer()), an uncached
        // file is a clear error.
        fails(
            &["info", "--checkpoint", "hf://nobody/nothing@main"],
            "hf://nobody/nothing",
        );
    } else {
        fails(
            &["info", "--checkpoint", "hf://nobody/nothing"],
            "built without hub support",
        );
    }
    fails(&["info", "--checkpoint", "hf://just-a-name"], "owner/repo");
}
