//! Progress bars (indicatif) for training and evaluation.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `len` batches; hidden when `enabled` is false or stderr is not a terminal.
pub fn bar(len: u64, prefix: String, enabled: bool) -> ProgressBar {
    let target = if enabled {
        ProgressDrawTarget::stderr_with_hz(5)
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    let style = ProgressStyle::with_template(
        "{prefix:>12.bold} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({elapsed}<{eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix);
    bar
}

/// Formats the live statistics shown next to a training bar.
pub fn train_message(loss: f64, acc: f64, images_per_sec: f64, lr: f64) -> String {
    format!(
        "loss {loss:.4} acc {:.2}% {images_per_sec:.0} img/s lr {lr:.2e}",
        100.0 * acc
    )
}
