//! The patched autograd of vendor/candle-core (first gradients stored as they are instead of
//! added to zeros): gradients against central finite differences in f64 on random inputs, over
//! a graph where one input reaches the loss by several paths (sums of gradients), through
//! subtractions and negations (first gradients negated), transposes and broadcasts (views made
//! contiguous), and a dtype cast; ReLU's gradient at and around 0.

use candle_core::{DType, Device, Result, Tensor, Var};

/// A scalar function of `x` (3×5) and `b` (5), each input used several times.
fn loss(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let xt = x.t()?; // 5×3, a transposed view
    let y = (x.broadcast_add(b)? - x.sqr()?)?; // x by two paths, b broadcast
    let z = (xt.matmul(&y)?.tanh()? - 0.5)?; // 5×5
    let w = (b.neg()?.exp()? * 0.25)?.unsqueeze(0)?; // b through neg, 1×5
    let v = z.broadcast_mul(&w)?.sum_all()?;
    let cast = x
        .to_dtype(DType::F32)?
        .to_dtype(DType::F64)?
        .sin()?
        .sum_all()?;
    v + cast
}

fn random(shape: &[usize], seed: u64) -> Vec<f64> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    // Inputs rounded to f32 values, so that the f32 round trip of `loss` is exact at them.
    let round = |v: Vec<f64>| v.into_iter().map(|a| a as f32 as f64).collect::<Vec<_>>();
    let xs = round(random(&[3, 5], 1));
    let bs = round(random(&[5], 2));
    let x = Var::from_vec(xs.clone(), (3, 5), &dev)?;
    let b = Var::from_vec(bs.clone(), 5, &dev)?;
    let grads = loss(x.as_tensor(), b.as_tensor())?.backward()?;
    for (name, var, values, dims) in [("x", &x, &xs, vec![3, 5]), ("b", &b, &bs, vec![5])] {
        let g = grads.get(var.as_tensor()).expect("a gradient");
        assert!(g.is_contiguous(), "{name}: gradient not contiguous");
        assert_eq!(g.dims(), dims.as_slice());
        let g = g.flatten_all()?.to_vec1::<f64>()?;
        for i in 0..values.len() {
            let f = |delta: f64| -> Result<f64> {
                let mut v = values.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, dims.as_slice(), &dev)?;
                let l = if name == "x" {
                    loss(&t, b.as_tensor())?
                } else {
                    loss(x.as_tensor(), &t)?
                };
                l.to_scalar::<f64>()
            };
            // The f32 round trip makes `loss` piecewise constant at f32 resolution: step over it.
            let h = 1e-3;
            let fd = (f(h)? - f(-h)?) / (2.0 * h);
            let tol = 1e-4 * (1.0 + fd.abs());
            assert!(
                (g[i] - fd).abs() < tol,
                "d loss / d {name}[{i}]: autograd {}, finite differences {fd}",
                g[i]
            );
        }
    }
    Ok(())
}

/// A gradient whose first term is a strided view (here a transpose of the upstream gradient)
/// is stored contiguous, with the values of the view.
#[test]
fn first_gradients_are_stored_contiguous() -> Result<()> {
    let dev = Device::Cpu;
    let w = Var::from_vec(random(&[4, 6], 3), (4, 6), &dev)?;
    let c = Tensor::from_vec(random(&[6, 4], 4), (6, 4), &dev)?;
    let grads = (w.as_tensor().t()? * &c)?.sum_all()?.backward()?;
    let g = grads.get(w.as_tensor()).expect("a gradient");
    assert!(g.is_contiguous());
    assert_eq!(g.to_vec2::<f64>()?, c.t()?.to_vec2::<f64>()?);
    Ok(())
}

/// ReLU's gradient is the upstream gradient where the output is > 0 and 0 elsewhere, at 0 (and
/// -0) included, as PyTorch's; in f32 and f64.
#[test]
fn relu_passes_gradients_where_the_output_is_positive() -> Result<()> {
    let dev = Device::Cpu;
    let xs = [-2.0, -0.0, 0.0, 1e-30, 0.5, 3.0, -1e-30];
    let r = random(&[xs.len()], 5);
    for dtype in [DType::F32, DType::F64] {
        let x = Var::from_tensor(&Tensor::new(&xs[..], &dev)?.to_dtype(dtype)?)?;
        let rt = Tensor::new(r.as_slice(), &dev)?.to_dtype(dtype)?;
        let grads = (x.as_tensor().relu()? * &rt)?.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).expect("a gradient");
        let g = g.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let rt = rt.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for (i, &v) in xs.iter().enumerate() {
            let want = if v > 0.0 { rt[i] } else { 0.0 };
            assert_eq!(g[i], want, "{dtype:?}: d relu(x) at x = {v:e}");
        }
    }
    Ok(())
}

