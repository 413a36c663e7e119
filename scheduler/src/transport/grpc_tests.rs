//! The gRPC transport against a real `RaftService` on loopback: messages over the old 64 MiB
//! batch limit arrive whole, and a broken transfer goes on where it stopped.

use super::{GrpcTransport, CHUNK_BYTES};
use crate::node::Input;
use crate::service::raft::RaftServer;
use crate::transport::Transport;
use qm_proto::tls::Dialer;
use qm_proto::v1::raft_service_client::RaftServiceClient;
use qm_proto::v1::raft_service_server::RaftServiceServer;
use qm_proto::v1::{RaftBatch, RaftChunk};
use raft::eraftpb::{Message, MessageType};
use std::sync::mpsc;
use std::time::Duration;
use tokio_stream::wrappers::TcpListenerStream;

const CLUSTER: u64 = 7;

/// Starts replica 2's `RaftService` (with the server's 64 MiB decode limit) on a free port;
/// returns its address and inbox.
async fn receiver() -> (String, mpsc::Receiver<Input>) {
    let (inbox, rx) = mpsc::channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let service = RaftServiceServer::new(RaftServer::new(2, CLUSTER, inbox)).max_decoding_message_size(64 << 20);
    let serve =
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(serve);
    (address, rx)
}

/// A snapshot message from replica 1 to 2 carrying `len` bytes that differ from place to place.
fn snapshot(len: usize, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    (m.from, m.to, m.term) = (1, 2, term);
    m.mut_snapshot().mut_metadata().index = 42;
    m.mut_snapshot().data = (0..len).map(|i| (i * 31 / 7) as u8).collect::<Vec<u8>>().into();
    m
}

fn heartbeat(term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    (m.from, m.to, m.term) = (1, 2, term);
    m
}

/// The next Raft message the receiver hands its node, within `wait`.
async fn next(rx: mpsc::Receiver<Input>, wait: Duration) -> (Option<Message>, mpsc::Receiver<Input>) {
    tokio::task::spawn_blocking(move || loop {
        match rx.recv_timeout(wait) {
            Ok(Input::Raft(m)) => return (Some(*m), rx),
            Ok(_) => continue,
            Err(_) => return (None, rx),
        }
    })
    .await
    .unwrap()
}

fn transport() -> (GrpcTransport, mpsc::Receiver<Input>) {
    let (inbox, rx) = mpsc::channel();
    (GrpcTransport::new(1, CLUSTER, inbox, tokio::runtime::Handle::current(), Dialer::plain()), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_old_64_mib_limit_arrives_whole_and_in_order() {
    let (address, rx) = receiver().await;
    let (mut t, _own) = transport();
    t.set_peer(2, &address);
    let big = snapshot(70 << 20, 3);
    t.send(vec![heartbeat(3), big.clone(), heartbeat(4)]);
    let wait = Duration::from_secs(60);
    let (first, rx) = next(rx, wait).await;
    assert_eq!(first.map(|m| m.get_msg_type()), Some(MessageType::MsgHeartbeat));
    let (second, rx) = next(rx, wait).await;
    assert!(second.as_ref() == Some(&big), "the snapshot arrives whole");
    let (third, _) = next(rx, wait).await;
    assert_eq!(third.map(|m| m.term), Some(4), "what was sent after the snapshot comes after it");
}

/// A stream that broke after two pieces leaves them held; the transport asks, and sends only
/// the rest. The held pieces here were damaged on the way, so the whole message fails its
/// CRC once reassembled (proving the rest was added to them) and is not handed on; sent again
/// (Raft resends), it starts from nothing and arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_transfer_goes_on_where_it_stopped() {
    let (address, rx) = receiver().await;
    let message = snapshot(3 * CHUNK_BYTES + 5, 3);
    let bytes = protobuf::Message::write_to_bytes(&message).unwrap();
    let (crc, total) = (crc32fast::hash(&bytes), bytes.len() as u64);
    let mut raw = RaftServiceClient::connect(format!("http://{address}")).await.unwrap();
    let pieces: Vec<RaftBatch> = (0..2)
        .map(|i| {
            let data = vec![0xA5; CHUNK_BYTES];
            let chunk = RaftChunk { crc, total, offset: (i * CHUNK_BYTES) as u64, data };
            RaftBatch { cluster_id: CLUSTER, from: 1, to: 2, messages: Vec::new(), chunk: Some(chunk) }
        })
        .collect();
    raw.stream(tokio_stream::iter(pieces)).await.unwrap();
    let query = qm_proto::v1::ChunkQuery { cluster_id: CLUSTER, from: 1, to: 2, crc, total };
    assert_eq!(raw.received(query).await.unwrap().into_inner().received, 2 * CHUNK_BYTES as u64);

    let (mut t, _own) = transport();
    t.set_peer(2, &address);
    t.send(vec![message.clone()]);
    let (got, rx) = next(rx, Duration::from_secs(3)).await;
    assert!(got.is_none(), "the damaged prefix was kept and the message failed its check");
    assert_eq!(raw.received(query).await.unwrap().into_inner().received, 0, "a failed message is dropped");

    // The link drops what it was sending when it finds the stream broken, as Raft resends.
    let mut rx = rx;
    for _ in 0..10 {
        t.send(vec![message.clone()]);
        let got;
        (got, rx) = next(rx, Duration::from_secs(5)).await;
        if let Some(got) = got {
            assert!(got == message, "sent again, it arrives whole");
            return;
        }
    }
    panic!("sent again ten times, it never arrived");
}

#[test]
fn pieces_that_do_not_follow_or_overflow_are_refused_naming_the_field() {
    let (inbox, _rx) = mpsc::channel();
    let server = RaftServer::new(2, CLUSTER, inbox);
    let chunk = |offset: u64, data: Vec<u8>, total: u64| RaftChunk { crc: 1, total, offset, data };
    assert!(server.piece(1, chunk(0, vec![1; 4], 10)).unwrap().is_none());
    let gap = server.piece(1, chunk(8, vec![1; 2], 10)).unwrap_err();
    assert!(gap.message().starts_with("chunk.offset: 8 does not follow the 4 bytes"), "{gap}");
    let past = server.piece(1, chunk(4, vec![1; 7], 10)).unwrap_err();
    assert!(past.message().starts_with("chunk.data:"), "{past}");
    let huge = server.piece(1, chunk(0, Vec::new(), crate::service::raft::MAX_CHUNKED_BYTES + 1)).unwrap_err();
    assert!(huge.message().starts_with("chunk.total:"), "{huge}");
    let damaged = server.piece(1, chunk(0, vec![1; 10], 10)).unwrap_err();
    assert_eq!(damaged.code(), tonic::Code::DataLoss, "{damaged}");
}
