//! A network with its parameters: construction, forward pass, parameter access.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use circulant_kernels::WeightSpectra;

use crate::batch_norm::BatchNorm2d;
use crate::builder::{Builder, Source, Store};
use crate::config::{Head, ModelConfig, Network};
use crate::conv::{Conv2dLayer, PreparedConv};
use crate::dropout::{dropout, dropout_layer_seed};
use crate::error::{Error, Result};
use crate::init::Init;
use crate::linear::{CirculantLinear, CirculantMode, DenseLinear, FcLayer};
use crate::networks::{layer_specs, LayerSpec};
use crate::pool::{max_pool2d, max_pool2d_relu};
use crate::report::{LayerParams, ParamReport};

/// Forward-pass mode.
///
/// `Eval`: no dropout, batch norm uses running statistics. `Train`: dropout masks drawn from
/// SplitMix64 counters seeded by `dropout_seed` (mixed with the dropout layer's index), batch
/// norm uses batch statistics and updates its running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train { dropout_seed: u64 },
}

#[derive(Clone, Debug)]
enum Layer {
    Conv { name: String, conv: Conv2dLayer },
    BatchNorm { name: String, bn: BatchNorm2d },
    MaxPool { k: usize, stride: usize },
    Relu,
    Dropout { p: f32 },
    Flatten,
    Fc { name: String, fc: FcLayer },
}

/// Precomputed eval-mode state of a [`Model`]: the spectra of its circulant weights, each
/// batch norm that follows a convolution folded into that convolution's weight and bias, and
/// (on the CPU) the convolutions' Winograd filters, transformed at their first use.
#[derive(Clone, Debug)]
pub struct EvalCache {
    /// One entry per layer.
    layers: Vec<Option<Cached>>,
}

/// What [`EvalCache`] keeps for one layer.
#[derive(Clone, Debug)]
enum Cached {
    /// A circulant FC layer's weight spectra.
    Spectra(WeightSpectra),
    /// A convolution's weight and bias (with the batch norm after it folded in, if `folded`)
    /// and, on the CPU, its Winograd filters once computed.
    Conv { conv: PreparedConv, folded: bool },
}

/// A network with its parameters (trainable ones held as candle `Var`s in a `VarMap`).
pub struct Model {
    config: ModelConfig,
    device: Device,
    layers: Vec<Layer>,
    store: Store,
}

impl Model {
    /// Builds and initialises the model (deterministically from `config.seed`) on `device`.
    pub fn new(config: ModelConfig, device: &Device) -> Result<Self> {
        let seed = config.seed;
        Self::build(config, Source::Init { seed }, device)
    }

    pub(crate) fn build(config: ModelConfig, source: Source, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut b = Builder::new(source, device);
        let mut layers = Vec::new();
        for spec in layer_specs(config.network, config.num_classes) {
            layers.push(build_layer(&spec, &config, &mut b)?);
        }
        Ok(Self {
            config,
            device: device.clone(),
            layers,
            store: b.finish()?,
        })
    }

