//! The read-only web dashboard on the replica's HTTP address, under `/ui/`: the cluster at a
//! glance, the queue with each job's reason to wait, the nodes and their devices, and a page
//! per job. Server-rendered HTML with its style sheet built in (no script, no build step);
//! each page reads this replica's state, and the devices' live readings where it leads.
//!
//! - `auth`: who may look (the API's tokens, kept in a cookie by the sign-in page).
//! - `view`: what each page shows, counted from the state.
//! - `reasons`: the explained scheduling cycle the queue's reasons come from.
//! - `tail`: the end of a running job's output, from its agent.
//! - `pages`: the HTML.

pub mod auth;
mod pages;
pub mod reasons;
mod tail;
pub mod view;

use crate::access::{Caller, Role};
use crate::node::Handle;
use crate::service::readings::Readings;
use auth::Refusal;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use pages::{Banner, Held, Waiting};
use qm_core::JobId;
use reasons::Reasons;
use serde::Deserialize;

/// What the pages read.
#[derive(Clone, Debug)]
pub struct Dashboard {
    /// The replica.
    pub handle: Handle,
    /// The devices' latest readings (heard while this replica leads).
    pub readings: Readings,
    /// Everyone sees everything (`--insecure`).
    pub insecure: bool,
    /// The queue's reasons.
    pub reasons: Reasons,
    /// How the replica dials agents (for a job's output).
    pub dialer: qm_proto::tls::Dialer,
    /// The last overview counted.
    pub cache: Cache,
}

/// How long an overview stands: it is counted at most once a second, however many look (at
/// 10,000 nodes and 100,000 jobs, counting takes tens of milliseconds under the state's lock).
const OVERVIEW_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// An overview and when it was counted.
type Counted = (std::time::Instant, std::sync::Arc<view::Overview>);

/// The last overview counted.
#[derive(Debug, Clone, Default)]
pub struct Cache(std::sync::Arc<std::sync::Mutex<Option<Counted>>>);

impl Cache {
    /// The overview, counted by `count` unless one under `OVERVIEW_FOR` old stands; the
    /// pages that ask meanwhile wait for the one count.
    fn overview(&self, count: impl FnOnce() -> view::Overview) -> std::sync::Arc<view::Overview> {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, o)) if at.elapsed() < OVERVIEW_FOR => std::sync::Arc::clone(o),
            _ => {
                let o = std::sync::Arc::new(count());
                *last = Some((std::time::Instant::now(), std::sync::Arc::clone(&o)));
                o
            }
        }
    }
}

/// The dashboard's routes.
pub fn routes(d: Dashboard) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/queue", get(queue))
        .route("/ui/nodes", get(nodes))
        .route("/ui/jobs/{id}", get(job))
        .route("/ui/login", get(sign_in_page).post(sign_in))
        .route("/ui/logout", post(sign_out))
        .route("/ui/style.css", get(style))
        .with_state(d)
}

impl Dashboard {
    fn banner(&self, caller: &Caller) -> Banner {
        let status = self.handle.status();
        let viewer = match &caller.role {
            _ if caller.hash.is_none() => "insecure: no token checked".to_owned(),
            Role::Member { teams } => {
                format!("{} (member of {})", caller.name, teams.iter().cloned().collect::<Vec<_>>().join(", "))
            }
            role => format!("{} ({})", caller.name, role.word()),
        };
        Banner {
            replica: status.id,
            leader: status.leader,
            applied: status.applied,
            viewer,
            has_readings: status.leader == status.id,
        }
    }

    /// The page titled `title` with `body`, for `caller`.
    fn page(&self, caller: &Caller, title: &str, body: Markup) -> Response {
        let banner = self.banner(caller);
        let mut response = Html(pages::page(title, &banner, body).into_string()).into_response();
        response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        response
    }
}

/// The caller, or why the page is refused.
fn viewer(d: &Dashboard, headers: &HeaderMap) -> Result<Caller, Refusal> {
    auth::viewer(headers, &d.handle, d.insecure)
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::SignIn(why) => (StatusCode::UNAUTHORIZED, Html(pages::sign_in(why).into_string())).into_response(),
        Refusal::Forbidden(why) => {
            (StatusCode::FORBIDDEN, Html(pages::problem("Not allowed", &why).into_string())).into_response()
        }
    }
}

async fn overview(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    let caller = match viewer(&d, &headers) {
        Ok(c) => c,
        Err(r) => return refused(r),
    };
    let o = d.cache.overview(|| {
        let fsm = d.handle.fsm();
        let below = d.readings.below_pct();
        d.readings.visit(|latest| view::overview(&fsm.state, latest, crate::service::now_ms(), below))
    });
    let body = pages::overview(&o);
    d.page(&caller, "Cluster", body)
}

#[derive(Debug, Deserialize)]
struct QueueQuery {
    team: Option<String>,
    #[serde(default)]
    after: u64,
}

async fn queue(State(d): State<Dashboard>, headers: HeaderMap, Query(q): Query<QueueQuery>) -> Response {
    let caller = match viewer(&d, &headers) {
        Ok(c) => c,
        Err(r) => return refused(r),
    };
    let cycle = d.reasons.latest(&d.handle).await;
    let now = crate::service::now_ms();
    let body = {
        let fsm = d.handle.fsm();
        let team = q.team.as_deref().filter(|t| !t.is_empty());
        let (jobs, next) = view::queue(&fsm.state, team, q.after);
        let rows: Vec<Waiting<'_>> = jobs
            .into_iter()
            .map(|job| Waiting {
                job,
                reason: cycle.as_ref().map_or_else(String::new, |c| c.cause(&fsm.state, job.id)),
            })
            .collect();
        pages::queue(&rows, team, next, cycle.as_ref().map(|c| c.plan.at_ms), now)
    };
    d.page(&caller, "Queue", body)
}

