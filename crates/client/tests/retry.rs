//! The retry loop against scripted in-process members: what a write carries across
//! attempts, where it goes after "not leader", and which errors end it at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorumkv_client::proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use quorumkv_client::proto::etcdserverpb::kv_server::{Kv, KvServer};
use quorumkv_client::proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use quorumkv_client::proto::etcdserverpb::{
    Member, MemberListRequest, MemberListResponse, PutRequest, PutResponse, ResponseHeader,
    StatusRequest, StatusResponse,
};
use quorumkv_client::{Client, ClientOptions, Error, SEQ_HEADER, SESSION_HEADER, WriteId};
use tonic::{Request, Response, Status};

/// One scripted member.
#[derive(Clone)]
struct Fake {
    id: u64,
    /// The leader every fake reports (shared, so one fake can hand leadership over).
    leader: Arc<AtomicU64>,
    /// Client addresses of all fakes, by id, for MemberList.
    members: Arc<Mutex<Vec<(u64, String)>>>,
    /// Answers to the next puts (empty: success).
    script: Arc<Mutex<VecDeque<Status>>>,
    /// (session, seq) of every put received.
    calls: Arc<Mutex<Vec<(u64, u64)>>>,
    /// Leader to report after the next failed put (0: unchanged).
    hand_over_to: u64,
}

fn header(id: u64) -> Option<ResponseHeader> {
    Some(ResponseHeader { cluster_id: 7, member_id: id, revision: 1, raft_term: 2 })
}

fn meta<T>(req: &Request<T>, key: &str) -> u64 {
    req.metadata().get(key).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.calls
            .lock()
            .expect("calls")
            .push((meta(&req, SESSION_HEADER), meta(&req, SEQ_HEADER)));
        let next = self.script.lock().expect("script").pop_front();
        match next {
            Some(status) => {
                if self.hand_over_to != 0 {
                    self.leader.store(self.hand_over_to, SeqCst);
                }
                Err(status)
            }
            None => Ok(Response::new(PutResponse { header: header(self.id), prev_kv: None })),
        }
    }
}

#[tonic::async_trait]
impl Maintenance for Fake {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            header: header(self.id),
            leader: self.leader.load(SeqCst),
            raft_index: 10,
            raft_term: 2,
            raft_applied_index: 10,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl Cluster for Fake {
    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self
            .members
            .lock()
            .expect("members")
            .iter()
            .map(|(id, addr)| Member {
                id: *id,
                name: format!("fake{id}"),
                peer_ur_ls: vec![],
                client_ur_ls: vec![format!("http://{addr}")],
                is_learner: false,
            })
            .collect();
        Ok(Response::new(MemberListResponse { header: header(self.id), members }))
    }
}

/// A fake and the listener it will serve on.
struct Slot {
    fake: Fake,
    addr: String,
    listener: tokio::net::TcpListener,
}

/// Fakes with ids 1..=n, all reporting member 1 as leader, each with its own port (bound
/// now, so the members list names the right addresses before anything serves).
async fn start(n: u64) -> Vec<Slot> {
    let leader = Arc::new(AtomicU64::new(1));
    let members = Arc::new(Mutex::new(Vec::new()));
    let mut out = Vec::new();
    for id in 1..=n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        members.lock().expect("members").push((id, addr.clone()));
        let fake = Fake {
            id,
            leader: leader.clone(),
            members: members.clone(),
            script: Arc::default(),
            calls: Arc::default(),
            hand_over_to: 0,
        };
        out.push(Slot { fake, addr, listener });
    }
    out
}

/// Serves a fake until the test's runtime ends; answers it and its address.
fn serve(slot: Slot) -> (Fake, String) {
    let fake = slot.fake.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(slot.listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(fake.clone()))
            .add_service(MaintenanceServer::new(fake.clone()))
            .add_service(ClusterServer::new(fake))
            .serve_with_incoming(incoming),
    );
    (slot.fake, slot.addr)
}

fn options() -> ClientOptions {
    ClientOptions { deadline: Duration::from_secs(10), ..Default::default() }
}

fn calls(f: &Fake) -> Vec<(u64, u64)> {
    f.calls.lock().expect("calls").clone()
}

