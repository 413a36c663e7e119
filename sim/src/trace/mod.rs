//! Workload traces: readers for the formats of the traces in `traces/` and the synthetic generator.
//! Every reader turns its format into `TraceJob`s; `docs/simulator.md` documents the mapping of
//! each format's fields.

mod gavel;
mod philly;
mod swf;
pub mod synthetic;
mod tiresias;

use qm_core::TeamId;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use thiserror::Error;

/// One job of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceJob {
    /// The line of the file it came from (1-based), or its index for synthetic jobs.
    pub line: usize,
    /// Submission time, ms after the first job of the trace.
    pub submit_ms: u64,
    /// How long it runs once started, ms (at least 1 s).
    pub duration_ms: u64,
    /// Accelerators it needs.
    pub gpus: u32,
    /// The team it belongs to (one shared name per team: see `parse_rows`).
    pub team: TeamId,
    /// The user's runtime estimate, when the format has one.
    pub estimate_ms: Option<u64>,
}

/// A trace format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Microsoft Philly as extracted for Pollux: `timestamp,duration,num_gpus,gpu_time,cluster`.
    Philly,
    /// The Tiresias simulator's CSV: `job_id,num_gpu,submit_time,iterations,model_name,duration,interval`.
    Tiresias,
    /// Gavel's 10-column TSV job mixes.
    Gavel,
    /// The Standard Workload Format of the Parallel Workloads Archive.
    Swf,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "philly" => Ok(Self::Philly),
            "tiresias" => Ok(Self::Tiresias),
            "gavel" => Ok(Self::Gavel),
            "swf" => Ok(Self::Swf),
            _ => Err(format!("unknown trace format {s:?} (expected philly, tiresias, gavel or swf)")),
        }
    }
}

/// A line the reader could not use.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{file}:{line}: {field}: {reason}")]
pub struct TraceError {
    /// The file.
    pub file: String,
    /// The line, 1-based.
    pub line: usize,
    /// The field.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// What a reader produced.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Jobs in submission order.
    pub jobs: Vec<TraceJob>,
    /// Malformed lines skipped (with `skip_bad`).
    pub skipped: Vec<TraceError>,
}

/// A field error before the file and line are known.
#[derive(Debug)]
pub(crate) struct Bad {
    pub field: &'static str,
    pub reason: String,
}

impl Bad {
    pub(crate) fn new(field: &'static str, reason: impl fmt::Display) -> Self {
        Self { field, reason: reason.to_string() }
    }
}

/// Parses a number, naming the field on failure.
pub(crate) fn num<T: FromStr>(field: &'static str, text: &str) -> Result<T, Bad>
where
    T::Err: fmt::Display,
{
    text.trim().parse().map_err(|e| Bad::new(field, format!("{text:?} is not a number ({e})")))
}

/// Seconds (possibly fractional) to whole milliseconds, at least one second.
pub(crate) fn duration_ms(field: &'static str, seconds: f64) -> Result<u64, Bad> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(Bad::new(field, format!("{seconds} is not a duration")));
    }
    Ok((seconds.trunc() as u64).max(1) * 1000)
}

/// A row of a file: its line number and its text.
pub(crate) type Row<'a> = (usize, &'a str);

/// Applies a row parser to every data row, stopping at the first bad row unless `skip_bad`.
pub(crate) fn parse_rows<'a>(
    file: &str,
    rows: impl Iterator<Item = Row<'a>>,
    skip_bad: bool,
    mut parse: impl FnMut(&str) -> Result<TraceJob, Bad>,
) -> Result<Trace, TraceError> {
    let mut trace = Trace::default();
    let mut teams = BTreeSet::new();
    for (line, text) in rows {
        match parse(text) {
            Ok(mut job) => {
                job.line = line;
                match teams.get(&job.team) {
                    Some(team) => job.team = TeamId::clone(team),
                    None => {
                        teams.insert(job.team.clone());
                    }
                }
                trace.jobs.push(job);
            }
            Err(bad) => {
                let e = TraceError { file: file.to_owned(), line, field: bad.field.to_owned(), reason: bad.reason };
                if !skip_bad {
                    return Err(e);
                }
                trace.skipped.push(e);
            }
        }
    }
    Ok(trace)
}

