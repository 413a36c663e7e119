//! What travels inside Raft: a log entry's data is a batch of proposals (format version byte,
//! then postcard), and a snapshot's data is the replica's state machine (magic, version, then
//! postcard of the core state's own snapshot, the request-id table, the members and the tokens).
//! Version 1 of both (before tokens) is still read.

use crate::access::tokens::{AccessCommand, Tokens};
use crate::audit::{Asker, Audit};
use qm_core::{Command, JobId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Version of the entry format this release writes; it reads this one and 1 (whose proposals
/// carry core commands only).
pub const ENTRY_VERSION: u8 = 2;
/// The first entry format.
const ENTRY_V1: u8 = 1;
/// Magic of a state-machine snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"QMRS";
/// Version of the state-machine snapshot format this release writes; it reads this one and 1
/// (which holds no tokens).
pub const SNAPSHOT_VERSION: u16 = 2;
/// The first snapshot format.
const SNAPSHOT_V1: u16 = 1;

/// What a proposal changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The scheduler's state.
    Core(Command),
    /// The tokens.
    Access(AccessCommand),
}

/// One client command in a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The replica that proposed it; only it answers the client.
    pub origin: u64,
    /// The proposer's sequence number, to find the waiting client.
    pub seq: u64,
    /// The client's token for retries of a submission.
    pub request_id: Option<String>,
    /// Who asked for the change, for the audit trail; with the hash of their token, so that the
    /// change is refused when the token is revoked by the time it applies (a replica that
    /// admitted it before it heard of the revocation cannot slip it in). None for the replicas'
    /// own changes and agents' reports.
    pub asker: Option<Asker>,
    /// The change.
    pub op: Op,
}

/// A proposal of the first entry format.
#[derive(Serialize, Deserialize)]
struct ProposalV1 {
    origin: u64,
    seq: u64,
    request_id: Option<String>,
    command: Command,
}

impl From<ProposalV1> for Proposal {
    fn from(p: ProposalV1) -> Self {
        Proposal { origin: p.origin, seq: p.seq, request_id: p.request_id, asker: None, op: Op::Core(p.command) }
    }
}

/// Why entry or snapshot data does not decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A format this release does not know.
    #[error("{what}: format version {found} is not known to this release (it knows {known})")]
    Version {
        /// Entry or snapshot.
        what: &'static str,
        /// Found.
        found: u32,
        /// Known.
        known: u32,
    },
    /// Bytes that do not decode.
    #[error("{what} does not decode: {reason}")]
    Decode {
        /// Entry or snapshot.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
}

/// Encodes a batch of proposals as entry data.
pub fn encode_batch(batch: &[Proposal]) -> Vec<u8> {
    encode_after(vec![ENTRY_VERSION], batch)
}

/// Appends the encoding of `value` to `out`. Postcard's own `to_extend` copies byte by byte
/// through an iterator, which unoptimised builds (the tests') run at a few tens of MB/s: a
/// 15 MB entry held the Raft thread for most of a second, past an election timeout.
fn encode_after<T: Serialize + ?Sized>(out: Vec<u8>, value: &T) -> Vec<u8> {
    postcard::serialize_with_flavor(value, Appender(out)).expect("encoding to a Vec cannot fail")
}

/// A postcard output that appends to a `Vec` a slice at a time.
struct Appender(Vec<u8>);

