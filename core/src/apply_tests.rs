use crate::command::{Command, Effect};
use crate::error::ApplyError;
use crate::ids::{JobId, NodeId, TeamId};
use crate::job::{JobSpec, JobState, StopReason};
use crate::plan::{Decisions, Placement};
use crate::policy::PolicyConfig;
use crate::resource::Health;
use crate::state::State;
use crate::testkit::*;
use crate::verify::StaleReason;

fn one_node() -> State {
    cluster(1, &[("vision", 8, None)])
}

#[test]
fn submit_numbers_jobs_in_order_and_queues_them() {
    let mut s = one_node();
    let out = s.apply(Command::Submit { jobs: vec![job("vision", 1, 1), job("vision", 1, 2)], at_ms: 5 }).unwrap();
    assert_eq!(out.submitted, vec![JobId(1), JobId(2)]);
    assert_eq!(s.queue(&TeamId("vision".into())).collect::<Vec<_>>(), vec![JobId(1), JobId(2)]);
}

#[test]
fn a_bad_job_refuses_the_whole_batch_and_names_the_field() {
    let mut s = one_node();
    let mut bad = job("vision", 1, 1);
    bad.gang.replicas = 0;
    let before = s.hash();
    let err = s.apply(Command::Submit { jobs: vec![job("vision", 1, 1), bad], at_ms: 0 }).unwrap_err();
    match err {
        ApplyError::Invalid(f) => assert_eq!(f.field, "jobs[1].gang.replicas"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.hash(), before, "nothing of a refused batch is kept");
    assert_eq!(
        s.apply(Command::Submit { jobs: vec![job("vision", 1, 1)], at_ms: 0 }).unwrap().submitted,
        vec![JobId(1)]
    );
}

#[test]
fn a_team_name_is_checked_unless_the_team_was_set_and_other_fields_are_checked_either_way() {
    let mut s = one_node();
    let field = |s: &mut State, spec: JobSpec| match s.apply(Command::Submit { jobs: vec![spec], at_ms: 0 }) {
        Err(ApplyError::Invalid(f)) => f.field,
        Err(ApplyError::UnknownTeam { field, .. }) => format!("unknown {field}"),
        other => panic!("unexpected {other:?}"),
    };
    let mut bad = job("vision", 1, 1);
    bad.team = TeamId("vi\u{7}sion".into());
    assert_eq!(field(&mut s, bad), "jobs[0].team", "an unset team's bad name");
    assert_eq!(field(&mut s, job("nobody", 1, 1)), "unknown jobs[0].team");
    let mut bad = job("vision", 1, 1);
    bad.name = " ".into();
    assert_eq!(field(&mut s, bad), "jobs[0].name", "a set team's job still has its own name checked");
    let mut bad = job("vision", 1, 1);
    bad.gang.devices.count = 0;
    assert_eq!(field(&mut s, bad), "jobs[0].gang.devices.count");
}

#[test]
fn apply_into_reuses_one_outcome_and_empties_it_on_error() {
    let (mut a, mut b) = (one_node(), one_node());
    let mut out = crate::command::Outcome::default();
    let commands = [
        Command::Submit { jobs: vec![job("vision", 1, 4)], at_ms: 0 },
        Command::Submit { jobs: vec![job("vision", 1, 2), job("vision", 1, 2)], at_ms: 1 },
    ];
    for c in commands {
        let expected = a.apply(c.clone()).unwrap();
        b.apply_into(c, &mut out).unwrap();
        assert_eq!(out, expected, "the same outcome, nothing left from the command before");
    }
    let plan = crate::schedule(&b, &PolicyConfig::default(), 2);
    b.apply_into(Command::ApplyPlan { decisions: plan.decisions, at_ms: 2 }, &mut out).unwrap();
    assert_eq!(out.effects.len(), 3, "three start orders");
    let err = b.apply_into(Command::Submit { jobs: vec![job("nobody", 1, 1)], at_ms: 3 }, &mut out);
    assert!(err.is_err());
    assert_eq!(out, crate::command::Outcome::default(), "a refused command leaves nothing behind");
}

#[test]
fn unknown_team_class_and_flavor_are_refused() {
    let mut s = one_node();
    let err = s.apply(Command::Submit { jobs: vec![job("nobody", 1, 1)], at_ms: 0 }).unwrap_err();
    assert!(matches!(err, ApplyError::UnknownTeam { ref field, .. } if field == "jobs[0].team"), "{err}");
    let mut j = job("vision", 1, 1);
    j.priority_class = Some("vip".into());
    let err = s.apply(Command::Submit { jobs: vec![j], at_ms: 0 }).unwrap_err();
    assert!(matches!(err, ApplyError::UnknownPriorityClass { .. }), "{err}");
    let mut j = job("vision", 1, 1);
    j.gang.devices.models = vec!["amd-mi300x".into()];
    let err = s.apply(Command::Submit { jobs: vec![j], at_ms: 0 }).unwrap_err();
    assert!(matches!(err, ApplyError::NoQuotaForRequest { .. }), "{err}");
    let text = err.to_string();
    let h100 = format!("gpu/{H100}");
    assert!(text.contains(&format!("its quota covers {h100}; the cluster has {h100} (8 devices)")), "{text}");
    let mut only_l4 = team("vision", 0, None);
    only_l4.quotas = std::collections::BTreeMap::from([(
        l4(),
        crate::team::FlavorQuota { nominal: 8, borrowing_limit: None, lending_limit: None },
    )]);
    s.apply(Command::SetTeam { team: only_l4 }).unwrap();
    let mut j = job("vision", 1, 1);
    j.gang.devices.models = vec![H100.into()];
    let err = s.apply(Command::Submit { jobs: vec![j], at_ms: 0 }).unwrap_err();
    assert!(matches!(err, ApplyError::NoQuotaForRequest { .. }), "quota moved to L4 by a later SetTeam: {err}");
    let mut j = job("vision", 1, 1);
    j.grace_ms = 7_200_000;
    let err = s.apply(Command::Submit { jobs: vec![j], at_ms: 0 }).unwrap_err();
    assert!(err.to_string().contains("jobs[0].grace_ms"), "{err}");
}

#[test]
fn a_job_runs_to_success_and_gives_its_devices_back() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 2, 2), 0);
    let plan = cycle(&mut s, &PolicyConfig::default(), 10);
    assert_eq!(plan.decisions.placements.len(), 1);
    assert_eq!(state_of(&s, id), JobState::Running);
    assert_eq!(s.usage(&TeamId("vision".into()), &h100()), 4);
    let out = s.apply(Command::JobFinished { job: id, attempt: None, at_ms: 99 }).unwrap();
    assert_eq!(out.changed, vec![(id, JobState::Succeeded)]);
    assert_eq!(s.usage(&TeamId("vision".into()), &h100()), 0);
    assert!(s.alloc(&NodeId("n0".into())).unwrap().holders.iter().all(Option::is_none));
    assert_eq!(s.job(id).unwrap().finished_ms, Some(99));
}

