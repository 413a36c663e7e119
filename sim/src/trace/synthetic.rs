//! A seeded synthetic workload: Poisson or bursty arrivals, log-normal or empirical durations,
//! a distribution of job sizes, and a per-team mix. Read from TOML (`--format synthetic`):
//!
//! ```toml
//! jobs = 5000
//! arrival = { kind = "poisson", per_hour = 120.0 }      # or { kind = "bursty", per_hour = 120.0, burst_factor = 10.0, burst_fraction = 0.2 }
//! duration = { kind = "lognormal", median_s = 1800.0, sigma = 1.5 }   # or { kind = "empirical", seconds = [60, 600, 3600] }
//! gpus = [[1, 0.7], [2, 0.1], [4, 0.1], [8, 0.1]]          # (GPUs, weight)
//! teams = [["vision", 2.0], ["nlp", 1.0]]                  # (team, weight)
//! ```
//!
//! The seed comes from `--seed`; each part draws from its own sub-seed, so changing the size mix
//! does not move the arrival times.

use super::TraceJob;
use qm_core::TeamId;
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Exp, LogNormal};
use serde::Deserialize;

/// Arrival process.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Arrival {
    /// Exponential inter-arrival times.
    Poisson {
        /// Mean arrivals per hour.
        per_hour: f64,
    },
    /// A share of inter-arrivals come `burst_factor` times faster.
    Bursty {
        /// Mean arrivals per hour outside bursts.
        per_hour: f64,
        /// How much faster arrivals come in a burst.
        burst_factor: f64,
        /// Share of arrivals that are part of a burst.
        burst_fraction: f64,
    },
}

/// Duration distribution.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Durations {
    /// Log-normal around a median.
    LogNormal {
        /// Median duration.
        median_s: f64,
        /// Standard deviation of the logarithm.
        sigma: f64,
    },
    /// Drawn uniformly from observed durations.
    Empirical {
        /// The durations.
        seconds: Vec<u64>,
    },
}

/// A synthetic workload.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Synthetic {
    /// Number of jobs.
    pub jobs: usize,
    /// Arrivals.
    pub arrival: Arrival,
    /// Durations.
    pub duration: Durations,
    /// (GPUs, weight) pairs.
    pub gpus: Vec<(u32, f64)>,
    /// (team, weight) pairs.
    pub teams: Vec<(String, f64)>,
}

/// A sub-seed for one part of a run, derived from the run's seed.
pub fn subseed(seed: u64, part: u64) -> u64 {
    (seed ^ part.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9).rotate_left(31)
}

fn invalid(field: &str, reason: &str) -> String {
    format!("{field}: {reason}")
}

