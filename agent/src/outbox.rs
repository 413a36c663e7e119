//! Replica reports the scheduler has not yet recorded. Each report gets a number; the agent
//! sends it, sends it again on every new session (in `Register`) and after [`RESEND_AFTER`]
//! without an answer, and forgets it once the scheduler answers `Recorded` with its number.
//! A report lost with a leader (sent, never committed) is therefore never lost for good: a
//! replica that ended is neither waited for forever nor started again.

use qm_proto::v1::{ReplicaPhase, ReplicaStatus};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a sent report waits for its `Recorded` before it is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(5);

/// Reports kept at most; beyond, the oldest is dropped (a scheduler that never answers, such
/// as one older than the acknowledgements, must not grow the agent without bound).
pub const MAX_UNRECORDED: usize = 10_000;

/// The reports awaiting `Recorded`, by number, with when each was last sent.
#[derive(Debug, Default)]
pub struct Outbox {
    next: u64,
    waiting: BTreeMap<u64, (ReplicaStatus, Instant)>,
}

impl Outbox {
    /// Numbers a new report and keeps it as sent at `now`; returns it, to send.
    pub fn add(&mut self, mut report: ReplicaStatus, now: Instant) -> ReplicaStatus {
        self.next += 1;
        report.seq = self.next;
        self.waiting.insert(self.next, (report.clone(), now));
        while self.waiting.len() > MAX_UNRECORDED {
            if let Some((seq, (r, _))) = self.waiting.pop_first() {
                tracing::warn!(job = r.job_id, seq, "the scheduler never recorded a replica report; dropped");
            }
        }
        report
    }

    /// Forgets the reports the scheduler recorded.
    pub fn recorded(&mut self, seqs: &[u64]) {
        for seq in seqs {
            self.waiting.remove(seq);
        }
    }

    /// Every report still waiting, oldest first, as sent again at `now` (for a registration).
    pub fn all(&mut self, now: Instant) -> Vec<ReplicaStatus> {
        self.waiting.values_mut().map(|entry| resent(entry, now)).collect()
    }

    /// The reports sent at least [`RESEND_AFTER`] before `now`, as sent again at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<ReplicaStatus> {
        let late = self.waiting.values_mut().filter(|(_, sent)| now.duration_since(*sent) >= RESEND_AFTER);
        late.map(|entry| resent(entry, now)).collect()
    }

    /// Whether a report that replica `replica` of `job`'s `attempt` ended still waits: a start
    /// order for it (from a leader that has not recorded the end) must not run it again.
    pub fn ended(&self, job: u64, replica: u32, attempt: u32) -> bool {
        let end = [ReplicaPhase::Exited as i32, ReplicaPhase::FailedToStart as i32];
        self.waiting
            .values()
            .any(|(r, _)| r.job_id == job && r.replica == replica && r.attempt == attempt && end.contains(&r.phase))
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// Marks a report as sent at `now`; returns it, to send.
fn resent((report, sent): &mut (ReplicaStatus, Instant), now: Instant) -> ReplicaStatus {
    *sent = now;
    report.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(job: u64) -> ReplicaStatus {
        ReplicaStatus { job_id: job, phase: ReplicaPhase::Exited as i32, ..ReplicaStatus::default() }
    }

    #[test]
    fn a_report_is_sent_again_until_recorded() {
        let t0 = Instant::now();
        let mut o = Outbox::default();
        let a = o.add(exited(1), t0);
        let b = o.add(exited(2), t0);
        assert_eq!((a.seq, b.seq), (1, 2));
        assert!(o.due(t0 + Duration::from_secs(1)).is_empty(), "not yet due");
        let again: Vec<u64> = o.due(t0 + RESEND_AFTER).iter().map(|r| r.job_id).collect();
        assert_eq!(again, [1, 2]);
        assert!(o.due(t0 + RESEND_AFTER).is_empty(), "sent again just now");
        assert!(o.ended(1, 0, 0) && !o.ended(1, 0, 1) && !o.ended(3, 0, 0));
        o.recorded(&[1]);
        assert!(!o.ended(1, 0, 0), "recorded: the state knows");
        let registering: Vec<u64> = o.all(t0 + RESEND_AFTER * 3).iter().map(|r| r.seq).collect();
        assert_eq!(registering, [2], "a new session carries what is still unrecorded");
        o.recorded(&[2, 99]);
        assert!(o.is_empty());
    }

    #[test]
    fn the_oldest_reports_go_beyond_the_bound() {
        let t0 = Instant::now();
        let mut o = Outbox::default();
        for job in 0..=MAX_UNRECORDED as u64 {
            o.add(exited(job), t0);
        }
        assert_eq!(o.len(), MAX_UNRECORDED);
        assert_eq!(o.all(t0).first().map(|r| r.job_id), Some(1), "job 0's report, the oldest, went");
    }
}