#[test]
fn a_failed_job_retries_until_its_limit() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 1, 1), 0);
    for attempt in 1..=3 {
        cycle(&mut s, &PolicyConfig::default(), attempt);
        assert_eq!(s.job(id).unwrap().attempt, attempt as u32);
        s.apply(Command::JobFailed { job: id, attempt: None, message: "exit 1".into(), at_ms: attempt }).unwrap();
    }
    assert_eq!(state_of(&s, id), JobState::Failed, "max_retries = 2: the third failure is final");
    assert_eq!(s.job(id).unwrap().message, "exit 1");
}

#[test]
fn cancel_of_a_running_job_waits_for_its_exit() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 1, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    let out = s.apply(Command::Cancel { job: id, at_ms: 5 }).unwrap();
    assert!(matches!(out.effects[..], [Effect::Stop { reason: StopReason::Cancelled, grace_ms: 30_000, .. }]));
    assert_eq!(state_of(&s, id), JobState::Stopping);
    assert_eq!(s.usage(&TeamId("vision".into()), &h100()), 8, "devices stay held until the process exits");
    s.apply(Command::JobFailed { job: id, attempt: None, message: "SIGTERM".into(), at_ms: 6 }).unwrap();
    assert_eq!(state_of(&s, id), JobState::Cancelled);
    let before = s.hash();
    let again = s.apply(Command::Cancel { job: id, at_ms: 7 }).unwrap();
    assert_eq!((again.effects.len(), again.changed.len()), (0, 0), "a second cancel does nothing");
    assert_eq!(s.hash(), before);
}