/// Reads a trace file.
pub fn read(path: &Path, format: Format, skip_bad: bool) -> Result<Trace, TraceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TraceError {
        file: file.clone(),
        line: 0,
        field: "file".into(),
        reason: e.to_string(),
    })?;
    parse(&text, &file, format, skip_bad)
}

/// Parses a trace from text; `file` names it in errors. Jobs come out sorted by submission time
/// (stable: ties keep file order) and rebased so the first is submitted at 0.
pub fn parse(text: &str, file: &str, format: Format, skip_bad: bool) -> Result<Trace, TraceError> {
    let mut trace = match format {
        Format::Philly => philly::parse(text, file, skip_bad)?,
        Format::Tiresias => tiresias::parse(text, file, skip_bad)?,
        Format::Gavel => gavel::parse(text, file, skip_bad)?,
        Format::Swf => swf::parse(text, file, skip_bad)?,
    };
    trace.jobs = rebase(std::mem::take(&mut trace.jobs));
    Ok(trace)
}

/// Sorts jobs by submission (stable) and shifts them so the first is submitted at 0; used after
/// reading, and again after keeping only some teams (`--team`).
pub fn rebase(jobs: Vec<TraceJob>) -> Vec<TraceJob> {
    let mut jobs = by_submission(jobs);
    let first = jobs.first().map_or(0, |j| j.submit_ms);
    for j in &mut jobs {
        j.submit_ms -= first;
    }
    jobs
}

/// The jobs sorted by submission time, ties in their order: a sort of (time, index) keys,
/// then one move of each job (sorting the jobs themselves moved each many times).
fn by_submission(jobs: Vec<TraceJob>) -> Vec<TraceJob> {
    if jobs.is_sorted_by_key(|j| j.submit_ms) {
        return jobs;
    }
    let mut order: Vec<(u64, usize)> = jobs.iter().enumerate().map(|(i, j)| (j.submit_ms, i)).collect();
    order.sort_unstable();
    let mut slots: Vec<Option<TraceJob>> = jobs.into_iter().map(Some).collect();
    order.into_iter().map(|(_, i)| slots[i].take().expect("each index once")).collect()
}

/// Data rows of a CSV with a header: non-empty lines after the first, with line numbers.
pub(crate) fn csv_rows(text: &str) -> impl Iterator<Item = Row<'_>> {
    text.lines().enumerate().skip(1).map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim().is_empty())
}

/// Checks a CSV header, naming the first column that differs.
pub(crate) fn check_header(text: &str, file: &str, expected: &[&str]) -> Result<(), TraceError> {
    let header = text.lines().next().unwrap_or("");
    let got: Vec<&str> = header.split(',').map(str::trim).collect();
    if got.len() < expected.len() || got[..expected.len()] != *expected {
        return Err(TraceError {
            file: file.to_owned(),
            line: 1,
            field: "header".into(),
            reason: format!("expected {:?}, found {header:?}", expected.join(",")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Rebasing sorts by submission time keeping ties in trace order (what a stable sort
        /// of the jobs gives), and shifts the first submission to 0.
        #[test]
        fn rebase_is_a_stable_sort_by_submission(times in prop::collection::vec(0u64..20, 0..60)) {
            let jobs: Vec<TraceJob> = times
                .iter()
                .enumerate()
                .map(|(i, &t)| TraceJob {
                    line: i,
                    submit_ms: 1000 + t * 1000,
                    duration_ms: 1000,
                    gpus: 1,
                    team: "a".into(),
                    estimate_ms: None,
                })
                .collect();
            let mut expected = jobs.clone();
            expected.sort_by_key(|j| j.submit_ms);
            let first = expected.first().map_or(0, |j| j.submit_ms);
            let got = rebase(jobs);
            prop_assert_eq!(got.iter().map(|j| j.line).collect::<Vec<_>>(), expected.iter().map(|j| j.line).collect::<Vec<_>>());
            prop_assert!(got.iter().zip(&expected).all(|(g, e)| g.submit_ms == e.submit_ms - first));
        }
    }
}
