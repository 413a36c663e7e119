//! The pages as HTML (maud), with the style sheet embedded. Numbers a test reads carry a
//! `data-k` attribute naming them (`flavor:gpu/h100:allocated`), so that the browser test
//! compares what is shown with the API without scraping layout.

use super::view::{DeviceRow, FlavorRow, NodeRow, Overview, TeamRow};
use super::Output;
use maud::{html, Markup, DOCTYPE};
use qm_core::Job;
use std::time::{Duration, UNIX_EPOCH};

/// The style sheet, served at `/ui/style.css`.
pub const STYLE: &str = include_str!("style.css");

/// What the header of every page says about the replica.
#[derive(Debug, Clone)]
pub struct Banner {
    /// This replica's id and the leader's.
    pub replica: u64,
    /// The leader (0 when none is known).
    pub leader: u64,
    /// The index this replica has applied.
    pub applied: u64,
    /// Who looks.
    pub viewer: String,
    /// Whether this replica hears the agents' readings (it leads).
    pub has_readings: bool,
}

/// A whole page: `title` and `body` under the navigation bar.
pub fn page(title: &str, banner: &Banner, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Quartermaster" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body {
                nav {
                    a.brand href="/ui/" { "Quartermaster" }
                    a href="/ui/" { "Cluster" }
                    a href="/ui/queue" { "Queue" }
                    a href="/ui/nodes" { "Nodes" }
                    span.who {
                        "replica " (banner.replica) " · leader " (leader(banner.leader)) " · applied " (banner.applied)
                        " · " (banner.viewer)
                        form method="post" action="/ui/logout" { button { "Sign out" } }
                    }
                }
                @if !banner.has_readings {
                    p.note { "This replica does not lead: the devices' live readings go to the leader (replica "
                        (leader(banner.leader)) "), whose dashboard shows utilization." }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn leader(id: u64) -> String {
    if id == 0 {
        "none".into()
    } else {
        id.to_string()
    }
}

/// A number cell a test can find.
fn num(key: &str, value: impl std::fmt::Display) -> Markup {
    html! { td.num data-k=(key) { (value) } }
}

/// The cluster at a glance.
pub fn overview(o: &Overview) -> Markup {
    html! {
        section {
            h2 { "Devices by flavor" }
            table {
                tr { th { "Flavor" } th { "Total" } th { "Allocated" } th title={"Allocated, and reading under " (o.below_pct) "% utilization now"} { "Idle" }
                     th { "Free" } th { "Unhealthy" } }
                @for f in &o.flavors { (flavor_row(f)) }
            }
            p { "Nodes: " span data-k="nodes:total" { (o.nodes.0) } ", ready " span data-k="nodes:ready" { (o.nodes.1) }
                ", cordoned or draining " (o.nodes.2) "." }
            p { "Jobs: "
                @for (state, n) in &o.jobs { span.pill { (state) " " span data-k={"jobs:" (state)} { (n) } } " " } }
        }
        section {
            h2 { "Teams against quota" }
            table {
                tr { th { "Team" } th { "Flavor" } th { "Nominal" } th { "Allocated" } th { "Borrowed" } th { "Lent" }
                     th { "Utilization now" } th { "Pending" } th { "Oldest wait" } }
                @for t in &o.teams { (team_row(t, o.below_pct)) }
            }
        }
    }
}

fn flavor_row(f: &FlavorRow) -> Markup {
    let k = |c: &str| format!("flavor:{}:{c}", f.flavor);
    html! {
        tr {
            td { (f.flavor) }
            (num(&k("total"), f.total)) (num(&k("allocated"), f.allocated)) (num(&k("idle"), f.idle))
            (num(&k("free"), f.free)) (num(&k("unhealthy"), f.unhealthy))
        }
    }
}

fn team_row(t: &TeamRow, below_pct: u32) -> Markup {
    let q = &t.quota;
    let k = |c: &str| format!("team:{}:{}:{c}", q.team.as_str(), q.flavor);
    html! {
        tr {
            td { a href={"/ui/queue?team=" (q.team.as_str())} { (q.team.as_str()) } }
            td { (q.flavor.to_string()) }
            (num(&k("nominal"), q.nominal)) (num(&k("allocated"), q.allocated))
            (num(&k("borrowed"), q.borrowed)) (num(&k("lent"), q.lent))
            td.num data-k=(k("utilization")) { @match t.utilization_pct { Some(p) => { (bar(p, p < below_pct)) }, None => { "–" } } }
            (num(&k("pending"), t.pending))
            td.num { @if t.pending > 0 { (span(t.oldest_wait_ms)) } }
        }
    }
}

/// A utilization bar with its number.
fn bar(pct: u32, idle: bool) -> Markup {
    let class = if idle { "bar idle" } else { "bar" };
    html! { span class=(class) { span.fill style={"width:" (pct.min(100)) "%"} {} } " " (pct) "%" }
}

/// A duration in whole seconds.
fn span(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// A time as RFC 3339, to the second.
fn at(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A row of the queue, with its reason to wait.
pub struct Waiting<'a> {
    /// The job.
    pub job: &'a Job,
    /// Why it waits, from the last explained cycle.
    pub reason: String,
}

/// The queue: pending jobs with their reasons.
pub fn queue(
    rows: &[Waiting<'_>],
    team: Option<&str>,
    next: Option<u64>,
    cycle_at_ms: Option<u64>,
    now_ms: u64,
) -> Markup {
    html! {
        @if let Some(t) = team { p { "Team " b { (t) } " · " a href="/ui/queue" { "all teams" } } }
        p.note { @match cycle_at_ms {
            Some(ms) => { "Reasons from a scheduling cycle run at " (at(ms)) " (every few seconds while someone looks)." },
            None => { "No scheduling cycle was explained yet." }
        } }
        table {
            tr { th { "Job" } th { "Team" } th { "Name" } th { "Priority" } th { "Devices" } th { "Waited" } th { "Why it waits" } }
            @for w in rows {
                @let j = w.job;
                tr data-job=(j.id.0) {
                    td { a href={"/ui/jobs/" (j.id.0)} { (j.id.0) } }
                    td { (j.spec.team.as_str()) } td { (j.spec.name) } td.num { (j.priority) }
                    td.num { (j.spec.gang.replicas) " × " (j.spec.gang.devices.count) " " (j.spec.gang.devices.kind) }
                    td.num { (span(now_ms.saturating_sub(j.submitted_ms))) }
                    td.reason data-k={"reason:" (j.id.0)} { (w.reason) }
                }
            }
        }
        @if rows.is_empty() { p { "No job waits." } }
        @if let Some(after) = next {
            p { a href={"/ui/queue?after=" (after) @if let Some(t) = team { "&team=" (t) }} { "Next page →" } }
        }
    }
}

/// The nodes with their devices.
pub fn nodes(rows: &[NodeRow], next: Option<&str>) -> Markup {
    html! {
        table {
            tr { th { "Node" } th { "Status" } th { "Devices: health, holder, utilization, memory, temperature" } th { "Readings" } }
            @for n in rows {
                tr data-node=(n.name) {
                    td { (n.name) } td { (n.status) }
                    td { @for d in &n.devices { (device(&n.name, d)) } }
                    td.num { @match n.readings_age_s { Some(s) => { (s) " s ago" }, None => { "–" } } }
                }
            }
        }
        @if rows.is_empty() { p { "No node agent has registered." } }
        @if let Some(from) = next { p { a href={"/ui/nodes?from=" (from)} { "Next page →" } } }
    }
}

fn device(node: &str, d: &DeviceRow) -> Markup {
    let k = |c: &str| format!("device:{node}:{}:{c}", d.id);
    let r = d.reading.as_ref();
    html! {
        div.device class=[(!d.healthy).then_some("unhealthy")] title=(d.model) {
            code { (d.id) } " "
            span data-k=(k("health")) { @if d.healthy { "healthy" } @else { "unhealthy" } } " · "
            @match d.job { Some(j) => { a data-k=(k("job")) href={"/ui/jobs/" (j.0)} { "job " (j.0) } }, None => { "free" } }
            @if let Some(p) = r.and_then(|r| r.utilization_pct) { " · " span data-k=(k("utilization")) { (bar(p, d.idle)) } }
            @if let Some(m) = r.and_then(|r| r.memory_used_mib) { " · " (m) " MiB" }
            @if let Some(t) = r.and_then(|r| r.temperature_c) { " · " (t) " °C" }
        }
    }
}

/// One device a job holds, with its readings.
pub struct Held {
    /// The replica it belongs to.
    pub replica: usize,
    /// Its node.
    pub node: String,
    /// The device.
    pub device: DeviceRow,
    /// Mean and peak utilization over the attempt, percent, as the agent reported them.
    pub attempt: Option<(u32, u32)>,
}

/// A job's page.
pub fn job(j: &Job, owner: bool, held: &[Held], events: &[(u64, String)], output: &Output, now_ms: u64) -> Markup {
    html! {
        table.facts {
            tr { th { "State" } td data-k="job:state" { (j.state.as_str()) } }
            tr { th { "Team" } td { (j.spec.team.as_str()) } }
            tr { th { "Name" } td { (j.spec.name) } }
            tr { th { "Priority" } td { (j.priority) } }
            tr { th { "Devices" } td { (j.spec.gang.replicas) " × " (j.spec.gang.devices.count) " " (j.spec.gang.devices.kind) } }
            tr { th { "Attempt" } td { (j.attempt) ", " (j.preemptions) " preemption(s), " (j.failures) " failure(s)" } }
            tr { th { "Latest" } td { (j.message) } }
            @if let Some(ms) = j.idle_since_ms { tr { th { "Idle" } td data-k="job:idle" { "every device under the threshold since " (at(ms)) } } }
            tr { th { "Command" } td { @if owner { code { (j.spec.command.join(" ")) } } @else { i { "another team's job" } } } }
        }
        h2 { "Devices" }
        @if held.is_empty() { p { "It holds none now." } }
        @else {
            table {
                tr { th { "Replica" } th { "Node" } th { "Device" } th { "Mean, peak over the attempt" } }
                @for h in held {
                    tr { td.num { (h.replica) } td { a href={"/ui/nodes?from=" (h.node)} { (h.node) } } td { (device(&h.node, &h.device)) }
                         td.num { @match h.attempt { Some((mean, peak)) => { (mean) "%, " (peak) "%" }, None => { "–" } } } }
                }
            }
        }
        h2 { "Events" }
        table {
            @for (ms, what) in events { tr { td { (at(*ms)) } td { (span(now_ms.saturating_sub(*ms))) " ago" } td { (what) } } }
        }
        h2 { "Output" }
        @match output {
            Output::Tail(Ok(text)) if text.is_empty() => { p.note { "Replica 0 has written nothing yet." } },
            Output::Tail(Ok(text)) => {
                p.note { "The last " (super::tail::KEEP / 1024) " KiB at most of replica 0's output; " code { "qm logs " (j.id.0) } " prints it all." }
                pre.log data-k="job:output" { (text) }
            },
            Output::Tail(Err(why)) => { p.note { "The output could not be read: " (why) } },
            Output::NotYours => { p.note { "Another team's job: its output is theirs." } },
            Output::NotRunning => { p.note { "It holds no devices now: " code { "qm logs " (j.id.0) } " reads its output from the agents." } },
        }
    }
}

/// The sign-in page, with why it is asked.
pub fn sign_in(why: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Sign in · Quartermaster" } link rel="stylesheet" href="/ui/style.css"; }
            body.signin {
                main {
                    h1 { "Quartermaster" }
                    p.note { (why) }
                    form method="post" action="/ui/login" {
                        label for="token" { "Token (" code { "qm token create" } " or the bootstrap admin token)" }
                        input #token type="password" name="token" autocomplete="off" required;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// A refusal or failure, as a page.
pub fn problem(title: &str, why: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } link rel="stylesheet" href="/ui/style.css"; }
            body { main { h1 { (title) } p { (why) } p { a href="/ui/login" { "Sign in with another token" } } } }
        }
    }
}
