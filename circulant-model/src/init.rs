//! Seeded host-side initialisation (candle's CPU RNG cannot be seeded).

use rand::distr::{Distribution, Uniform};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a tensor is filled at construction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in `[-bound, bound)`.
    Uniform(f32),
    /// Every element equal to the value.
    Const(f32),
    /// Independent ±1 with probability 1/2 each.
    Signs,
}

impl Init {
    /// The uniform init of a dense layer with `fan_in` inputs (PyTorch's default for
    /// `nn.Linear`/`nn.Conv2d`): bound `1/sqrt(fan_in)`.
    pub fn fan_in(fan_in: usize) -> Self {
        Init::Uniform(1.0 / (fan_in.max(1) as f32).sqrt())
    }

    /// Draws `len` values.
    pub fn sample<R: Rng + ?Sized>(&self, len: usize, rng: &mut R) -> Vec<f32> {
        match *self {
            Init::Const(v) => vec![v; len],
            Init::Uniform(bound) => match Uniform::new(-bound, bound) {
                Ok(dist) => (0..len).map(|_| dist.sample(rng)).collect(),
                // bound == 0 (or not finite): nothing to draw.
                Err(_) => vec![0.0; len],
            },
            Init::Signs => {
                let mut out = Vec::with_capacity(len);
                while out.len() < len {
                    let bits: u64 = rng.random();
                    let take = (len - out.len()).min(64);
                    out.extend((0..take).map(|i| if (bits >> i) & 1 == 1 { 1.0 } else { -1.0 }));
                }
                out
            }
        }
    }
}

/// FNV-1a hash of a string (stable across platforms and Rust versions).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's increment (2^64 / φ).
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 finaliser, used to decorrelate derived seeds: `mix(seed + i * GOLDEN)` is
/// SplitMix64's output `i` from state `seed`.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The RNG of one named tensor: a function of `(seed, name)` only, so every tensor's initial
/// value is independent of construction order.
pub fn rng_for(seed: u64, name: &str) -> StdRng {
    StdRng::seed_from_u64(mix(seed ^ mix(fnv1a(name))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        let a = Init::Uniform(0.5).sample(100, &mut rng_for(1, "fc1.r"));
        let b = Init::Uniform(0.5).sample(100, &mut rng_for(1, "fc1.r"));
        let c = Init::Uniform(0.5).sample(100, &mut rng_for(1, "fc2.r"));
        let d = Init::Uniform(0.5).sample(100, &mut rng_for(2, "fc1.r"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
    }

    #[test]
    fn signs_are_balanced() {
        let s = Init::Signs.sample(10_001, &mut rng_for(0, "x"));
        assert_eq!(s.len(), 10_001);
        assert!(s.iter().all(|v| *v == 1.0 || *v == -1.0));
        let pos = s.iter().filter(|v| **v > 0.0).count();
        assert!((4700..5300).contains(&pos), "{pos}");
    }
}
