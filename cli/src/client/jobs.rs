//! The ML engineer's commands: `qm submit`, `qm jobs`, `qm job`, `qm cancel`, `qm why`.

use super::connect::call;
use super::usage::{usage_json, usage_lines};
use super::words::{self, ago, devices, job_flavor, nodes, table};
use super::{jobs_client, Target};
use crate::out::{say, Failure};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use qm_core::scenario::JobsFile;
use qm_proto::convert::job_spec_to;
use qm_proto::v1::*;
use serde_json::{json, Value};

/// The accelerator kinds, as `--kind` takes them.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    /// GPUs (NVIDIA, AMD, Intel).
    Gpu,
    /// Google TPUs.
    Tpu,
    /// FPGA cards.
    Fpga,
    /// Graphcore IPUs.
    Ipu,
}

impl Kind {
    fn proto(self) -> AcceleratorKind {
        match self {
            Self::Gpu => AcceleratorKind::Gpu,
            Self::Tpu => AcceleratorKind::Tpu,
            Self::Fpga => AcceleratorKind::Fpga,
            Self::Ipu => AcceleratorKind::Ipu,
        }
    }
}

/// Flags of `qm submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A TOML file of `[[job]]` entries: the jobs file `qm plan` reads (examples/jobs.toml).
    /// Every job is submitted as pending; `now_s`, `state` and `submit_s` are ignored.
    #[arg(long, short = 'f', conflicts_with = "command")]
    file: Option<std::path::PathBuf>,
    /// The team (default: `QM_TEAM`).
    #[arg(long, env = "QM_TEAM")]
    team: Option<String>,
    /// Job name.
    #[arg(long, default_value = "job")]
    name: String,
    /// Kind of accelerator.
    #[arg(long, value_enum, default_value_t = Kind::Gpu)]
    kind: Kind,
    /// Devices per replica (of --kind; the flag keeps its common name for every kind).
    #[arg(long, visible_alias = "devices", default_value_t = 1)]
    gpus: u32,
    /// Replicas (a gang: all start together or none).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Acceptable models, preferred first (repeat the flag); any the team has quota for when
    /// absent.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Priority class (`qm priority-class list`).
    #[arg(long)]
    priority_class: Option<String>,
    /// Times the job is started again after it fails or its node is lost.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// Retry token: a retried submission with the same token is not created twice.
    #[arg(long)]
    request_id: Option<String>,
    /// The command to run, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// Flags of `qm jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only this team's.
    #[arg(long)]
    team: Option<String>,
    /// Only jobs in this state.
    #[arg(long, value_parser = ["pending", "starting", "running", "preempted", "stopping", "succeeded", "failed", "cancelled"])]
    state: Option<String>,
    /// `wide` adds the replicas, devices per replica, attempts and the message.
    #[arg(long, short = 'o', value_parser = ["wide"])]
    output: Option<String>,
    /// Print the table again after each burst of changes, until interrupted.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// Only running jobs flagged idle (every device they hold read under the idle threshold
    /// for their team's idle time), with since when.
    #[arg(long, conflicts_with = "state")]
    idle: bool,
}

impl JobsArgs {
    /// The team asked for, if any.
    pub fn team(&self) -> Option<&str> {
        self.team.as_deref()
    }
}

/// A job named by its id.
#[derive(Debug, Args)]
pub struct JobRef {
    /// The job id.
    pub id: u64,
}

/// Runs `qm submit`.
pub async fn submit(t: &Target, args: &SubmitArgs) -> Result<()> {
    let specs = match &args.file {
        Some(path) => file_specs(path)?,
        None => vec![flag_spec(args)?],
    };
    let request_id = args.request_id.clone().unwrap_or_else(fresh_request_id);
    let req = SubmitRequest { jobs: specs, request_id };
    let r = call(t, |c| {
        let req = req.clone();
        async move { jobs_client(c).submit(req).await }
    })
    .await;
    let r = match r {
        Err(e) if args.file.is_none() => return Err(in_flag_words(e)),
        other => other?,
    };
    if t.json {
        say!("{}", json!({ "job_ids": r.job_ids }));
    } else {
        for id in &r.job_ids {
            say!("submitted job {id}");
        }
    }
    Ok(())
}

/// The request's field paths that a flag sets, as the flag (most specific first).
const FLAG_FIELDS: [(&str, &str); 9] = [
    ("jobs[0].gang.devices.count", "--gpus"),
    ("jobs[0].gang.devices.models", "--model"),
    ("jobs[0].gang.devices", "--kind/--model"),
    ("jobs[0].gang.replicas", "--replicas"),
    ("jobs[0].priority_class", "--priority-class"),
    ("jobs[0].max_retries", "--max-retries"),
    ("jobs[0].command", "the command"),
    ("jobs[0].team", "--team"),
    ("jobs[0].name", "--name"),
];

