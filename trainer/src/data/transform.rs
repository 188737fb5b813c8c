//! Image decoding and the train / eval transforms (random-resized-crop + flip, resize +
//! center-crop), written out as normalised CHW floats.

use std::path::Path;

use anyhow::{bail, Context, Result};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;
use rand::{Rng, SeedableRng};

use super::{Normalize, Shape};

/// Fraction of the resized image kept by the eval center crop: 0.875 (the ImageNet convention)
/// for inputs of 128 pixels and more, 1.0 (no crop) for small inputs such as CIFAR or MNIST.
pub fn eval_crop_pct(shape: Shape) -> f64 {
    if shape.h.min(shape.w) >= 128 {
        0.875
    } else {
        1.0
    }
}

/// Default smallest crop area for random-resized-crop: 0.08 (ImageNet) for inputs of 128 pixels
/// and more, 0.35 for small inputs.
pub fn default_min_crop_scale(shape: Shape) -> f64 {
    if shape.h.min(shape.w) >= 128 {
        0.08
    } else {
        0.35
    }
}

/// Decodes a PNG or JPEG file (format guessed from its content).
pub fn decode(path: &Path) -> Result<DynamicImage> {
    let reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    reader
        .decode()
        .with_context(|| format!("cannot decode image {}", path.display()))
}

/// How an image becomes model input.
#[derive(Clone, Copy, Debug)]
pub enum Transform {
    /// Random-resized-crop (area in [min_scale, 1], aspect in [3/4, 4/3]) and a random flip,
    /// drawn from the given seed.
    Train { seed: u64, min_scale: f64 },
    /// Resize the shorter side to size / crop_pct, then center-crop to size.
    Eval { crop_pct: f64 },
}

/// Applies `t` to `img` and writes normalised CHW floats for `shape` into `out`.
pub fn apply(
    img: DynamicImage,
    t: Transform,
    shape: Shape,
    norm: &Normalize,
    out: &mut [f32],
) -> Result<()> {
    if out.len() != shape.numel() {
        bail!("output buffer of {} for {shape} input", out.len());
    }
    let (w, h) = (img.width(), img.height());
    let raw = match shape.c {
        1 => img.into_luma8().into_raw(),
        3 => img.into_rgb8().into_raw(),
        c => bail!("images can be read as 1 (grey) or 3 (RGB) channels, the model wants {c}"),
    };
    let (out_w, out_h) = (shape.w as u32, shape.h as u32);
    let pixels = match t {
        Transform::Train { seed, min_scale } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (x, y, cw, ch) = random_crop_box(w, h, min_scale, &mut rng);
            let region = (x as f64, y as f64, cw as f64, ch as f64);
            let mut r = resize_region(&raw, w, h, shape.c, region, out_w, out_h)?;
            if rng.random_bool(0.5) {
                flip_horizontal(&mut r, out_w as usize, shape.c);
            }
            r
        }
        Transform::Eval { crop_pct } => {
            // Scale so that the crop covers crop_pct of the shorter side, then take the centre:
            // the crop corresponds to a (out / scale)-sized box in the source image.
            let scale =
                (out_w as f64 / (w as f64 * crop_pct)).max(out_h as f64 / (h as f64 * crop_pct));
            let (cw, ch) = (
                (out_w as f64 / scale).min(w as f64),
                (out_h as f64 / scale).min(h as f64),
            );
            let region = ((w as f64 - cw) / 2.0, (h as f64 - ch) / 2.0, cw, ch);
            resize_region(&raw, w, h, shape.c, region, out_w, out_h)?
        }
    };
    write_chw(&pixels, shape, norm, out);
    Ok(())
}

thread_local! {
    static RESIZER: std::cell::RefCell<Resizer> = std::cell::RefCell::new(Resizer::new());
}

/// Resizes the `region` (x, y, width, height) of an interleaved `c`-channel image to
/// `out_w` x `out_h` with a bilinear (triangle) filter.
fn resize_region(
    src: &[u8],
    w: u32,
    h: u32,
    c: usize,
    region: (f64, f64, f64, f64),
    out_w: u32,
    out_h: u32,
) -> Result<Vec<u8>> {
    if region == (0.0, 0.0, w as f64, h as f64) && (w, h) == (out_w, out_h) {
        return Ok(src.to_vec());
    }
    let pt = if c == 1 {
        PixelType::U8
    } else {
        PixelType::U8x3
    };
    let src_img = ImageRef::new(w, h, src, pt).context("image buffer")?;
    let mut dst = Image::new(out_w, out_h, pt);
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(region.0, region.1, region.2, region.3);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src_img, &mut dst, &opts))
        .context("cannot resize image")?;
    Ok(dst.into_vec())
}