impl Synthetic {
    /// Checks the parameters, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        match self.arrival {
            Arrival::Poisson { per_hour } if !positive(per_hour) => {
                return Err(invalid("arrival.per_hour", "must be > 0"))
            }
            Arrival::Bursty { per_hour, burst_factor, burst_fraction }
                if !positive(per_hour)
                    || burst_factor.is_nan()
                    || burst_factor < 1.0
                    || !(0.0..=1.0).contains(&burst_fraction) =>
            {
                return Err(invalid("arrival", "per_hour > 0, burst_factor >= 1, burst_fraction in [0, 1]"));
            }
            _ => {}
        }
        match &self.duration {
            Durations::LogNormal { median_s, sigma } if !positive(*median_s) || sigma.is_nan() || *sigma < 0.0 => {
                return Err(invalid("duration", "median_s > 0 and sigma >= 0"));
            }
            Durations::Empirical { seconds } if seconds.is_empty() => return Err(invalid("duration.seconds", "empty")),
            _ => {}
        }
        if self.gpus.is_empty() || self.gpus.iter().any(|(g, w)| *g == 0 || !positive(*w)) {
            return Err(invalid("gpus", "needs (GPUs >= 1, weight > 0) pairs"));
        }
        if self.teams.is_empty() || self.teams.iter().any(|(t, w)| t.trim().is_empty() || !positive(*w)) {
            return Err(invalid("teams", "needs (name, weight > 0) pairs"));
        }
        Ok(())
    }

    /// Generates the jobs; the same seed gives the same jobs.
    pub fn generate(&self, seed: u64) -> Result<Vec<TraceJob>, String> {
        self.validate()?;
        let mut arrivals = StdRng::seed_from_u64(subseed(seed, 1));
        let mut durations = StdRng::seed_from_u64(subseed(seed, 2));
        let mut sizes = StdRng::seed_from_u64(subseed(seed, 3));
        let mut teams = StdRng::seed_from_u64(subseed(seed, 4));
        let size = WeightedIndex::new(self.gpus.iter().map(|g| g.1)).map_err(|e| invalid("gpus", &e.to_string()))?;
        let team = WeightedIndex::new(self.teams.iter().map(|t| t.1)).map_err(|e| invalid("teams", &e.to_string()))?;
        let mut now_s = 0.0f64;
        let ids: Vec<TeamId> = self.teams.iter().map(|(name, _)| name.as_str().into()).collect();
        let mut out = Vec::with_capacity(self.jobs);
        for i in 0..self.jobs {
            if i > 0 {
                now_s += self.gap_s(&mut arrivals)?;
            }
            out.push(TraceJob {
                line: i + 1,
                submit_ms: (now_s * 1000.0) as u64,
                duration_ms: (self.duration_s(&mut durations)?.max(1.0) as u64) * 1000,
                gpus: self.gpus[size.sample(&mut sizes)].0,
                team: ids[team.sample(&mut teams)].clone(),
                estimate_ms: None,
            });
        }
        Ok(out)
    }

    fn gap_s(&self, rng: &mut StdRng) -> Result<f64, String> {
        let (per_hour, factor) = match self.arrival {
            Arrival::Poisson { per_hour } => (per_hour, 1.0),
            Arrival::Bursty { per_hour, burst_factor, burst_fraction } => {
                (per_hour, if rng.random_bool(burst_fraction) { burst_factor } else { 1.0 })
            }
        };
        let exp = Exp::new(per_hour * factor / 3600.0).map_err(|e| invalid("arrival", &e.to_string()))?;
        Ok(exp.sample(rng))
    }

    fn duration_s(&self, rng: &mut StdRng) -> Result<f64, String> {
        match &self.duration {
            Durations::LogNormal { median_s, sigma } => {
                let d = LogNormal::new(median_s.ln(), *sigma).map_err(|e| invalid("duration", &e.to_string()))?;
                Ok(d.sample(rng))
            }
            Durations::Empirical { seconds } => Ok(seconds[rng.random_range(0..seconds.len())] as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Synthetic {
        toml::from_str(
            r#"
            jobs = 500
            arrival = { kind = "bursty", per_hour = 60.0, burst_factor = 10.0, burst_fraction = 0.3 }
            duration = { kind = "lognormal", median_s = 600.0, sigma = 1.0 }
            gpus = [[1, 3.0], [8, 1.0]]
            teams = [["a", 1.0], ["b", 1.0]]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_jobs_and_another_seed_others() {
        let s = spec();
        assert_eq!(s.generate(7).unwrap(), s.generate(7).unwrap());
        assert_ne!(s.generate(7).unwrap(), s.generate(8).unwrap());
    }

    #[test]
    fn draws_follow_the_parameters() {
        let jobs = spec().generate(1).unwrap();
        let eights = jobs.iter().filter(|j| j.gpus == 8).count();
        assert!((90..160).contains(&eights), "about a quarter are 8-GPU jobs: {eights}");
        let mut d: Vec<u64> = jobs.iter().map(|j| j.duration_ms).collect();
        d.sort_unstable();
        let median = d[d.len() / 2];
        assert!((400_000..900_000).contains(&median), "median near 600 s: {median}");
        assert!(jobs.windows(2).all(|w| w[0].submit_ms <= w[1].submit_ms));
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let mut s = spec();
        s.gpus = vec![(0, 1.0)];
        assert!(s.generate(1).unwrap_err().starts_with("gpus"));
    }
}
