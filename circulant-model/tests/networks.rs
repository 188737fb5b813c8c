//! Output shapes and parameter counts of every network against hand-computed formulas.

use candle_core::{DType, Device, Tensor};
use circulant_model::{Head, Mode, Model, ModelConfig, Network};

fn conv(c_in: usize, c_out: usize, k: usize) -> usize {
    c_out * c_in * k * k + c_out
}

fn fc(d: usize, k: usize, head: Head) -> usize {
    match head {
        Head::Dense => d * k + k,
        Head::Circulant => d.max(k) + k,
        Head::Block(b) => k.div_ceil(b) * d.div_ceil(b) * b + k,
    }
}

/// (conv + batch-norm parameters, FC layer dims) of each network.
fn formula(net: Network, classes: usize) -> (usize, Vec<(usize, usize)>) {
    match net {
        Network::MnistCnn => (
            conv(1, 32, 5) + conv(32, 64, 5),
            vec![(1024, 1024), (1024, classes)],
        ),
        Network::Mlp => (0, vec![(784, 1024), (1024, 1024), (1024, classes)]),
        Network::CifarCnn => (
            conv(3, 64, 3)
                + conv(64, 64, 3)
                + conv(64, 128, 3)
                + conv(128, 128, 3)
                + conv(128, 256, 3)
                + 2 * (64 + 64 + 128 + 128 + 256),
            vec![(4096, 4096), (4096, classes)],
        ),
        Network::AlexNet => (
            conv(3, 64, 11)
                + conv(64, 192, 5)
                + conv(192, 384, 3)
                + conv(384, 256, 3)
                + conv(256, 256, 3),
            vec![(9216, 4096), (4096, 4096), (4096, classes)],
        ),
    }
}

fn expected_total(net: Network, classes: usize, head: Head) -> usize {
    let (base, fcs) = formula(net, classes);
    base + fcs.iter().map(|&(d, k)| fc(d, k, head)).sum::<usize>()
}

fn check_network(net: Network, classes: usize, heads: &[Head], batch: usize) {
    let dev = Device::Cpu;
    for &head in heads {
        let cfg = ModelConfig::new(net, head, classes, 3);
        let model = Model::new(cfg.clone(), &dev).unwrap();
        let report = model.param_report();
        assert_eq!(
            report.total(),
            expected_total(net, classes, head),
            "{net} {head}\n{report}"
        );
        assert_eq!(
            report.dense_equivalent_total(),
            expected_total(net, classes, Head::Dense),
            "{net} {head}"
        );
        let (_, fcs) = formula(net, classes);
        for (name, &(d, k)) in net.fc_layers().iter().zip(&fcs) {
            let l = report.layer(name).unwrap();
            assert_eq!(l.params, fc(d, k, head), "{net} {head} {name}");
            assert_eq!(l.kind, head.to_string());
        }
        // Trainable variables hold exactly the reported parameters.
        let n_trainable: usize = model.trainable().iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(n_trainable, report.total());
        println!("{net} {head}: {report}\n");

        let inp = &cfg.input;
        let x = Tensor::zeros(
            (batch, inp.channels, inp.height, inp.width),
            DType::F32,
            &dev,
        )
        .unwrap();
        let y = model.forward(&x, Mode::Eval).unwrap();
        assert_eq!(y.dims(), [batch, classes], "{net} {head}");
        let y = model.forward(&x, Mode::Train { dropout_seed: 1 }).unwrap();
        assert_eq!(y.dims(), [batch, classes], "{net} {head}");
        // Wrong input shape is a clear error, not a panic.
        let bad = Tensor::zeros(
            (batch, inp.channels, inp.height + 1, inp.width),
            DType::F32,
            &dev,
        )
        .unwrap();
        let err = model.forward(&bad, Mode::Eval).unwrap_err();
        assert!(err.to_string().contains("bad input shape"), "{err}");
    }
}

const HEADS: [Head; 3] = [Head::Dense, Head::Circulant, Head::Block(64)];

#[test]
fn mnist_cnn_shapes_and_counts() {
    check_network(Network::MnistCnn, 10, &HEADS, 2);
    // The issue's figures.
    let m = Model::new(
        ModelConfig::new(Network::MnistCnn, Head::Circulant, 10, 0),
        &Device::Cpu,
    )
    .unwrap();
    let r = m.param_report();
    assert_eq!(r.layer("fc2").unwrap().params, 1034);
    assert_eq!(r.layer("fc2").unwrap().dense_equivalent, 10250);
}

#[test]
fn mlp_shapes_and_counts() {
    check_network(Network::Mlp, 10, &HEADS, 2);
    check_network(Network::Mlp, 7, &[Head::Block(100)], 1);
}

#[test]
fn cifar_cnn_shapes_and_counts() {
    check_network(Network::CifarCnn, 10, &HEADS, 2);
    // The paper's setting: in the dense variant the FC layers hold > 90% of the parameters.
    let m = Model::new(
        ModelConfig::new(Network::CifarCnn, Head::Dense, 10, 0),
        &Device::Cpu,
    )
    .unwrap();
    let r = m.param_report();
    let fc: usize = ["fc1", "fc2"]
        .iter()
        .map(|n| r.layer(n).unwrap().params)
        .sum();
    assert!(fc as f64 > 0.9 * r.total() as f64, "{r}");
}

