use super::*;
use crate::inventory::{collect, Probe};
use crate::nvml::{readings_from_csv, FakeNvml, NvmlProbe};

/// The value of the sample `series` (labels as the text format writes them) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_busy_h100_shows_its_readings_in_base_units_and_its_job() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/nvml/h100-80gb-hbm3-busy");
    let mut gpus = readings_from_csv(&std::fs::read_to_string(format!("{dir}/nvidia-smi-query-busy.csv")).unwrap());
    gpus[0].name = "NVIDIA H100 80GB HBM3".into();
    let probes: Vec<Box<dyn Probe>> =
        vec![Box::new(NvmlProbe::new(FakeNvml { gpus: Ok(gpus), xids: BTreeMap::new() }))];
    let (spec, _) = collect("gpu-01", &BTreeMap::new(), &probes, (0, 0));
    let readings = probes[0].telemetry();
    let observed = Observed::default();
    observed.inventory(&spec);
    observed.telemetry(&readings);
    observed.registered(true);
    let id = spec.devices[0].id.as_str().to_owned();
    let scrape = observed.render(&BTreeMap::from([(id.clone(), 17)]));
    let labels = format!(r#"{{device="{id}",flavor="gpu/nvidia-h100-80gb-hbm3"}}"#);
    let r = &readings[0];
    let expect =
        |name: &str, v: f64| assert_eq!(sample(&scrape, &format!("{name}{labels}")), Some(v), "{name}: {scrape}");
    expect("qm_device_healthy", 1.0);
    expect("qm_device_utilization_ratio", f64::from(r.utilization_pct.unwrap()) / 100.0);
    expect("qm_device_memory_used_bytes", r.memory_used_mib.unwrap() as f64 * 1_048_576.0);
    expect("qm_device_power_watts", f64::from(r.power_mw.unwrap()) / 1000.0);
    expect("qm_device_temperature_celsius", f64::from(r.temperature_c.unwrap()));
    let held = format!(r#"qm_device_allocated{{device="{id}",flavor="gpu/nvidia-h100-80gb-hbm3",job="17"}}"#);
    assert_eq!(sample(&scrape, &held), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, "qm_agent_registered"), Some(1.0));
    let types: Vec<&str> =
        scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next()).collect();
    assert_eq!(types, NAMES, "the list of names is every family, in order");
    observed.registered(false);
    assert_eq!(sample(&observed.render(&BTreeMap::new()), "qm_agent_registered"), Some(0.0));
    assert!(!observed.render(&BTreeMap::new()).contains("qm_device_allocated{"), "no holder, no series");
}