/// A refusal of a submission made from flags, naming the flag rather than the request's field.
fn in_flag_words(e: anyhow::Error) -> anyhow::Error {
    let Some(f) = e.downcast_ref::<Failure>() else { return e };
    match FLAG_FIELDS.iter().find(|(field, _)| f.message.starts_with(field)) {
        Some((field, flag)) => Failure::new(f.exit, format!("{flag}{}", &f.message[field.len()..])).into(),
        None => e,
    }
}

fn file_specs(path: &std::path::Path) -> Result<Vec<JobSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--file {}", path.display()))?;
    let file: JobsFile = toml::from_str(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    file.jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            j.spec().map(|s| job_spec_to(&s)).map_err(|e| Failure::usage(format!("{}: job[{i}].{e}", path.display())))
        })
        .collect()
}

fn flag_spec(args: &SubmitArgs) -> Result<JobSpec> {
    let team = args.team.clone().ok_or_else(|| Failure::usage("--team: required (or --file)"))?;
    if args.command.is_empty() {
        return Err(Failure::usage("the command: required after `--` (e.g. `qm submit --team T -- python train.py`)"));
    }
    Ok(JobSpec {
        name: args.name.clone(),
        team,
        priority_class: args.priority_class.clone(),
        gang: Some(GangSpec {
            replicas: args.replicas,
            devices: Some(DeviceRequest {
                kind: args.kind.proto() as i32,
                models: args.models.clone(),
                count: args.gpus,
            }),
            cpu_millis: 0,
            mem_mib: 0,
        }),
        command: args.command.clone(),
        max_retries: args.max_retries,
        ..JobSpec::default()
    })
}

/// A token unique to this invocation, so that the client's own retries are not submitted twice.
fn fresh_request_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("qm-{}-{nanos}", std::process::id())
}

pub(super) async fn list_all(t: &Target, team: Option<&str>, states: Vec<i32>) -> Result<Vec<Job>> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let req = ListJobsRequest {
            team: team.unwrap_or_default().to_owned(),
            states: states.clone(),
            page_size: 1000,
            page_token: token.clone(),
            consistency: 0,
        };
        let r = call(t, |c| {
            let req = req.clone();
            async move { jobs_client(c).list(req).await }
        })
        .await?;
        all.extend(r.jobs);
        if r.next_page_token.is_empty() {
            return Ok(all);
        }
        token = r.next_page_token;
    }
}

fn priority_class(j: &Job) -> String {
    j.spec.as_ref().and_then(|s| s.priority_class.clone()).unwrap_or_else(|| "-".into())
}

fn job_row(j: &Job) -> Value {
    let spec = j.spec.clone().unwrap_or_default();
    let gang = spec.gang.clone().unwrap_or_default();
    json!({ "id": j.id, "name": spec.name, "team": spec.team, "state": words::state(j.state),
        "priority_class": spec.priority_class, "priority": j.priority, "flavor": job_flavor(j),
        "replicas": gang.replicas, "devices_per_replica": gang.devices.map_or(0, |d| d.count),
        "devices": devices(j), "nodes": nodes(j), "submitted_ms": j.submitted_ms, "attempt": j.attempt,
        "message": j.message, "idle_since_ms": j.idle_since_ms })
}

/// Runs `qm jobs`.
pub async fn jobs(t: &Target, args: &JobsArgs) -> Result<()> {
    let states = match (&args.state, args.idle) {
        (_, true) => vec![JobState::Running as i32],
        (None, false) => vec![],
        (Some(s), false) => vec![JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase()))
            .with_context(|| format!("--state: unknown state {s:?}"))? as i32],
    };
    let mut all = list_all(t, args.team.as_deref(), states).await?;
    if args.idle {
        all.retain(|j| j.idle_since_ms.is_some());
    }
    if t.json {
        say!("{}", Value::Array(all.iter().map(job_row).collect()));
        return Ok(());
    }
    let now = words::now_ms();
    let wide = args.output.is_some();
    let mut header = vec!["ID", "NAME", "TEAM", "STATE", "PRIORITY", "FLAVOR", "DEVICES", "NODE", "AGE"];
    if args.idle {
        header.push("IDLE FOR");
    }
    if wide {
        header.extend(["REPLICAS", "ATTEMPT", "MESSAGE"]);
    }
    let rows = all.iter().map(|j| {
        let spec = j.spec.clone().unwrap_or_default();
        let node = nodes(j);
        let node = match node.len() {
            0 => "-".to_owned(),
            1 => node[0].clone(),
            n => format!("{} (+{})", node[0], n - 1),
        };
        let mut row = vec![
            j.id.to_string(),
            spec.name,
            spec.team,
            words::state(j.state),
            priority_class(j),
            job_flavor(j),
            devices(j).to_string(),
            node,
            words::short_duration(now.saturating_sub(j.submitted_ms)),
        ];
        if args.idle {
            row.push(j.idle_since_ms.map_or_else(String::new, |s| words::short_duration(now.saturating_sub(s))));
        }
        if wide {
            let replicas = spec.gang.map_or(0, |g| g.replicas);
            row.extend([replicas.to_string(), j.attempt.to_string(), j.message.clone()]);
        }
        row
    });
    say!("{}", table(&header, &["ID", "DEVICES", "REPLICAS", "ATTEMPT"], rows));
    Ok(())
}