#[test]
fn a_job_that_ended_otherwise_cannot_be_cancelled() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 1, 1), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    s.apply(Command::JobFinished { job: id, attempt: None, at_ms: 2 }).unwrap();
    let before = s.hash();
    let err = s.apply(Command::Cancel { job: id, at_ms: 3 }).unwrap_err();
    assert!(matches!(err, ApplyError::WrongState { state: JobState::Succeeded, .. }), "{err:?}");
    assert_eq!(s.hash(), before);
}

#[test]
fn cancel_of_a_pending_job_removes_it_from_the_queue() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 1, 1), 0);
    s.apply(Command::Cancel { job: id, at_ms: 1 }).unwrap();
    assert_eq!(state_of(&s, id), JobState::Cancelled);
    assert_eq!(s.pending_count(), 0);
    let before = s.hash();
    assert!(s.apply(Command::Cancel { job: id, at_ms: 2 }).unwrap().changed.is_empty(), "a second cancel does nothing");
    assert_eq!((s.hash(), s.job(id).unwrap().finished_ms), (before, Some(1)));
}

#[test]
fn a_lost_node_requeues_its_jobs_and_stops_their_other_replicas() {
    let mut s = cluster(2, &[("vision", 16, None)]);
    let gang = submit(&mut s, job("vision", 2, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    let out = s.apply(Command::NodeLost { node: NodeId("n0".into()), at_ms: 50 }).unwrap();
    assert_eq!(state_of(&s, gang), JobState::Stopping);
    assert!(
        matches!(&out.effects[..], [Effect::Stop { node, reason: StopReason::NodeLost, .. }] if node.as_str() == "n1")
    );
    s.apply(Command::JobFailed { job: gang, attempt: None, message: "killed".into(), at_ms: 60 }).unwrap();
    assert_eq!(state_of(&s, gang), JobState::Pending);
    assert_eq!(s.job(gang).unwrap().failures, 1);
    assert_eq!(s.capacity()[&h100()], 8, "the lost node's devices leave the capacity");
}

#[test]
fn a_device_turned_unhealthy_stops_its_gang_and_requeues_it_without_a_failure() {
    let mut s = cluster(2, &[("vision", 16, None)]);
    let gang = submit(&mut s, job("vision", 2, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    let mut sick = node("n0", 8, None);
    sick.devices[3].health = Health::Unhealthy;
    let out = s.apply(Command::RegisterNode { node: sick, at_ms: 50 }).unwrap();
    assert_eq!(state_of(&s, gang), JobState::Stopping);
    let stopped: Vec<&str> = out
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Stop { node, reason: StopReason::DeviceUnhealthy, .. } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(stopped, ["n0", "n1"], "every replica of the gang is told to stop");
    s.apply(Command::JobFinished { job: gang, attempt: None, at_ms: 60 }).unwrap();
    assert_eq!(state_of(&s, gang), JobState::Pending);
    assert_eq!(s.job(gang).unwrap().failures, 0, "the device failed, not the job");
    let plan = crate::schedule(&s, &PolicyConfig::default(), 70);
    assert!(plan.decisions.placements.is_empty(), "7 healthy devices on n0 cannot hold a replica of 8");
}

#[test]
fn a_job_on_a_single_lost_node_is_requeued_at_once() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 1, 4), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    s.apply(Command::NodeLost { node: NodeId("n0".into()), at_ms: 50 }).unwrap();
    assert_eq!(state_of(&s, id), JobState::Pending);
    assert_eq!(s.usage(&TeamId("vision".into()), &h100()), 0);
}

#[test]
fn drain_stops_jobs_and_requeues_them_without_a_failure() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 1, 4), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    s.apply(Command::Drain { node: NodeId("n0".into()) }).unwrap();
    assert_eq!(state_of(&s, id), JobState::Stopping);
    s.apply(Command::JobFinished { job: id, attempt: None, at_ms: 9 }).unwrap();
    assert_eq!(state_of(&s, id), JobState::Pending);
    assert_eq!(s.job(id).unwrap().failures, 0);
    assert!(s.capacity().get(&h100()).copied().unwrap_or(0) == 0, "a draining node offers nothing");
    s.apply(Command::Cordon { node: NodeId("n0".into()), cordoned: false }).unwrap();
    assert_eq!(s.capacity()[&h100()], 8);
}

