use super::*;

fn good_job() -> v1::JobSpec {
    v1::JobSpec {
        name: "train".into(),
        team: "vision".into(),
        priority_class: None,
        gang: Some(v1::GangSpec {
            replicas: 2,
            devices: Some(v1::DeviceRequest {
                kind: v1::AcceleratorKind::Gpu as i32,
                models: vec!["nvidia-h100-80gb-hbm3".into()],
                count: 8,
            }),
            cpu_millis: 8000,
            mem_mib: 65536,
        }),
        command: vec!["python".into(), "train.py".into()],
        env: [("SEED".to_owned(), "7".to_owned())].into(),
        max_runtime_ms: Some(3_600_000),
        preemptible: None,
        stop_signal: v1::StopSignal::Unspecified as i32,
        grace_ms: None,
        max_retries: 1,
        runtime_estimate_ms: None,
    }
}

fn field_of(job: v1::JobSpec) -> String {
    let req = v1::SubmitRequest { jobs: vec![good_job(), job], request_id: String::new() };
    submit_from(&req).unwrap_err().field().to_owned()
}

#[test]
fn a_good_job_converts_with_documented_defaults_and_round_trips() {
    let spec = job_spec_from(&good_job()).unwrap();
    assert!(spec.preemptible, "absent preemptible means true");
    assert_eq!(spec.grace_ms, DEFAULT_GRACE_MS);
    assert_eq!(spec.stop_signal, StopSignal::Term);
    assert_eq!(job_spec_from(&job_spec_to(&spec)).unwrap(), spec);
}

#[test]
fn each_bad_field_is_named() {
    let mut j = good_job();
    j.team = String::new();
    assert_eq!(field_of(j), "jobs[1].team");
    let mut j = good_job();
    j.gang.as_mut().unwrap().replicas = 0;
    assert_eq!(field_of(j), "jobs[1].gang.replicas");
    let mut j = good_job();
    j.gang.as_mut().unwrap().replicas = 5000;
    assert_eq!(field_of(j), "jobs[1].gang.replicas");
    let mut j = good_job();
    j.gang.as_mut().unwrap().devices.as_mut().unwrap().count = 0;
    assert_eq!(field_of(j), "jobs[1].gang.devices.count");
    let mut j = good_job();
    j.gang.as_mut().unwrap().devices.as_mut().unwrap().kind = 0;
    assert_eq!(field_of(j), "jobs[1].gang.devices.kind");
    let mut j = good_job();
    j.gang.as_mut().unwrap().devices.as_mut().unwrap().kind = 42;
    assert_eq!(field_of(j), "jobs[1].gang.devices.kind");
    let mut j = good_job();
    j.grace_ms = Some(3_600_001);
    assert_eq!(field_of(j), "jobs[1].grace_ms");
    let mut j = good_job();
    j.command = vec!["x".repeat(70_000)];
    assert_eq!(field_of(j), "jobs[1].command");
    let mut j = good_job();
    j.env.insert("BIG".into(), "y".repeat(70_000));
    assert_eq!(field_of(j), "jobs[1].env");
    let mut j = good_job();
    j.gang = None;
    assert_eq!(field_of(j), "jobs[1].gang");
    let mut j = good_job();
    j.command.clear();
    assert_eq!(field_of(j), "jobs[1].command");
    let mut j = good_job();
    j.gang.as_mut().unwrap().mem_mib = u64::MAX;
    assert_eq!(field_of(j), "jobs[1].gang.mem_mib");
}

#[test]
fn empty_and_oversize_batches_are_refused() {
    let none = v1::SubmitRequest { jobs: vec![], request_id: String::new() };
    assert_eq!(submit_from(&none).unwrap_err().field(), "jobs");
    let many = v1::SubmitRequest { jobs: vec![good_job(); MAX_BATCH + 1], request_id: String::new() };
    assert_eq!(submit_from(&many).unwrap_err().field(), "jobs");
    let long_id = v1::SubmitRequest { jobs: vec![good_job()], request_id: "r".repeat(MAX_REQUEST_ID_BYTES + 1) };
    let err = submit_from(&long_id).unwrap_err();
    assert_eq!(err.field(), "request_id");
    assert!(err.to_string().contains("129 bytes, more than 128"), "{err}");
}

#[test]
fn errors_become_invalid_argument() {
    let mut j = good_job();
    j.team = String::new();
    let status: tonic::Status = job_spec_from(&j).unwrap_err().into();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("team:"), "{}", status.message());
}

#[test]
fn teams_are_validated() {
    let q = |nominal, lending| v1::FlavorQuota {
        flavor: Some(v1::Flavor { kind: v1::AcceleratorKind::Gpu as i32, model: "h100".into() }),
        nominal,
        borrowing_limit: None,
        lending_limit: lending,
    };
    let team = v1::Team { name: "vision".into(), weight: 0.0, quotas: vec![q(8, Some(2))] };
    let spec = team_from(&team).unwrap();
    assert_eq!(spec.weight_milli, 1000);
    assert_eq!(team_from(&team_to(&spec)).unwrap(), spec);
    let dup = v1::Team { quotas: vec![q(8, None), q(4, None)], ..team.clone() };
    assert_eq!(team_from(&dup).unwrap_err().field(), "quotas[1].flavor");
    let lend = v1::Team { quotas: vec![q(2, Some(3))], ..team.clone() };
    assert!(team_from(&lend).unwrap_err().field().ends_with("lending_limit"));
    let weight = v1::Team { weight: f64::NAN, ..team.clone() };
    assert_eq!(team_from(&weight).unwrap_err().field(), "weight");
    let unflavored = v1::Team { quotas: vec![v1::FlavorQuota { flavor: None, ..q(1, None) }], ..team };
    assert_eq!(team_from(&unflavored).unwrap_err().field(), "quotas[0].flavor");
}

#[test]
fn inventories_are_validated() {
    let dev = |id: &str| v1::Device {
        id: id.into(),
        kind: v1::AcceleratorKind::Gpu as i32,
        vendor: "nvidia".into(),
        model: "nvidia-h100-80gb-hbm3".into(),
        memory_mib: 81559,
        health: v1::Health::Healthy as i32,
        ..Default::default()
    };
    let inv = v1::NodeInventory { name: "n0".into(), devices: vec![dev("GPU-a"), dev("GPU-b")], ..Default::default() };
    assert_eq!(inventory_from(&inv).unwrap().devices.len(), 2);
    let twice = v1::NodeInventory { devices: vec![dev("GPU-a"), dev("GPU-a")], ..inv.clone() };
    assert_eq!(inventory_from(&twice).unwrap_err().field(), "devices[1].id");
    let unnamed = v1::NodeInventory { name: " ".into(), ..inv.clone() };
    assert_eq!(inventory_from(&unnamed).unwrap_err().field(), "name");
    let odd = v1::NodeInventory { devices: vec![v1::Device { health: 99, ..dev("GPU-a") }], ..inv.clone() };
    let err = inventory_from(&odd).unwrap_err();
    assert_eq!(err.field(), "devices[0].health");
    assert!(err.to_string().contains("unknown value 99"), "{err}");
    let labelled =
        v1::NodeInventory { labels: (0..100).map(|i| (format!("k{i}"), "v".repeat(250))).collect(), ..inv.clone() };
    assert_eq!(inventory_from(&labelled).unwrap_err().field(), "labels");
    let many = v1::NodeInventory { devices: (0..65).map(|i| dev(&format!("g{i}"))).collect(), ..inv };
    assert_eq!(inventory_from(&many).unwrap_err().field(), "devices");
}
