//! Why each queued job waits: an explained scheduling cycle over the whole queue (what
//! `qm why` runs for one job), kept for a few seconds and shared by every page that asks. A
//! page never waits for a cycle, except the first that asks when none was ever run; after
//! that, a stale cycle is run again in the background while pages show the last one.

use crate::node::Handle;
use qm_core::{JobId, Plan, PolicyConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an explained cycle stands before the next page that asks runs another.
pub const FRESH_FOR: Duration = Duration::from_secs(5);

/// The last explained cycle: its plan, where each job's report is in it, and when it ran.
#[derive(Debug)]
pub struct Cycle {
    /// The plan.
    pub plan: Plan,
    /// Jobs the cycle would place.
    pub placed: std::collections::HashSet<JobId>,
    /// Each reported job's index in `plan.reports`.
    pub report_of: HashMap<JobId, usize>,
    ran: Instant,
}

impl Cycle {
    /// The cause for `id` given this cycle, as `qm why` words it.
    pub fn cause(&self, state: &qm_core::State, id: JobId) -> String {
        let report = self.report_of.get(&id).map(|i| &self.plan.reports[*i]);
        qm_core::cause::cause(state, id, report, self.placed.contains(&id))
    }
}

#[derive(Debug, Default)]
struct Slot {
    last: Option<Arc<Cycle>>,
    running: bool,
}

/// The shared cache.
#[derive(Debug, Clone)]
pub struct Reasons {
    slot: Arc<Mutex<Slot>>,
    policy: PolicyConfig,
}

impl Reasons {
    /// A cache that explains with `policy` (the replica's).
    pub fn new(policy: PolicyConfig) -> Self {
        Self { slot: Arc::default(), policy: PolicyConfig { explain: true, ..policy } }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest cycle; runs one first if there never was one, and starts another in the
    /// background when it is stale.
    pub async fn latest(&self, handle: &Handle) -> Option<Arc<Cycle>> {
        let (last, start) = {
            let mut slot = self.slot();
            let stale = slot.last.as_ref().is_none_or(|c| c.ran.elapsed() >= FRESH_FOR);
            let start = stale && !slot.running;
            slot.running |= start;
            (slot.last.clone(), start)
        };
        if !start {
            return last;
        }
        let (this, handle) = (self.clone(), handle.clone());
        let job = tokio::task::spawn_blocking(move || {
            let cycle = Arc::new(explain(&handle, &this.policy));
            let mut slot = this.slot();
            (slot.last, slot.running) = (Some(Arc::clone(&cycle)), false);
            cycle
        });
        match last {
            Some(last) => Some(last),
            None => job.await.ok(),
        }
    }
}

/// An explained cycle over a copy of the state: the live state's lock is held only for the
/// cut (microseconds), not for the cycle (a tenth of a second at 100,000 pending jobs), which
/// would hold up the Raft thread's writes and every page behind them.
fn explain(handle: &Handle, policy: &PolicyConfig) -> Cycle {
    let cut = handle.fsm().state.cut();
    let state = cut.into_state();
    let plan = qm_core::schedule(&state, policy, crate::service::now_ms());
    let placed = plan.decisions.placements.iter().map(|p| p.job).collect();
    let report_of = plan.reports.iter().enumerate().map(|(i, r)| (r.job, i)).collect();
    Cycle { plan, placed, report_of, ran: Instant::now() }
}