#[test]
fn a_device_that_disappears_stops_and_requeues_its_job() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 1, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    let mut smaller = node("n0", 8, None);
    smaller.devices.pop();
    let out = s.apply(Command::RegisterNode { node: smaller, at_ms: 20 }).unwrap();
    assert!(
        matches!(&out.effects[..], [Effect::Stop { node, reason: StopReason::DeviceUnhealthy, .. }] if node.as_str() == "n0"),
        "its replicas are told to stop: {:?}",
        out.effects
    );
    assert_eq!(state_of(&s, id), JobState::Pending);
    assert_eq!(s.job(id).unwrap().failures, 1);
    assert_eq!(s.capacity()[&h100()], 7);
}

#[test]
fn re_registering_keeps_the_holders_of_devices_that_remain() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 1, 2), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    let before = s.alloc(&NodeId("n0".into())).unwrap().clone();
    s.apply(Command::RegisterNode { node: node("n0", 8, Some("r9")), at_ms: 20 }).unwrap();
    assert_eq!(state_of(&s, id), JobState::Running);
    let after = s.alloc(&NodeId("n0".into())).unwrap();
    assert_eq!((&after.holders, after.held, after.cpu_used), (&before.holders, before.held, before.cpu_used));
    assert_eq!(after.layout.rack.as_deref(), Some("r9"));
}

