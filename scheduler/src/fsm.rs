//! The replicated state machine: committed proposals applied to `qm_core::State` (or to the
//! tokens), in log order, on every replica alike. A retried submission (same request id) gets
//! the first answer.

use crate::access::tokens::{AccessError, Tokens};
use crate::audit::{describe, describe_change, Asker, Audit, AuditRecord};
use crate::codec::{decode_snapshot, encode_snapshot, CodecError, Dedup, Members, Op, Proposal, Replicated};
use qm_core::{ApplyError, Command, JobId, JobSpec, Outcome, State};

/// Why a proposal was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// By the scheduler's state.
    #[error(transparent)]
    Core(#[from] ApplyError),
    /// By the tokens.
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// What applying one proposal gave, for the replica that proposed it.
#[derive(Debug)]
pub struct Applied {
    /// The proposing replica.
    pub origin: u64,
    /// Its sequence number.
    pub seq: u64,
    /// The command's outcome, or why it was refused.
    pub result: Result<Outcome, Refused>,
    /// When the command happened, when it carries its time.
    pub at_ms: Option<u64>,
}

/// The state machine of one replica.
#[derive(Debug, Default)]
pub struct Fsm {
    /// The scheduler's state.
    pub state: State,
    /// Request ids of submissions seen.
    pub dedup: Dedup,
    /// The last log index applied.
    pub applied: u64,
    /// Voters and their addresses.
    pub members: Members,
    /// Bearer tokens.
    pub tokens: Tokens,
    /// The changes callers asked for.
    pub audit: Audit,
}

/// What a snapshot holds, as of the moment `Fsm::cut` was called.
#[derive(Clone, Debug)]
pub struct FsmCut {
    state: qm_core::StateCut,
    rest: Replicated,
}

impl FsmCut {
    /// The snapshot bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode_snapshot(&self.state, &self.rest)
    }
}

impl Fsm {
    /// The state machine a snapshot holds, as of log index `index`.
    pub fn restore(data: &[u8], index: u64) -> Result<Self, CodecError> {
        let (state, rest) = decode_snapshot(data)?;
        let Replicated { dedup, members, tokens, audit } = rest;
        Ok(Self { state, dedup, applied: index, members, tokens, audit })
    }

    /// Encodes the state machine for a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        self.cut().encode()
    }

    /// A consistent copy of what a snapshot holds, cheap to take (it shares jobs, nodes and
    /// request ids with the live state), to encode without holding the state's lock.
    pub fn cut(&self) -> FsmCut {
        let rest = Replicated {
            dedup: self.dedup.clone(),
            members: self.members.clone(),
            tokens: self.tokens.clone(),
            audit: self.audit.clone(),
        };
        FsmCut { state: self.state.cut(), rest }
    }

    /// Records a membership change applied at `index`: the member's address is added or
    /// dropped.
    pub fn record_change(&mut self, index: u64, removed: bool, id: u64, address: String, asker: Option<Asker>) {
        self.applied = index;
        if let Some(a) = asker {
            let what = describe_change(removed, id, &address);
            self.audit.push(AuditRecord { index, at_ms: a.at_ms, name: a.name, role: a.role, what, error: None });
        }
        if removed {
            self.members.remove(&id);
        } else {
            self.members.insert(id, address);
        }
    }

    /// Applies the proposals of the entry at `index`.
    pub fn apply(&mut self, index: u64, proposals: Vec<Proposal>) -> Vec<Applied> {
        self.applied = index;
        proposals.into_iter().map(|p| self.apply_one(index, p)).collect()
    }

    /// Applies one proposal, and records it in the audit trail when a caller asked for it.
    fn apply_one(&mut self, index: u64, mut p: Proposal) -> Applied {
        let (origin, seq) = (p.origin, p.seq);
        let asked = p.asker.take().map(|a| (describe(&p.op), a));
        let revoked = asked.as_ref().and_then(|(_, a)| a.hash).is_some_and(|h| self.tokens.find(&h).is_none());
        let (result, at_ms) = if revoked { (Err(AccessError::Revoked.into()), None) } else { self.decide(p) };
        if let Some((what, a)) = asked {
            let (what, error) = match &result {
                Ok(out) => (with_jobs(what, &out.submitted), None),
                Err(e) => (what, Some(e.to_string())),
            };
            self.audit.push(AuditRecord { index, at_ms: a.at_ms, name: a.name, role: a.role, what, error });
        }
        Applied { origin, seq, result, at_ms }
    }

    /// What a proposal gives, and the time its command carries.
    fn decide(&mut self, p: Proposal) -> (Result<Outcome, Refused>, Option<u64>) {
        let command = match p.op {
            Op::Core(c) => c,
            Op::Access(c) => return (self.tokens.apply(c).map(|()| Outcome::default()).map_err(Refused::from), None),
        };
        let at_ms = command.at_ms();
        let seen = match (&p.request_id, &command) {
            (Some(id), Command::Submit { jobs, .. }) => {
                self.dedup.get(id).map(|first| (id, first, self.same_jobs(first, jobs)))
            }
            _ => None,
        };
        let result = match seen {
            Some((_, first, true)) => Ok(Outcome { submitted: first.to_vec(), ..Outcome::default() }),
            Some((id, first, false)) => {
                Err(ApplyError::RequestIdReused { request_id: id.clone(), jobs: first.to_vec() }.into())
            }
            None => {
                let result = self.state.apply(command).map_err(Refused::from);
                if let (Some(id), Ok(out)) = (p.request_id, &result) {
                    if !out.submitted.is_empty() {
                        self.dedup.insert(id, out.submitted.clone());
                    }
                }
                result
            }
        };
        (result, at_ms)
    }

    /// Whether a retried submission of `jobs` is the one that created `first`: the same
    /// number of jobs, each with the spec its job was created with. (A job the state no longer
    /// holds leaves nothing to compare, and counts as the same.)
    fn same_jobs(&self, first: &[JobId], jobs: &[JobSpec]) -> bool {
        first.len() == jobs.len()
            && first.iter().zip(jobs).all(|(id, spec)| self.state.job(*id).is_none_or(|j| j.spec == *spec))
    }
}