/// `conv2d(x, w)`'s gradients of `sum(conv2d(x, w) · r)` against direct sums in f64: the input
/// gradient of stride-1 convolutions (a conv2d with the flipped, transposed kernel in the
/// patched backward) and of strided ones (conv_transpose2d), and the kernel gradient, for odd
/// sizes and every padding below the kernel size; an input that needs no gradient gets none.
#[test]
fn conv2d_gradients_match_direct_sums() -> Result<()> {
    let dev = Device::Cpu;
    let cases = [
        // (n, c_in, c_out, h, w, k, padding, stride)
        (2, 3, 4, 7, 9, 3, 0, 1),
        (2, 3, 4, 7, 9, 3, 1, 1),
        (2, 3, 4, 7, 9, 3, 2, 1),
        (1, 2, 5, 8, 6, 5, 2, 1),
        (1, 2, 5, 8, 6, 5, 4, 1),
        (2, 1, 3, 5, 5, 1, 0, 1),
        (2, 3, 2, 9, 11, 3, 1, 2),
        (1, 2, 3, 11, 11, 5, 2, 3),
    ];
    for (case, &(n, ci, co, h, w, k, p, s)) in cases.iter().enumerate() {
        let seed = 10 * case as u64;
        let xs = random(&[n, ci, h, w], seed + 1);
        let ws = random(&[co, ci, k, k], seed + 2);
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let rs = random(&[n, co, oh, ow], seed + 3);
        let x = Var::from_vec(xs.clone(), (n, ci, h, w), &dev)?;
        let wt = Var::from_vec(ws.clone(), (co, ci, k, k), &dev)?;
        let r = Tensor::from_vec(rs.clone(), (n, co, oh, ow), &dev)?;
        let grads = (x.conv2d(&wt, p, s, 1, 1)? * &r)?.sum_all()?.backward()?;

        let (mut dx, mut dw) = (vec![0f64; xs.len()], vec![0f64; ws.len()]);
        for (b, o, y, xo, c, ky, kx) in conv_terms(n, co, oh, ow, ci, k) {
            let (iy, ix) = (
                (y * s + ky) as isize - p as isize,
                (xo * s + kx) as isize - p as isize,
            );
            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                continue;
            }
            let xi = ((b * ci + c) * h + iy as usize) * w + ix as usize;
            let wi = ((o * ci + c) * k + ky) * k + kx;
            let g = rs[((b * co + o) * oh + y) * ow + xo];
            dx[xi] += g * ws[wi];
            dw[wi] += g * xs[xi];
        }
        for (name, var, want) in [("x", &x, &dx), ("w", &wt, &dw)] {
            let got = grads.get(var.as_tensor()).expect("a gradient");
            assert_eq!(got.dims(), var.dims(), "case {case}: d{name} shape");
            for (i, (g, e)) in got
                .flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .zip(want)
                .enumerate()
            {
                assert!(
                    (g - e).abs() < 1e-9,
                    "case {case}: d{name}[{i}] {g}, expected {e}"
                );
            }
        }

        let images = Tensor::from_vec(xs, (n, ci, h, w), &dev)?;
        let grads = images.conv2d(&wt, p, s, 1, 1)?.sum_all()?.backward()?;
        assert!(
            grads.get(&images).is_none(),
            "case {case}: a gradient for plain data"
        );
        assert!(
            grads.get(wt.as_tensor()).is_some(),
            "case {case}: no kernel gradient"
        );
    }
    Ok(())
}

/// Every `(image, out channel, out y, out x, in channel, ky, kx)`.
fn conv_terms(
    n: usize,
    co: usize,
    oh: usize,
    ow: usize,
    ci: usize,
    k: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize, usize, usize, usize)> {
    (0..n * co * oh * ow * ci * k * k).map(move |mut i| {
        let kx = i % k;
        i /= k;
        let ky = i % k;
        i /= k;
        let c = i % ci;
        i /= ci;
        let x = i % ow;
        i /= ow;
        let y = i % oh;
        i /= oh;
        let o = i % co;
        (i / co, o, y, x, c, ky, kx)
    })
}
