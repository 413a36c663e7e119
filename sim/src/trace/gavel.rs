//! Gavel's physical-cluster job mixes (`*.trace`): 10 tab-separated columns, `job_type, command,
//! working_directory, num_steps_arg, needs_data_dir, total_steps, scale_factor, priority_weight,
//! SLO, arrival_time`. Submit = `arrival_time` seconds; GPUs = `scale_factor`; team = the model
//! family (the `job_type` up to " (").
//!
//! Gavel traces carry steps, not durations: Gavel converts them with throughputs measured per
//! model and GPU type, which are not part of the trace. We assume [`STEPS_PER_SECOND`] steps per
//! second on one GPU, scaled linearly with `scale_factor` (data parallelism), so duration =
//! `total_steps / (STEPS_PER_SECOND * scale_factor)` seconds; `docs/simulator.md` says so.

use super::{duration_ms, num, parse_rows, Bad, Trace, TraceError, TraceJob};

/// Assumed training steps per second per GPU.
pub const STEPS_PER_SECOND: f64 = 10.0;

pub(super) fn parse(text: &str, file: &str, skip_bad: bool) -> Result<Trace, TraceError> {
    let rows = text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim().is_empty());
    parse_rows(file, rows, skip_bad, row)
}

fn row(text: &str) -> Result<TraceJob, Bad> {
    let f: Vec<&str> = text.split('\t').collect();
    if f.len() != 10 {
        return Err(Bad::new("row", format!("{} tab-separated fields, expected 10", f.len())));
    }
    let steps: f64 = num("total_steps", f[5])?;
    let gpus: u32 = num("scale_factor", f[6])?;
    if gpus == 0 {
        return Err(Bad::new("scale_factor", "must be at least 1"));
    }
    let arrival: f64 = num("arrival_time", f[9])?;
    if !arrival.is_finite() || arrival < 0.0 {
        return Err(Bad::new("arrival_time", "must be a time >= 0"));
    }
    let family = f[0].split(" (").next().unwrap_or(f[0]).trim();
    Ok(TraceJob {
        line: 0,
        submit_ms: (arrival * 1000.0) as u64,
        duration_ms: duration_ms("total_steps", steps / (STEPS_PER_SECOND * f64::from(gpus)))?,
        gpus,
        team: if family.is_empty() { "gavel".into() } else { family.into() },
        estimate_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use crate::trace::{parse, Format};

    #[test]
    fn rows_read_with_the_documented_duration() {
        let text = "ResNet-18 (batch size 128)\tpython3 main.py\tdir\t--num_steps\t1\t925982\t4\t1\t-1.000000\t0\n";
        let t = parse(text, "g.trace", Format::Gavel, false).unwrap();
        assert_eq!((t.jobs[0].gpus, t.jobs[0].team.as_str()), (4, "ResNet-18"));
        assert_eq!(t.jobs[0].duration_ms, 23_149_000);
        let e = parse("a\tb\n", "g.trace", Format::Gavel, false).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (1, "row"));
    }
}
