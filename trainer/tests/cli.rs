//! End-to-end tests of the `trainer` binary: train → eval → predict → info on small generated
//! data, exact resume (after --max-steps and after SIGKILL), and the error for each bad input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use safetensors::SafeTensors;
use serde_json::Value;

mod common;
use common::*;

const SYNTH: [&str; 8] = [
    "--synthetic-train",
    "192",
    "--synthetic-test",
    "64",
    "--no-progress",
    "--workers",
    "1",
    "--seed=3",
];

#[test]
fn train_eval_predict_info_on_synthetic_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = vec![
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--head",
        "circulant",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "0.02",
        "--warmup",
        "4",
        "--out",
        s(&out),
    ];
    args.extend(SYNTH);
    let stdout = ok(&args);
    assert!(stdout.contains("test accuracy:"), "{stdout}");
    assert!(stdout.contains(&format!(
        "checkpoint: {}",
        out.join("model.safetensors").display()
    )));
    for f in [
        "model.safetensors",
        "best.safetensors",
        "train_state.safetensors",
        "curves.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let png = image::open(out.join("curves.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);

    // 192 synthetic training images: 38 held out for validation, 154 trained on (10 steps).
    assert!(
        stdout.contains("154 train / 38 validation / 64 test images"),
        "{stdout}"
    );
    // metrics.jsonl: one record per epoch with every field, then the test result; the task is
    // learnable.
    let mut m = metrics(&out);
    assert_eq!(m.len(), 4);
    let test = m.pop().unwrap();
    for (i, r) in m.iter().enumerate() {
        assert_eq!(r["epoch"], i + 1);
        assert_eq!(r["step"], 10 * (i + 1));
        for k in [
            "lr",
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "seconds",
            "images_per_sec",
        ] {
            assert!(r[k].as_f64().is_some_and(f64::is_finite), "{k} in {r}");
        }
    }
    // Chance is 0.1 (10 classes). Over seeds 1-8 the third epoch's validation accuracy ranged
    // 0.50-1.00 (38 validation images), so 0.3 separates learning from chance with room.
    let last = &m[2];
    assert!(
        last["val_acc"].as_f64().unwrap() > 0.3,
        "did not learn: {last}"
    );
    assert!(last["train_loss"].as_f64().unwrap() < m[0]["train_loss"].as_f64().unwrap());
    assert_eq!(test["checkpoint"], "best.safetensors", "{test}");
    assert_eq!(
        (
            &test["train_images"],
            &test["val_images"],
            &test["test_images"]
        ),
        (&Value::from(154), &Value::from(38), &Value::from(64))
    );
    assert_eq!(test["epochs_done"], 3);
    let best_epoch = m
        .iter()
        .max_by(|a, b| {
            a["val_acc"]
                .as_f64()
                .partial_cmp(&b["val_acc"].as_f64())
                .unwrap()
        })
        .unwrap();
    assert!(stdout.contains(&format!(
        "validation accuracy {:.2}%",
        100.0 * best_epoch["val_acc"].as_f64().unwrap()
    )));

    // eval of best.safetensors reproduces the test result of training.
    let ckpt = out.join("model.safetensors");
    let e: Value = serde_json::from_str(
        ok(&[
            "eval",
            "--checkpoint",
            s(&out.join("best.safetensors")),
            "--dataset",
            "synthetic",
            "--seed",
            "3",
            "--synthetic-test",
            "64",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    assert_eq!(e["samples"], 64);
    assert!(
        (e["accuracy"].as_f64().unwrap() - test["test_acc"].as_f64().unwrap()).abs() < 1e-12,
        "{e} vs {test}"
    );
    assert!(
        (e["loss"].as_f64().unwrap() - test["test_loss"].as_f64().unwrap()).abs() < 1e-9,
        "{e} vs {test}"
    );
    assert!(
        e.get("top5").is_none(),
        "top5 only for more than 10 classes: {e}"
    );

    // predict: one JSON object per image, a probability vector whose argmax is the class.
    let imgs: Vec<PathBuf> = (0..2)
        .map(|k| {
            let p = tmp.path().join(format!("img{k}.png"));
            image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * k) % 256) as u8]))
                .save(&p)
                .unwrap();
            p
        })
        .collect();
    let jpg = tmp.path().join("big.jpg");
    image::RgbImage::from_fn(64, 48, |x, _| image::Rgb([x as u8 * 4, 9, 200]))
        .save(&jpg)
        .unwrap();
    let pred = ok(&[
        "predict",
        "--checkpoint",
        s(&ckpt),
        "--json",
        s(&imgs[0]),
        s(&imgs[1]),
        s(&jpg),
    ]);
    let lines: Vec<Value> = pred
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (l, p) in lines.iter().zip([&imgs[0], &imgs[1], &jpg]) {
        assert_eq!(l["file"], s(p));
        let probs: Vec<f64> = l["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(probs.len(), 10);
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        let argmax = (0..10).fold(0, |b, k| if probs[k] > probs[b] { k } else { b });
        assert_eq!(l["class"], argmax);
    }
    let human = ok(&["predict", "--checkpoint", s(&ckpt), s(&imgs[0])]);
    assert!(
        human.contains("class") && human.contains("probability"),
        "{human}"
    );

    // info: network, heads, per-layer parameters, compression, size.
    let info = ok(&["info", "--checkpoint", s(&ckpt)]);
    for want in [
        "mlp",
        "fc1: circulant",
        "fc3",
        "compression",
        "KiB",
        "dense-equivalent",
    ] {
        assert!(info.contains(want), "info lacks {want}:\n{info}");
    }
    let j: Value =
        serde_json::from_str(&ok(&["info", "--checkpoint", s(&ckpt), "--json"])).unwrap();
    let total: u64 = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["params"].as_u64().unwrap())
        .sum();
    assert_eq!(j["params"].as_u64().unwrap(), total);
    assert!(j["compression"].as_f64().unwrap() > 10.0, "{j}");
    assert_eq!(
        j["file_size"].as_u64().unwrap(),
        std::fs::metadata(&ckpt).unwrap().len()
    );

    // A second run into the same directory must not silently overwrite it.
    fails(&args, "already holds a run");
    // Resuming a finished run, twice, trains nothing and changes no file.
    let before = files(&out);
    for _ in 0..2 {
        let o = ok(&["train", "--resume", s(&out), "--no-progress"]);
        assert!(o.contains("already finished its 3 epochs"), "{o}");
        assert!(o.contains("nothing to do"), "{o}");
        assert_eq!(files(&out), before);
    }
}

