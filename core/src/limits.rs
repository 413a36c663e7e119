//! Limits on everything a user or an agent sends: the validation rules, in one place, shared
//! by the API (`proto` conversions), the simulator's readers and `State::apply`.

use crate::error::FieldError;
use crate::job::JobSpec;
use crate::resource::{NodeSpec, MAX_DEVICES_PER_NODE};
use crate::team::TeamSpec;
use std::collections::BTreeSet;

/// Most replicas in one gang.
pub const MAX_REPLICAS: u32 = 4096;
/// Most devices per replica (one node's worth).
pub const MAX_DEVICES_PER_REPLICA: u32 = MAX_DEVICES_PER_NODE as u32;
/// Longest grace period between the stop signal and the kill: one hour.
pub const MAX_GRACE_MS: u64 = 3_600_000;
/// Most bytes in a job's command and arguments together.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most bytes in a job's environment (names and values).
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Longest name (job, team, node, device, label, model).
pub const MAX_NAME_BYTES: usize = 253;
/// Most retries of a job.
pub const MAX_RETRIES: u32 = 100;
/// Most acceptable models in one request.
pub const MAX_MODELS: usize = 16;
/// Most jobs in one submission batch.
pub const MAX_BATCH: usize = 10_000;
/// Most host CPU of one replica or one node, in thousandths of a core: 100,000 cores.
pub const MAX_CPU_MILLIS: u64 = 100_000_000;
/// Most host memory of one replica or one node, in MiB: 1 PiB (what the simulator gives a
/// node whose memory does not matter).
pub const MAX_MEM_MIB: u64 = 1 << 30;
/// Most labels on one node.
pub const MAX_LABELS: usize = 64;
/// Most flavors one team has quotas for.
pub const MAX_FLAVORS_PER_TEAM: usize = 256;
/// Longest request id of a submission.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Checks host CPU and memory (of a replica, or of a node) against the limits.
fn host(cpu_field: &str, cpu_millis: u64, mem_field: &str, mem_mib: u64) -> Result<(), FieldError> {
    if cpu_millis > MAX_CPU_MILLIS {
        return Err(FieldError::new(cpu_field, format!("{cpu_millis}, more than {MAX_CPU_MILLIS} (100,000 cores)")));
    }
    if mem_mib > MAX_MEM_MIB {
        return Err(FieldError::new(mem_field, format!("{mem_mib} MiB, more than {MAX_MEM_MIB} (1 PiB)")));
    }
    Ok(())
}

/// Checks a name (of a job, team, node, ...): not blank, at most `MAX_NAME_BYTES`, no control
/// characters.
pub fn name(field: &str, value: &str) -> Result<(), FieldError> {
    // Bytewise for an ASCII name (every job has two): blankness is decided by the first byte
    // that is not white space, usually the first.
    let (blank, control) = if value.is_ascii() {
        (value.bytes().all(|b| matches!(b, b'\t'..=b'\r' | b' ')), value.bytes().any(|b| b.is_ascii_control()))
    } else {
        (value.trim().is_empty(), value.chars().any(char::is_control))
    };
    if blank {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(FieldError::new(field, format!("longer than {MAX_NAME_BYTES} bytes")));
    }
    if control {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(())
}

/// Checks a job spec on its own (the state machine checks team and class exist).
pub fn validate_job(spec: &JobSpec) -> Result<(), FieldError> {
    validate_job_with(spec, false)
}

/// `validate_job`, skipping the team's name when `team_known`: the name of a team that was set
/// passed the same check in `validate_team`, so the answer is the same, without reading it.
pub(crate) fn validate_job_with(spec: &JobSpec, team_known: bool) -> Result<(), FieldError> {
    name("name", &spec.name)?;
    if !team_known {
        name("team", spec.team.as_str())?;
    }
    if let Some(class) = &spec.priority_class {
        name("priority_class", class)?;
    }
    let gang = &spec.gang;
    if gang.replicas == 0 || gang.replicas > MAX_REPLICAS {
        return Err(FieldError::new("gang.replicas", format!("must be 1..={MAX_REPLICAS}, got {}", gang.replicas)));
    }
    let count = gang.devices.count;
    if count == 0 || count > MAX_DEVICES_PER_REPLICA {
        return Err(FieldError::new(
            "gang.devices.count",
            format!("must be 1..={MAX_DEVICES_PER_REPLICA} devices per replica, got {count}"),
        ));
    }
    host("gang.cpu_millis", gang.cpu_millis, "gang.mem_mib", gang.mem_mib)?;
    if gang.devices.models.len() > MAX_MODELS {
        return Err(FieldError::new("gang.devices.models", format!("more than {MAX_MODELS} models")));
    }
    // At most MAX_MODELS, usually none: a scan of the earlier ones, with no set to build and
    // drop per submission.
    let models = &gang.devices.models;
    for (i, m) in models.iter().enumerate() {
        name(&format!("gang.devices.models[{i}]"), m)?;
        if models[..i].contains(m) {
            return Err(FieldError::new(format!("gang.devices.models[{i}]"), format!("model {m:?} listed twice")));
        }
    }
    if spec.grace_ms > MAX_GRACE_MS {
        return Err(FieldError::new("grace_ms", format!("must be at most {MAX_GRACE_MS} ms, got {}", spec.grace_ms)));
    }
    if spec.max_runtime_ms == Some(0) {
        return Err(FieldError::new("max_runtime_ms", "must be positive when set"));
    }
    if spec.max_retries > MAX_RETRIES {
        return Err(FieldError::new("max_retries", format!("must be at most {MAX_RETRIES}")));
    }
    let command_bytes = spec.command_bytes();
    if command_bytes > MAX_COMMAND_BYTES {
        return Err(FieldError::new("command", format!("{command_bytes} bytes, more than {MAX_COMMAND_BYTES}")));
    }
    let env_bytes = spec.env_bytes();
    if env_bytes > MAX_ENV_BYTES {
        return Err(FieldError::new("env", format!("{env_bytes} bytes, more than {MAX_ENV_BYTES}")));
    }
    if let Some(k) = spec.env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        return Err(FieldError::new("env", format!("invalid variable name {k:?}")));
    }
    Ok(())
}