    /// x: `(N, C, H, W)` f32, already normalised per `config.input` -> logits `(N, num_classes)`.
    /// (`mlp` also accepts `(N, C*H*W)`.)
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_impl(x, mode, None, DType::F32)
    }

    /// Mixed precision: [`Model::forward`] with the activations, convolutions and dense products
    /// in `compute` (`BF16` or `F16`; `F32` is [`Model::forward`]), each f32 weight cast to it
    /// where it is used (its gradient comes back in f32); batch norms, max pools, circulant
    /// transforms and the returned logits stay f32. On the CPU the half-precision layers run
    /// candle's generic kernels: the mode is meant for GPUs.
    pub fn forward_mixed(&self, x: &Tensor, mode: Mode, compute: DType) -> Result<Tensor> {
        if !matches!(compute, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::InvalidConfig(format!(
                "mixed precision computes in bf16, f16 or f32, not {compute:?}"
            )));
        }
        self.forward_impl(x, mode, None, compute)
    }

    /// The eval-mode state for [`Model::forward_eval_with`], computed once, a snapshot of the
    /// current weights: every circulant layer's weight spectra, and every convolution followed
    /// by a batch norm as one convolution (`W·s`, `(b - mean)·s + beta` with `s = gamma /
    /// sqrt(var + eps)`), which saves the batch norm's pass over the activations. On the CPU
    /// the 3×3 and 5×5 convolutions (and AlexNet's strided conv1) then run as Winograd at any
    /// batch size, their transformed filters kept from the first call (for AlexNet about four
    /// times the size of its convolution weights).
    pub fn eval_cache(&self) -> Result<EvalCache> {
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| match (l, self.layers.get(i + 1)) {
                (
                    Layer::Fc {
                        fc: FcLayer::Circulant(c),
                        ..
                    },
                    _,
                ) => Ok(Some(Cached::Spectra(c.weight_spectra()?))),
                (Layer::Conv { conv, .. }, Some(Layer::BatchNorm { bn, .. })) => {
                    let (scale, shift) = bn.eval_affine()?;
                    let (weight, bias) = conv.fold(&scale, &shift)?;
                    let conv = conv.prepare(&weight, &bias)?;
                    Ok(Some(Cached::Conv { conv, folded: true }))
                }
                (Layer::Conv { conv: c, .. }, _) => {
                    let conv = c.prepare(c.weight().as_tensor(), c.bias().as_tensor())?;
                    Ok(Some(Cached::Conv {
                        conv,
                        folded: false,
                    }))
                }
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(EvalCache { layers })
    }

    /// `forward(x, Mode::Eval)` with the circulant weights' spectra taken from `cache` (built by
    /// [`Model::eval_cache`] of this model) instead of recomputed.
    pub fn forward_eval_with(&self, x: &Tensor, cache: &EvalCache) -> Result<Tensor> {
        if cache.layers.len() != self.layers.len() {
            return Err(Error::InvalidConfig(
                "eval cache was built for another model".into(),
            ));
        }
        self.forward_impl(x, Mode::Eval, Some(cache), DType::F32)
    }

    /// The forward pass, with the activations in `dt` (see [`Model::forward_mixed`]).
    fn forward_impl(
        &self,
        x: &Tensor,
        mode: Mode,
        cache: Option<&EvalCache>,
        dt: DType,
    ) -> Result<Tensor> {
        self.check_input(x)?;
        let train = matches!(mode, Mode::Train { .. });
        let mixed = dt != DType::F32;
        let mut h = x.to_dtype(dt)?;
        let mut dropout_index = 0;
        // Layers already applied by an earlier one: a ReLU next to a max pool or after a
        // convolution or FC layer runs inside that layer, and so does a folded batch norm.
        let mut skip = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let is_relu = |j: usize| matches!(self.layers.get(j), Some(Layer::Relu));
            let next_is_relu = is_relu(i + 1);
            let cached = cache.and_then(|c| c.layers.get(i)?.as_ref());
            h = match layer {
                Layer::Conv { conv, .. } => match cached {
                    Some(Cached::Conv {
                        conv: prepared,
                        folded,
                    }) => {
                        let relu = is_relu(i + 1 + usize::from(*folded));
                        skip = usize::from(*folded) + usize::from(relu);
                        conv.forward_prepared(&h, prepared, relu)?
                    }
                    _ if mixed => {
                        skip = usize::from(next_is_relu);
                        let (w, b) = (conv.weight().to_dtype(dt)?, conv.bias().to_dtype(dt)?);
                        conv.forward_with(&h, &w, &b, next_is_relu)?
                    }
                    _ => {
                        skip = usize::from(next_is_relu);
                        conv.forward_impl(&h, next_is_relu)?
                    }
                },
                Layer::BatchNorm { bn, .. } if mixed => {
                    bn.forward(&h.to_dtype(DType::F32)?, train)?.to_dtype(dt)?
                }
                Layer::BatchNorm { bn, .. } => bn.forward(&h, train)?,
                Layer::MaxPool { k, stride } if next_is_relu => {
                    skip = 1;
                    max_pool2d_relu(&h, *k, *stride)?
                }
                Layer::MaxPool { k, stride } => max_pool2d(&h, *k, *stride)?,
                Layer::Relu => match self.layers.get(i + 1) {
                    Some(Layer::MaxPool { k, stride }) => {
                        skip = 1;
                        max_pool2d_relu(&h, *k, *stride)?
                    }
                    _ => h.relu()?,
                },
                Layer::Dropout { p } => match mode {
                    Mode::Eval => h,
                    Mode::Train { dropout_seed } => {
                        let seed = dropout_layer_seed(dropout_seed, dropout_index);
                        dropout_index += 1;
                        dropout(&h, *p, seed)?
                    }
                },
                Layer::Flatten => h.flatten_from(1)?,
                Layer::Fc { fc, .. } => {
                    skip = usize::from(next_is_relu);
                    match (fc, cached) {
                        (FcLayer::Circulant(c), Some(Cached::Spectra(s))) => {
                            let y = c.forward_with_spectra(&h, s)?;
                            if next_is_relu {
                                y.relu()?
                            } else {
                                y
                            }
                        }
                        (FcLayer::Dense(d), _) if mixed => d.forward_in(&h, dt, next_is_relu)?,
                        (FcLayer::Circulant(_), _) if mixed => fc
                            .forward_impl(&h.to_dtype(DType::F32)?, next_is_relu)?
                            .to_dtype(dt)?,
                        _ => fc.forward_impl(&h, next_is_relu)?,
                    }
                }
            };
        }
        if mixed {
            h = h.to_dtype(DType::F32)?;
        }
        Ok(h)
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let inp = &self.config.input;
        let chw = [inp.channels, inp.height, inp.width];
        let ok = match x.dims() {
            [n, c, h, w] => *n > 0 && [*c, *h, *w] == chw,
            [n, f] => {
                self.config.network == Network::Mlp && *n > 0 && *f == chw.iter().product::<usize>()
            }
            _ => false,
        };
        if !ok {
            return Err(Error::InputShape {
                found: x.dims().to_vec(),
                expected: format!("(N, {}, {}, {}) with N >= 1", chw[0], chw[1], chw[2]),
            });
        }
        if x.dtype() != DType::F32 {
            return Err(Error::InputShape {
                found: x.dims().to_vec(),
                expected: format!("an f32 tensor, got {:?}", x.dtype()),
            });
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The `VarMap` holding the trainable variables.
    pub fn varmap(&self) -> &VarMap {
        &self.store.varmap
    }

    /// Trainable variables with their names, sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let data = self
            .store
            .varmap
            .data()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Every tensor of the checkpoint (trainable, running statistics, fixed `signs`), sorted by
    /// name.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut all: BTreeMap<String, Tensor> = self
            .trainable()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        for (k, v) in &self.store.buffers {
            all.insert(k.clone(), v.as_tensor().clone());
        }
        for (k, v) in &self.store.fixed {
            all.insert(k.clone(), v.clone());
        }
        all.into_iter().collect()
    }

    /// The FC layer called `name`.
    pub fn fc_layer(&self, name: &str) -> Option<&FcLayer> {
        self.layers.iter().find_map(|l| match l {
            Layer::Fc { name: n, fc } if n == name => Some(fc),
            _ => None,
        })
    }

    /// Per-layer trainable parameter counts (sign vectors and running statistics excluded).
    pub fn param_report(&self) -> ParamReport {
        let layers = self
            .layers
            .iter()
            .filter_map(|l| match l {
                Layer::Conv { name, conv } => {
                    let n = conv.param_count();
                    Some(LayerParams {
                        name: name.clone(),
                        kind: "conv".into(),
                        params: n,
                        dense_equivalent: n,
                    })
                }
                Layer::BatchNorm { name, bn } => Some(LayerParams {
                    name: name.clone(),
                    kind: "batchnorm".into(),
                    params: bn.param_count(),
                    dense_equivalent: bn.param_count(),
                }),
                Layer::Fc { name, fc } => Some(LayerParams {
                    name: name.clone(),
                    kind: fc.head().to_string(),
                    params: fc.param_count(),
                    dense_equivalent: fc.dense_equivalent(),
                }),
                _ => None,
            })
            .collect();
        ParamReport { layers }
    }

    /// Total trainable parameters.
    pub fn param_count(&self) -> usize {
        self.param_report().total()
    }
}