/// `--classifier-head dense` keeps only the last FC layer dense; a resume must keep it.
#[test]
fn classifier_head_overrides_the_last_fc_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = vec![
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--head",
        "circulant",
        "--classifier-head",
        "dense",
        "--epochs",
        "2",
        "--max-steps",
        "3",
        "--out",
        s(&out),
    ];
    args.extend(SYNTH);
    let stdout = ok(&args);
    assert!(stdout.contains("(dense classifier)"), "{stdout}");
    let info = ok(&["info", "--checkpoint", s(&out.join("model.safetensors"))]);
    for want in ["fc1: circulant", "fc2: circulant", "fc3: dense"] {
        assert!(info.contains(want), "info lacks {want}:\n{info}");
    }
    fails(
        &[
            "train",
            "--resume",
            s(&out),
            "--classifier-head",
            "circulant",
        ],
        "--classifier-head circulant differs from the run being resumed",
    );
}

/// A run stopped by --max-steps, and a run killed with SIGKILL, each resumed, end with the same
/// weights (bit for bit), optimizer state and metrics as an uninterrupted run.
#[test]
fn resume_is_exact_after_max_steps_and_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let base = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mnist-cnn",
            "--head",
            "circulant",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "0.02",
            "--optimizer",
            "sgd",
            "--nesterov",
            "--weight-decay",
            "1e-4",
            "--synthetic-train",
            "160",
            "--synthetic-test",
            "32",
            "--no-progress",
            "--workers",
            "2",
            "--seed",
            "11",
            "--log-every",
            "3",
            "--out",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.push(s(out).to_string());
        v
    };
    let call = |args: &[String]| ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Uninterrupted reference.
    let a = tmp.path().join("a");
    call(&base(&a));

    // Stopped mid-epoch by --max-steps (128 training images: 8 steps per epoch), then resumed
    // with no other options.
    let b = tmp.path().join("b");
    let mut args = base(&b);
    args.extend(["--max-steps".into(), "13".into()]);
    let o = call(&args);
    assert!(o.contains("stopped after 13 steps"), "{o}");
    // The finished epoch, the interrupted one (validated where it stopped), the test result.
    let m = metrics(&b);
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(m[0].get("partial"), None);
    assert_eq!(
        (&m[1]["partial"], &m[1]["epoch"], &m[1]["step"]),
        (&Value::Bool(true), &Value::from(2), &Value::from(13))
    );
    assert!(m[1]["val_acc"].as_f64().is_some(), "{m:?}");
    assert_eq!(m[2]["step"], 13);
    let o = ok(&[
        "train",
        "--resume",
        s(&b),
        "--no-progress",
        "--workers",
        "1",
    ]);
    assert!(o.contains("resuming at epoch 2, batch 5, step 13"), "{o}");

    // Killed with SIGKILL once a mid-run checkpoint exists, then resumed.
    let c = tmp.path().join("c");
    let mut args = base(&c);
    args.extend(["--save-every".into(), "3".into()]);
    let mut child = trainer()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = c.join("train_state.safetensors");
    let t0 = Instant::now();
    while !state.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no checkpoint after 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let finished_before_kill = child.try_wait().unwrap().is_some();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!finished_before_kill, "the run finished before the kill");
    let o = ok(&["train", "--resume", s(&c), "--no-progress"]);
    assert!(o.contains("resuming at epoch"), "{o}");

    let want = tensors(&a.join("model.safetensors"));
    assert!(want.len() >= 6);
    for dir in [&b, &c] {
        assert_eq!(
            tensors(&dir.join("model.safetensors")),
            want,
            "weights differ in {}",
            dir.display()
        );
        assert_eq!(
            tensors(&dir.join("train_state.safetensors")),
            tensors(&a.join("train_state.safetensors"))
        );
        assert_eq!(metrics_without_timing(dir), metrics_without_timing(&a));
        assert_eq!(
            steps_without_timing(dir),
            steps_without_timing(&a),
            "metrics-steps.jsonl differs in {}",
            dir.display()
        );
    }
    assert_eq!(steps_without_timing(&a).len(), 5, "steps 3, 6, ..., 15");
    // The weights really changed during training (the comparison is not vacuous).
    let init = tmp.path().join("init");
    let mut args = base(&init);
    args.extend(["--max-steps".into(), "1".into()]);
    call(&args);
    assert_ne!(tensors(&init.join("model.safetensors")), want);

    // Options that define the run cannot change on resume.
    fails(
        &["train", "--resume", s(&a), "--model", "mlp"],
        "differs from the run being resumed",
    );
    fails(
        &["train", "--resume", s(&a), "--batch-size", "8"],
        "differs from the run being resumed",
    );
    fails(
        &["train", "--resume", s(&tmp.path().join("nothing"))],
        "nothing to resume",
    );
}