/// `what` with the ids of the jobs a submission created: all of them up to five, else the
/// first and the last (a batch's ids are consecutive).
fn with_jobs(what: String, jobs: &[JobId]) -> String {
    match jobs {
        [] => what,
        [one] => format!("{what}: job {}", one.0),
        [first, .., last] if jobs.len() > 5 => format!("{what}: jobs {}..={}", first.0, last.0),
        _ => format!("{what}: jobs {}", jobs.iter().map(|j| j.0.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(seq: u64, request_id: Option<&str>) -> Proposal {
        submit_named(seq, request_id, &format!("j{seq}"))
    }

    fn submit_named(seq: u64, request_id: Option<&str>, name: &str) -> Proposal {
        let mut spec = crate::testing::job_spec("t");
        spec.name = name.to_owned();
        Proposal {
            origin: 1,
            seq,
            asker: None,
            request_id: request_id.map(str::to_owned),
            op: Op::Core(Command::Submit { jobs: vec![spec], at_ms: seq }),
        }
    }

    fn fsm() -> Fsm {
        let mut f = Fsm::default();
        for c in crate::testing::setup("t", 8) {
            f.state.apply(c).unwrap();
        }
        f
    }

    #[test]
    fn a_retried_submission_gets_the_first_answer_and_creates_nothing() {
        let mut f = fsm();
        let first = f.apply(1, vec![submit_named(1, Some("r"), "train")]);
        let again = f.apply(2, vec![submit_named(2, Some("r"), "train"), submit(3, None)]);
        let ids = |a: &Applied| a.result.as_ref().unwrap().submitted.clone();
        assert_eq!(ids(&first[0]), vec![JobId(1)]);
        assert_eq!(ids(&again[0]), vec![JobId(1)]);
        assert_eq!(ids(&again[1]), vec![JobId(2)]);
        assert_eq!(f.state.jobs().len(), 2);
        assert_eq!(f.applied, 2);
        let times: Vec<Option<u64>> = again.iter().map(|a| a.at_ms).collect();
        assert_eq!(times, [Some(2), Some(3)], "each change carries its command's time, for watchers");
    }

    #[test]
    fn a_request_id_reused_for_other_jobs_is_refused_and_creates_nothing() {
        let mut f = fsm();
        f.apply(1, vec![submit_named(1, Some("r"), "train")]);
        let before = f.state.hash();
        let out = f.apply(2, vec![submit_named(2, Some("r"), "eval")]);
        let err = out[0].result.as_ref().unwrap_err();
        assert_eq!(err, &Refused::Core(ApplyError::RequestIdReused { request_id: "r".into(), jobs: vec![JobId(1)] }));
        assert!(err.to_string().starts_with("request_id: \"r\" was used for a different submission"), "{err}");
        assert_eq!(f.state.hash(), before);
        let mut two = submit_named(3, Some("r"), "train");
        let Op::Core(Command::Submit { jobs, .. }) = &mut two.op else { unreachable!() };
        jobs.push(jobs[0].clone());
        assert!(f.apply(3, vec![two])[0].result.is_err(), "more jobs than the first submission");
    }

    #[test]
    fn a_change_asked_with_a_token_revoked_before_it_applies_is_refused() {
        use crate::access::tokens::{digest, AccessCommand, TokenRecord};
        let mut f = fsm();
        let role = crate::access::Role::Member { teams: ["t".to_owned()].into() };
        let ci = TokenRecord { name: "ci".into(), role, hash: digest("s"), created_ms: 0, created_by: String::new() };
        let access = |c| Proposal { origin: 1, seq: 0, request_id: None, asker: None, op: Op::Access(c) };
        f.apply(1, vec![access(AccessCommand::Create(ci))]);
        let asker = Asker { name: "ci".into(), role: "member".into(), hash: Some(digest("s")), at_ms: 9 };
        let by_ci = |seq| Proposal { asker: Some(asker.clone()), ..submit(seq, None) };
        assert!(f.apply(2, vec![by_ci(2)])[0].result.is_ok());
        let out = f.apply(3, vec![access(AccessCommand::Revoke { name: "ci".into() }), by_ci(3)]);
        let before = f.state.hash();
        assert_eq!(out[1].result, Err(Refused::Access(AccessError::Revoked)));
        assert_eq!(f.state.jobs().len(), 1, "only the submission before the revocation");
        assert_eq!(f.apply(4, vec![by_ci(4)])[0].result, Err(Refused::Access(AccessError::Revoked)));
        let last = f.audit.records().last().unwrap();
        assert_eq!((&*last.name, last.error.as_deref()), ("ci", Some("the token was revoked")));
        assert_eq!(f.state.hash(), before);
    }

    #[test]
    fn the_trail_records_what_callers_asked_for_and_how_it_ended() {
        let mut f = fsm();
        let asker = |name: &str| Asker { name: name.into(), role: "admin".into(), hash: None, at_ms: 7 };
        let batch = |seq, n| {
            let Op::Core(Command::Submit { jobs, at_ms }) = submit(seq, None).op else { unreachable!() };
            let op = Op::Core(Command::Submit { jobs: vec![jobs[0].clone(); n], at_ms });
            Proposal { asker: Some(asker("ops")), op, ..submit(seq, None) }
        };
        let cancel = |job| Proposal {
            asker: Some(asker("ci")),
            op: Op::Core(Command::Cancel { job: JobId(job), at_ms: 8 }),
            ..submit(0, None)
        };
        f.apply(1, vec![batch(1, 1), batch(2, 7), submit(3, None), cancel(42)]);
        f.record_change(2, false, 4, "10.0.0.4:7070".into(), Some(asker("ops")));
        f.record_change(3, true, 4, String::new(), None);
        let trail: Vec<(u64, &str, &str, Option<&str>)> =
            f.audit.records().map(|r| (r.index, &*r.name, &*r.what, r.error.as_deref())).collect();
        assert_eq!(
            trail,
            [
                (1, "ops", "submit 1 job(s) of team t: job 1", None),
                (1, "ops", "submit 7 job(s) of team t: jobs 2..=8", None),
                (1, "ci", "cancel job 42", Some("unknown job 42")),
                (2, "ops", "add replica 4 at 10.0.0.4:7070", None),
            ],
            "changes nobody asked for (the replicas' own) are not in the trail"
        );
        assert!(f.audit.records().all(|r| r.at_ms == 7 && r.role == "admin"));
        let back = Fsm::restore(&f.snapshot(), 3).unwrap();
        assert_eq!(back.audit, f.audit, "a snapshot carries the trail");
    }

    #[test]
    fn the_trail_forgets_its_oldest_records_beyond_its_capacity() {
        let mut f = Fsm::default();
        let asker = Asker { name: "ops".into(), role: "admin".into(), hash: None, at_ms: 1 };
        for i in 0..=crate::audit::CAPACITY as u64 {
            let cancel = Op::Core(Command::Cancel { job: JobId(i), at_ms: 1 });
            f.apply(
                i + 1,
                vec![Proposal { origin: 1, seq: i, request_id: None, asker: Some(asker.clone()), op: cancel }],
            );
        }
        assert_eq!(f.audit.len(), crate::audit::CAPACITY);
        assert_eq!(f.audit.records().next().map(|r| r.what.as_str()), Some("cancel job 1"));
    }

    #[test]
    fn a_refused_command_is_answered_and_changes_nothing() {
        let mut f = fsm();
        let before = f.state.hash();
        let out = f.apply(
            1,
            vec![Proposal {
                asker: None,
                origin: 3,
                seq: 9,
                request_id: None,
                op: Op::Core(Command::Cancel { job: JobId(42), at_ms: 1 }),
            }],
        );
        assert_eq!((out[0].origin, out[0].seq), (3, 9));
        assert!(out[0].result.is_err());
        assert_eq!(f.state.hash(), before);
    }

    #[test]
    fn a_snapshot_restores_state_and_request_ids() {
        let mut f = fsm();
        f.apply(1, vec![submit_named(1, Some("r"), "train")]);
        let mut back = Fsm::restore(&f.snapshot(), 1).unwrap();
        assert_eq!(back.state.hash(), f.state.hash());
        let again = back.apply(2, vec![submit_named(2, Some("r"), "train")]);
        assert_eq!(again[0].result.as_ref().unwrap().submitted, vec![JobId(1)]);
    }
}