#[test]
fn a_job_past_its_maximum_runtime_is_stopped_and_fails() {
    let mut s = one_node();
    let mut spec = job("vision", 1, 1);
    spec.max_runtime_ms = Some(1000);
    let id = submit(&mut s, spec, 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    assert!(cycle(&mut s, &PolicyConfig::default(), 999).decisions.expired.is_empty());
    let plan = cycle(&mut s, &PolicyConfig::default(), 1000);
    assert_eq!(plan.decisions.expired, vec![id]);
    assert_eq!(state_of(&s, id), JobState::Stopping);
    s.apply(Command::JobFailed { job: id, attempt: None, message: "SIGKILL".into(), at_ms: 1100 }).unwrap();
    assert_eq!(state_of(&s, id), JobState::Failed);
}

#[test]
fn stale_placements_are_rejected_with_a_reason() {
    let mut s = one_node();
    let a = submit(&mut s, job("vision", 1, 8), 0);
    let b = submit(&mut s, job("vision", 1, 8), 0);
    let plan_a = crate::schedule(&s, &PolicyConfig::default(), 0);
    let stolen = Placement { job: b, assignment: plan_a.decisions.placements[0].assignment.clone() };
    s.apply(Command::ApplyPlan { decisions: plan_a.decisions.clone(), at_ms: 0 }).unwrap();
    let out = s
        .apply(Command::ApplyPlan {
            decisions: Decisions { placements: vec![stolen], ..Decisions::default() },
            at_ms: 1,
        })
        .unwrap();
    assert!(matches!(out.rejected[0].reason, StaleReason::DeviceTaken(..)), "{:?}", out.rejected);
    let out = s.apply(Command::ApplyPlan { decisions: plan_a.decisions, at_ms: 2 }).unwrap();
    assert_eq!(out.rejected[0].job, a);
    assert!(matches!(out.rejected[0].reason, StaleReason::WrongState(JobState::Starting)));
    assert_eq!(state_of(&s, b), JobState::Pending);
}

#[test]
fn a_plan_for_a_cancelled_job_is_rejected() {
    let mut s = one_node();
    let a = submit(&mut s, job("vision", 1, 8), 0);
    let plan = crate::schedule(&s, &PolicyConfig::default(), 0);
    s.apply(Command::Cancel { job: a, at_ms: 1 }).unwrap();
    let out = s.apply(Command::ApplyPlan { decisions: plan.decisions, at_ms: 2 }).unwrap();
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(s.usage(&TeamId("vision".into()), &h100()), 0);
}

#[test]
fn snapshots_round_trip_and_refuse_garbage() {
    let mut s = cluster(2, &[("vision", 8, None), ("nlp", 8, None)]);
    submit(&mut s, job("vision", 1, 8), 0);
    submit(&mut s, job("nlp", 2, 4), 0);
    submit(&mut s, job("nlp", 1, 4), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    let bytes = s.to_bytes();
    let back = State::from_bytes(&bytes).unwrap();
    assert!(back == s, "decoding gives back the same state, indexes included");
    assert_eq!(back.hash(), s.hash());
    assert_eq!(State::from_bytes(b"nope"), Err(crate::state::SnapshotError::BadMagic));
    let mut future = bytes.clone();
    future[4] = 99;
    assert!(matches!(State::from_bytes(&future), Err(crate::state::SnapshotError::UnsupportedVersion { found: 99 })));
    assert!(matches!(State::from_bytes(&bytes[..bytes.len() / 2]), Err(crate::state::SnapshotError::Corrupt(_))));
    let mut orphan = s.clone();
    orphan.data.teams.remove(&TeamId::from("nlp"));
    let err = State::from_bytes(&orphan.to_bytes()).unwrap_err();
    assert!(err.to_string().contains("job 2: its team \"nlp\" is not set"), "{err}");
}

#[test]
fn a_cut_encodes_the_state_as_it_was_when_taken() {
    let mut s = cluster(2, &[("vision", 8, None)]);
    submit(&mut s, job("vision", 1, 8), 0);
    let before = s.to_bytes();
    let cut = s.cut();
    cycle(&mut s, &PolicyConfig::default(), 1);
    submit(&mut s, job("vision", 1, 4), 2);
    s.apply(Command::Cordon { node: NodeId::from("n1"), cordoned: true }).unwrap();
    assert_ne!(s.to_bytes(), before, "the state moved on");
    assert_eq!(cut.to_bytes(), before);
    assert!(State::from_bytes(&cut.to_bytes()).unwrap().job(JobId(2)).is_none());
}

/// A cut made whole again (what the dashboard explains a cycle on, off the live state's
/// lock) is the state it was cut from: the same bytes, and the same plan.
#[test]
fn a_cut_turned_back_into_a_state_schedules_as_the_state_did() {
    let mut s = cluster(2, &[("vision", 8, None), ("audio", 4, Some(4))]);
    submit(&mut s, job("vision", 1, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 1);
    for (team, count) in [("audio", 4), ("vision", 8), ("audio", 8)] {
        submit(&mut s, job(team, 1, count), 2);
    }
    let copy = s.cut().into_state();
    assert_eq!(copy.to_bytes(), s.to_bytes());
    let policy = PolicyConfig { explain: true, ..PolicyConfig::default() };
    let (live, copied) = (crate::schedule(&s, &policy, 3), crate::schedule(&copy, &policy, 3));
    assert_eq!(copied.decisions, live.decisions);
    assert_eq!(copied.reports, live.reports);
}

#[test]
fn a_report_about_an_old_attempt_is_refused_and_changes_nothing() {
    let mut s = cluster(1, &[("vision", 8, None)]);
    let id = submit(&mut s, job("vision", 1, 8), 0);
    cycle(&mut s, &PolicyConfig::default(), 0);
    s.apply(Command::Drain { node: NodeId("n0".into()) }).unwrap();
    s.apply(Command::JobFinished { job: id, attempt: Some(1), at_ms: 5 }).unwrap();
    s.apply(Command::Cordon { node: NodeId("n0".into()), cordoned: false }).unwrap();
    cycle(&mut s, &PolicyConfig::default(), 6);
    assert_eq!(s.job(id).unwrap().attempt, 2);
    let before = s.hash();
    let late = s.apply(Command::JobFinished { job: id, attempt: Some(1), at_ms: 7 });
    assert!(matches!(late, Err(ApplyError::StaleAttempt { attempt: 1, current: 2, .. })), "{late:?}");
    assert_eq!(s.hash(), before);
    assert_eq!(state_of(&s, id), JobState::Running);
}

#[test]
fn the_job_table_lists_the_jobs_after_an_id() {
    let mut s = cluster(0, &[("vision", 8, None)]);
    for t in 0..3 {
        submit(&mut s, job("vision", 1, 1), t);
    }
    let ids = |after: u64| s.jobs().after(JobId(after)).map(|j| j.id.0).collect::<Vec<_>>();
    assert_eq!(ids(0), vec![1, 2, 3]);
    assert_eq!(ids(2), vec![3]);
    assert!(ids(3).is_empty() && ids(u64::MAX).is_empty());
}

/// A placement of `replicas` replicas of 4 devices each, all on the one node of `one_node`.
fn on_one_node(s: &State, job: JobId, replicas: usize) -> Placement {
    let (id, node) = s.nodes().iter().next().expect("one node");
    let replicas = (0..replicas)
        .map(|r| crate::job::ReplicaAssignment {
            node: id.clone(),
            devices: node.spec.devices[r * 4..r * 4 + 4].iter().map(|d| d.id.clone()).collect(),
            position: Default::default(),
        })
        .collect();
    Placement { job, assignment: crate::job::Assignment { flavor: h100(), replicas } }
}

#[test]
fn host_resources_are_summed_over_the_replicas_on_a_node() {
    let mut s = one_node();
    let mut spec = job("vision", 2, 4);
    spec.gang.cpu_millis = 40_000;
    let big = submit(&mut s, spec, 0);
    let mut spec = job("vision", 2, 4);
    spec.gang.cpu_millis = 30_000;
    let fits = submit(&mut s, spec, 0);
    let placements = vec![on_one_node(&s, big, 2)];
    let out = s.apply(Command::ApplyPlan { decisions: Decisions { placements, ..Decisions::default() }, at_ms: 1 });
    let out = out.unwrap();
    assert!(matches!(out.rejected[0].reason, StaleReason::HostResources(..)), "{:?}", out.rejected);
    assert_eq!(state_of(&s, big), JobState::Pending);
    let placements = vec![on_one_node(&s, fits, 2)];
    let out = s.apply(Command::ApplyPlan { decisions: Decisions { placements, ..Decisions::default() }, at_ms: 2 });
    assert!(out.unwrap().rejected.is_empty());
    assert_eq!(state_of(&s, fits), JobState::Starting);
}

#[test]
fn each_start_order_names_its_replica_s_devices_sharing_the_assignment_s_list() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 2, 4), 0);
    let placements = vec![on_one_node(&s, id, 2)];
    let out = s.apply(Command::ApplyPlan { decisions: Decisions { placements, ..Decisions::default() }, at_ms: 1 });
    let out = out.unwrap();
    let assigned = &s.job(id).unwrap().assignment.as_ref().unwrap().replicas;
    assert_eq!(out.effects.len(), 2);
    for e in &out.effects {
        let Effect::Start { job, replica, devices, .. } = e else { panic!("a start: {e:?}") };
        assert_eq!(*job, id);
        let own = &assigned[*replica as usize].devices;
        assert_eq!(devices.len(), 4);
        assert!(std::sync::Arc::ptr_eq(devices, own), "replica {replica}: the order shares the job's list");
    }
}

