//! Philly (`philly.csv` of the Pollux artifact): `timestamp,duration,num_gpus,gpu_time,cluster`.
//! Submit = the timestamp (UTC, `YYYY-MM-DD HH:MM:SS`); duration = whole seconds, at least 1;
//! GPUs = `num_gpus`; team = `cluster` (the virtual cluster). `gpu_time` is not used.

use super::{check_header, csv_rows, duration_ms, num, parse_rows, Bad, Trace, TraceError, TraceJob};

const HEADER: [&str; 5] = ["timestamp", "duration", "num_gpus", "gpu_time", "cluster"];

pub(super) fn parse(text: &str, file: &str, skip_bad: bool) -> Result<Trace, TraceError> {
    check_header(text, file, &HEADER)?;
    parse_rows(file, csv_rows(text), skip_bad, row)
}

fn row(text: &str) -> Result<TraceJob, Bad> {
    let f: Vec<&str> = text.split(',').collect();
    if f.len() != HEADER.len() {
        return Err(Bad::new("row", format!("{} fields, expected {}", f.len(), HEADER.len())));
    }
    let submit_s = epoch_seconds(f[0].trim())
        .ok_or_else(|| Bad::new("timestamp", format!("{:?} is not YYYY-MM-DD HH:MM:SS", f[0])))?;
    let gpus: u32 = num("num_gpus", f[2])?;
    if gpus == 0 {
        return Err(Bad::new("num_gpus", "must be at least 1"));
    }
    let team = f[4].trim();
    if team.is_empty() {
        return Err(Bad::new("cluster", "empty virtual cluster"));
    }
    Ok(TraceJob {
        line: 0,
        submit_ms: submit_s * 1000,
        duration_ms: duration_ms("duration", num("duration", f[1])?)?,
        gpus,
        team: team.into(),
        estimate_ms: None,
    })
}

/// Seconds since 1970-01-01 of a UTC `YYYY-MM-DD HH:MM:SS` (days from civil, H. Hinnant).
fn epoch_seconds(s: &str) -> Option<u64> {
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{parse as parse_trace, Format};

    #[test]
    fn timestamps_are_utc_seconds() {
        assert_eq!(epoch_seconds("1970-01-01 00:00:00"), Some(0));
        assert_eq!(epoch_seconds("2017-10-09 07:01:55"), Some(1_507_532_515));
        assert_eq!(epoch_seconds("2017-13-09 07:01:55"), None);
    }

    #[test]
    fn rows_become_jobs_sorted_and_rebased() {
        let text = "timestamp,duration,num_gpus,gpu_time,cluster\n\
                    2017-10-09 07:01:55,66.0,1,66.0,11cb48\n\
                    2017-10-09 06:13:03,0.4,8,2951.0,6214e9\n\n";
        let t = parse_trace(text, "p.csv", Format::Philly, false).unwrap();
        assert_eq!(t.jobs.len(), 2);
        assert_eq!(
            (t.jobs[0].team.as_str(), t.jobs[0].submit_ms, t.jobs[0].duration_ms, t.jobs[0].line),
            ("6214e9", 0, 1000, 3)
        );
        assert_eq!((t.jobs[1].submit_ms, t.jobs[1].gpus), (2_932_000, 1));
    }

    #[test]
    fn a_bad_row_names_file_line_and_field() {
        let text = "timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-09 07:01:55,66.0,x,66.0,a\n2017-10-09 07:01:55,6,1,6,b\n";
        let e = parse_trace(text, "p.csv", Format::Philly, false).unwrap_err();
        assert_eq!((e.file.as_str(), e.line, e.field.as_str()), ("p.csv", 2, "num_gpus"));
        let t = parse_trace(text, "p.csv", Format::Philly, true).unwrap();
        assert_eq!((t.jobs.len(), t.skipped.len()), (1, 1));
        let e = parse_trace("time,dur\n", "p.csv", Format::Philly, false).unwrap_err();
        assert_eq!(e.field, "header");
    }
}
