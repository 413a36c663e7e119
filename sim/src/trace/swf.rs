//! The Standard Workload Format (Parallel Workloads Archive): `;` comment lines, then 18
//! whitespace-separated fields per job. Submit = field 2 (submit time, s); duration = field 4
//! (run time, s, at least 1); devices = field 5 (allocated processors, else field 8, requested);
//! team = `g<group id>` (field 13, else `u<user id>`, field 12); estimate = field 9 (requested
//! time) when positive. Jobs with a run time of -1 are malformed (cancelled before start).

use super::{duration_ms, num, parse_rows, Bad, Trace, TraceError, TraceJob};

pub(super) fn parse(text: &str, file: &str, skip_bad: bool) -> Result<Trace, TraceError> {
    let rows = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with(';'));
    parse_rows(file, rows, skip_bad, row)
}

fn row(text: &str) -> Result<TraceJob, Bad> {
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() != 18 {
        return Err(Bad::new("row", format!("{} fields, expected 18", f.len())));
    }
    let submit: i64 = num("submit_time", f[1])?;
    let run: f64 = num("run_time", f[3])?;
    let allocated: i64 = num("allocated_processors", f[4])?;
    let requested: i64 = num("requested_processors", f[7])?;
    let estimate: f64 = num("requested_time", f[8])?;
    let (user, group): (i64, i64) = (num("user_id", f[11])?, num("group_id", f[12])?);
    if submit < 0 {
        return Err(Bad::new("submit_time", "must be a time >= 0"));
    }
    if run < 0.0 {
        return Err(Bad::new("run_time", "unknown (-1)"));
    }
    let procs = if allocated > 0 { allocated } else { requested };
    let gpus = u32::try_from(procs)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Bad::new("allocated_processors", "unknown or < 1"))?;
    let team = if group >= 0 { format!("g{group}") } else { format!("u{user}") };
    Ok(TraceJob {
        line: 0,
        submit_ms: submit as u64 * 1000,
        duration_ms: duration_ms("run_time", run)?,
        gpus,
        team: team.into(),
        estimate_ms: (estimate > 0.0).then(|| (estimate as u64) * 1000),
    })
}

#[cfg(test)]
mod tests {
    use crate::trace::{parse, Format};

    #[test]
    fn comments_are_skipped_and_fields_mapped() {
        let text = "; header\n    1        0     -1   1451  128     -1    -1   -1     -1    -1 -1   1   1  -1 -1 -1 -1 -1\n    2   1460 -1 3726 64 -1 -1 -1 7200 -1 -1 3 -1 -1 -1 -1 -1 -1\n";
        let t = parse(text, "n.swf", Format::Swf, false).unwrap();
        assert_eq!(
            (t.jobs[0].gpus, t.jobs[0].duration_ms, t.jobs[0].team.as_str(), t.jobs[0].line),
            (128, 1_451_000, "g1", 2)
        );
        assert_eq!((t.jobs[1].team.as_str(), t.jobs[1].estimate_ms), ("u3", Some(7_200_000)));
        let e = parse("1 0 -1 -1 1 -1 -1 -1 -1 -1 -1 1 1 -1 -1 -1 -1 -1\n", "n.swf", Format::Swf, false).unwrap_err();
        assert_eq!(e.field, "run_time");
    }
}
