//! Compiles every `.cu` kernel of kernels-cuda as C++ for the CPU, with `emu/cuda_emu.h`
//! standing in for the CUDA names, plus the launcher (`emu/runtime.cpp`), into one static
//! library.

use std::path::PathBuf;

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let kernels = here.join("../kernels-cuda/src");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .expect("kernels-cuda/src is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    println!("cargo::rerun-if-changed={}", kernels.display());
    println!("cargo::rerun-if-changed=emu");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .warnings(true)
        // As nvcc builds the _rn intrinsics: no fused multiply-adds.
        .flag("-ffp-contract=off")
        .flag("-pthread")
        .flag("-include")
        .flag(here.join("emu/cuda_emu.h").to_str().expect("a UTF-8 path"))
        // The kernels keep their .cu names: compile them as C++.
        .flag("-x")
        .flag("c++")
        .file(here.join("emu/runtime.cpp"))
        .files(&sources);
    build.compile("kernels_emu");
}