/// Trains the synthetic mlp for one epoch (5 steps of 32 images) into `out`.
fn train_one_epoch_mlp(out: &Path) {
    let mut args = vec![
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        s(out),
    ];
    args.extend(SYNTH);
    ok(&args);
}

/// A diverging run stops with a clear message and leaves the last checkpoint intact.
#[test]
fn nan_loss_stops_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train_one_epoch_mlp(&out);
    let before = tensors(&out.join("model.safetensors"));
    let state_before = tensors(&out.join("train_state.safetensors"));
    let line = fails(
        &[
            "train",
            "--resume",
            s(&out),
            "--epochs",
            "3",
            "--lr",
            "1e38",
            "--schedule",
            "const",
            "--momentum",
            "0",
            "--no-progress",
        ],
        "training diverged",
    );
    assert!(line.contains("(step 5) is intact"), "{line}");
    assert_eq!(tensors(&out.join("model.safetensors")), before);
    assert_eq!(tensors(&out.join("train_state.safetensors")), state_before);
}

/// With the loss read from the device only at step records and checkpoints, weights that went
/// NaN between two reads are caught by the read before the next checkpoint: the run stops and
/// no checkpoint on disk holds an inf or NaN. Weights that overflow while the loss read is still
/// finite are caught too.
#[test]
fn divergence_between_reads_never_reaches_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    train_one_epoch_mlp(&first); // 5 steps
    let after_first = tensors(&first.join("model.safetensors"));
    let resume = |name: &str, lr: &str, save_every: &str, want: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for (f, bytes) in files(&first) {
            std::fs::write(dir.join(f), bytes).unwrap();
        }
        let line = fails(
            &[
                "train",
                "--resume",
                s(&dir),
                "--epochs",
                "3",
                "--lr",
                lr,
                "--schedule",
                "const",
                "--momentum",
                "0",
                "--save-every",
                save_every,
                "--log-every",
                "1000",
                "--no-progress",
            ],
            want,
        );
        assert!(line.contains("training diverged"), "{line}");
        for f in ["model.safetensors", "train_state.safetensors"] {
            assert!(
                all_finite(&dir.join(f)),
                "{f} holds inf or NaN after: {line}"
            );
        }
        (dir, line)
    };
    // Step 6 is saved with huge but finite weights; steps 7 and 8 compute a NaN loss and make
    // the weights NaN, which the read before the checkpoint of step 8 finds.
    let (_, line) = resume("nan", "1e30", "2", "the training loss became NaN");
    assert!(line.contains("steps 7-8"), "{line}");
    assert!(line.contains("(step 6) is intact"), "{line}");
    // The update of step 6 overflows the weights while its loss was finite.
    let (dir, line) = resume("inf", "1e39", "1", "the weights became inf or NaN");
    assert!(line.contains("(step 5) is intact"), "{line}");
    assert_eq!(tensors(&dir.join("model.safetensors")), after_first);
}

