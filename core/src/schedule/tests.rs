use crate::command::Command;
use crate::ids::{NodeId, TeamId};
use crate::job::JobState;
use crate::plan::{PendingReason, PreemptionRule};
use crate::policy::{PlacementStrategy, PolicyConfig, QueueingStrategy};
use crate::schedule;
use crate::testkit::*;

const HOUR: u64 = 3_600_000;

fn high(team: &str, replicas: u32, count: u32) -> crate::job::JobSpec {
    let mut j = job(team, replicas, count);
    j.priority_class = Some("high".into());
    j
}

#[test]
fn the_minimum_run_time_protects_young_jobs() {
    let mut s = cluster(1, &[("vision", 8, None)]);
    submit(&mut s, job("vision", 1, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    submit(&mut s, high("vision", 1, 8), 1);
    let policy = PolicyConfig::default();
    assert!(schedule(&s, &policy, policy.min_runtime_ms - 1).decisions.preemptions.is_empty());
    let plan = schedule(&s, &policy, policy.min_runtime_ms);
    assert_eq!(plan.decisions.preemptions.len(), 1);
    assert_eq!(plan.decisions.preemptions[0].rule, PreemptionRule::WithinTeam);
}

#[test]
fn non_preemptible_jobs_are_never_victims() {
    let mut s = cluster(1, &[("vision", 16, None)]);
    let mut pinned = job("vision", 1, 8);
    pinned.preemptible = false;
    submit(&mut s, pinned, 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    submit(&mut s, high("vision", 1, 8), 1);
    let plan = schedule(&s, &PolicyConfig::default(), HOUR);
    assert!(plan.decisions.preemptions.is_empty());
    assert!(plan.reports[0].preemption.as_deref().unwrap().contains("no running job"));
}

#[test]
fn the_preemptor_waits_for_its_victims_and_no_more_are_taken() {
    let mut s = cluster(1, &[("vision", 8, None), ("nlp", 0, None)]);
    let borrowed = submit(&mut s, job("nlp", 1, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    let vision = submit(&mut s, job("vision", 1, 8), HOUR);
    let plan = cycle(&mut s, &PolicyConfig::default(), HOUR);
    assert_eq!(plan.decisions.preemptions[0].victim, borrowed);
    assert_eq!(state_of(&s, borrowed), JobState::Preempted);
    let plan = cycle(&mut s, &PolicyConfig::default(), HOUR + 1);
    assert!(plan.decisions.preemptions.is_empty());
    assert_eq!(plan.reports[0].reason, PendingReason::WaitingForRelease);
    s.apply(Command::JobFailed { job: borrowed, attempt: None, message: "SIGTERM".into(), at_ms: HOUR + 2 }).unwrap();
    assert_eq!(state_of(&s, borrowed), JobState::Pending);
    assert_eq!(s.job(borrowed).unwrap().failures, 0, "a preemption is not a failure");
    cycle(&mut s, &PolicyConfig::default(), HOUR + 3);
    assert_eq!(state_of(&s, vision), JobState::Running);
}

#[test]
fn reclaim_leaves_a_team_at_its_nominal() {
    let mut s = cluster(0, &[("vision", 8, None), ("nlp", 8, None)]);
    for i in 0..3 {
        s.apply(Command::RegisterNode { node: node(&format!("n{i}"), 4, None), at_ms: 0 }).unwrap();
    }
    let nlp: Vec<_> = (0..3).map(|_| submit(&mut s, job("nlp", 1, 4), 0)).collect();
    cycle(&mut s, &PolicyConfig::default(), 0);
    assert!(nlp.iter().all(|j| state_of(&s, *j) == JobState::Running));
    submit(&mut s, job("vision", 1, 4), HOUR);
    submit(&mut s, job("vision", 1, 4), HOUR);
    let plan = schedule(&s, &PolicyConfig::default(), HOUR);
    assert_eq!(plan.decisions.preemptions.len(), 1, "nlp holds 12 on a nominal of 8: one victim brings it to 8");
    assert!(plan.reports[1].preemption.is_some());
}

#[test]
fn a_team_within_nominal_is_not_preempted_by_another() {
    let mut s = cluster(1, &[("vision", 8, None), ("nlp", 8, None)]);
    submit(&mut s, job("nlp", 1, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    submit(&mut s, job("vision", 1, 8), HOUR);
    let plan = schedule(&s, &PolicyConfig::default(), HOUR);
    assert!(plan.decisions.preemptions.is_empty(), "the cluster is oversubscribed, nlp is within its nominal");
}

#[test]
fn nobody_preempts_in_order_to_borrow() {
    let mut s = cluster(1, &[("vision", 4, None), ("nlp", 4, None)]);
    submit(&mut s, job("nlp", 1, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    submit(&mut s, high("vision", 1, 8), HOUR);
    let plan = schedule(&s, &PolicyConfig::default(), HOUR);
    assert!(plan.decisions.preemptions.is_empty());
}

#[test]
fn disabled_rules_preempt_nothing() {
    let mut s = cluster(1, &[("vision", 8, None), ("nlp", 0, None)]);
    submit(&mut s, job("nlp", 1, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    submit(&mut s, job("vision", 1, 8), HOUR);
    let policy = PolicyConfig { reclaim: false, ..PolicyConfig::default() };
    assert!(schedule(&s, &policy, HOUR).decisions.preemptions.is_empty());
    assert_eq!(schedule(&s, &PolicyConfig::default(), HOUR).decisions.preemptions.len(), 1);
}

#[test]
fn strict_fifo_blocks_the_rest_of_the_team() {
    let mut s = cluster(1, &[("vision", 16, None)]);
    submit(&mut s, job("vision", 2, 8), 0);
    submit(&mut s, job("vision", 1, 1), 1);
    let strict = PolicyConfig { queueing: QueueingStrategy::StrictFifo, ..PolicyConfig::default() };
    let plan = schedule(&s, &strict, 10);
    assert!(plan.decisions.placements.is_empty());
    assert_eq!((plan.reports.len(), plan.stats.blocked), (1, 1), "the job behind the stuck one is blocked");
    assert_eq!(schedule(&s, &PolicyConfig::default(), 10).decisions.placements.len(), 1);
}

/// The check before a strict FIFO cycle builds its view skips the cycle only when the head
/// cannot fit the free devices of the flavors its team has quota for (`considered` is 0 then).
#[test]
fn a_strict_fifo_cycle_is_skipped_only_when_its_head_cannot_fit() {
    let mut s = cluster(1, &[("vision", 16, None)]);
    s.apply(Command::RegisterNode { node: node_of("l4-node", 8, L4, None), at_ms: 0 }).unwrap();
    let strict = PolicyConfig {
        queueing: QueueingStrategy::StrictFifo,
        order: crate::policy::QueueOrder::Fifo,
        reclaim: false,
        within_team_preemption: false,
        ..PolicyConfig::default()
    };
    submit(&mut s, job("vision", 1, 8), 0);
    cycle(&mut s, &strict, 1);
    let head = submit(&mut s, job("vision", 1, 4), 2);
    let plan = schedule(&s, &strict, 3);
    assert_eq!(plan.stats.considered, 0, "8 L4s free, but the team has no L4 quota and no H100 is free");
    assert!(plan.decisions.placements.is_empty());
    let mut spec = crate::testkit::team("vision", 16, None);
    spec.quotas.insert(l4(), crate::team::FlavorQuota { nominal: 8, borrowing_limit: None, lending_limit: None });
    s.apply(Command::SetTeam { team: spec }).unwrap();
    let plan = schedule(&s, &strict, 4);
    assert_eq!(plan.stats.considered, 1, "with L4 quota the cycle runs");
    assert_eq!(plan.decisions.placements[0].job, head);
    assert_eq!(plan.decisions.placements[0].assignment.flavor, l4());
}

#[test]
fn within_nominal_demand_goes_before_older_borrowing_demand() {
    let mut s = cluster(1, &[("vision", 4, None), ("nlp", 4, None)]);
    submit(&mut s, job("nlp", 1, 4), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    let borrow = submit(&mut s, job("nlp", 1, 4), 1);
    let within = submit(&mut s, job("vision", 1, 4), 2);
    let plan = schedule(&s, &PolicyConfig { max_placements_per_cycle: 1, ..PolicyConfig::default() }, 3);
    assert_eq!(plan.decisions.placements[0].job, within);
    assert_ne!(plan.decisions.placements[0].job, borrow);
    assert_eq!(plan.stats.placed, 1, "the cycle stops at its placement bound");
}

#[test]
fn bin_packing_fills_the_fullest_node_and_spread_the_emptiest() {
    let mut s = cluster(2, &[("vision", 16, None)]);
    submit(&mut s, job("vision", 1, 4), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    let busy = s.jobs().values().next().unwrap().assignment.as_ref().unwrap().replicas[0].node.clone();
    submit(&mut s, job("vision", 1, 2), 1);
    let packed = schedule(&s, &PolicyConfig::default(), 2);
    assert_eq!(packed.decisions.placements[0].assignment.replicas[0].node, busy);
    let spread = schedule(&s, &PolicyConfig { placement: PlacementStrategy::Spread, ..PolicyConfig::default() }, 2);
    assert_ne!(spread.decisions.placements[0].assignment.replicas[0].node, busy);
}

#[test]
fn a_replica_stays_inside_one_nvlink_group_when_it_can() {
    let mut s = cluster(1, &[("vision", 8, None)]);
    submit(&mut s, job("vision", 1, 1), 0);
    submit(&mut s, job("vision", 1, 4), 0);
    let plan = cycle(&mut s, &PolicyConfig::default(), 0);
    let four = &plan.decisions.placements[1].assignment.replicas[0].devices;
    let names: Vec<&str> = four.iter().map(|d| d.as_str()).collect();
    assert_eq!(names, ["n0-gpu4", "n0-gpu5", "n0-gpu6", "n0-gpu7"]);
}

#[test]
fn replicas_of_a_gang_prefer_one_rack() {
    let mut s = cluster(0, &[("llm", 64, None)]);
    for (name, rack) in [("a0", "ra"), ("b0", "rb"), ("a1", "ra"), ("b1", "rb"), ("b2", "rb")] {
        s.apply(Command::RegisterNode { node: node(name, 8, Some(rack)), at_ms: 0 }).unwrap();
    }
    submit(&mut s, job("llm", 3, 8), 0);
    let plan = schedule(&s, &PolicyConfig { candidate_nodes: 16, ..PolicyConfig::default() }, 0);
    let nodes: Vec<&str> = plan.decisions.placements[0].assignment.replicas.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["b0", "b1", "b2"]);
}

#[test]
fn identical_failing_jobs_are_answered_from_the_cycle_cache() {
    let mut s = cluster(1, &[("vision", 64, None)]);
    for _ in 0..5 {
        submit(&mut s, job("vision", 2, 8), 0);
    }
    let plan = schedule(&s, &PolicyConfig::default(), 0);
    assert_eq!(plan.stats.cache_hits, 4);
    assert_eq!(plan.reports.len(), 5);
    assert!(plan.reports.windows(2).all(|w| w[0].attempts == w[1].attempts));
}

#[test]
fn cordoned_and_lost_nodes_take_no_work() {
    let mut s = cluster(2, &[("vision", 16, None)]);
    s.apply(Command::Cordon { node: NodeId("n0".into()), cordoned: true }).unwrap();
    s.apply(Command::NodeLost { node: NodeId("n1".into()), at_ms: 0 }).unwrap();
    submit(&mut s, job("vision", 1, 1), 0);
    let plan = schedule(&s, &PolicyConfig::default(), 0);
    assert!(plan.decisions.placements.is_empty());
    let team = TeamId("vision".into());
    assert_eq!(plan.reports[0].team, team);
}

fn one_slot_two_teams() -> crate::state::State {
    cluster(1, &[("vision", 8, None), ("nlp", 8, None)])
}

#[test]
fn the_global_fifo_ignores_teams_and_priorities() {
    let mut s = one_slot_two_teams();
    let old = submit(&mut s, job("nlp", 1, 8), 1);
    submit(&mut s, high("vision", 1, 8), 2);
    let fifo = PolicyConfig { order: crate::policy::QueueOrder::Fifo, ..PolicyConfig::default() };
    assert_eq!(schedule(&s, &fifo, 3).decisions.placements[0].job, old);
}

#[test]
fn the_global_fifo_goes_in_the_order_the_log_took_the_jobs() {
    let mut s = one_slot_two_teams();
    let first = submit(&mut s, job("nlp", 1, 8), 10);
    submit(&mut s, job("vision", 1, 8), 5);
    let fifo = PolicyConfig { order: crate::policy::QueueOrder::Fifo, ..PolicyConfig::default() };
    assert_eq!(
        schedule(&s, &fifo, 11).decisions.placements[0].job,
        first,
        "a leader whose clock is behind does not put its submissions ahead"
    );
}

#[test]
fn shortest_first_orders_by_the_runtime_estimate() {
    let mut s = one_slot_two_teams();
    let mut long = job("nlp", 1, 8);
    long.runtime_estimate_ms = Some(10 * HOUR);
    let mut short = job("vision", 1, 8);
    short.runtime_estimate_ms = Some(HOUR);
    submit(&mut s, long, 1);
    let short = submit(&mut s, short, 2);
    let sjf = PolicyConfig { order: crate::policy::QueueOrder::ShortestFirst, ..PolicyConfig::default() };
    assert_eq!(schedule(&s, &sjf, 3).decisions.placements[0].job, short);
}

#[test]
fn a_strict_global_queue_blocks_every_team_behind_its_head() {
    let mut s = one_slot_two_teams();
    submit(&mut s, job("nlp", 2, 8), 1);
    submit(&mut s, job("vision", 1, 1), 2);
    let strict = PolicyConfig {
        order: crate::policy::QueueOrder::Fifo,
        queueing: QueueingStrategy::StrictFifo,
        ..PolicyConfig::default()
    };
    let plan = schedule(&s, &strict, 3);
    assert!(plan.decisions.placements.is_empty());
    assert_eq!(plan.stats.blocked, 1);
    let backfill = PolicyConfig { order: crate::policy::QueueOrder::Fifo, ..PolicyConfig::default() };
    assert_eq!(schedule(&s, &backfill, 3).decisions.placements.len(), 1, "best effort backfills the small job");
}

fn las() -> PolicyConfig {
    PolicyConfig { order: crate::policy::QueueOrder::LeastAttained, las_preemption: true, ..PolicyConfig::default() }
}

#[test]
fn least_attained_service_preempts_the_job_that_had_the_most() {
    let mut s = one_slot_two_teams();
    let old = submit(&mut s, job("nlp", 1, 8), 0);
    cycle(&mut s, &las(), 0);
    let fresh = submit(&mut s, job("nlp", 1, 8), 2 * HOUR);
    let plan = schedule(&s, &las(), 2 * HOUR);
    assert_eq!(plan.decisions.preemptions.len(), 1, "16 GPU-hours of service is level 2, the new job level 0");
    assert_eq!(plan.decisions.preemptions[0].victim, old);
    assert_eq!(plan.decisions.preemptions[0].preemptor, fresh);
    assert_eq!(plan.decisions.preemptions[0].rule, PreemptionRule::LeastAttained);
    let without = PolicyConfig { las_preemption: false, ..las() };
    assert!(schedule(&s, &without, 2 * HOUR).decisions.preemptions.is_empty());
}

#[test]
fn least_attained_service_serves_the_lowest_level_first() {
    let mut s = one_slot_two_teams();
    let served = submit(&mut s, job("nlp", 1, 8), 0);
    cycle(&mut s, &las(), 0);
    s.apply(Command::JobFailed { job: served, attempt: None, message: "exit 1".into(), at_ms: HOUR }).unwrap();
    assert_eq!(s.job(served).unwrap().attained_device_ms, 8 * HOUR);
    let fresh = submit(&mut s, job("vision", 1, 8), HOUR + 1);
    assert_eq!(schedule(&s, &las(), HOUR + 2).decisions.placements[0].job, fresh);
    let fifo = PolicyConfig { order: crate::policy::QueueOrder::Fifo, ..PolicyConfig::default() };
    assert_eq!(schedule(&s, &fifo, HOUR + 2).decisions.placements[0].job, served);
}

#[test]
fn without_devices_a_quiet_cycle_returns_early_and_an_explaining_one_says_why() {
    let mut s = cluster(0, &[("vision", 16, None)]);
    submit(&mut s, job("vision", 1, 1), 0);
    let quiet = schedule(&s, &PolicyConfig { explain: false, ..PolicyConfig::default() }, 0);
    assert_eq!((quiet.stats.pending, quiet.stats.blocked), (1, 1));
    assert!(quiet.decisions.is_empty() && quiet.reports.is_empty());
    let explained = schedule(&s, &PolicyConfig::default(), 0);
    assert_eq!(explained.reports.len(), 1);
}

#[test]
fn a_request_naming_no_model_takes_the_flavors_of_its_kind_in_flavor_order() {
    use crate::resource::{AcceleratorKind, Flavor};
    use crate::team::{FlavorQuota, TeamSpec};
    let tpu = Flavor::new(AcceleratorKind::Tpu, "tpu-v5e");
    let q = FlavorQuota { nominal: 8, borrowing_limit: None, lending_limit: None };
    let quotas = [(l4(), q), (tpu, q), (h100(), q)].into_iter().collect();
    let mut s = crate::state::State::new();
    s.apply(Command::SetTeam { team: TeamSpec { name: "vision".into(), weight_milli: 1000, quotas } }).unwrap();
    let mut tpus = node_of("t", 4, "tpu-v5e", None);
    for d in &mut tpus.devices {
        d.kind = AcceleratorKind::Tpu;
    }
    for n in [node_of("l", 4, L4, None), tpus, node("h", 4, None)] {
        s.apply(Command::RegisterNode { node: n, at_ms: 0 }).unwrap();
    }
    let mut tpu_job = job("vision", 1, 4);
    tpu_job.gang.devices.kind = AcceleratorKind::Tpu;
    let first = submit(&mut s, job("vision", 1, 4), 1);
    let on_tpu = submit(&mut s, tpu_job, 2);
    let second = submit(&mut s, job("vision", 1, 4), 3);
    let plan = schedule(&s, &PolicyConfig::default(), 4);
    let node_of_job = |id| {
        let p = plan.decisions.placements.iter().find(|p| p.job == id).expect("placed");
        p.assignment.replicas[0].node.as_str().to_owned()
    };
    assert_eq!(node_of_job(first), "h", "the H100 sorts before the L4");
    assert_eq!(node_of_job(on_tpu), "t");
    assert_eq!(node_of_job(second), "l", "GPUs only, once the H100s are taken");
}

#[test]
fn a_one_device_replica_shares_its_node_s_list_of_that_device_and_larger_ones_list_theirs() {
    let mut s = cluster(1, &[("vision", 8, None)]);
    let one = submit(&mut s, job("vision", 1, 1), 0);
    let three = submit(&mut s, job("vision", 1, 3), 0);
    let plan = schedule(&s, &PolicyConfig::default(), 0);
    let replica = |id| &plan.decisions.placements.iter().find(|p| p.job == id).unwrap().assignment.replicas[0];
    let layout = &s.allocs.at(0).layout;
    let single = &replica(one).devices;
    assert_eq!(single.len(), 1);
    let i = layout.device_index(&single[0]).unwrap();
    assert!(std::sync::Arc::ptr_eq(single, &layout.singles[i]), "the layout's own list, not a new one");
    let listed = &replica(three).devices;
    let positions: Vec<usize> = listed.iter().map(|d| layout.device_index(d).unwrap()).collect();
    assert_eq!(positions.len(), 3);
    assert!(positions.windows(2).all(|w| w[0] < w[1]) && !positions.contains(&i), "{positions:?}, single {i}");
}

#[test]
fn a_gang_finds_the_rack_that_holds_it_beyond_the_first_candidates() {
    let mut s = cluster(0, &[("llm", 96, None)]);
    let racks = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r10"];
    for (i, rack) in racks.iter().enumerate() {
        s.apply(Command::RegisterNode { node: node(&format!("n{i:02}"), 8, Some(rack)), at_ms: 0 }).unwrap();
    }
    let id = submit(&mut s, job("llm", 2, 8), 0);
    let plan = schedule(&s, &PolicyConfig::default(), 1);
    let placed = plan.decisions.placements.iter().find(|p| p.job == id).expect("the gang is placed");
    let nodes: Vec<&str> = placed.assignment.replicas.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["n10", "n11"], "rack r10 holds the whole gang, though its nodes come last");
}

#[test]
fn a_gang_that_requires_one_rack_waits_rather_than_split() {
    let mut s = cluster(0, &[("llm", 96, None)]);
    for (name, rack) in [("a2", "r2"), ("a3", "r2"), ("n0", "r0"), ("n1", "r1")] {
        s.apply(Command::RegisterNode { node: node(name, 8, Some(rack)), at_ms: 0 }).unwrap();
    }
    let required = PolicyConfig { rack_placement: crate::policy::RackPlacement::Required, ..PolicyConfig::default() };
    let busy = submit(&mut s, job("llm", 1, 8), 0);
    cycle(&mut s, &required, 0);
    assert_eq!(s.job(busy).unwrap().assignment.as_ref().unwrap().replicas[0].node.as_str(), "a2");
    let gang = submit(&mut s, job("llm", 2, 8), 1);
    let placed = |plan: &crate::plan::Plan| {
        let p = plan.decisions.placements.iter().find(|p| p.job == gang)?;
        Some(p.assignment.replicas.iter().map(|r| r.node.as_str().to_owned()).collect::<Vec<_>>())
    };
    let plan = schedule(&s, &required, 2);
    assert_eq!(placed(&plan), None, "rack r2 has one free node, r0 and r1 one each: the gang waits");
    let report = plan.reports.iter().find(|r| r.job == gang).unwrap();
    assert!(matches!(report.attempts[0].outcome, crate::plan::AttemptOutcome::NoFit(_)), "it fits rack r2 once free");
    assert_eq!(placed(&schedule(&s, &PolicyConfig::default(), 2)).unwrap().len(), 2, "preferred splits it");
    s.apply(Command::JobFinished { job: busy, attempt: None, at_ms: 3 }).unwrap();
    assert_eq!(placed(&schedule(&s, &required, 4)).unwrap(), ["a2", "a3"], "the one rack that holds it");
    let wide = submit(&mut s, job("llm", 3, 8), 5);
    let plan = schedule(&s, &required, 6);
    let report = plan.reports.iter().find(|r| r.job == wide).unwrap();
    assert!(matches!(report.attempts[0].outcome, crate::plan::AttemptOutcome::NeverFits(_)), "no rack holds 3 nodes");
}
