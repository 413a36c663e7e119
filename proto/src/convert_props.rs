//! Property tests of validation: whatever a request holds (any text, control characters and
//! non-ASCII included, any counts, any enum values, any sizes), converting it never panics; an
//! accepted request converts to values the core's own checks accept and back to the same
//! request's meaning; a refused one names a field of the request. And encoded requests with
//! bytes flipped either fail to decode or convert by the same rules.

use super::*;
use proptest::collection::{btree_map, hash_map, vec};
use proptest::prelude::*;
use prost::Message;

/// Text of every kind, mostly a plain name (so that whole requests are often valid): any
/// characters, control characters, blanks, runs longer than a name may be.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        24 => "[a-z][a-z0-9-]{0,12}",
        1 => ".{0,40}",
        1 => "[\\x00-\\x1f]{1,3}",
        1 => " {0,3}",
        1 => (1usize..400).prop_map(|n| "x".repeat(n)),
    ]
}

/// Mostly one of the values in `valid`, sometimes anything.
fn mostly(valid: std::ops::Range<u64>) -> impl Strategy<Value = u64> {
    prop_oneof![12 => valid, 1 => any::<u64>()]
}

/// Mostly a valid enum value (1..n), sometimes absent or unknown.
fn variant(n: i32) -> impl Strategy<Value = i32> {
    prop_oneof![12 => 1..n, 1 => -2i32..n + 3]
}

/// Environment variables: mostly well-named.
fn env() -> impl Strategy<Value = std::collections::HashMap<String, String>> {
    let key = prop_oneof![12 => "[A-Z_][A-Z0-9_]{0,10}", 1 => text()];
    hash_map(key, text(), 0..4)
}

fn job() -> impl Strategy<Value = v1::JobSpec> {
    let gang = (mostly(1..9), variant(5), vec(text(), 0..4), mostly(1..9), mostly(0..64_000), mostly(0..1 << 20));
    let gang = gang.prop_map(|(replicas, kind, models, count, cpu_millis, mem_mib)| v1::GangSpec {
        replicas: replicas as u32,
        devices: Some(v1::DeviceRequest { kind, models, count: count as u32 }),
        cpu_millis,
        mem_mib,
    });
    let names = (text(), text(), proptest::option::of(text()));
    let body = (vec(text(), 0..4), env(), variant(5), mostly(0..20).prop_map(|n| n as u32));
    let grace = proptest::option::of(mostly(0..3_600_000));
    let times = (grace, proptest::option::of(any::<u64>()), any::<Option<bool>>());
    let gang = prop_oneof![12 => gang.prop_map(Some), 1 => Just(None)];
    (names, gang, body, times).prop_map(
        |(
            (name, team, priority_class),
            gang,
            (command, env, stop_signal, max_retries),
            (grace_ms, runtime, preemptible),
        )| {
            v1::JobSpec {
                name,
                team,
                priority_class,
                gang,
                command,
                env,
                max_runtime_ms: runtime,
                preemptible,
                stop_signal,
                grace_ms,
                max_retries,
                runtime_estimate_ms: runtime,
            }
        },
    )
}

fn device() -> impl Strategy<Value = v1::Device> {
    (text(), variant(5), text(), text(), mostly(0..200_000), variant(4), proptest::option::of(text())).prop_map(
        |(id, kind, vendor, model, memory_mib, health, pci_bus_id)| v1::Device {
            id,
            kind,
            vendor,
            model,
            memory_mib,
            health,
            numa_node: None,
            pci_bus_id,
            interconnect_group: None,
            held_by_job: None,
        },
    )
}

fn inventory() -> impl Strategy<Value = v1::NodeInventory> {
    let host = (mostly(0..1_000_000), mostly(0..4 << 20));
    (text(), btree_map(text(), text(), 0..4), vec(device(), 0..70), host).prop_map(
        |(name, labels, devices, (cpu_millis, mem_mib))| v1::NodeInventory {
            name,
            labels: labels.into_iter().collect(),
            devices,
            cpu_millis,
            mem_mib,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_submission_converts_or_is_refused_naming_a_field(jobs in vec(job(), 0..4), request_id in text()) {
        let req = v1::SubmitRequest { jobs, request_id };
        match submit_from(&req) {
            Ok(specs) => {
                prop_assert_eq!(specs.len(), req.jobs.len());
                for spec in &specs {
                    prop_assert!(qm_core::limits::validate_job(spec).is_ok(), "accepted but invalid: {:?}", spec);
                    prop_assert_eq!(&job_spec_from(&job_spec_to(spec)).unwrap(), spec);
                }
            }
            Err(e) => prop_assert!(
                e.field().starts_with("jobs") || e.field() == "request_id",
                "{} names no field of the request", e
            ),
        }
    }

    #[test]
    fn any_inventory_converts_or_is_refused_naming_a_field(inv in inventory()) {
        match inventory_from(&inv) {
            Ok(spec) => {
                prop_assert!(qm_core::limits::validate_node(&spec).is_ok());
                prop_assert_eq!(inventory_from(&inventory_to(&spec)).unwrap(), spec);
            }
            Err(e) => prop_assert!(!e.field().is_empty() && !e.0.reason.is_empty(), "{}", e),
        }
    }

    #[test]
    fn flipped_bytes_of_a_request_decode_and_convert_by_the_same_rules(
        job in job(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = v1::SubmitRequest { jobs: vec![job], request_id: "r".into() }.encode_to_vec();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= byte;
        }
        if let Ok(req) = v1::SubmitRequest::decode(bytes.as_slice()) {
            if let Err(e) = submit_from(&req) {
                prop_assert!(e.field().starts_with("jobs") || e.field() == "request_id", "{}", e);
            }
        }
    }
}