/// Whether every floating-point value of a safetensors file is finite.
fn all_finite(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().all(|(_, v)| match v.dtype() {
        safetensors::Dtype::F32 => v
            .data()
            .chunks_exact(4)
            .all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite()),
        safetensors::Dtype::F64 => v
            .data()
            .chunks_exact(8)
            .all(|b| f64::from_le_bytes(b.try_into().unwrap()).is_finite()),
        _ => true,
    })
}

/// Step records are written at the multiples of --log-every, with the numbers of a run that
/// reads the loss at every step; how often the loss is read changes nothing else either.
#[test]
fn step_records_at_multiples_of_log_every_read_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |log_every: &str| {
        let out = tmp.path().join(format!("every-{log_every}"));
        let mut args = vec![
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--log-every",
            log_every,
            "--out",
            s(&out),
        ];
        args.extend(SYNTH);
        ok(&args);
        out
    };
    let (every1, every3, never) = (run("1"), run("3"), run("0"));
    let all = steps_without_timing(&every1);
    let m = metrics_without_timing(&every1);
    let total = m[1]["step"].as_u64().unwrap();
    assert!(total >= 12, "{m:?}");
    assert_eq!(all.len() as u64, total);
    for (k, r) in all.iter().enumerate() {
        assert_eq!(r["step"], k + 1);
    }
    // An epoch's last record holds the epoch's means; its first, the loss of its first step.
    let per_epoch = total / 2;
    for (e, epoch) in m[..2].iter().enumerate() {
        let last = &all[(e as u64 * per_epoch + per_epoch - 1) as usize];
        assert_eq!(last["epoch"], e + 1);
        assert_eq!(last["train_loss"], epoch["train_loss"]);
        assert_eq!(last["train_acc"], epoch["train_acc"]);
        let first = &all[(e as u64 * per_epoch) as usize];
        assert_eq!(first["train_loss"], first["loss"]);
    }
    let want: Vec<Value> = all
        .iter()
        .filter(|r| r["step"].as_u64().unwrap() % 3 == 0)
        .cloned()
        .collect();
    assert_eq!(want.len() as u64, total / 3);
    assert_eq!(steps_without_timing(&every3), want);
    let never_steps =
        std::fs::read_to_string(never.join("metrics-steps.jsonl")).unwrap_or_default();
    assert!(never_steps.is_empty(), "{never_steps}");
    for dir in [&every3, &never] {
        assert_eq!(metrics_without_timing(dir), m);
        assert_eq!(
            tensors(&dir.join("train_state.safetensors")),
            tensors(&every1.join("train_state.safetensors"))
        );
    }
}

