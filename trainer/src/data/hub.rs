//! MNIST / Fashion-MNIST from the Hugging Face hub (candle-datasets' parquet loaders), used when
//! no local idx files are given. Needs the `hub` cargo feature and network access.

use anyhow::Result;

use super::idx::RawMnist;
use crate::cli::DatasetKind;

/// How to supply the files by hand, for error messages.
pub fn offline_help(kind: DatasetKind) -> String {
    let debian = if kind == DatasetKind::FashionMnist {
        " (on Debian, `apt-get install dataset-fashion-mnist` puts them in \
         /usr/share/datasets/fashion-mnist, which is used automatically)"
    } else {
        ""
    };
    format!(
        "put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and \
         t10k-labels-idx1-ubyte (raw or .gz) in a directory and pass --data-dir DIR{debian}"
    )
}

/// Downloads (or reads from the hub cache) the dataset.
#[cfg(feature = "hub")]
pub fn load(kind: DatasetKind) -> Result<RawMnist> {
    use anyhow::{bail, Context};
    use candle_core::DType;

    let offline = std::env::var("HF_HUB_OFFLINE")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false);
    if offline {
        bail!(
            "no local {kind} files and HF_HUB_OFFLINE is set, so the hub cannot be used: {}",
            offline_help(kind)
        );
    }
    eprintln!("no local {kind} files: downloading from the Hugging Face hub ...");
    // candle-datasets' parquet decoding unwraps on malformed rows: keep a panic there from
    // taking the process down without a clear message.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let loaded = std::panic::catch_unwind(|| match kind {
        DatasetKind::FashionMnist => candle_datasets::vision::fashion_mnist::load(),
        _ => candle_datasets::vision::mnist::load(),
    });
    std::panic::set_hook(hook);
    let ds = match loaded {
        Ok(Ok(ds)) => ds,
        Ok(Err(e)) => bail!(
            "cannot download {kind} from the Hugging Face hub ({e}); offline? {}",
            offline_help(kind)
        ),
        Err(_) => bail!(
            "the {kind} files downloaded from the Hugging Face hub could not be decoded; {}",
            offline_help(kind)
        ),
    };
    let to_bytes = |t: &candle_core::Tensor| -> Result<Vec<u8>> {
        let v = (t * 255.0)?
            .round()?
            .clamp(0.0, 255.0)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        Ok(v)
    };
    let to_labels = |t: &candle_core::Tensor| -> Result<Vec<u32>> {
        Ok(t.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?)
    };
    let raw = RawMnist {
        train_images: to_bytes(&ds.train_images).context("hub train images")?,
        train_labels: to_labels(&ds.train_labels).context("hub train labels")?,
        test_images: to_bytes(&ds.test_images).context("hub test images")?,
        test_labels: to_labels(&ds.test_labels).context("hub test labels")?,
    };
    for (px, l, split) in [
        (&raw.train_images, &raw.train_labels, "train"),
        (&raw.test_images, &raw.test_labels, "test"),
    ] {
        if px.len() != l.len() * 784 || l.iter().any(|&v| v >= 10) {
            bail!(
                "the hub's {kind} {split} split is malformed ({} pixels, {} labels); {}",
                px.len(),
                l.len(),
                offline_help(kind)
            );
        }
    }
    Ok(raw)
}

/// Without the `hub` feature there is nothing to download from.
#[cfg(not(feature = "hub"))]
pub fn load(kind: DatasetKind) -> Result<RawMnist> {
    anyhow::bail!(
        "no local {kind} files, and this trainer was built without hub downloads \
         (cargo feature `hub`): {}",
        offline_help(kind)
    )
}
