//! `trainer export`: a copy of a checkpoint with its weights stored in another dtype.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use circulant_model::checkpoint::SaveOptions;

use crate::cli::{ExportArgs, StoredDtype};
use crate::eval::{checkpoint_file, load_model};

/// `trainer export`.
pub fn run(args: ExportArgs) -> Result<()> {
    if args.out == args.checkpoint {
        bail!("--out must differ from --checkpoint (the input stays as it is)");
    }
    let input = checkpoint_file(&args.checkpoint)?;
    let (model, info) = load_model(&input, &Device::Cpu)?;
    let dtype = match args.dtype {
        StoredDtype::F32 => DType::F32,
        StoredDtype::F16 => DType::F16,
        StoredDtype::Bf16 => DType::BF16,
    };
    let options = SaveOptions {
        class_names: info.class_names,
        dtype,
    };
    model
        .save_with(&args.out, &options)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "{} ({}, {:?}) -> {} ({}, {dtype:?})",
        args.checkpoint.display(),
        indicatif::HumanBytes(size(&input)),
        info.dtype,
        args.out.display(),
        indicatif::HumanBytes(size(&args.out)),
    );
    Ok(())
}