fn write_gz(path: &Path, bytes: &[u8]) {
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

fn idx_images(n: usize, seed: u8) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x803u32, n as u32, 28, 28] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend((0..n * 784).map(|i| ((i * 7 + seed as usize * (i / 784)) % 256) as u8));
    v
}

fn idx_labels(n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x801u32, n as u32] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend((0..n).map(|i| (i % 10) as u8));
    v
}

/// A MNIST-style directory: gzipped train files, raw test files.
fn mnist_dir(root: &Path) -> PathBuf {
    let d = root.join("mnist");
    std::fs::create_dir_all(&d).unwrap();
    write_gz(&d.join("train-images-idx3-ubyte.gz"), &idx_images(40, 1));
    write_gz(&d.join("train-labels-idx1-ubyte.gz"), &idx_labels(40));
    std::fs::write(d.join("t10k-images-idx3-ubyte"), idx_images(20, 2)).unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx_labels(20)).unwrap();
    d
}

#[test]
fn mnist_idx_files_and_their_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = mnist_dir(tmp.path());
    let out = tmp.path().join("run");
    let base = [
        "train",
        "--dataset",
        "mnist",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--no-progress",
    ];
    let train = |data: &Path, out: &Path| -> Vec<String> {
        let mut v: Vec<String> = base.iter().map(|x| x.to_string()).collect();
        v.extend([
            "--data-dir".into(),
            s(data).into(),
            "--out".into(),
            s(out).into(),
        ]);
        v
    };
    let call_ok = |v: Vec<String>| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let call_fail =
        |v: Vec<String>, want: &str| fails(&v.iter().map(String::as_str).collect::<Vec<_>>(), want);

    let o = call_ok(train(&d, &out));
    assert!(
        o.contains("32 train / 8 validation / 20 test images"),
        "{o}"
    );
    let e: Value = serde_json::from_str(
        ok(&[
            "eval",
            "--checkpoint",
            s(&out.join("model.safetensors")),
            "--dataset",
            "mnist",
            "--data-dir",
            s(&d),
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    assert_eq!(e["samples"], 20);
    // The class names travel in the checkpoint's metadata, not in a file beside it.
    assert!(!out.join("classes.json").exists());
    let info: Value = serde_json::from_str(&ok(&[
        "info",
        "--checkpoint",
        s(&out.join("model.safetensors")),
        "--json",
    ]))
    .unwrap();
    assert_eq!(info["class_names"][9], "9", "{info}");

    let n = std::sync::atomic::AtomicUsize::new(0);
    let fresh_out = || {
        tmp.path().join(format!(
            "o{}",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ))
    };
    let broken = |name: &str, f: &dyn Fn(&Path)| -> PathBuf {
        let b = tmp.path().join(name);
        std::fs::create_dir_all(&b).unwrap();
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), b.join(e.file_name())).unwrap();
        }
        f(&b);
        b
    };

    // Missing directory and missing file.
    call_fail(
        train(&tmp.path().join("absent"), &fresh_out()),
        "does not exist",
    );
    let missing = broken("missing", &|b| {
        std::fs::remove_file(b.join("t10k-labels-idx1-ubyte")).unwrap()
    });
    call_fail(
        train(&missing, &fresh_out()),
        "has no t10k-labels-idx1-ubyte",
    );
    // Truncated raw file.
    let trunc = broken("trunc", &|b| {
        std::fs::write(b.join("t10k-images-idx3-ubyte"), &idx_images(20, 2)[..5000]).unwrap()
    });
    call_fail(train(&trunc, &fresh_out()), "is truncated");
    // Truncated gzip file.
    let truncgz = broken("truncgz", &|b| {
        let p = b.join("train-images-idx3-ubyte.gz");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    call_fail(train(&truncgz, &fresh_out()), "corrupt or truncated gzip");
    // Wrong magic number: a label file where the images belong.
    let magic = broken("magic", &|b| {
        std::fs::write(b.join("t10k-images-idx3-ubyte"), idx_labels(20)).unwrap()
    });
    call_fail(
        train(&magic, &fresh_out()),
        "magic number 0x00000801, expected 0x00000803",
    );
    // Image / label count mismatch.
    let count = broken("count", &|b| {
        std::fs::write(b.join("t10k-labels-idx1-ubyte"), idx_labels(21)).unwrap()
    });
    call_fail(train(&count, &fresh_out()), "has 20 images but");
    // Labels out of range.
    let range = broken("range", &|b| {
        let mut l = idx_labels(20);
        l[10] = 42;
        std::fs::write(b.join("t10k-labels-idx1-ubyte"), l).unwrap()
    });
    call_fail(train(&range, &fresh_out()), "out of range for 10 classes");
    // A model that does not take 28x28 grey images.
    let mut v = train(&d, &fresh_out());
    v[4] = "cifar-cnn".into();
    call_fail(v, "mnist images are 1x28x28 but the model takes 3x32x32");
}

#[test]
fn image_folders_and_cifar_batches() {
    let tmp = tempfile::tempdir().unwrap();
    // An image folder with a `test/` split (the CIFAR-10 JPEG layout), mixed sizes and formats.
    let root = tmp.path().join("folder");
    for (split, n) in [("train", 6), ("test", 2)] {
        for (k, class) in ["cat", "dog", "ship"].iter().enumerate() {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(40 + i as u32, 36, |x, y| {
                    image::Rgb([(x * 5) as u8, (y * 3 + 80 * k as u32) as u8, (i * 30) as u8])
                });
                let ext = if i % 2 == 0 { "jpg" } else { "png" };
                img.save(d.join(format!("{i}.{ext}"))).unwrap();
            }
        }
    }
    let out = tmp.path().join("run");
    let o = ok(&[
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        s(&root),
        "--model",
        "cifar-cnn",
        "--head",
        "block:64",
        "--epochs",
        "1",
        "--batch-size",
        "6",
        "--optimizer",
        "adamw",
        "--no-progress",
        "--workers",
        "2",
        "--out",
        s(&out),
    ]);
    assert!(
        o.contains("3 classes read as 3x32x32, test split from test/"),
        "{o}"
    );
    assert!(o.contains("15 train / 3 validation / 6 test images"), "{o}");
    let e: Value = serde_json::from_str(
        ok(&[
            "eval",
            "--checkpoint",
            s(&out.join("best.safetensors")),
            "--dataset",
            "imagefolder",
            "--data-dir",
            s(&root),
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    assert_eq!(e["samples"], 6);
    // A checkpoint copied away from its run directory still names its classes.
    let copy = tmp.path().join("copied.safetensors");
    std::fs::copy(out.join("model.safetensors"), &copy).unwrap();
    let pred = ok(&[
        "predict",
        "--checkpoint",
        s(&copy),
        "--json",
        s(&root.join("test/dog/0.jpg")),
    ]);
    let p: Value = serde_json::from_str(pred.trim()).unwrap();
    assert!(
        ["cat", "dog", "ship"].contains(&p["label"].as_str().unwrap()),
        "{p}"
    );

    // An unreadable image fails with its path.
    std::fs::write(root.join("train/dog/broken.jpg"), b"not a jpeg at all").unwrap();
    let line = fails(
        &[
            "train",
            "--dataset",
            "imagefolder",
            "--data-dir",
            s(&root),
            "--model",
            "cifar-cnn",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--no-progress",
            "--out",
            s(&tmp.path().join("run2")),
        ],
        "cannot decode image",
    );
    assert!(line.contains("broken.jpg"), "{line}");
    fails(
        &[
            "predict",
            "--checkpoint",
            s(&out.join("model.safetensors")),
            s(&root.join("train/dog/broken.jpg")),
        ],
        "broken.jpg",
    );
    // A test split with a class the training split lacks.
    std::fs::create_dir_all(root.join("test/horse")).unwrap();
    fails(
        &[
            "eval",
            "--checkpoint",
            s(&out.join("model.safetensors")),
            "--dataset",
            "imagefolder",
            "--data-dir",
            s(&root),
        ],
        "class folder 'horse'",
    );

    // CIFAR-10 binary batches.
    let bin = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let batch = |n: usize, seed: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                std::iter::once((i % 10) as u8)
                    .chain((0..3072).map(move |j| ((j * (i + seed)) % 256) as u8))
            })
            .collect()
    };
    for k in 1..=5 {
        std::fs::write(bin.join(format!("data_batch_{k}.bin")), batch(4, k)).unwrap();
    }
    std::fs::write(bin.join("test_batch.bin"), batch(10, 9)).unwrap();
    let out3 = tmp.path().join("run3");
    let o = ok(&[
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        s(tmp.path()),
        "--model",
        "cifar-cnn",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--no-progress",
        "--out",
        s(&out3),
    ]);
    assert!(o.contains("16 train / 4 validation / 10 test"), "{o}");
    std::fs::write(bin.join("test_batch.bin"), &batch(10, 9)[..3073 * 3 + 100]).unwrap();
    fails(
        &[
            "eval",
            "--checkpoint",
            s(&out3.join("model.safetensors")),
            "--dataset",
            "cifar10",
            "--data-dir",
            s(&bin),
        ],
        "is truncated or not a CIFAR-10 batch",
    );
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = vec![
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--out",
        s(&out),
    ];
    args.extend(SYNTH);
    // Without a usable font the curves are still drawn (without labels).
    let o = trainer()
        .args(&args)
        .env("TRAINER_PLOT_FONT", "/nonexistent.ttf")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(image::open(out.join("curves.png")).is_ok());
    let ckpt = out.join("model.safetensors");

    // --device cuda in a CPU build.
    fails(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--device",
            "cuda",
            "--out",
            s(&tmp.path().join("x")),
        ],
        "built without CUDA support",
    );
    fails(
        &[
            "eval",
            "--checkpoint",
            s(&ckpt),
            "--dataset",
            "synthetic",
            "--device",
            "cuda:1",
        ],
        "built without CUDA support",
    );
    fails(
        &[
            "eval",
            "--checkpoint",
            s(&ckpt),
            "--dataset",
            "synthetic",
            "--device",
            "tpu",
        ],
        "unknown device",
    );
    // bf16 on the CPU, for training and for the benchmark; no run directory is left behind.
    let bf16_out = tmp.path().join("bf16");
    fails(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--precision",
            "bf16",
            "--out",
            s(&bf16_out),
        ],
        "--precision bf16 needs a CUDA device",
    );
    assert!(!bf16_out.exists());
    fails(
        &[
            "bench",
            "--model",
            "mlp",
            "--precision",
            "bf16",
            "--steps",
            "1",
        ],
        "--precision bf16 needs a CUDA device",
    );
    // Unwritable --out (a path below a regular file).
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    fails(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--out",
            s(&file.join("sub")),
        ],
        "cannot create output directory",
    );
    // Missing checkpoint, not a checkpoint.
    fails(
        &[
            "eval",
            "--checkpoint",
            s(&tmp.path().join("none.safetensors")),
            "--dataset",
            "synthetic",
        ],
        "does not exist",
    );
    fails(
        &["info", "--checkpoint", s(&file)],
        "is not a circulant-model checkpoint",
    );
    // A checkpoint whose tensors belong to another network: mlp weights labelled mnist-cnn.
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut md = meta.metadata().clone().unwrap();
    let cfg = md["config"]
        .replace("\"mlp\"", "\"mnist-cnn\"")
        .replace(",\"fc3\":\"circulant\"", "");
    md.insert("config".into(), cfg);
    let views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let other = tmp.path().join("other.safetensors");
    std::fs::write(&other, safetensors::serialize(views, Some(md)).unwrap()).unwrap();
    fails(
        &["info", "--checkpoint", s(&other)],
        "cannot load checkpoint",
    );
    fails(
        &["predict", "--checkpoint", s(&other), s(&file)],
        "cannot load checkpoint",
    );
    // A checkpoint evaluated on data of another shape or class count.
    fails(
        &[
            "eval",
            "--checkpoint",
            s(&ckpt),
            "--dataset",
            "cifar10",
            "--data-dir",
            s(tmp.path()),
        ],
        "neither the CIFAR-10 binary batches",
    );
    // Unreadable image for predict.
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n broken").unwrap();
    fails(
        &["predict", "--checkpoint", s(&ckpt), s(&bad)],
        "cannot decode image",
    );
    fails(
        &[
            "predict",
            "--checkpoint",
            s(&ckpt),
            s(&tmp.path().join("absent.png")),
        ],
        "cannot open image",
    );
    // Missing required options, and no local MNIST files with hub access off.
    fails(&["train", "--model", "mlp"], "--dataset is required");
    fails(
        &[
            "train",
            "--dataset",
            "mnist",
            "--model",
            "mlp",
            "--data-dir",
            s(tmp.path()),
            "--out",
            s(&tmp.path().join("z")),
        ],
        "has no train-images-idx3-ubyte",
    );
    fails(
        &[
            "train",
            "--dataset",
            "imagefolder",
            "--model",
            "mlp",
            "--out",
            s(&tmp.path().join("y")),
        ],
        "imagefolder needs --data-dir",
    );

    // clap errors exit with 2; --help documents every flag with its default.
    let o = run(&["train", "--dataset", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    let help = ok(&["train", "--help"]);
    for flag in [
        "--dataset",
        "--data-dir",
        "--model",
        "--head",
        "--epochs",
        "--batch-size",
        "--optimizer",
        "--lr",
        "--momentum",
        "--nesterov",
        "--weight-decay",
        "--schedule",
        "--warmup",
        "--device",
        "--seed",
        "--out",
        "--resume",
        "--max-steps",
        "--save-every",
        "--image-size",
        "--val-split",
        "--log-every",
        "default: 10",
        "default: 64",
        "default: 5000 for mnist",
    ] {
        assert!(help.contains(flag), "train --help lacks {flag}");
    }
}
