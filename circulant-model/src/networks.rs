//! Layer-by-layer descriptions of the available networks.

use crate::config::Network;

/// One step of a network's forward pass.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LayerSpec {
    /// `name.weight (c_out, c_in, k, k)`, `name.bias (c_out)`.
    Conv {
        name: &'static str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    },
    /// `name.{weight,bias,running_mean,running_var} (c)`.
    BatchNorm {
        name: &'static str,
        c: usize,
    },
    MaxPool {
        k: usize,
        stride: usize,
    },
    Relu,
    Dropout {
        p: f32,
    },
    Flatten,
    /// A fully-connected layer `d -> k` whose kind is chosen by the config's head.
    Fc {
        name: &'static str,
        d: usize,
        k: usize,
    },
}

fn conv(name: &'static str, c_in: usize, c_out: usize, k: usize) -> LayerSpec {
    LayerSpec::Conv {
        name,
        c_in,
        c_out,
        k,
        stride: 1,
        padding: 0,
    }
}

fn conv3(name: &'static str, c_in: usize, c_out: usize) -> LayerSpec {
    LayerSpec::Conv {
        name,
        c_in,
        c_out,
        k: 3,
        stride: 1,
        padding: 1,
    }
}

fn fc(name: &'static str, d: usize, k: usize) -> LayerSpec {
    LayerSpec::Fc { name, d, k }
}

fn bn(name: &'static str, c: usize) -> LayerSpec {
    LayerSpec::BatchNorm { name, c }
}

const POOL2: LayerSpec = LayerSpec::MaxPool { k: 2, stride: 2 };
const POOL3S2: LayerSpec = LayerSpec::MaxPool { k: 3, stride: 2 };
const DROP: LayerSpec = LayerSpec::Dropout { p: 0.5 };

/// The layers of `network` with `num_classes` outputs.
pub(crate) fn layer_specs(network: Network, num_classes: usize) -> Vec<LayerSpec> {
    use LayerSpec::{Flatten, Relu};
    match network {
        // candle's mnist-training ConvNet shape plus ReLUs.
        Network::MnistCnn => vec![
            conv("conv1", 1, 32, 5), // 28 -> 24
            POOL2,                   // -> 12
            Relu,
            conv("conv2", 32, 64, 5), // -> 8
            POOL2,                    // -> 4
            Relu,
            Flatten, // 64 * 4 * 4 = 1024
            fc("fc1", 1024, 1024),
            Relu,
            DROP,
            fc("fc2", 1024, num_classes),
        ],
        Network::Mlp => vec![
            Flatten,
            fc("fc1", 784, 1024),
            Relu,
            DROP,
            fc("fc2", 1024, 1024),
            Relu,
            DROP,
            fc("fc3", 1024, num_classes),
        ],
        // Small VGG-style conv stack; the two FC layers hold > 95% of the dense parameters.
        Network::CifarCnn => vec![
            conv3("conv1", 3, 64),
            bn("bn1", 64),
            Relu,
            conv3("conv2", 64, 64),
            bn("bn2", 64),
            Relu,
            POOL2, // 32 -> 16
            conv3("conv3", 64, 128),
            bn("bn3", 128),
            Relu,
            conv3("conv4", 128, 128),
            bn("bn4", 128),
            Relu,
            POOL2, // -> 8
            conv3("conv5", 128, 256),
            bn("bn5", 256),
            Relu,
            POOL2,   // -> 4
            Flatten, // 256 * 4 * 4 = 4096
            fc("fc1", 4096, 4096),
            Relu,
            DROP,
            fc("fc2", 4096, num_classes),
        ],
        // torchvision's AlexNet (224x224 input; the adaptive pool is the identity there).
        Network::AlexNet => vec![
            LayerSpec::Conv {
                name: "conv1",
                c_in: 3,
                c_out: 64,
                k: 11,
                stride: 4,
                padding: 2,
            }, // 224 -> 55
            Relu,
            POOL3S2, // -> 27
            LayerSpec::Conv {
                name: "conv2",
                c_in: 64,
                c_out: 192,
                k: 5,
                stride: 1,
                padding: 2,
            },
            Relu,
            POOL3S2, // -> 13
            conv3("conv3", 192, 384),
            Relu,
            conv3("conv4", 384, 256),
            Relu,
            conv3("conv5", 256, 256),
            Relu,
            POOL3S2, // -> 6
            Flatten, // 256 * 6 * 6 = 9216
            DROP,
            fc("fc6", 9216, 4096),
            Relu,
            DROP,
            fc("fc7", 4096, 4096),
            Relu,
            fc("fc8", 4096, num_classes),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fc_names_match_network_fc_layers() {
        for net in Network::ALL {
            let names: Vec<&str> = layer_specs(net, 10)
                .iter()
                .filter_map(|l| match l {
                    LayerSpec::Fc { name, .. } => Some(*name),
                    _ => None,
                })
                .collect();
            assert_eq!(names, net.fc_layers(), "{net}");
        }
    }
}
