use super::*;
use crate::testing::{job_spec, setup, MODEL};
use qm_core::{AcceleratorKind, Device, DeviceId, Health, JobId, JobState, NodeId, NodeSpec, PolicyConfig};

const MINUTE: u64 = 60_000;

/// A node of two GPUs, each held by a running job of team `t` started at 1,000 ms.
fn two_running() -> (State, [JobId; 2]) {
    let mut s = State::new();
    for c in setup("t", 2) {
        s.apply(c).unwrap();
    }
    let devices = (0..2)
        .map(|i| Device {
            id: DeviceId::from(format!("g{i}")),
            kind: AcceleratorKind::Gpu,
            vendor: "nvidia".into(),
            model: MODEL.into(),
            memory_mib: 81_920,
            health: Health::Healthy,
            numa_node: None,
            pci_bus_id: None,
            interconnect_group: None,
        })
        .collect();
    let node = NodeSpec { id: "n1".into(), labels: Default::default(), devices, cpu_millis: 8_000, mem_mib: 64_000 };
    s.apply(Command::RegisterNode { node, at_ms: 0 }).unwrap();
    let ids = s.apply(Command::Submit { jobs: vec![job_spec("t"), job_spec("t")], at_ms: 0 }).unwrap().submitted;
    let plan = qm_core::schedule(&s, &PolicyConfig::default(), 500);
    s.apply(Command::ApplyPlan { decisions: plan.decisions, at_ms: 500 }).unwrap();
    for id in &ids {
        s.apply(Command::JobStarted { job: *id, attempt: None, at_ms: 1_000 }).unwrap();
    }
    (s, [ids[0], ids[1]])
}

/// The device `job` holds.
fn device_of(s: &State, job: JobId) -> (NodeId, String) {
    let r = &s.job(job).unwrap().assignment.as_ref().unwrap().replicas[0];
    (r.node.clone(), r.devices[0].as_str().to_owned())
}

/// Devices quiet since 0.
fn quiet(devices: &[(NodeId, String)]) -> Quiet {
    let mut q = Quiet::new();
    for (node, device) in devices {
        q.entry(node.clone()).or_default().insert(device.clone(), 0);
    }
    q
}

fn apply(s: &mut State, commands: Vec<Command>) {
    for c in commands {
        s.apply(c).unwrap();
    }
}

#[test]
fn a_job_is_flagged_once_all_its_devices_read_idle_for_its_teams_time() {
    let (mut s, [a, b]) = two_running();
    let policy = IdlePolicy { after_ms: 10 * MINUTE, action: IdleAction::Report };
    s.apply(Command::SetIdlePolicy { team: "t".into(), policy: Some(policy) }).unwrap();
    let quiet = quiet(&[device_of(&s, a)]);
    assert!(decide(&s, &quiet, 10 * MINUTE).is_empty(), "idle since the start (1 s), not 10 min yet");
    let flag = decide(&s, &quiet, 10 * MINUTE + 1_000);
    assert_eq!(flag, vec![Command::MarkIdle { job: a, attempt: 1, since_ms: Some(1_000) }], "b has no reading");
    apply(&mut s, flag);
    assert!(decide(&s, &quiet, 20 * MINUTE).is_empty(), "flagged once; reporting never stops it");
    let busy = Quiet::new();
    let cleared = decide(&s, &busy, 20 * MINUTE);
    assert_eq!(cleared, vec![Command::MarkIdle { job: a, attempt: 1, since_ms: None }]);
    apply(&mut s, cleared);
    assert_eq!(s.job(a).unwrap().idle_since_ms, None);
    assert_eq!(s.job(b).unwrap().idle_since_ms, None);
}

#[test]
fn a_requeueing_team_stops_the_job_after_the_warning_and_others_get_the_default() {
    let (mut s, [a, b]) = two_running();
    let policy = IdlePolicy { after_ms: 5 * MINUTE, action: IdleAction::Requeue { warn_ms: 2 * MINUTE } };
    let quiet = quiet(&[device_of(&s, a), device_of(&s, b)]);
    let later = DEFAULT_POLICY.after_ms + 1_000;
    assert_eq!(decide(&s, &quiet, later).len(), 2, "without a policy, both are reported after 30 min");
    s.apply(Command::SetIdlePolicy { team: "t".into(), policy: Some(policy) }).unwrap();
    let flags = decide(&s, &quiet, 5 * MINUTE + 1_000);
    apply(&mut s, flags);
    assert!(s.job(a).unwrap().idle_since_ms.is_some());
    assert!(decide(&s, &quiet, 7 * MINUTE).is_empty(), "warned: 2 more minutes");
    let stop = decide(&s, &quiet, 7 * MINUTE + 1_000);
    assert_eq!(stop, vec![Command::StopIdle { job: a, attempt: 1 }, Command::StopIdle { job: b, attempt: 1 }]);
    apply(&mut s, stop);
    assert_eq!(s.job(a).unwrap().state, JobState::Stopping);
    assert!(decide(&s, &quiet, 8 * MINUTE).is_empty(), "a stopping job is no longer looked at");
}
