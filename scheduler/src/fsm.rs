//! The replicated state machine: committed proposals applied to `qm_core::State` (or to the
//! tokens), in log order, on every replica alike. A retried submission (same request id) gets
//! the first answer.

use crate::access::tokens::{AccessError, Tokens};
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
        Ok(Self { state, dedup: rest.dedup, applied: index, members: rest.members, tokens: rest.tokens })
    }

    /// Encodes the state machine for a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        self.cut().encode()
    }

    /// A consistent copy of what a snapshot holds, cheap to take (it shares jobs, nodes and
    /// request ids with the live state), to encode without holding the state's lock.
    pub fn cut(&self) -> FsmCut {
        let rest = Replicated { dedup: self.dedup.clone(), members: self.members.clone(), tokens: self.tokens.clone() };
        FsmCut { state: self.state.cut(), rest }
    }

    /// Records a membership change applied at `index`: the member's address is added or
    /// dropped.
    pub fn record_change(&mut self, index: u64, removed: bool, id: u64, address: String) {
        self.applied = index;
        if removed {
            self.members.remove(&id);
        } else {
            self.members.insert(id, address);
        }
    }

    /// Applies the proposals of the entry at `index`.
    pub fn apply(&mut self, index: u64, proposals: Vec<Proposal>) -> Vec<Applied> {
        self.applied = index;
        proposals.into_iter().map(|p| self.apply_one(p)).collect()
    }

    fn apply_one(&mut self, p: Proposal) -> Applied {
        if p.by.is_some_and(|h| self.tokens.find(&h).is_none()) {
            return Applied { origin: p.origin, seq: p.seq, result: Err(AccessError::Revoked.into()), at_ms: None };
        }
        let command = match p.op {
            Op::Core(c) => c,
            Op::Access(c) => {
                let result = self.tokens.apply(c).map(|()| Outcome::default()).map_err(Refused::from);
                return Applied { origin: p.origin, seq: p.seq, result, at_ms: None };
            }
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
        Applied { origin: p.origin, seq: p.seq, result, at_ms }
    }

    /// Whether a retried submission of `jobs` is the one that created `first`: the same
    /// number of jobs, each with the spec its job was created with. (A job the state no longer
    /// holds leaves nothing to compare, and counts as the same.)
    fn same_jobs(&self, first: &[JobId], jobs: &[JobSpec]) -> bool {
        first.len() == jobs.len()
            && first.iter().zip(jobs).all(|(id, spec)| self.state.job(*id).is_none_or(|j| j.spec == *spec))
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
            by: None,
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
        let access = |c| Proposal { origin: 1, seq: 0, request_id: None, by: None, op: Op::Access(c) };
        f.apply(1, vec![access(AccessCommand::Create(ci))]);
        let by_ci = |seq| Proposal { by: Some(digest("s")), ..submit(seq, None) };
        assert!(f.apply(2, vec![by_ci(2)])[0].result.is_ok());
        let out = f.apply(3, vec![access(AccessCommand::Revoke { name: "ci".into() }), by_ci(3)]);
        let before = f.state.hash();
        assert_eq!(out[1].result, Err(Refused::Access(AccessError::Revoked)));
        assert_eq!(f.state.jobs().len(), 1, "only the submission before the revocation");
        assert_eq!(f.apply(4, vec![by_ci(4)])[0].result, Err(Refused::Access(AccessError::Revoked)));
        assert_eq!(f.state.hash(), before);
    }

    #[test]
    fn a_refused_command_is_answered_and_changes_nothing() {
        let mut f = fsm();
        let before = f.state.hash();
        let out = f.apply(
            1,
            vec![Proposal {
                by: None,
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