/// Applies one placement alone; returns why it was refused, if it was.
fn refusal(s: &mut State, p: Placement) -> Option<StaleReason> {
    let decisions = Decisions { placements: vec![p], ..Decisions::default() };
    s.apply(Command::ApplyPlan { decisions, at_ms: 1 }).unwrap().rejected.first().map(|r| r.reason.clone())
}

#[test]
fn a_placement_on_a_missing_unusable_or_doubly_used_device_is_refused() {
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 2, 4), 0);
    let node = s.nodes().keys().next().unwrap().clone();

    let mut p = on_one_node(&s, id, 2);
    std::sync::Arc::make_mut(&mut p.assignment.replicas[1].devices)[3] = "GPU-404".into();
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::WrongDevice(..))));

    let mut p = on_one_node(&s, id, 2);
    p.assignment.replicas[1].devices = p.assignment.replicas[0].devices.clone();
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::DeviceTaken(..))), "two replicas, one device");

    let mut p = on_one_node(&s, id, 2);
    p.assignment.replicas[0].node = NodeId("elsewhere".into());
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::UnknownNode(..))));

    let mut sick = s.nodes()[&node].spec.clone();
    sick.devices[5].health = crate::resource::Health::Unhealthy;
    s.apply(Command::RegisterNode { node: sick, at_ms: 1 }).unwrap();
    let p = on_one_node(&s, id, 2);
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::DeviceUnhealthy(..))));

    s.apply(Command::Cordon { node: node.clone(), cordoned: true }).unwrap();
    let p = on_one_node(&s, id, 2);
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::NodeNotSchedulable(..))));
    assert_eq!(state_of(&s, id), JobState::Pending, "nothing refused was applied");
}