impl postcard::ser_flavors::Flavor for Appender {
    type Output = Vec<u8>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Decodes entry data.
pub fn decode_batch(data: &[u8]) -> Result<Vec<Proposal>, CodecError> {
    let bad = |e: postcard::Error| CodecError::Decode { what: "log entry", reason: e.to_string() };
    match data.split_first() {
        Some((&ENTRY_VERSION, body)) => postcard::from_bytes(body).map_err(bad),
        Some((&ENTRY_V1, body)) => {
            let v1: Vec<ProposalV1> = postcard::from_bytes(body).map_err(bad)?;
            Ok(v1.into_iter().map(Proposal::from).collect())
        }
        Some((&v, _)) => {
            Err(CodecError::Version { what: "log entry", found: u32::from(v), known: u32::from(ENTRY_VERSION) })
        }
        None => Ok(Vec::new()),
    }
}

/// What a membership-change entry carries besides the change: who proposed it (to answer
/// them) and the new member's address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeContext {
    /// The proposing replica.
    pub origin: u64,
    /// Its sequence number.
    pub seq: u64,
    /// The added member's replication address (empty for a removal).
    pub address: String,
    /// Who asked for it (absent in contexts of the first release).
    pub asker: Option<Asker>,
}

/// A `ChangeContext` of the first release.
#[derive(Deserialize)]
struct ChangeContextV1 {
    origin: u64,
    seq: u64,
    address: String,
}

impl ChangeContext {
    /// Encodes it for `ConfChange::context`.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
    }

    /// Decodes a `ConfChange::context`, of this release or the first.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        postcard::from_bytes(bytes).or_else(|e| match postcard::from_bytes::<ChangeContextV1>(bytes) {
            Ok(v1) => Ok(ChangeContext { origin: v1.origin, seq: v1.seq, address: v1.address, asker: None }),
            Err(_) => Err(CodecError::Decode { what: "membership change", reason: e.to_string() }),
        })
    }
}

/// Request ids seen, with the jobs they created, so that a retried submission is answered with
/// the first answer instead of creating the jobs twice. Bounded: the oldest ids are forgotten.
/// Kept in persistent collections (`imbl`), so that a snapshot's copy costs O(1) instead of
/// 100,000 strings; the first change after a copy copies the nodes it touches, which hold
/// shared pointers (an id is one `Arc<str>` for the map and the order), not strings. The ids
/// are hashed: every replica looks each submission up and inserts it, and an ordered map of
/// 100,000 ids cost a cache miss per comparison. They encode as the ordered map and sequence of
/// the first format did, with the map's entries in the order the ids came (the same on every
/// replica), so either format reads the other.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DedupWire")]
pub struct Dedup {
    jobs: imbl::HashMap<Arc<str>, Arc<[JobId]>>,
    /// The same entries, oldest first.
    order: imbl::Vector<(Arc<str>, Arc<[JobId]>)>,
}

/// `Dedup` as decoded, before the check that its map and its order hold the same ids.
#[derive(Deserialize)]
struct DedupWire {
    jobs: BTreeMap<String, Vec<JobId>>,
    order: Vec<String>,
}

impl TryFrom<DedupWire> for Dedup {
    type Error = String;

    fn try_from(mut w: DedupWire) -> Result<Self, String> {
        let mut d = Dedup::default();
        for id in w.order {
            let jobs =
                w.jobs.remove(&id).ok_or_else(|| format!("request ids: {id:?} is in the order, not in the table"))?;
            let entry: (Arc<str>, Arc<[JobId]>) = (id.into(), jobs.into());
            d.jobs.insert(entry.0.clone(), entry.1.clone());
            d.order.push_back(entry);
        }
        match w.jobs.keys().next() {
            Some(id) => Err(format!("request ids: {id:?} is in the table, not in the order")),
            None => Ok(d),
        }
    }
}

impl Dedup {
    /// Ids remembered at most.
    pub const CAPACITY: usize = 100_000;

    /// The jobs a request id created, if seen.
    pub fn get(&self, request_id: &str) -> Option<&[JobId]> {
        self.jobs.get(request_id).map(|j| &**j)
    }

    /// Remembers the jobs of a request id.
    pub fn insert(&mut self, request_id: String, jobs: Vec<JobId>) {
        let entry: (Arc<str>, Arc<[JobId]>) = (request_id.into(), jobs.into());
        if self.jobs.insert(entry.0.clone(), entry.1.clone()).is_none() {
            self.order.push_back(entry);
        }
        while self.order.len() > Self::CAPACITY {
            if let Some((old, _)) = self.order.pop_front() {
                self.jobs.remove(&old);
            }
        }
    }
}

