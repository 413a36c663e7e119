//! The Tiresias simulator's CSV (`60_job.csv`):
//! `job_id,num_gpu,submit_time,iterations,model_name,duration,interval`. Submit = `submit_time`
//! seconds; duration = `duration` seconds, at least 1; GPUs = `num_gpu`; one team, `tiresias`.

use super::{check_header, csv_rows, duration_ms, num, parse_rows, Bad, Trace, TraceError, TraceJob};

const HEADER: [&str; 7] = ["job_id", "num_gpu", "submit_time", "iterations", "model_name", "duration", "interval"];

pub(super) fn parse(text: &str, file: &str, skip_bad: bool) -> Result<Trace, TraceError> {
    check_header(text, file, &HEADER)?;
    parse_rows(file, csv_rows(text), skip_bad, row)
}

fn row(text: &str) -> Result<TraceJob, Bad> {
    let f: Vec<&str> = text.split(',').collect();
    if f.len() < HEADER.len() {
        return Err(Bad::new("row", format!("{} fields, expected {}", f.len(), HEADER.len())));
    }
    let gpus: u32 = num("num_gpu", f[1])?;
    if gpus == 0 {
        return Err(Bad::new("num_gpu", "must be at least 1"));
    }
    let submit_s: f64 = num("submit_time", f[2])?;
    if !submit_s.is_finite() || submit_s < 0.0 {
        return Err(Bad::new("submit_time", "must be a time >= 0"));
    }
    Ok(TraceJob {
        line: 0,
        submit_ms: (submit_s * 1000.0) as u64,
        duration_ms: duration_ms("duration", num("duration", f[5])?)?,
        gpus,
        team: "tiresias".into(),
        estimate_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use crate::trace::{parse, Format};

    #[test]
    fn the_sample_trace_reads() {
        let text = "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n0,1,0,606,vgg19,164,30\n1,8,30,133,vgg11,147,23\n";
        let t = parse(text, "t.csv", Format::Tiresias, false).unwrap();
        assert_eq!(t.jobs[1].gpus, 8);
        assert_eq!((t.jobs[1].submit_ms, t.jobs[1].duration_ms), (30_000, 147_000));
        let e = parse(
            "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n0,1,-5,1,m,1,1\n",
            "t.csv",
            Format::Tiresias,
            false,
        )
        .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "submit_time"));
    }
}
