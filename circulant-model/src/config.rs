//! Model configuration: network choice, FC head choice, input preprocessing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Choice for one fully-connected layer: `dense`, `circulant` (the paper's layer) or
/// `block:<b>` (block-circulant with b x b blocks, b >= 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Head {
    Dense,
    Circulant,
    Block(usize),
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Head::Dense => write!(f, "dense"),
            Head::Circulant => write!(f, "circulant"),
            Head::Block(b) => write!(f, "block:{b}"),
        }
    }
}

impl FromStr for Head {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dense" => Ok(Head::Dense),
            "circulant" => Ok(Head::Circulant),
            _ => match s.strip_prefix("block:").map(str::parse::<usize>) {
                Some(Ok(b)) if b >= 1 => Ok(Head::Block(b)),
                _ => Err(Error::InvalidHead(s.to_string())),
            },
        }
    }
}

/// The available networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    MnistCnn,
    Mlp,
    CifarCnn,
    AlexNet,
}

impl Network {
    /// Every network, in a fixed order.
    pub const ALL: [Network; 4] = [
        Network::MnistCnn,
        Network::Mlp,
        Network::CifarCnn,
        Network::AlexNet,
    ];

    /// Names of the fully-connected layers, in forward order.
    pub fn fc_layers(&self) -> &'static [&'static str] {
        match self {
            Network::MnistCnn => &["fc1", "fc2"],
            Network::Mlp => &["fc1", "fc2", "fc3"],
            Network::CifarCnn => &["fc1", "fc2"],
            Network::AlexNet => &["fc6", "fc7", "fc8"],
        }
    }

    /// The input shape and normalisation the network is designed for.
    pub fn default_input(&self) -> InputSpec {
        match self {
            Network::MnistCnn | Network::Mlp => InputSpec {
                channels: 1,
                height: 28,
                width: 28,
                mean: vec![0.0],
                std: vec![1.0],
            },
            Network::CifarCnn => InputSpec {
                channels: 3,
                height: 32,
                width: 32,
                mean: vec![0.4914, 0.4822, 0.4465],
                std: vec![0.2470, 0.2435, 0.2616],
            },
            Network::AlexNet => InputSpec {
                channels: 3,
                height: 224,
                width: 224,
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
            },
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::MnistCnn => "mnist-cnn",
            Network::Mlp => "mlp",
            Network::CifarCnn => "cifar-cnn",
            Network::AlexNet => "alexnet",
        })
    }
}

impl FromStr for Network {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mnist-cnn" => Ok(Network::MnistCnn),
            "mlp" => Ok(Network::Mlp),
            "cifar-cnn" => Ok(Network::CifarCnn),
            "alexnet" => Ok(Network::AlexNet),
            _ => Err(Error::UnknownNetwork(s.to_string())),
        }
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_via_str!(Head);
serde_via_str!(Network);

/// Preprocessing that inference must apply: pixels scaled to [0, 1], then
/// `(p - mean[c]) / std[c]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

fn default_sign_flip() -> bool {
    true
}

/// Full model configuration; stored as JSON under the safetensors `__metadata__` key `config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub network: Network,
    /// One entry per FC layer name (see [`Network::fc_layers`]).
    pub heads: BTreeMap<String, Head>,
    pub num_classes: usize,
    /// Seed of the weight initialisation and of the fixed sign vectors.
    pub seed: u64,
    /// Multiply the input of every circulant layer by a fixed random ±1 vector.
    #[serde(default = "default_sign_flip")]
    pub sign_flip: bool,
    pub input: InputSpec,
}

impl ModelConfig {
    /// Same head for every FC layer, the network's default input spec, `sign_flip = true`.
    pub fn new(network: Network, head: Head, num_classes: usize, seed: u64) -> Self {
        let heads = network
            .fc_layers()
            .iter()
            .map(|name| (name.to_string(), head))
            .collect();
        Self {
            network,
            heads,
            num_classes,
            seed,
            sign_flip: true,
            input: network.default_input(),
        }
    }

    /// Sets the head of one FC layer (builder style).
    pub fn with_head(mut self, layer: &str, head: Head) -> Self {
        self.heads.insert(layer.to_string(), head);
        self
    }

    /// The head of an FC layer, an error if the layer has none.
    pub fn head(&self, layer: &str) -> Result<Head> {
        self.heads
            .get(layer)
            .copied()
            .ok_or_else(|| Error::InvalidConfig(format!("no head given for FC layer `{layer}`")))
    }

