//! The words the client prints for the API's values: the same snake_case words as the CLI's
//! flags and `qm plan --json` (`pending`, `gpu`, `gpu/nvidia-h100-80gb-hbm3`), relative times,
//! and tables laid out like kubectl's.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use qm_proto::v1::*;

/// A proto enum's value name without its prefix, lower case: `JOB_STATE_PENDING` -> `pending`.
fn word(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_lowercase()
}

/// A job state's word.
pub fn state(raw: i32) -> String {
    JobState::try_from(raw).map_or_else(|_| raw.to_string(), |s| word(s.as_str_name(), "JOB_STATE_"))
}

/// A token role's word.
pub fn role(raw: i32) -> String {
    Role::try_from(raw).map_or_else(|_| raw.to_string(), |r| word(r.as_str_name(), "ROLE_"))
}

/// The wall clock in ms, to print relative times.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A time in ms since the Unix epoch, as RFC 3339 in UTC to the second.
pub fn time(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// An accelerator kind's word.
pub fn kind(raw: i32) -> String {
    AcceleratorKind::try_from(raw).map_or_else(|_| raw.to_string(), |k| word(k.as_str_name(), "ACCELERATOR_KIND_"))
}

/// A flavor as `kind/model`.
pub fn flavor(f: Option<&Flavor>) -> String {
    f.map_or_else(String::new, |f| format!("{}/{}", kind(f.kind), f.model))
}

/// The flavor a job runs on, or the ones it accepts while it waits (`gpu/*` for any).
pub fn job_flavor(j: &Job) -> String {
    if let Some(a) = &j.assignment {
        return flavor(a.flavor.as_ref());
    }
    let Some(d) = j.spec.as_ref().and_then(|s| s.gang.as_ref()).and_then(|g| g.devices.as_ref()) else {
        return String::new();
    };
    if d.models.is_empty() {
        format!("{}/*", kind(d.kind))
    } else {
        d.models.iter().map(|m| format!("{}/{m}", kind(d.kind))).collect::<Vec<_>>().join("|")
    }
}

/// Devices a job holds or asks for in all (replicas x devices per replica).
pub fn devices(j: &Job) -> u32 {
    j.spec.as_ref().and_then(|s| s.gang.as_ref()).map_or(0, |g| g.replicas * g.devices.as_ref().map_or(0, |d| d.count))
}

/// The nodes a job's replicas run on, in replica order, each once.
pub fn nodes(j: &Job) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in j.assignment.iter().flat_map(|a| &a.replicas) {
        if !out.contains(&r.node) {
            out.push(r.node.clone());
        }
    }
    out
}

/// A duration in the largest unit that keeps it short, as kubectl's AGE column: `45s`,
/// `12m`, `3h`, `5d`.
pub fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long ago `then_ms` was, at `now_ms`.
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    format!("{} ago", short_duration(now_ms.saturating_sub(then_ms)))
}

/// A table with a header row and no borders, columns separated by spaces; `right` names the
/// columns aligned right (numbers).
pub fn table(header: &[&str], right: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled).set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    for (i, name) in header.iter().enumerate() {
        if right.contains(name) {
            if let Some(c) = t.column_mut(i) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
    t.to_string().lines().map(|l| l.trim_end().strip_prefix(' ').unwrap_or(l).to_owned()).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_largest_short_unit() {
        let cases = [
            (0, "0s"),
            (119_999, "119s"),
            (120_000, "2m"),
            (7_199_000, "119m"),
            (7_200_000, "2h"),
            (172_800_000, "2d"),
        ];
        for (ms, want) in cases {
            assert_eq!(short_duration(ms), want, "{ms} ms");
        }
    }

    #[test]
    fn tables_align_numbers_right_and_keep_no_borders() {
        let t = table(&["ID", "NAME"], &["ID"], [vec!["7".into(), "a".into()], vec!["12".into(), "bb".into()]]);
        assert_eq!(t, "ID  NAME\n 7  a\n12  bb");
    }
}
