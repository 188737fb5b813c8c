//! Parameter counts per layer and compression ratios.

/// Trainable parameters of one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerParams {
    pub name: String,
    /// `conv`, `batchnorm`, `dense`, `circulant` or `block:<b>`.
    pub kind: String,
    pub params: usize,
    /// Parameters of the same layer with a dense head (equal to `params` for non-FC layers).
    pub dense_equivalent: usize,
}

/// Per-layer parameter counts of a model, in forward order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamReport {
    pub layers: Vec<LayerParams>,
}

impl ParamReport {
    /// Trainable parameters of the whole model (sign vectors and running statistics excluded).
    pub fn total(&self) -> usize {
        self.layers.iter().map(|l| l.params).sum()
    }

    /// Trainable parameters of the same network with dense FC layers.
    pub fn dense_equivalent_total(&self) -> usize {
        self.layers.iter().map(|l| l.dense_equivalent).sum()
    }

    /// `dense_equivalent_total / total`.
    pub fn compression(&self) -> f64 {
        self.dense_equivalent_total() as f64 / self.total().max(1) as f64
    }

    /// Parameters of the layer called `name`.
    pub fn layer(&self, name: &str) -> Option<&LayerParams> {
        self.layers.iter().find(|l| l.name == name)
    }
}

impl std::fmt::Display for ParamReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<8} {:<12} {:>12} {:>12}",
            "layer", "kind", "params", "dense-eq"
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "{:<8} {:<12} {:>12} {:>12}",
                l.name, l.kind, l.params, l.dense_equivalent
            )?;
        }
        write!(
            f,
            "{:<8} {:<12} {:>12} {:>12}  (compression {:.2}x)",
            "total",
            "",
            self.total(),
            self.dense_equivalent_total(),
            self.compression()
        )
    }
}