    /// Checks that the config describes a model this crate can build.
    pub fn validate(&self) -> Result<()> {
        let fc = self.network.fc_layers();
        for name in fc {
            self.head(name)?;
        }
        if let Some(extra) = self.heads.keys().find(|k| !fc.contains(&k.as_str())) {
            return Err(Error::InvalidConfig(format!(
                "`{extra}` is not an FC layer of {} (its FC layers are {fc:?})",
                self.network
            )));
        }
        if let Some((name, _)) = self.heads.iter().find(|(_, h)| **h == Head::Block(0)) {
            return Err(Error::InvalidConfig(format!(
                "block size of `{name}` must be >= 1"
            )));
        }
        if self.num_classes == 0 {
            return Err(Error::InvalidConfig("num_classes must be >= 1".into()));
        }
        let want = self.network.default_input();
        let inp = &self.input;
        if (inp.channels, inp.height, inp.width) != (want.channels, want.height, want.width) {
            return Err(Error::InvalidConfig(format!(
                "{} takes {}x{}x{} inputs, config says {}x{}x{}",
                self.network,
                want.channels,
                want.height,
                want.width,
                inp.channels,
                inp.height,
                inp.width
            )));
        }
        if inp.mean.len() != inp.channels || inp.std.len() != inp.channels {
            return Err(Error::InvalidConfig(format!(
                "input mean/std need {} values each, got {} and {}",
                inp.channels,
                inp.mean.len(),
                inp.std.len()
            )));
        }
        if inp.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || inp.mean.iter().any(|m| !m.is_finite())
        {
            return Err(Error::InvalidConfig(
                "input mean must be finite and std finite and > 0".into(),
            ));
        }
        Ok(())
    }

    /// Parses a config from its JSON form, with a clear error for an unknown network.
    pub fn from_json(json: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(json)?;
        match value.get("network") {
            Some(serde_json::Value::String(s)) => {
                s.parse::<Network>()?;
            }
            _ => {
                return Err(Error::InvalidConfig(
                    "config has no string field `network`".into(),
                ))
            }
        }
        Ok(serde_json::from_value(value)?)
    }

    /// The JSON form stored in checkpoints.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_strings_round_trip() {
        for h in [
            Head::Dense,
            Head::Circulant,
            Head::Block(1),
            Head::Block(64),
        ] {
            assert_eq!(h.to_string().parse::<Head>().unwrap(), h);
        }
        for bad in [
            "", "Dense", "block:", "block:0", "block:x", "block:-1", "circ",
        ] {
            assert!(bad.parse::<Head>().is_err(), "{bad}");
        }
    }

    #[test]
    fn network_strings_round_trip() {
        for n in Network::ALL {
            assert_eq!(n.to_string().parse::<Network>().unwrap(), n);
        }
        assert!(matches!(
            "resnet".parse::<Network>(),
            Err(Error::UnknownNetwork(_))
        ));
    }

    #[test]
    fn config_json_round_trip() {
        let cfg = ModelConfig::new(Network::CifarCnn, Head::Circulant, 10, 7)
            .with_head("fc2", Head::Block(16));
        let json = cfg.to_json().unwrap();
        assert!(json.contains("\"fc2\":\"block:16\""), "{json}");
        assert!(json.contains("\"network\":\"cifar-cnn\""), "{json}");
        assert_eq!(ModelConfig::from_json(&json).unwrap(), cfg);
        cfg.validate().unwrap();
    }

    #[test]
    fn config_errors() {
        let json = ModelConfig::new(Network::Mlp, Head::Dense, 10, 0)
            .to_json()
            .unwrap()
            .replace("\"mlp\"", "\"vgg\"");
        let err = ModelConfig::from_json(&json).unwrap_err();
        assert!(err.to_string().contains("unknown network `vgg`"), "{err}");

        let mut cfg = ModelConfig::new(Network::Mlp, Head::Dense, 10, 0);
        cfg.heads.remove("fc2");
        assert!(cfg.validate().unwrap_err().to_string().contains("fc2"));
        let cfg = ModelConfig::new(Network::Mlp, Head::Dense, 10, 0).with_head("fc9", Head::Dense);
        assert!(cfg.validate().unwrap_err().to_string().contains("fc9"));
        let mut cfg = ModelConfig::new(Network::Mlp, Head::Dense, 10, 0);
        cfg.input.height = 32;
        assert!(cfg.validate().is_err());
        assert!(ModelConfig::new(Network::Mlp, Head::Dense, 0, 0)
            .validate()
            .is_err());
    }

    #[test]
    fn sign_flip_defaults_to_true() {
        let cfg = ModelConfig::new(Network::Mlp, Head::Circulant, 10, 0);
        let json = cfg.to_json().unwrap().replace(",\"sign_flip\":true", "");
        assert!(!json.contains("sign_flip"));
        assert!(ModelConfig::from_json(&json).unwrap().sign_flip);
    }
}
