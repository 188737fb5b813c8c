//! With the `cuda` feature: compiles `src/*.cu` to PTX with nvcc (embedded by `src/kernels.rs`)
//! and links cuFFT, which cudarc 0.19.10 does not link under `dynamic-linking`.
//! Without the feature it does nothing, so the crate builds with no CUDA toolkit.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &["circulant", "max_pool", "batch_norm", "optim", "dropout"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    for name in SOURCES {
        println!("cargo::rerun-if-changed=src/{name}.cu");
    }
    for var in [
        "CUDA_COMPUTE_CAP",
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_ROOT",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rustc-link-lib=dylib=cufft");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = compute_cap();
    let nvcc = nvcc();
    for name in SOURCES {
        let src = Path::new("src").join(format!("{name}.cu"));
        let ptx = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "--expt-relaxed-constexpr"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "kernels-cuda: cannot run {} ({e}); install a CUDA toolkit \
                     (scripts/prepare-cuda-toolkit.sh) and source its env.sh, or set NVCC",
                    nvcc.display()
                )
            });
        assert!(
            status.success(),
            "kernels-cuda: nvcc failed on {} ({status})",
            src.display()
        );
    }
}

/// `CUDA_COMPUTE_CAP` as candle-kernels reads it ("90", "9.0" or "sm_90"); default 90 (H100).
fn compute_cap() -> String {
    let raw = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    assert!(
        !digits.is_empty(),
        "kernels-cuda: CUDA_COMPUTE_CAP={raw:?} is not a compute capability such as 90"
    );
    digits
}

/// `$NVCC`, else `bin/nvcc` under `CUDA_HOME` / `CUDA_PATH` / `CUDA_ROOT`, else `nvcc` on PATH.
fn nvcc() -> PathBuf {
    if let Some(path) = env::var_os("NVCC") {
        return PathBuf::from(path);
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(root) = env::var_os(var) {
            let candidate = Path::new(&root).join("bin").join("nvcc");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("nvcc")
}