async fn get(t: &Target, id: u64) -> Result<Job> {
    let r = call(t, |c| async move { jobs_client(c).get(GetJobRequest { job_id: id, consistency: 0 }).await }).await?;
    r.job.context("the server sent no job")
}

/// The job's life so far, oldest first, from the times its record keeps.
fn events(j: &Job) -> Vec<(u64, String)> {
    let mut out = vec![(j.submitted_ms, "submitted".to_owned())];
    if let Some(at) = j.placed_ms {
        out.push((at, format!("placed (attempt {})", j.attempt)));
    }
    if let Some(at) = j.started_ms {
        out.push((at, "started".to_owned()));
    }
    if let Some(at) = j.finished_ms {
        out.push((at, words::state(j.state)));
    }
    out
}

/// Runs `qm job`.
pub async fn job(t: &Target, id: u64) -> Result<()> {
    let j = get(t, id).await?;
    if t.json {
        let mut row = job_row(&j);
        let spec = j.spec.clone().unwrap_or_default();
        let replicas: Vec<Value> = j
            .assignment
            .iter()
            .flat_map(|a| &a.replicas)
            .map(|r| json!({ "node": r.node, "devices": r.devices }))
            .collect();
        let events: Vec<Value> =
            events(&j).into_iter().map(|(at, what)| json!({ "at_ms": at, "event": what })).collect();
        let extra = json!({ "command": spec.command, "preemptions": j.preemptions, "failures": j.failures,
            "placed_ms": j.placed_ms, "started_ms": j.started_ms, "finished_ms": j.finished_ms,
            "assignment": replicas, "events": events, "usage": usage_json(&j) });
        if let (Some(row), Some(extra)) = (row.as_object_mut(), extra.as_object()) {
            row.extend(extra.clone());
        }
        say!("{row}");
        return Ok(());
    }
    let now = words::now_ms();
    let spec = j.spec.clone().unwrap_or_default();
    let gang = spec.gang.clone().unwrap_or_default();
    let state = words::state(j.state);
    let mut lines = vec![
        ("Name", format!("{} (job {})", spec.name, j.id)),
        ("Team", spec.team.clone()),
        ("State", state_line(&state, &j.message)),
        ("Command", spec.command.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" ")),
        ("Flavor", job_flavor(&j)),
        (
            "Devices",
            format!("{} ({} replica(s) x {})", devices(&j), gang.replicas, gang.devices.map_or(0, |d| d.count)),
        ),
        ("Priority", format!("{} (value {})", priority_class(&j), j.priority)),
    ];
    let placed: Vec<String> = j
        .assignment
        .iter()
        .flat_map(|a| &a.replicas)
        .enumerate()
        .map(|(i, r)| format!("replica {i} on {} [{}]", r.node, r.devices.join(" ")))
        .collect();
    lines.push(("Nodes", if placed.is_empty() { "-".into() } else { placed.join("\n         ") }));
    lines.push(("Attempts", format!("{} ({} preemption(s), {} failure(s))", j.attempt, j.preemptions, j.failures)));
    for (label, value) in lines {
        say!("{label:<8} {value}");
    }
    for line in usage_lines(&j) {
        say!("{line}");
    }
    say!("Events");
    for (at, what) in events(&j) {
        say!("  {:>9}  {what}", ago(now, at));
    }
    Ok(())
}

/// The state and the last message, without saying the state twice (`running (attempt 2)`).
fn state_line(state: &str, message: &str) -> String {
    if message.is_empty() || message.starts_with(state) {
        if message.is_empty() {
            state.to_owned()
        } else {
            message.to_owned()
        }
    } else {
        format!("{state}: {message}")
    }
}