fn flip_horizontal(px: &mut [u8], w: usize, c: usize) {
    for row in px.chunks_exact_mut(w * c) {
        for x in 0..w / 2 {
            for k in 0..c {
                row.swap(x * c + k, (w - 1 - x) * c + k);
            }
        }
    }
}

/// torchvision's RandomResizedCrop box: (x, y, width, height).
fn random_crop_box(w: u32, h: u32, min_scale: f64, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
    let area = w as f64 * h as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let min_scale = min_scale.clamp(1e-4, 1.0);
    for _ in 0..10 {
        let target = area * rng.random_range(min_scale..=1.0);
        let ratio = rng.random_range(lo..=hi).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            return (x, y, cw, ch);
        }
    }
    // Fallback: the largest centred crop with an aspect ratio in range.
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < 3.0 / 4.0 {
        (w, ((w as f64 / (3.0 / 4.0)).round() as u32).min(h))
    } else if in_ratio > 4.0 / 3.0 {
        (((h as f64 * 4.0 / 3.0).round() as u32).min(w), h)
    } else {
        (w, h)
    };
    ((w - cw) / 2, (h - ch) / 2, cw.max(1), ch.max(1))
}

fn write_chw(px: &[u8], shape: Shape, norm: &Normalize, out: &mut [f32]) {
    let plane = shape.h * shape.w;
    let c = shape.c;
    for (i, p) in px.chunks_exact(c).enumerate() {
        for (ch, &v) in p.iter().enumerate() {
            out[ch * plane + i] = norm.apply(ch, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use circulant_model::InputSpec;

    fn norm(c: usize) -> Normalize {
        Normalize::new(&InputSpec {
            channels: c,
            height: 1,
            width: 1,
            mean: vec![0.0; c],
            std: vec![1.0; c],
        })
        .unwrap()
    }

    #[test]
    fn eval_identity_and_center_crop() {
        let img =
            image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 7]));
        let shape = Shape { c: 3, h: 8, w: 8 };
        let mut out = vec![0f32; shape.numel()];
        apply(
            DynamicImage::ImageRgb8(img.clone()),
            Transform::Eval { crop_pct: 1.0 },
            shape,
            &norm(3),
            &mut out,
        )
        .unwrap();
        // Channel 0 at (x=3, y=2) is 90/255; channel 2 is constant 7/255.
        assert!((out[2 * 8 + 3] - 90.0 / 255.0).abs() < 1e-6);
        assert!((out[2 * 64 + 5] - 7.0 / 255.0).abs() < 1e-6);

        // A wide 16x8 image is resized to 8 rows high and center-cropped: x in 4..12 kept.
        let wide = image::GrayImage::from_fn(16, 8, |x, _| {
            image::Luma([if (4..12).contains(&x) { 200 } else { 0 }])
        });
        let shape = Shape { c: 1, h: 8, w: 8 };
        let mut out = vec![0f32; 64];
        apply(
            DynamicImage::ImageLuma8(wide),
            Transform::Eval { crop_pct: 1.0 },
            shape,
            &norm(1),
            &mut out,
        )
        .unwrap();
        assert!(
            out.iter().all(|&v| (v - 200.0 / 255.0).abs() < 1e-6),
            "{out:?}"
        );
    }

    #[test]
    fn train_transform_is_deterministic_per_seed() {
        let img =
            image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 0]));
        let shape = Shape { c: 3, h: 16, w: 16 };
        let run = |seed| {
            let mut out = vec![0f32; shape.numel()];
            apply(
                DynamicImage::ImageRgb8(img.clone()),
                Transform::Train {
                    seed,
                    min_scale: 0.08,
                },
                shape,
                &norm(3),
                &mut out,
            )
            .unwrap();
            out
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn crop_box_within_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        for (w, h) in [(1, 1), (3, 500), (500, 3), (224, 224), (640, 480)] {
            for _ in 0..50 {
                let (x, y, cw, ch) = random_crop_box(w, h, 0.08, &mut rng);
                assert!(cw >= 1 && ch >= 1 && x + cw <= w && y + ch <= h);
            }
        }
    }
}
