//! What the replica tests share: replica 1 of a cluster, served over gRPC on loopback from a
//! temporary data directory (over TLS with certificates of a test CA unless insecure), and
//! channels to it that carry its admin token or present a node's certificate.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use qm_proto::auth::{authed, Authed, Bearer};
use qm_proto::certs::{Authority, Validity};
use qm_proto::tls::{Dialer, Identity};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::WhoAmIRequest;
use qm_scheduler::leader::LeaderConfig;
use qm_scheduler::node::NodeConfig;
use qm_scheduler::server::{run, ServerConfig};
use qm_scheduler::service::admission::Admission;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The names a test certificate is valid for.
pub fn local() -> Vec<String> {
    vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

pub struct Replica {
    pub addr: SocketAddr,
    /// Its HTTP address (`/metrics`, `/healthz`, `/readyz`).
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub dir: tempfile::TempDir,
    insecure: bool,
    /// The test CA and where its certificates are written.
    pub ca: Authority,
    pub certs: tempfile::TempDir,
    /// The admin token, when it is not the bootstrap file of this replica's data directory.
    pub token: Option<String>,
}

impl Replica {
    /// Replica 1 of a cluster of `voters` (the others are not started).
    pub fn start(voters: &[u64], max_message_bytes: usize) -> Self {
        Self::start_from(voters, max_message_bytes, None)
    }

    /// Replica 1, restored from a backup when one is given.
    pub fn start_from(voters: &[u64], max_message_bytes: usize, restore: Option<Vec<u8>>) -> Self {
        Self::start_leased(voters, max_message_bytes, restore, Duration::from_millis(600))
    }

    /// Replica 1, whose nodes are lost after `node_lease` without a message from their agent.
    pub fn start_leased(
        voters: &[u64],
        max_message_bytes: usize,
        restore: Option<Vec<u8>>,
        node_lease: Duration,
    ) -> Self {
        Self::launch(voters, max_message_bytes, restore, node_lease, false)
    }

    /// Replica 1 of `voters`, checking no tokens.
    pub fn start_insecure(voters: &[u64], max_message_bytes: usize) -> Self {
        Self::launch(voters, max_message_bytes, None, Duration::from_millis(600), true)
    }

    fn launch(
        voters: &[u64],
        max_message_bytes: usize,
        restore: Option<Vec<u8>>,
        node_lease: Duration,
        insecure: bool,
    ) -> Self {
        Self::launch_with(voters, max_message_bytes, restore, node_lease, insecure, Admission::default())
    }

    /// Replica 1 of `voters` with tokens and these admission limits.
    pub fn start_admitting(voters: &[u64], admission: Admission) -> Self {
        Self::launch_with(voters, 4 << 20, None, Duration::from_millis(600), false, admission)
    }

    fn launch_with(
        voters: &[u64],
        max_message_bytes: usize,
        restore: Option<Vec<u8>>,
        node_lease: Duration,
        insecure: bool,
        admission: Admission,
    ) -> Self {
        let (addr, http) = (free_addr(), free_addr());
        let dir = tempfile::tempdir().unwrap();
        let certs = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(certs.path(), "test CA", Validity::days(1)).unwrap();
        let tls =
            (!insecure).then(|| ca.issue_to(certs.path(), &Identity::Replica(1), &local(), Validity::days(1)).unwrap());
        let mut node = NodeConfig::new(1, voters.to_vec());
        node.peers = voters.iter().map(|id| (*id, if *id == 1 { addr } else { free_addr() }.to_string())).collect();
        node.tick = Duration::from_millis(10);
        node.deadline = Duration::from_millis(800);
        let config = ServerConfig {
            node,
            cluster_id: 1,
            listen: addr,
            data_dir: dir.path().to_owned(),
            leader: LeaderConfig::default(),
            max_message_bytes,
            heartbeat: Duration::from_millis(100),
            node_lease,
            restore,
            insecure,
            tls,
            admission,
            http: Some(http),
            idle_below_pct: qm_scheduler::leader::idle::DEFAULT_BELOW_PCT,
        };
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            run(config, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self { addr, http, stop: Some(stop), task, dir, insecure, ca, certs, token: None }
    }

    /// The admin token: the one given, else the bootstrap token the replica wrote.
    pub async fn token(&self) -> String {
        if let Some(t) = &self.token {
            return t.clone();
        }
        let file = self.dir.path().join("admin.token");
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(t) = std::fs::read_to_string(&file) {
                return t.trim().to_owned();
            }
            assert!(Instant::now() < until, "no bootstrap token was written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A channel to the replica as a user's client (checking its certificate, presenting
    /// none), once it listens.
    pub async fn connect(&self) -> Channel {
        let dialer = match self.insecure {
            true => Dialer::plain(),
            false => Dialer::trusting(Some(self.ca.cert_pem().as_bytes())),
        };
        self.connect_with(&dialer).await
    }

    /// A channel to the replica presenting a certificate of the test CA naming `who`.
    pub async fn connect_as(&self, who: &Identity) -> Channel {
        let files = self.ca.issue_to(self.certs.path(), who, &local(), Validity::days(1)).unwrap();
        self.connect_with(&files.load().unwrap().dialer()).await
    }

    /// A channel to the replica dialled with `dialer`, once it listens.
    pub async fn connect_with(&self, dialer: &Dialer) -> Channel {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(c) = dialer.endpoint(&self.addr.to_string()).unwrap().connect().await {
                return c;
            }
            assert!(Instant::now() < until, "the replica did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A channel for the agent of `node`: its certificate, and `token`.
    pub async fn agent(&self, node: &str, token: &str) -> Authed {
        authed(self.connect_as(&Identity::Node(node.to_owned())).await, Bearer::new(Some(token)).unwrap())
    }

    /// A channel to the replica that sends `token`.
    pub async fn with(&self, token: Option<&str>) -> Authed {
        authed(self.connect().await, Bearer::new(token).unwrap())
    }

    /// A channel to the replica carrying the admin token (none when insecure), once the token
    /// is accepted.
    pub async fn channel(&self) -> Authed {
        if self.insecure {
            return self.with(None).await;
        }
        let until = Instant::now() + Duration::from_secs(5);
        let channel = self.with(Some(&self.token().await)).await;
        let mut admin = AdminServiceClient::new(channel.clone());
        while let Err(s) = admin.who_am_i(WhoAmIRequest {}).await {
            assert!(Instant::now() < until, "the admin token is not accepted: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        channel
    }

    /// `GET path` on the replica's HTTP address, once it listens: the status code and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let until = Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            match tokio::net::TcpStream::connect(self.http).await {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < until, "the replica's HTTP address never listened: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.http);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, body.to_owned())
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}