#[derive(Debug, Deserialize)]
struct NodesQuery {
    #[serde(default)]
    from: String,
}

async fn nodes(State(d): State<Dashboard>, headers: HeaderMap, Query(q): Query<NodesQuery>) -> Response {
    let caller = match viewer(&d, &headers) {
        Ok(c) => c,
        Err(r) => return refused(r),
    };
    let body = {
        let fsm = d.handle.fsm();
        let (rows, next) = d.readings.visit(|latest| view::nodes(&fsm.state, latest, &q.from, d.readings.below_pct()));
        pages::nodes(&rows, next.as_deref())
    };
    d.page(&caller, "Nodes", body)
}

async fn job(State(d): State<Dashboard>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let caller = match viewer(&d, &headers) {
        Ok(c) => c,
        Err(r) => return refused(r),
    };
    let Ok(id) = id.parse::<u64>() else {
        let why = format!("job id: {id:?} is not a number");
        return (StatusCode::BAD_REQUEST, Html(pages::problem("No such job", &why).into_string())).into_response();
    };
    let now = crate::service::now_ms();
    let (job, held, events, agent) = {
        let fsm = d.handle.fsm();
        let Some(j) = fsm.state.job(JobId(id)) else {
            let why = format!("job {id} does not exist (or this replica has not applied it yet)");
            return (StatusCode::NOT_FOUND, Html(pages::problem("No such job", &why).into_string())).into_response();
        };
        let below = d.readings.below_pct();
        let held = d.readings.visit(|latest| held(&fsm.state, j, latest, below));
        (j.clone(), held, events(j, &fsm.audit), agent_of(&fsm.state, j))
    };
    let owner = view::owns(&caller, &job);
    let output = match agent {
        Some(address) if owner => Output::Tail(tail::tail(&d.dialer, &address, id, auth::secret(&headers)).await),
        _ if !owner => Output::NotYours,
        _ => Output::NotRunning,
    };
    d.page(&caller, &format!("Job {id}"), pages::job(&job, owner, &held, &events, &output, now))
}

/// What a job's page shows of its output.
#[derive(Debug)]
pub enum Output {
    /// The end of it, or why it could not be read.
    Tail(Result<String, String>),
    /// Another team's job.
    NotYours,
    /// It holds no devices: no agent is known to have its output.
    NotRunning,
}

/// The agent address of the node `job`'s first replica runs on.
fn agent_of(state: &qm_core::State, job: &qm_core::Job) -> Option<String> {
    let node = &job.assignment.as_ref()?.replicas.first()?.node;
    state.nodes().get(node)?.spec.labels.get(qm_core::resource::ADDRESS_LABEL).cloned()
}

/// The devices `job` holds, with their live readings and the attempt's means.
fn held(state: &qm_core::State, job: &qm_core::Job, latest: &view::Latest, below_pct: u32) -> Vec<Held> {
    let Some(assignment) = &job.assignment else { return Vec::new() };
    let mut out = Vec::new();
    for (r, replica) in assignment.replicas.iter().enumerate() {
        let devices = view::node(state, latest, &replica.node, below_pct).map(|n| n.devices).unwrap_or_default();
        for d in devices.into_iter().filter(|d| replica.devices.iter().any(|x| x.as_str() == d.id)) {
            let attempt = job.usage.as_ref().and_then(|u| {
                let du = u.devices.iter().find(|x| x.node == replica.node && x.device.as_str() == d.id)?;
                (du.utilization_samples > 0)
                    .then(|| ((du.utilization_pct_sum / du.utilization_samples) as u32, du.utilization_pct_peak))
            });
            out.push(Held { replica: r, node: replica.node.as_str().to_owned(), device: d, attempt });
        }
    }
    out
}

/// What happened to `job`: its times, then the changes callers asked for that name it.
fn events(job: &qm_core::Job, audit: &crate::audit::Audit) -> Vec<(u64, String)> {
    let mut out = vec![(job.submitted_ms, format!("submitted by team {}", job.spec.team.as_str()))];
    out.extend(job.placed_ms.map(|ms| (ms, format!("placed (attempt {})", job.attempt))));
    out.extend(job.started_ms.map(|ms| (ms, "running".to_owned())));
    out.extend(job.finished_ms.map(|ms| (ms, format!("ended {}: {}", job.state.as_str(), job.message))));
    out.extend(job.idle_since_ms.map(|ms| (ms, "every device it holds idle from here on (flagged)".to_owned())));
    let named = format!("job {}", job.id.0);
    for record in audit.records().filter(|r| r.what.strip_prefix("cancel ").is_some_and(|w| w == named)) {
        let outcome = record.error.as_deref().map_or_else(String::new, |e| format!(" (refused: {e})"));
        out.push((record.at_ms, format!("{} by {}{outcome}", record.what, record.name)));
    }
    out.sort_by_key(|(ms, _)| *ms);
    out
}

async fn sign_in_page() -> Html<String> {
    Html(pages::sign_in("Sign in with a token to see the cluster.").into_string())
}

#[derive(Debug, Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(State(d): State<Dashboard>, Form(form): Form<SignIn>) -> Response {
    let secret = form.token.trim();
    match auth::caller_of(secret, &d.handle) {
        Ok(_) => ([(header::SET_COOKIE, auth::keep(secret))], Redirect::to("/ui/")).into_response(),
        Err(r) => refused(r),
    }
}

async fn sign_out() -> Response {
    ([(header::SET_COOKIE, auth::forget())], Redirect::to("/ui/login")).into_response()
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], pages::STYLE)
}