#[test]
fn alexnet_shapes_and_counts() {
    // torchvision's AlexNet has 61,100,840 parameters with 1000 classes.
    assert_eq!(
        expected_total(Network::AlexNet, 1000, Head::Dense),
        61_100_840
    );
    check_network(Network::AlexNet, 1000, &[Head::Dense, Head::Circulant], 1);
    let cfg =
        ModelConfig::new(Network::AlexNet, Head::Circulant, 1000, 0).with_head("fc8", Head::Dense);
    let m = Model::new(cfg, &Device::Cpu).unwrap();
    assert_eq!(
        m.param_count(),
        formula(Network::AlexNet, 1000).0
            + fc(9216, 4096, Head::Circulant)
            + fc(4096, 4096, Head::Circulant)
            + fc(4096, 1000, Head::Dense)
    );
    println!(
        "alexnet fc6/fc7 circulant, fc8 dense:\n{}",
        m.param_report()
    );
}

#[test]
fn tensor_names() {
    let dev = Device::Cpu;
    let m = Model::new(
        ModelConfig::new(Network::MnistCnn, Head::Circulant, 10, 0),
        &dev,
    )
    .unwrap();
    let names: Vec<String> = m.tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "conv1.bias",
            "conv1.weight",
            "conv2.bias",
            "conv2.weight",
            "fc1.bias",
            "fc1.r",
            "fc1.signs",
            "fc2.bias",
            "fc2.r",
            "fc2.signs"
        ]
    );
    let shapes: Vec<Vec<usize>> = m.tensors().iter().map(|(_, t)| t.dims().to_vec()).collect();
    assert_eq!(
        shapes,
        [
            vec![32],
            vec![32, 1, 5, 5],
            vec![64],
            vec![64, 32, 5, 5],
            vec![1024],
            vec![1024],
            vec![1024],
            vec![10],
            vec![1024],
            vec![1024]
        ]
    );
    // Signs are not trainable.
    let trainable: Vec<String> = m.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(!trainable.iter().any(|n| n.ends_with(".signs")));
    assert_eq!(trainable.len(), 8);

    // Without sign flip there is no signs tensor.
    let mut cfg = ModelConfig::new(Network::Mlp, Head::Block(32), 10, 0);
    cfg.sign_flip = false;
    let m = Model::new(cfg, &dev).unwrap();
    assert!(!m.tensors().iter().any(|(n, _)| n.ends_with(".signs")));
    let r: Vec<Vec<usize>> = m
        .tensors()
        .iter()
        .filter(|(n, _)| n.ends_with(".r"))
        .map(|(_, t)| t.dims().to_vec())
        .collect();
    assert_eq!(r, [vec![32, 25, 32], vec![32, 32, 32], vec![1, 32, 32]]);

    // Dense and batch-norm names of cifar-cnn.
    let m = Model::new(
        ModelConfig::new(Network::CifarCnn, Head::Dense, 10, 0),
        &dev,
    )
    .unwrap();
    let names: Vec<String> = m.tensors().into_iter().map(|(n, _)| n).collect();
    for n in [
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn5.running_var",
        "conv5.weight",
        "fc1.weight",
        "fc2.bias",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    let trainable: Vec<String> = m.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(!trainable.iter().any(|n| n.contains("running")));
    assert_eq!(names.len(), trainable.len() + 10);
}

#[test]
fn init_is_deterministic_from_seed() {
    let dev = Device::Cpu;
    let cfg = ModelConfig::new(Network::Mlp, Head::Circulant, 10, 11);
    let a = Model::new(cfg.clone(), &dev).unwrap();
    let b = Model::new(cfg.clone(), &dev).unwrap();
    let c = Model::new(ModelConfig { seed: 12, ..cfg }, &dev).unwrap();
    for (((na, ta), (_, tb)), (_, tc)) in a.tensors().iter().zip(b.tensors()).zip(c.tensors()) {
        let (va, vb, vc) = (
            ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            tb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            tc.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(va, vb, "{na}");
        assert_ne!(va, vc, "{na}");
    }
}

#[test]
fn model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Model>();
}

#[test]
fn dropout_follows_the_seed() {
    let dev = Device::Cpu;
    let m = Model::new(ModelConfig::new(Network::Mlp, Head::Circulant, 10, 0), &dev).unwrap();
    let x = Tensor::ones((4, 1, 28, 28), DType::F32, &dev).unwrap();
    let run = |mode| {
        m.forward(&x, mode)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let a = run(Mode::Train { dropout_seed: 1 });
    assert_eq!(a, run(Mode::Train { dropout_seed: 1 }));
    assert_ne!(a, run(Mode::Train { dropout_seed: 2 }));
    assert_ne!(a, run(Mode::Eval));
    assert_eq!(run(Mode::Eval), run(Mode::Eval));
}
