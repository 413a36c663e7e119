use super::*;
use crate::command::Command;
use crate::policy::PolicyConfig;
use crate::testkit::{cluster, cycle, job, submit};

const MINUTE: u64 = 60_000;

fn requeue(warn_ms: u64) -> IdlePolicy {
    IdlePolicy { after_ms: 30 * MINUTE, action: IdleAction::Requeue { warn_ms } }
}

/// A cluster with one running job of team `vision`; its id.
fn running() -> (State, JobId) {
    let mut s = cluster(1, &[("vision", 8, None)]);
    let id = submit(&mut s, job("vision", 1, 2), 0);
    cycle(&mut s, &PolicyConfig::default(), 10);
    assert_eq!(s.job(id).unwrap().state, JobState::Running);
    (s, id)
}

#[test]
fn a_policy_needs_a_known_team_and_a_second_at_least() {
    let (mut s, _) = running();
    let unknown = Command::SetIdlePolicy { team: "audio".into(), policy: Some(requeue(0)) };
    assert_eq!(s.apply(unknown).unwrap_err().to_string(), "team: unknown team \"audio\"");
    let hasty = IdlePolicy { after_ms: 500, action: IdleAction::Report };
    let err = s.apply(Command::SetIdlePolicy { team: "vision".into(), policy: Some(hasty) }).unwrap_err();
    assert_eq!(err.to_string(), "invalid idle.after: at least 1 s");
    assert!(s.idle_policy(&"vision".into()).is_none(), "nothing changed");
}

#[test]
fn a_flag_is_an_event_and_clears_when_busy_or_when_the_attempt_ends() {
    let (mut s, id) = running();
    let out = s.apply(Command::MarkIdle { job: id, attempt: 1, since_ms: Some(100) }).unwrap();
    assert_eq!(out.changed, vec![(id, JobState::Running)], "watchers hear of it");
    assert_eq!(s.job(id).unwrap().idle_since_ms, Some(100));
    assert!(s.job(id).unwrap().message.starts_with("idle:"));
    let again = s.apply(Command::MarkIdle { job: id, attempt: 1, since_ms: Some(100) }).unwrap();
    assert!(again.changed.is_empty(), "the same flag twice is one event");
    s.apply(Command::MarkIdle { job: id, attempt: 1, since_ms: None }).unwrap();
    assert_eq!(s.job(id).unwrap().idle_since_ms, None);
    let stale = s.apply(Command::MarkIdle { job: id, attempt: 2, since_ms: Some(5) }).unwrap_err();
    assert!(matches!(stale, ApplyError::StaleAttempt { .. }), "{stale}");
    s.apply(Command::MarkIdle { job: id, attempt: 1, since_ms: Some(300) }).unwrap();
    s.apply(Command::JobFinished { job: id, attempt: Some(1), at_ms: 400 }).unwrap();
    assert_eq!(s.job(id).unwrap().idle_since_ms, None, "an ended attempt is not idle");
}

#[test]
fn only_a_requeueing_team_stops_a_flagged_job_which_then_waits_again() {
    let (mut s, id) = running();
    let stop = Command::StopIdle { job: id, attempt: 1 };
    assert!(s.apply(stop.clone()).is_err(), "not flagged");
    s.apply(Command::MarkIdle { job: id, attempt: 1, since_ms: Some(100) }).unwrap();
    let report = IdlePolicy { after_ms: 30 * MINUTE, action: IdleAction::Report };
    s.apply(Command::SetIdlePolicy { team: "vision".into(), policy: Some(report) }).unwrap();
    let refused = s.apply(stop.clone()).unwrap_err().to_string();
    assert!(refused.contains("does not stop idle jobs"), "{refused}");
    s.apply(Command::SetIdlePolicy { team: "vision".into(), policy: Some(requeue(10 * MINUTE)) }).unwrap();
    let out = s.apply(stop).unwrap();
    assert_eq!(out.changed, vec![(id, JobState::Stopping)]);
    assert!(out.effects.iter().any(|e| matches!(e, crate::Effect::Stop { reason: StopReason::Idle, .. })));
    s.apply(Command::JobFinished { job: id, attempt: Some(1), at_ms: 500 }).unwrap();
    let j = s.job(id).unwrap();
    assert_eq!((j.state, j.failures), (JobState::Pending, 0), "requeued, not failed");
    assert_eq!(requeue(10 * MINUTE).stop_at(1_000), Some(1_000 + 40 * MINUTE));
}

#[test]
fn policies_and_flags_survive_a_snapshot_in_version_3_and_only_then() {
    let (mut s, id) = running();
    assert_eq!(u16::from_le_bytes([s.to_bytes()[4], s.to_bytes()[5]]), 1, "nothing idle: the first format");
    s.apply(Command::SetIdlePolicy { team: "vision".into(), policy: Some(requeue(0)) }).unwrap();
    s.apply(Command::MarkIdle { job: id, attempt: 1, since_ms: Some(100) }).unwrap();
    let bytes = s.to_bytes();
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 3);
    let back = State::from_bytes(&bytes).unwrap();
    assert_eq!(back.idle_policy(&"vision".into()), Some(&requeue(0)));
    assert_eq!(back.job(id).unwrap().idle_since_ms, Some(100));
    assert_eq!(back.hash(), s.hash());
    s.apply(Command::SetIdlePolicy { team: "vision".into(), policy: None }).unwrap();
    s.apply(Command::MarkIdle { job: id, attempt: 1, since_ms: None }).unwrap();
    assert_eq!(u16::from_le_bytes([s.to_bytes()[4], s.to_bytes()[5]]), 1, "back to the first format");
}