impl Serialize for Dedup {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        type Entries = imbl::Vector<(Arc<str>, Arc<[JobId]>)>;
        /// The map, in the order the ids came.
        struct InOrder<'a>(&'a Entries);
        impl Serialize for InOrder<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(id, jobs)| (&**id, &**jobs)))
            }
        }
        /// The ids alone.
        struct Ids<'a>(&'a Entries);
        impl Serialize for Ids<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|(id, _)| &**id))
            }
        }
        #[derive(Serialize)]
        struct Wire<'a> {
            jobs: InOrder<'a>,
            order: Ids<'a>,
        }
        Wire { jobs: InOrder(&self.order), order: Ids(&self.order) }.serialize(serializer)
    }
}

/// A snapshot's body as written: the core state's own snapshot as bytes, borrowed.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    #[serde(serialize_with = "as_bytes")]
    state: &'a [u8],
    dedup: &'a Dedup,
    members: &'a Members,
    tokens: &'a Tokens,
    audit: &'a Audit,
}

/// A snapshot's body as read.
#[derive(Deserialize)]
struct SnapshotBody<'a> {
    #[serde(borrow)]
    state: &'a [u8],
    dedup: Dedup,
    members: Members,
    tokens: Tokens,
    audit: Audit,
}

/// A snapshot's body of the first format.
#[derive(Deserialize)]
struct SnapshotBodyV1<'a> {
    #[serde(borrow)]
    state: &'a [u8],
    dedup: Dedup,
    members: Members,
}

/// What a snapshot holds besides the core state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replicated {
    /// Request ids seen.
    pub dedup: Dedup,
    /// Voters and their addresses.
    pub members: Members,
    /// Bearer tokens.
    pub tokens: Tokens,
    /// The audit trail.
    pub audit: Audit,
}

/// Bytes as one length and a copy (postcard writes a `Vec<u8>` the same way, byte by byte).
fn as_bytes<S: serde::Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Voters and their replication addresses, replicated so that a restarted replica knows them.
pub type Members = BTreeMap<u64, String>;

/// Encodes a state-machine snapshot from a cut of the core state.
pub fn encode_snapshot(state: &qm_core::StateCut, rest: &Replicated) -> Vec<u8> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    let (dedup, members, tokens, audit) = (&rest.dedup, &rest.members, &rest.tokens, &rest.audit);
    let body = SnapshotBodyRef { state: &state.to_bytes(), dedup, members, tokens, audit };
    encode_after(out, &body)
}