/// An argument as a shell would need it typed: as it is when plain, else in single quotes.
fn shell_word(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Runs `qm cancel`.
pub async fn cancel(t: &Target, id: u64) -> Result<()> {
    let r = call(t, |c| async move { jobs_client(c).cancel(CancelJobRequest { job_id: id }).await }).await?;
    let state = words::state(r.state);
    if t.json {
        say!("{}", json!({ "job_id": id, "state": state }));
    } else {
        say!("job {id}: {state}");
    }
    Ok(())
}

/// A placement report as `qm plan --json` writes one (snake_case words, the same shape).
fn report_json(id: u64, r: &PlacementReport) -> Value {
    let reason = match PendingReason::try_from(r.reason).unwrap_or(PendingReason::Unspecified) {
        PendingReason::Preempting => json!({ "preempting": { "victims": r.victims } }),
        PendingReason::Blocked => json!({ "blocked": { "by": r.blocked_by } }),
        PendingReason::Reserved => {
            json!({ "reserved": { "devices": r.reserved_devices, "starts_within_ms": r.reserved_starts_within_ms } })
        }
        other => json!(other.as_str_name().trim_start_matches("PENDING_REASON_").to_lowercase()),
    };
    let attempts: Vec<Value> = r.attempts.iter().map(attempt_json).collect();
    json!({ "job": id, "position": r.position, "reason": reason, "attempts": attempts,
        "preemption": if r.preemption.is_empty() { Value::Null } else { json!(r.preemption) } })
}

fn attempt_json(a: &FlavorAttempt) -> Value {
    let counts = |n: &Option<NodeFilterCounts>| {
        let n = n.unwrap_or_default();
        json!({ "nodes": n.nodes, "not_ready": n.not_ready, "cordoned": n.cordoned, "no_flavor": n.no_flavor,
            "unhealthy": n.unhealthy, "busy": n.busy, "cpu": n.cpu, "memory": n.memory, "fit": n.fit,
            "replicas_fit": n.replicas_fit })
    };
    let outcome = match AttemptOutcome::try_from(a.outcome).unwrap_or(AttemptOutcome::Unspecified) {
        AttemptOutcome::Quota => {
            let q = a.quota.unwrap_or_default();
            let kind = QuotaDenialKind::try_from(q.kind).map_or("unspecified".into(), |k| {
                k.as_str_name().trim_start_matches("QUOTA_DENIAL_KIND_").to_lowercase()
            });
            json!({ "quota": { kind: { "usage": q.usage, "request": q.request, "nominal": q.nominal,
                "borrowing_limit": q.borrowing_limit, "borrow_needed": q.borrow_needed, "lendable": q.lendable } } })
        }
        AttemptOutcome::NoFit => json!({ "no_fit": counts(&a.nodes) }),
        AttemptOutcome::NeverFits => json!({ "never_fits": counts(&a.nodes) }),
        AttemptOutcome::Unspecified => json!("unspecified"),
    };
    json!({ "flavor": words::flavor(a.flavor.as_ref()), "outcome": outcome })
}

/// Runs `qm why`.
pub async fn why(t: &Target, id: u64) -> Result<()> {
    let r = call(t, |c| async move { jobs_client(c).why(WhyRequest { job_id: id }).await }).await?;
    let state = r.job.as_ref().map_or_else(String::new, |j| words::state(j.state));
    if t.json {
        let report = r.report.as_ref().map(|rep| report_json(id, rep));
        say!(
            "{}",
            json!({ "job": id, "state": state, "cause": r.cause, "report": report, "cycle_at_ms": r.cycle_at_ms })
        );
        return Ok(());
    }
    say!("job {id} ({state}): {}", r.cause);
    if r.report.is_some() {
        say!("details from a scheduling cycle run now:");
        say!("{}", r.text.trim_end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{shell_word, state_line};

    #[test]
    fn the_state_is_said_once() {
        assert_eq!(state_line("running", "running (attempt 2)"), "running (attempt 2)");
        assert_eq!(state_line("pending", ""), "pending");
        assert_eq!(state_line("failed", "replica 0 exited with code 3"), "failed: replica 0 exited with code 3");
    }

    #[test]
    fn commands_are_shown_as_they_would_be_typed() {
        let words = ["python3", "-c", "print('hi')", "a b", ""];
        let shown: Vec<String> = words.iter().map(|w| shell_word(w)).collect();
        assert_eq!(shown.join(" "), r#"python3 -c 'print('\''hi'\'')' 'a b' ''"#);
    }
}