fn build_layer(spec: &LayerSpec, config: &ModelConfig, b: &mut Builder) -> Result<Layer> {
    Ok(match *spec {
        LayerSpec::Conv {
            name,
            c_in,
            c_out,
            k,
            stride,
            padding,
        } => {
            let init = Init::fan_in(c_in * k * k);
            let w = b.trainable(&format!("{name}.weight"), &[c_out, c_in, k, k], init)?;
            let bias = b.trainable(&format!("{name}.bias"), &[c_out], init)?;
            Layer::Conv {
                name: name.to_string(),
                conv: Conv2dLayer::new(w, bias, padding, stride)?,
            }
        }
        LayerSpec::BatchNorm { name, c } => {
            let weight = b.trainable(&format!("{name}.weight"), &[c], Init::Const(1.0))?;
            let bias = b.trainable(&format!("{name}.bias"), &[c], Init::Const(0.0))?;
            let rm = b.buffer(&format!("{name}.running_mean"), &[c], Init::Const(0.0))?;
            let rv = b.buffer(&format!("{name}.running_var"), &[c], Init::Const(1.0))?;
            Layer::BatchNorm {
                name: name.to_string(),
                bn: BatchNorm2d::new(weight, bias, rm, rv)?,
            }
        }
        LayerSpec::MaxPool { k, stride } => Layer::MaxPool { k, stride },
        LayerSpec::Relu => Layer::Relu,
        LayerSpec::Dropout { p } => Layer::Dropout { p },
        LayerSpec::Flatten => Layer::Flatten,
        LayerSpec::Fc { name, d, k } => {
            let bias_init = Init::fan_in(d);
            let fc = match config.head(name)? {
                Head::Dense => {
                    let w = b.trainable(&format!("{name}.weight"), &[k, d], Init::fan_in(d))?;
                    let bias = b.trainable(&format!("{name}.bias"), &[k], bias_init)?;
                    FcLayer::Dense(DenseLinear::from_parts(d, k, w, bias)?)
                }
                head => {
                    let mode = match head {
                        Head::Block(bs) => CirculantMode::Block(bs),
                        _ => CirculantMode::Paper,
                    };
                    let signs = if config.sign_flip {
                        Some(b.fixed(&format!("{name}.signs"), &[d], Init::Signs)?)
                    } else {
                        None
                    };
                    let r =
                        b.trainable(&format!("{name}.r"), &mode.r_shape(d, k), mode.r_init(d, k))?;
                    let bias = b.trainable(&format!("{name}.bias"), &[k], bias_init)?;
                    FcLayer::Circulant(CirculantLinear::from_parts(d, k, mode, r, signs, bias)?)
                }
            };
            Layer::Fc {
                name: name.to_string(),
                fc,
            }
        }
    })
}
