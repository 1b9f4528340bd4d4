//! Choosing the next token from logits, with the options of `GenerateRequest` and in the order of
//! the llama.cpp plugin's sampler chain: greedy when `temperature <= 0`; otherwise top-k (if
//! > 0), top-p (if < 1), min-p (if > 0), temperature, then a seeded draw.

use r1_plugin_sdk::GenerateRequest;
use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// A sampler for one generation.
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `request`. `request.seed` seeds the draw; without one the seed is random.
    pub fn new(request: &GenerateRequest) -> Sampler {
        let rng = match request.seed {
            Some(seed) => StdRng::seed_from_u64(u64::from(seed)),
            None => StdRng::from_os_rng(),
        };
        Sampler {
            temperature: request.temperature,
            top_k: usize::try_from(request.top_k.max(0)).unwrap_or(0),
            top_p: request.top_p,
            min_p: request.min_p,
            rng,
        }
    }

    /// The next token id from `logits` (one value per vocabulary entry, unnormalised). NaN
    /// logits are never chosen. Panics only if `logits` is empty.
    pub fn sample(&mut self, logits: &[f32]) -> usize {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        // Candidates, most likely first.
        let mut cand: Vec<(usize, f32)> = logits
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1);
        if self.top_k > 0 && self.top_k < cand.len() {
            cand.select_nth_unstable_by(self.top_k - 1, by_logit);
            cand.truncate(self.top_k);
        }
        cand.sort_unstable_by(by_logit);
        if self.top_p < 1.0 {
            let probs = softmax(cand.iter().map(|c| c.1), 1.0);
            let mut sum = 0.0;
            let mut keep = cand.len();
            for (i, p) in probs.iter().enumerate() {
                sum += p;
                if sum >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if self.min_p > 0.0 {
            // p_i / p_max = exp(l_i - l_max) >= min_p.
            let max = cand[0].1;
            let threshold = max + self.min_p.ln();
            cand.retain(|c| c.1 >= threshold);
        }
        let probs = softmax(cand.iter().map(|c| c.1), self.temperature);
        match WeightedIndex::new(&probs) {
            Ok(dist) => cand[dist.sample(&mut self.rng)].0,
            Err(_) => cand[0].0,
        }
    }
}

/// Index of the largest value (the first one on ties; NaN never wins unless all are NaN).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(temperature: f32, top_k: i32, top_p: f32, min_p: f32, seed: u32) -> GenerateRequest {
        GenerateRequest {
            prompt_tokens: vec![1],
            max_tokens: 1,
            temperature,
            top_p,
            top_k,
            min_p,
            seed: Some(seed),
            stop_tokens: vec![],
            ignore_eos: false,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(&request(0.0, 0, 1.0, 0.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, f32::NAN, 2.9]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_seed() {
        for seed in 0..20 {
            let mut s = Sampler::new(&request(1.5, 1, 1.0, 0.0, seed));
            assert_eq!(s.sample(&[0.0, 1.0, 0.9, -2.0]), 1);
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // exp(-10) relative probability is far below min_p 0.1: only index 0 and 1 remain.
        for seed in 0..50 {
            let mut s = Sampler::new(&request(1.0, 0, 1.0, 0.1, seed));
            let t = s.sample(&[5.0, 5.0, -5.0, -5.0]);
            assert!(t == 0 || t == 1, "{t}");
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        for seed in 0..50 {
            let mut s = Sampler::new(&request(1.0, 0, 0.5, 0.0, seed));
            assert_eq!(s.sample(&[10.0, 0.0, 0.0, 0.0]), 0);
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(&request(1.0, 0, 1.0, 0.0, seed));
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