#[test]
fn a_one_replica_placement_is_checked_like_a_gang() {
    let mut s = one_node();
    let mut spec = job("vision", 1, 4);
    spec.gang.cpu_millis = 70_000;
    let greedy = submit(&mut s, spec, 0);
    let id = submit(&mut s, job("vision", 1, 4), 0);
    let p = on_one_node(&s, greedy, 1);
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::HostResources(..))));

    let mut p = on_one_node(&s, id, 1);
    let d = &p.assignment.replicas[0].devices;
    p.assignment.replicas[0].devices = d[..d.len() - 1].into();
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::WrongShape(..))));

    let mut p = on_one_node(&s, id, 1);
    std::sync::Arc::make_mut(&mut p.assignment.replicas[0].devices)[0] = "GPU-404".into();
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::WrongDevice(..))));

    let mut p = on_one_node(&s, id, 1);
    std::sync::Arc::make_mut(&mut p.assignment.replicas[0].devices)[1] = p.assignment.replicas[0].devices[0].clone();
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::DeviceTaken(..))), "one device twice");

    let mut p = on_one_node(&s, id, 1);
    p.assignment.replicas[0].node = NodeId("elsewhere".into());
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::UnknownNode(..))));
    assert_eq!((state_of(&s, greedy), state_of(&s, id)), (JobState::Pending, JobState::Pending));

    // As through Raft: the node named by a string of its own, and no position hint.
    let mut p = on_one_node(&s, id, 1);
    p.assignment.replicas[0].node = NodeId(p.assignment.replicas[0].node.as_str().into());
    assert_eq!(refusal(&mut s, p), None);
    assert_eq!(state_of(&s, id), JobState::Starting);
    let kept = &s.job(id).unwrap().assignment.as_ref().unwrap().replicas[0];
    let own = s.nodes().keys().next().unwrap();
    assert!(std::sync::Arc::ptr_eq(&kept.node.0, &own.0), "the job names the state's own node id");
    assert_eq!(kept.position.0, Some(0), "with the position verification found");
}