#[tokio::test]
async fn a_retried_write_keeps_its_session_and_sequence_number() {
    let slot = start(1).await.remove(0);
    let fake = slot.fake.clone();
    fake.script.lock().expect("script").extend([
        Status::unavailable("etcdserver: request timed out"),
        Status::unknown("transport error"),
    ]);
    let (_, addr) = serve(slot);
    let c = Client::connect(&[addr], options()).expect("endpoint");
    c.put("k", "v").await.expect("the third attempt succeeds");
    let first = calls(&fake);
    assert_eq!(first.len(), 3, "{first:?}");
    let session = c.session_id().expect("a session");
    assert!(first.iter().all(|&(s, q)| s == session && q == 1), "{first:?}");

    // The next logical write: same session, next number.
    c.put("k", "w").await.expect("put");
    assert_eq!(calls(&fake).last(), Some(&(session, 2)));
}

#[tokio::test]
async fn not_leader_sends_the_write_to_the_new_leader_under_the_same_id() {
    let mut slots = start(2).await;
    slots[0].fake.hand_over_to = 2;
    let not_leader = Status::unavailable("etcdserver: not leader");
    slots[0].fake.script.lock().expect("script").push_back(not_leader);
    let fakes: Vec<(Fake, String)> = slots.into_iter().map(serve).collect();
    // Only the old leader is given: the new one is found through the member list.
    let c = Client::connect(&[fakes[0].1.clone()], options()).expect("endpoint");
    c.put("k", "v").await.expect("put");
    let (old, new) = (calls(&fakes[0].0), calls(&fakes[1].0));
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(new, old, "the retry must carry the same session and sequence number");
    assert_eq!(c.leader().await.expect("leader").id, 2);
}

#[tokio::test]
async fn a_forgotten_session_moves_a_pooled_write_to_a_new_session() {
    let slot = start(1).await.remove(0);
    let fake = slot.fake.clone();
    let expired = "quorumkv: client session expired or unknown; open a new session";
    fake.script.lock().expect("script").push_back(Status::failed_precondition(expired));
    let (_, addr) = serve(slot);
    let c = Client::connect(&[addr], options()).expect("endpoint");
    c.put("k", "v").await.expect("put");
    let got = calls(&fake);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_ne!(got[0].0, got[1].0, "a new session");
    assert_eq!((got[0].1, got[1].1), (1, 1), "numbered from 1 again");

    // An id the caller chose cannot move: the caller hears of it.
    fake.script.lock().expect("script").push_back(Status::failed_precondition(expired));
    let id = WriteId { session: 99, seq: 5 };
    let err = c.put_with_id(id, "k", "v").await.expect_err("the session is gone");
    assert!(matches!(err, Error::Rejected { .. }), "{err:?}");
    assert_eq!(calls(&fake).last(), Some(&(99, 5)));
}

#[tokio::test]
async fn definitive_errors_end_the_call_at_once() {
    let slot = start(1).await.remove(0);
    let fake = slot.fake.clone();
    fake.script.lock().expect("script").push_back(Status::invalid_argument(
        "quorumkv: value of 2000000 bytes exceeds the limit max_value_bytes = 1048576",
    ));
    let (_, addr) = serve(slot);
    let c = Client::connect(&[addr], options()).expect("endpoint");
    let err = c.put("k", "v").await.expect_err("refused");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("max_value_bytes"), "{err}");
    assert_eq!(calls(&fake).len(), 1, "no retry of a definitive refusal");
}

#[tokio::test]
async fn a_leaderless_cluster_is_reported_as_such_at_the_deadline() {
    let slot = start(1).await.remove(0);
    let fake = slot.fake.clone();
    fake.leader.store(0, SeqCst);
    let (_, addr) = serve(slot);
    let opts = ClientOptions { deadline: Duration::from_millis(400), ..Default::default() };
    let c = Client::connect(&[addr], opts).expect("endpoint");
    let err = c.put("k", "v").await.expect_err("no leader");
    assert!(matches!(err, Error::NoLeader { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(calls(&fake).is_empty(), "nothing is sent while no leader is known");
}
