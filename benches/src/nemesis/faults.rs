//! The nemesis: from a seed, one fault at a time (a replica killed or paused, the leader or a
//! follower, or every replica killed at once), held for a while and then healed, with quiet
//! spells between faults in which the cluster must make progress.

use super::clients::channel;
use super::procs::{Life, Procs};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::ClusterStatusRequest;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The faults, each with its weight in a hundred draws.
const FAULTS: [(Fault, u32); 5] = [
    (Fault::KillLeader, 30),
    (Fault::KillFollower, 15),
    (Fault::PauseLeader, 25),
    (Fault::PauseFollower, 15),
    (Fault::KillAll, 15),
];

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL to the leader, restarted on its data directory when healed.
    KillLeader,
    /// SIGKILL to a follower.
    KillFollower,
    /// SIGSTOP to the leader, SIGCONT when healed.
    PauseLeader,
    /// SIGSTOP to a follower.
    PauseFollower,
    /// SIGKILL to every replica at once (a power cut), all restarted when healed.
    KillAll,
}

impl Fault {
    /// Itself, if it could not be injected for want of a leader (to be tried again).
    fn needs_a_leader(self) -> Option<Fault> {
        matches!(self, Fault::KillLeader | Fault::PauseLeader).then_some(self)
    }

    /// Its name in the figures.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill_leader",
            Fault::KillFollower => "kill_follower",
            Fault::PauseLeader => "pause_leader",
            Fault::PauseFollower => "pause_follower",
            Fault::KillAll => "kill_all",
        }
    }
}

/// The leader as a running replica reports it, if one answers within a short wait.
async fn leader(procs: &Procs) -> Option<u64> {
    for id in procs.ids().filter(|&id| procs.life(id) == Life::Up) {
        if let Some(ch) = channel(&procs.endpoint(id)).await {
            if let Ok(s) = AdminServiceClient::new(ch).cluster_status(ClusterStatusRequest {}).await {
                let lead = s.into_inner().leader_id;
                if lead != 0 && procs.life(lead) == Life::Up {
                    return Some(lead);
                }
            }
        }
    }
    None
}

fn draw(rng: &mut StdRng) -> Fault {
    let mut roll = rng.random_range(0..FAULTS.iter().map(|(_, w)| w).sum::<u32>());
    for (fault, weight) in FAULTS {
        if roll < weight {
            return fault;
        }
        roll -= weight;
    }
    unreachable!("the roll is below the sum of the weights")
}

/// Injects faults until `stop` has passed and every kind has been injected at least once (the
/// first kinds are a shuffle of all of them, the rest are drawn by weight); returns how many
/// of each, and a line per fault.
pub async fn nemesis(
    procs: &mut Procs,
    seed: u64,
    stop: Instant,
) -> std::io::Result<(BTreeMap<Fault, u32>, Vec<String>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut counts, mut log) = (BTreeMap::new(), Vec::new());
    let mut first: Vec<Fault> = FAULTS.iter().map(|(f, _)| *f).collect();
    first.shuffle(&mut rng);
    let begin = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1_500))).await;
        if Instant::now() >= stop && counts.len() == FAULTS.len() {
            return Ok((counts, log));
        }
        let fault = first.pop().unwrap_or_else(|| draw(&mut rng));
        let hold = Duration::from_millis(rng.random_range(300..3_000));
        let lead = leader(procs).await;
        let ids: Vec<u64> = procs.ids().collect();
        let follower = ids.iter().copied().filter(|&id| Some(id) != lead).nth(rng.random_range(0..ids.len() - 1));
        let targets: Vec<u64> = match fault {
            Fault::KillLeader | Fault::PauseLeader => lead.into_iter().collect(),
            Fault::KillFollower | Fault::PauseFollower => follower.into_iter().collect(),
            Fault::KillAll => ids.clone(),
        };
        if targets.is_empty() {
            first.extend(fault.needs_a_leader());
            continue;
        }
        for &id in &targets {
            match fault {
                Fault::PauseLeader | Fault::PauseFollower => procs.pause(id),
                Fault::KillLeader | Fault::KillFollower | Fault::KillAll => procs.kill(id),
            }
        }
        let at = begin.elapsed().as_secs_f64();
        log.push(format!("{at:7.2} s  {} {targets:?} for {} ms", fault.name(), hold.as_millis()));
        *counts.entry(fault).or_insert(0) += 1;
        tokio::time::sleep(hold).await;
        procs.heal()?;
    }
}