#[test]
fn a_placement_the_team_quota_no_longer_admits_is_refused() {
    use crate::team::FlavorQuota;
    let mut s = one_node();
    let id = submit(&mut s, job("vision", 1, 4), 0);
    let set = |s: &mut State, nominal, flavors: &[crate::resource::Flavor]| {
        let q = FlavorQuota { nominal, borrowing_limit: Some(0), lending_limit: None };
        let quotas = flavors.iter().map(|f| (f.clone(), q)).collect();
        let team = crate::team::TeamSpec { name: "vision".into(), weight_milli: 1000, quotas };
        s.apply(Command::SetTeam { team }).unwrap();
    };

    set(&mut s, 8, &[l4()]);
    let p = on_one_node(&s, id, 1);
    assert_eq!(refusal(&mut s, p), Some(StaleReason::FlavorNotAcceptable(h100())), "quota moved to another flavor");

    set(&mut s, 2, &[h100()]);
    let p = on_one_node(&s, id, 1);
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::Quota(..))), "4 devices over a nominal of 2, no borrowing");

    let mut p = on_one_node(&s, id, 1);
    p.assignment.flavor = crate::resource::Flavor::new(crate::resource::AcceleratorKind::Tpu, H100);
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::FlavorNotAcceptable(..))), "a flavor nobody has");

    set(&mut s, 8, &[h100(), l4()]);
    let mut l4_only = job("vision", 1, 4);
    l4_only.gang.devices.models = vec![L4.into()];
    let picky = submit(&mut s, l4_only, 1);
    let p = on_one_node(&s, picky, 1);
    assert_eq!(refusal(&mut s, p), Some(StaleReason::FlavorNotAcceptable(h100())), "the job asks for L4s only");

    let p = on_one_node(&s, id, 1);
    assert_eq!(refusal(&mut s, p), None);
    assert_eq!(state_of(&s, id), JobState::Starting);

    set(&mut s, 6, &[h100(), l4()]);
    let more = submit(&mut s, job("vision", 1, 4), 2);
    let mut p = on_one_node(&s, more, 2);
    p.assignment.replicas.remove(0);
    assert!(matches!(refusal(&mut s, p), Some(StaleReason::Quota(..))), "4 held and 4 more, over a nominal of 6");
}

#[test]
fn a_deleted_priority_class_refuses_new_jobs_and_leaves_queued_ones_their_priority() {
    let mut s = one_node();
    let mut high = job("vision", 1, 1);
    high.priority_class = Some("high".into());
    let queued = submit(&mut s, high.clone(), 0);
    let before = s.hash();
    let err = s.apply(Command::DeletePriorityClass { name: "vip".into() }).unwrap_err();
    assert!(matches!(err, ApplyError::UnknownPriorityClass { ref field, .. } if field == "name"), "{err}");
    assert_eq!(s.hash(), before, "a refused delete changes nothing");
    s.apply(Command::DeletePriorityClass { name: "high".into() }).unwrap();
    assert!(!s.priority_classes().contains_key("high"));
    assert_eq!(s.job(queued).unwrap().priority, 100, "a queued job keeps the priority it was given");
    let err = s.apply(Command::Submit { jobs: vec![high], at_ms: 1 }).unwrap_err();
    assert!(matches!(err, ApplyError::UnknownPriorityClass { .. }), "{err}");
}