/// Decodes a state-machine snapshot.
pub fn decode_snapshot(data: &[u8]) -> Result<(qm_core::State, Replicated), CodecError> {
    let bad = |reason: String| CodecError::Decode { what: "snapshot", reason };
    if data.len() < 6 || &data[..4] != SNAPSHOT_MAGIC {
        return Err(bad("it does not start with QMRS".into()));
    }
    let found = u16::from_le_bytes([data[4], data[5]]);
    let (state, rest) = match found {
        SNAPSHOT_VERSION => {
            let b: SnapshotBody = postcard::from_bytes(&data[6..]).map_err(|e| bad(e.to_string()))?;
            (b.state, Replicated { dedup: b.dedup, members: b.members, tokens: b.tokens, audit: b.audit })
        }
        SNAPSHOT_V1 => {
            let b: SnapshotBodyV1 = postcard::from_bytes(&data[6..]).map_err(|e| bad(e.to_string()))?;
            (b.state, Replicated { dedup: b.dedup, members: b.members, ..Replicated::default() })
        }
        _ => return Err(CodecError::Version { what: "snapshot", found: found.into(), known: SNAPSHOT_VERSION.into() }),
    };
    let state = qm_core::State::from_bytes(state).map_err(|e| bad(e.to_string()))?;
    Ok((state, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_unknown_versions_are_refused() {
        let batch = vec![
            Proposal {
                origin: 2,
                seq: 7,
                request_id: Some("r1".into()),
                asker: None,
                op: Op::Core(Command::Cancel { job: JobId(3), at_ms: 9 }),
            },
            Proposal {
                origin: 2,
                seq: 8,
                request_id: None,
                asker: Some(Asker { name: "ops".into(), role: "admin".into(), hash: Some([1; 32]), at_ms: 5 }),
                op: Op::Access(AccessCommand::Revoke { name: "ci".into() }),
            },
        ];
        let data = encode_batch(&batch);
        assert_eq!(decode_batch(&data).unwrap(), batch);
        let stored = postcard::to_extend(&batch, vec![ENTRY_VERSION]).unwrap();
        assert_eq!(data, stored, "the bytes postcard's own Vec output gives, so stored entries are unchanged");
        let mut future = data.clone();
        future[0] = 9;
        assert!(decode_batch(&future).unwrap_err().to_string().contains("format version 9"));
        assert!(decode_batch(&data[..data.len() - 1]).is_err());
        assert!(decode_batch(&[]).unwrap().is_empty(), "raft's empty entries carry no proposals");
    }

    #[test]
    fn entries_of_the_first_format_read_as_core_commands() {
        let command = Command::Cancel { job: JobId(3), at_ms: 9 };
        let v1 = vec![ProposalV1 { origin: 2, seq: 7, request_id: Some("r1".into()), command: command.clone() }];
        let data = postcard::to_extend(&v1, vec![ENTRY_V1]).unwrap();
        let want = Proposal { origin: 2, seq: 7, request_id: Some("r1".into()), asker: None, op: Op::Core(command) };
        assert_eq!(decode_batch(&data).unwrap(), vec![want]);
    }

    /// The request-id table as the first format held it (an ordered map), for both directions.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct FirstDedup {
        jobs: BTreeMap<String, Vec<JobId>>,
        order: std::collections::VecDeque<String>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct FirstBody {
        state: Vec<u8>,
        dedup: FirstDedup,
        members: Members,
    }

    fn first_body(state: &qm_core::State, members: &Members) -> FirstBody {
        FirstBody {
            state: state.to_bytes(),
            dedup: FirstDedup {
                jobs: [("a", 2), ("b", 1), ("c", 3)].map(|(k, j)| (k.to_owned(), vec![JobId(j)])).into(),
                order: ["b", "a", "c"].map(str::to_owned).into(),
            },
            members: members.clone(),
        }
    }

    #[test]
    fn snapshots_of_the_first_format_read_with_no_tokens() {
        let mut dedup = Dedup::default();
        for (id, job) in [("b", 1), ("a", 2), ("c", 3)] {
            dedup.insert(id.into(), vec![JobId(job)]);
        }
        let state = qm_core::State::new();
        let members = Members::from([(1, "127.0.0.1:7000".to_owned()), (2, "127.0.0.1:7001".to_owned())]);
        let mut first = SNAPSHOT_MAGIC.to_vec();
        first.extend_from_slice(&SNAPSHOT_V1.to_le_bytes());
        let first = postcard::to_extend(&first_body(&state, &members), first).unwrap();
        let (back, rest) = decode_snapshot(&first).unwrap();
        assert_eq!(back.hash(), state.hash());
        assert_eq!(rest, Replicated { dedup, members, ..Replicated::default() });
    }

    #[test]
    fn the_request_id_table_encodes_in_arrival_order_whatever_the_hash_order() {
        let mut a = Dedup::default();
        for i in 0..1_000u64 {
            a.insert(format!("req-{i}"), vec![JobId(i + 1)]);
        }
        let wire = postcard::to_allocvec(&a).unwrap();
        // Postcard writes a map as its length and its pairs, as it writes a sequence of pairs:
        // read that way, the map's entries show the order they were written in.
        #[derive(Deserialize)]
        struct AsWritten {
            jobs: Vec<(String, Vec<JobId>)>,
            order: Vec<String>,
        }
        let written: AsWritten = postcard::from_bytes(&wire).unwrap();
        let arrival: Vec<String> = (0..1_000).map(|i| format!("req-{i}")).collect();
        assert_eq!(written.order, arrival);
        assert_eq!(written.jobs.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), arrival);
        assert_eq!(written.jobs[7].1, vec![JobId(8)]);
        let b: Dedup = postcard::from_bytes(&wire).unwrap();
        assert_eq!(postcard::to_allocvec(&b).unwrap(), wire, "a decoded table encodes to the same bytes");
        assert_eq!(b, a);
    }

    #[test]
    fn a_request_id_table_whose_parts_disagree_is_refused() {
        let bad = FirstDedup {
            jobs: [("a", 1)].map(|(k, j)| (k.to_owned(), vec![JobId(j)])).into(),
            order: ["b"].map(str::to_owned).into(),
        };
        let err = postcard::from_bytes::<Dedup>(&postcard::to_allocvec(&bad).unwrap()).unwrap_err();
        assert_eq!(err, postcard::Error::SerdeDeCustom, "refused by the check, not by the format");
        let wire = DedupWire { jobs: bad.jobs, order: bad.order.into() };
        assert_eq!(Dedup::try_from(wire).unwrap_err(), "request ids: \"b\" is in the order, not in the table");
        let one = |k: &str| BTreeMap::from([(k.to_owned(), vec![JobId(1)])]);
        let wire = DedupWire { jobs: one("a"), order: vec![] };
        assert_eq!(Dedup::try_from(wire).unwrap_err(), "request ids: \"a\" is in the table, not in the order");
        let wire = DedupWire { jobs: one("a"), order: vec!["a".into(), "a".into()] };
        assert!(Dedup::try_from(wire).is_err(), "an id twice in the order");
    }

    #[test]
    fn snapshots_round_trip_and_bad_ones_are_refused() {
        let mut dedup = Dedup::default();
        dedup.insert("r".into(), vec![JobId(1)]);
        let state = qm_core::State::new();
        let members = Members::from([(1, "127.0.0.1:7000".to_owned())]);
        let mut tokens = Tokens::default();
        tokens.apply(AccessCommand::Bootstrap { hash: [7; 32], at_ms: 5 }).unwrap();
        let mut audit = Audit::default();
        let what = "cancel job 1".to_owned();
        audit.push(crate::audit::AuditRecord {
            index: 3,
            at_ms: 4,
            name: "ops".into(),
            role: "admin".into(),
            what,
            error: None,
        });
        let rest = Replicated { dedup, members, tokens, audit };
        let data = encode_snapshot(&state.cut(), &rest);
        let (back, read) = decode_snapshot(&data).unwrap();
        assert_eq!(back.hash(), state.hash());
        assert_eq!(read, rest);
        assert_eq!(read.tokens.find(&[7; 32]).map(|r| r.name.as_str()), Some("bootstrap"), "the hash index is rebuilt");
        assert!(decode_snapshot(b"nope").is_err());
        let mut newer = data.clone();
        newer[4] = 3;
        assert!(decode_snapshot(&newer).unwrap_err().to_string().contains("format version 3"));
    }

    #[test]
    fn dedup_forgets_the_oldest_ids_beyond_its_capacity() {
        let mut d = Dedup::default();
        for i in 0..=Dedup::CAPACITY {
            d.insert(i.to_string(), vec![JobId(i as u64 + 1)]);
        }
        assert!(d.get("0").is_none());
        assert_eq!(d.get("1"), Some(&[JobId(2)][..]));
        assert_eq!(d.get(&Dedup::CAPACITY.to_string()).map(<[JobId]>::len), Some(1));
    }
}