/// Checks a node's inventory.
pub fn validate_node(spec: &NodeSpec) -> Result<(), FieldError> {
    name("id", spec.id.as_str())?;
    if spec.devices.len() > MAX_DEVICES_PER_NODE {
        return Err(FieldError::new(
            "devices",
            format!("{} devices, more than {MAX_DEVICES_PER_NODE}", spec.devices.len()),
        ));
    }
    let mut ids = BTreeSet::new();
    for (i, d) in spec.devices.iter().enumerate() {
        name(&format!("devices[{i}].id"), d.id.as_str())?;
        name(&format!("devices[{i}].model"), &d.model)?;
        if d.model.contains('/') {
            return Err(FieldError::new(format!("devices[{i}].model"), "must not contain '/'"));
        }
        if !ids.insert(&d.id) {
            return Err(FieldError::new(format!("devices[{i}].id"), format!("device {} reported twice", d.id)));
        }
    }
    if spec.labels.len() > MAX_LABELS {
        return Err(FieldError::new("labels", format!("{} labels, more than {MAX_LABELS}", spec.labels.len())));
    }
    for (k, v) in &spec.labels {
        name("labels", k)?;
        name(&format!("labels.{k}"), v)?;
    }
    host("cpu_millis", spec.cpu_millis, "mem_mib", spec.mem_mib)
}

/// Checks a team's quotas.
pub fn validate_team(spec: &TeamSpec) -> Result<(), FieldError> {
    name("name", spec.name.as_str())?;
    if spec.weight_milli == 0 {
        return Err(FieldError::new("weight", "must be positive"));
    }
    if spec.quotas.len() > MAX_FLAVORS_PER_TEAM {
        return Err(FieldError::new(
            "quotas",
            format!("{} flavors, more than {MAX_FLAVORS_PER_TEAM}", spec.quotas.len()),
        ));
    }
    for (flavor, q) in &spec.quotas {
        if let Some(l) = q.lending_limit {
            if l > q.nominal {
                return Err(FieldError::new(
                    format!("quotas[{:?}].lending_limit", flavor.to_string()),
                    format!("{l} is more than nominal {}", q.nominal),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The checks of `name` written plainly, one after the other.
    fn plain(field: &str, value: &str) -> Result<(), FieldError> {
        if value.trim().is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if value.len() > MAX_NAME_BYTES {
            return Err(FieldError::new(field, format!("longer than {MAX_NAME_BYTES} bytes")));
        }
        if value.chars().any(char::is_control) {
            return Err(FieldError::new(field, "contains control characters"));
        }
        Ok(())
    }

    #[test]
    fn a_model_listed_twice_is_named_at_its_second_place() {
        let mut spec = crate::testkit::job("vision", 1, 1);
        spec.gang.devices.models = vec!["h100".into(), "a100".into(), "l4".into()];
        assert_eq!(validate_job(&spec), Ok(()));
        spec.gang.devices.models.push("a100".into());
        let err = validate_job(&spec).unwrap_err();
        assert_eq!(err.field, "gang.devices.models[3]");
        assert!(err.reason.contains("listed twice"), "{err}");
        spec.gang.devices.models[1] = " ".into();
        assert_eq!(validate_job(&spec).unwrap_err().field, "gang.devices.models[1]", "names are checked first");
    }

    #[test]
    fn host_resources_labels_and_flavors_are_bounded_and_named() {
        let mut spec = crate::testkit::job("vision", 1, 1);
        spec.gang.cpu_millis = u64::MAX;
        assert_eq!(validate_job(&spec).unwrap_err().field, "gang.cpu_millis");
        spec.gang.cpu_millis = MAX_CPU_MILLIS;
        spec.gang.mem_mib = MAX_MEM_MIB + 1;
        let err = validate_job(&spec).unwrap_err();
        assert_eq!(err.field, "gang.mem_mib");
        assert!(err.reason.contains("1 PiB"), "{err}");
        let mut node = crate::testkit::node("n1", 8, None);
        node.labels = (0..=MAX_LABELS).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(validate_node(&node).unwrap_err().field, "labels");
        node.labels.clear();
        node.mem_mib = u64::MAX;
        assert_eq!(validate_node(&node).unwrap_err().field, "mem_mib");
        let mut team = crate::testkit::team("t", 8, None);
        let quota = *team.quotas.values().next().unwrap();
        for i in 0..=MAX_FLAVORS_PER_TEAM {
            let flavor = crate::resource::Flavor::new(crate::resource::AcceleratorKind::Gpu, &format!("m{i}"));
            team.quotas.insert(flavor, quota);
        }
        assert_eq!(validate_team(&team).unwrap_err().field, "quotas");
    }

    proptest! {
        #[test]
        fn a_name_is_checked_as_the_plain_checks_say(
            value in prop::string::string_regex("[ \t\n\x0b\x0c\r\x00\x1f\x7fa-z\u{85}\u{a0}é-]{0,6}").unwrap(),
            long in any::<bool>(),
        ) {
            let value = if long { value.repeat(MAX_NAME_BYTES) } else { value };
            prop_assert_eq!(name("f", &value), plain("f", &value));
        }
    }
}
