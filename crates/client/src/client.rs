//! The connection pool, leader discovery and the retry loop every call goes through.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quorumkv_etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use quorumkv_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use quorumkv_etcd_proto::etcdserverpb::{MemberListRequest, StatusRequest, StatusResponse};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Disposition, Error, classify, describe, rejected};
use crate::session::{Session, SessionPool, WriteId, random_u64};
use crate::types::{ClientOptions, MemberInfo, ReadConsistency, strip_scheme};

/// A handle on a quorumkv cluster. Cheap to clone: clones share connections, the leader
/// cache and the session pool, and may be used from many tasks at once.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    /// Consistency of reads made through this handle.
    pub(crate) consistency: ReadConsistency,
}

pub(crate) struct Inner {
    /// Client addresses given at connect, in the caller's order of preference.
    endpoints: Vec<String>,
    pub(crate) options: ClientOptions,
    /// One lazily connected channel per member address.
    channels: Mutex<HashMap<String, Channel>>,
    /// Member id → client address, learned from answers and member lists.
    directory: Mutex<BTreeMap<u64, String>>,
    /// True once a member list has filled the directory.
    members_known: AtomicBool,
    /// The leader as last discovered (cleared when it stops answering as one).
    leader: Mutex<Option<LeaderRef>>,
    /// Index (in `candidates()`) of the member that served the last read from any member.
    preferred: AtomicUsize,
    pub(crate) sessions: SessionPool,
    /// The highest store revision any answer has shown this client.
    seen_revision: AtomicI64,
    /// State of the jitter generator.
    jitter: AtomicU64,
}

/// A member known to lead, and where its client port is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderRef {
    /// Member id.
    pub id: u64,
    /// Client address (`host:port`).
    pub client_addr: String,
}

/// Where a call may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Only the leader is worth asking (writes, linearizable reads, membership).
    Leader,
    /// Any member will do (serializable reads, watches, member lists): try them in order.
    Any,
}

/// The identity a write carries across its retries.
pub(crate) struct WriteCtx {
    pub(crate) id: WriteId,
    /// The pooled session the id comes from; None for an id the caller chose, which cannot
    /// be moved to a new session when the server forgot the old one.
    session: Option<Session>,
}

/// A write's session, taken from the pool for the write's life and given back on drop.
pub(crate) struct PooledWrite<'a> {
    pool: &'a SessionPool,
    pub(crate) ctx: WriteCtx,
}

impl Drop for PooledWrite<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.ctx.session.take() {
            self.pool.give_back(s);
        }
    }
}

/// A failed call: the error, and whether some attempt may have taken effect.
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) uncertain: bool,
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        f.error
    }
}

/// `host:port` from what a user typed (`http://` and a trailing slash are accepted).
pub(crate) fn normalize_endpoint(endpoint: &str) -> Result<String, Error> {
    let bad =
        |reason: &str| Error::BadEndpoint { endpoint: endpoint.to_string(), reason: reason.into() };
    let t = strip_scheme(endpoint.trim());
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err(bad("it has no port"));
    };
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(t.to_string()),
        _ => Err(bad("the port is not a number from 1 to 65535")),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves consistent data behind (every
    // critical section is a single insert, read or replace).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// A client of the cluster reachable at `endpoints` (client addresses, `host:port`).
    ///
    /// Nothing is contacted yet: connections open on first use, and the leader is discovered
    /// then (Maintenance.Status from every reachable endpoint, MemberList for members not in
    /// the list). Writes go to the leader, following it as it changes; each write carries a
    /// session id chosen here and a sequence number, so a retried write is applied once.
    pub fn connect(endpoints: &[String], options: ClientOptions) -> Result<Client, Error> {
        let mut list = Vec::new();
        for e in endpoints {
            let e = normalize_endpoint(e)?;
            if !list.contains(&e) {
                list.push(e);
            }
        }
        if list.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let consistency = options.read_consistency;
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: list,
                options,
                channels: Mutex::new(HashMap::new()),
                directory: Mutex::new(BTreeMap::new()),
                members_known: AtomicBool::new(false),
                leader: Mutex::new(None),
                preferred: AtomicUsize::new(0),
                sessions: SessionPool::new(),
                seen_revision: AtomicI64::new(0),
                jitter: AtomicU64::new(random_u64()),
            }),
            consistency,
        })
    }

    /// The same client, reading at `consistency` (connections and sessions are shared).
    pub fn with_read_consistency(&self, consistency: ReadConsistency) -> Client {
        Client { inner: self.inner.clone(), consistency }
    }

    /// The consistency of reads made through this handle.
    pub fn read_consistency(&self) -> ReadConsistency {
        self.consistency
    }

    /// The endpoints given at connect (normalised to `host:port`).
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The id of the client's first session (writes made one at a time all carry it, until
    /// the server forgets it and the client opens another).
    pub fn session_id(&self) -> Option<u64> {
        self.inner.sessions.peek()
    }

    /// A fresh write identity of its own session, for [`Client::put_with_id`]: re-sending
    /// the same write with the same id any number of times applies it once.
    pub fn new_write_id(&self) -> WriteId {
        Session::fresh().next()
    }

    /// The current leader, discovered if not known.
    pub async fn leader(&self) -> Result<LeaderRef, Error> {
        let started = Instant::now();
        let deadline = started + self.inner.options.deadline;
        let mut attempt = 0;
        loop {
            if let Some(l) = self.cached_leader() {
                return Ok(l);
            }
            match self.discover().await {
                Ok(l) => return Ok(l),
                Err((d, detail)) => {
                    if Instant::now() >= deadline {
                        return Err(match d {
                            Disposition::Transport => Error::Unreachable {
                                endpoints: self.candidates().join(","),
                                detail,
                            },
                            _ => Error::NoLeader { waited: started.elapsed(), detail },
                        });
                    }
                    self.pause(attempt, deadline).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The highest store revision this client has seen in an answer (0: none yet).
    pub fn seen_revision(&self) -> i64 {
        self.inner.seen_revision.load(Relaxed)
    }

    /// Records a revision an answer showed.
    pub(crate) fn observe(&self, revision: i64) {
        self.inner.seen_revision.fetch_max(revision, Relaxed);
    }

    /// Takes a session from the pool for one write.
    pub(crate) fn pooled_write(&self) -> PooledWrite<'_> {
        let mut session = self.inner.sessions.take();
        let id = session.next();
        PooledWrite { pool: &self.inner.sessions, ctx: WriteCtx { id, session: Some(session) } }
    }

    /// A write context for an id the caller chose.
    pub(crate) fn explicit_write(id: WriteId) -> WriteCtx {
        WriteCtx { id, session: None }
    }

    /// The channel to `addr`, created on first use.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = lock(&self.inner.channels);
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("bad member address {addr}: {e}")))?
            .connect_timeout(self.inner.options.connect_timeout)
            .tcp_nodelay(true)
            // Pings on open streams notice a member that died without closing its
            // connections (a watch would otherwise wait forever).
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let c = endpoint.connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Every address worth trying: the endpoints first, then members learned since.
    pub(crate) fn candidates(&self) -> Vec<String> {
        let mut all = self.inner.endpoints.clone();
        for addr in lock(&self.inner.directory).values() {
            if !addr.is_empty() && !all.contains(addr) {
                all.push(addr.clone());
            }
        }
        all
    }

    /// Records where member `id` serves clients.
    pub(crate) fn learn(&self, id: u64, addr: &str) {
        if id != 0 && !addr.is_empty() {
            lock(&self.inner.directory).insert(id, addr.to_string());
        }
    }

    /// Records the client addresses in a member list.
    pub(crate) fn learn_members(&self, members: &[MemberInfo]) {
        for m in members {
            if let Some(addr) = m.client_addrs.first() {
                self.learn(m.id, addr);
            }
        }
        self.inner.members_known.store(true, Relaxed);
    }

    /// The cached leader (the lock is released before the caller awaits anything).
    fn cached_leader(&self) -> Option<LeaderRef> {
        lock(&self.inner.leader).clone()
    }

    /// Forgets the cached leader.
    pub(crate) fn forget_leader(&self) {
        *lock(&self.inner.leader) = None;
    }

    /// One Maintenance.Status call with the probe timeout.
    pub(crate) async fn probe(&self, addr: &str) -> Result<StatusResponse, Status> {
        let ch = self.channel(addr)?;
        let call = async move { MaintenanceClient::new(ch).status(StatusRequest {}).await };
        match tokio::time::timeout(self.inner.options.probe_timeout, call).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::unavailable(format!(
                "no answer within {:?}",
                self.inner.options.probe_timeout
            ))),
        }
    }

    /// One MemberList call against `addr` (served from the member's local view, so it
    /// answers without a quorum).
    pub(crate) async fn member_list_at(&self, addr: &str) -> Result<Vec<MemberInfo>, Status> {
        let ch = self.channel(addr)?;
        let call = async move {
            ClusterClient::new(ch).member_list(MemberListRequest { linearizable: false }).await
        };
        match tokio::time::timeout(self.inner.options.probe_timeout, call).await {
            Ok(r) => {
                let members: Vec<MemberInfo> =
                    r?.into_inner().members.into_iter().map(MemberInfo::from).collect();
                self.learn_members(&members);
                Ok(members)
            }
            Err(_) => Err(Status::unavailable(format!(
                "no answer within {:?}",
                self.inner.options.probe_timeout
            ))),
        }
    }

    /// Asks every candidate who leads; the answer from the highest term wins.
    async fn discover(&self) -> Result<LeaderRef, (Disposition, String)> {
        let candidates = self.candidates();
        let answers = futures::future::join_all(
            candidates.iter().map(|addr| async move { (addr.clone(), self.probe(addr).await) }),
        )
        .await;
        let mut best: Option<(u64, u64)> = None;
        let mut responders = Vec::new();
        let mut last_error = String::from("no endpoint tried");
        for (addr, answer) in answers {
            match answer {
                Ok(st) => {
                    let (me, term) =
                        st.header.as_ref().map_or((0, 0), |h| (h.member_id, h.raft_term));
                    self.learn(me, &addr);
                    responders.push(addr);
                    if st.leader != 0 && best.is_none_or(|(t, _)| term > t) {
                        best = Some((term, st.leader));
                    }
                }
                Err(status) => last_error = format!("{addr}: {}", describe(&status)),
            }
        }
        if responders.is_empty() {
            return Err((Disposition::Transport, last_error));
        }
        let Some((_, leader)) = best else {
            return Err((
                Disposition::NotLeader,
                format!("{} answered but none knows a leader", responders.join(",")),
            ));
        };
        let known = lock(&self.inner.directory).get(&leader).cloned();
        let addr = match known {
            Some(a) if self.inner.members_known.load(Relaxed) => Some(a),
            other => {
                // The leader is not one of the endpoints, or the member list was never
                // read: ask for it, so members outside the endpoint list are found too.
                for r in &responders {
                    if self.member_list_at(r).await.is_ok() {
                        break;
                    }
                }
                lock(&self.inner.directory).get(&leader).cloned().or(other)
            }
        };
        match addr {
            Some(client_addr) => {
                let l = LeaderRef { id: leader, client_addr };
                *lock(&self.inner.leader) = Some(l.clone());
                Ok(l)
            }
            None => Err((
                Disposition::NotLeader,
                format!("the leader is member {leader:x}, whose client address is not known yet"),
            )),
        }
    }

    /// Sleeps before retry number `attempt`, never past `deadline`.
    pub(crate) async fn pause(&self, attempt: u32, deadline: Instant) {
        // xorshift64: jitter needs no quality, only spread between clients.
        let mut x = self.inner.jitter.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.inner.jitter.store(x, Relaxed);
        let wait = self.inner.options.backoff.delay(attempt, x);
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(wait.min(left)).await;
    }

    /// Runs `call` until it succeeds, fails definitively, or the deadline passes.
    ///
    /// `call` gets a channel to the member to ask and the write id to stamp (None for
    /// reads). A write keeps its id across attempts, so the server applies it once however
    /// many attempts reached it; only when the server has forgotten the session (the command
    /// was then not applied) does a pooled write move to a fresh session.
    pub(crate) async fn run<R, F>(
        &self,
        op: &'static str,
        target: Target,
        mut write: Option<&mut WriteCtx>,
        mut call: impl FnMut(Channel, Option<WriteId>) -> F,
    ) -> Result<R, Failure>
    where
        F: Future<Output = Result<R, Status>>,
    {
        let opts = &self.inner.options;
        let started = Instant::now();
        let deadline = started + opts.deadline;
        let mut attempt: u32 = 0;
        let mut uncertain = false;
        let mut answered = false;
        let mut saw_no_leader = false;
        let (mut last_d, mut last_detail);
        loop {
            let addr = match target {
                Target::Leader => match self.cached_leader() {
                    Some(l) => Ok(l.client_addr),
                    None => {
                        let found = self.discover().await.map(|l| l.client_addr);
                        answered |= found.is_ok();
                        found
                    }
                },
                Target::Any => {
                    let all = self.candidates();
                    let i = (self.inner.preferred.load(Relaxed) + attempt as usize) % all.len();
                    Ok(all[i].clone())
                }
            };
            let (d, detail, status): (Disposition, String, Option<Status>) = match addr {
                Err((d, detail)) => (d, detail, None),
                Ok(addr) => {
                    let id = write.as_ref().map(|w| w.id);
                    let left = deadline.saturating_duration_since(Instant::now());
                    let limit = opts.attempt_timeout.min(left).max(Duration::from_millis(10));
                    let result = match self.channel(&addr) {
                        Ok(ch) => tokio::time::timeout(limit, call(ch, id)).await,
                        Err(status) => Ok(Err(status)),
                    };
                    match result {
                        Ok(Ok(r)) => {
                            if target == Target::Any {
                                let all = self.candidates();
                                if let Some(i) = all.iter().position(|a| *a == addr) {
                                    self.inner.preferred.store(i, Relaxed);
                                }
                            }
                            return Ok(r);
                        }
                        Ok(Err(status)) => {
                            let d = classify(&status);
                            (d, format!("{addr}: {}", describe(&status)), Some(status))
                        }
                        Err(_) => (
                            Disposition::OutcomeUnknown,
                            format!("{addr}: no answer within {limit:?}"),
                            None,
                        ),
                    }
                }
            };
            match d {
                Disposition::Final => {
                    let status = status.unwrap_or_else(|| Status::unknown(detail.clone()));
                    return Err(Failure { error: rejected(op, &status), uncertain });
                }
                Disposition::SessionExpired => match write.as_deref_mut() {
                    Some(WriteCtx { id, session: Some(s) }) => {
                        // The command was not applied (the server does not run a command
                        // of a session it does not know): a new session may carry it.
                        *s = Session::fresh();
                        *id = s.next();
                        answered = true;
                    }
                    _ => {
                        let status = status.unwrap_or_else(|| Status::unknown(detail.clone()));
                        return Err(Failure { error: rejected(op, &status), uncertain });
                    }
                },
                Disposition::NotLeader => {
                    answered = true;
                    saw_no_leader = true;
                    self.forget_leader();
                }
                Disposition::Transport => {
                    uncertain = true;
                    self.forget_leader();
                }
                Disposition::OutcomeUnknown => {
                    answered = true;
                    uncertain = true;
                    // A leader that cannot commit in time may have lost its quorum.
                    self.forget_leader();
                }
                Disposition::Busy => answered = true,
            }
            (last_d, last_detail) = (d, detail);
            if Instant::now() >= deadline {
                break;
            }
            if d != Disposition::SessionExpired {
                self.pause(attempt, deadline).await;
            }
            attempt += 1;
        }
        let waited = started.elapsed();
        let (d, detail) = (last_d, last_detail);
        let error = if !answered {
            Error::Unreachable { endpoints: self.candidates().join(","), detail }
        } else if d == Disposition::NotLeader || (d == Disposition::Transport && saw_no_leader) {
            Error::NoLeader { waited, detail }
        } else {
            Error::Timeout { op, waited, detail }
        };
        Err(Failure { error, uncertain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(normalize_endpoint("127.0.0.1:2379").ok(), Some("127.0.0.1:2379".into()));
        assert_eq!(normalize_endpoint(" http://h:1/ ").ok(), Some("h:1".into()));
        assert_eq!(normalize_endpoint("[::1]:2379").ok(), Some("[::1]:2379".into()));
        for bad in ["", "host", ":2379", "h:0", "h:port", "h:70000"] {
            assert!(
                matches!(normalize_endpoint(bad), Err(Error::BadEndpoint { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn connect_needs_an_endpoint_and_dedups() {
        assert!(matches!(Client::connect(&[], ClientOptions::default()), Err(Error::NoEndpoints)));
        let c = Client::connect(
            &["a:1".to_string(), "http://a:1".to_string(), "b:2".to_string()],
            ClientOptions::default(),
        )
        .expect("valid endpoints");
        assert_eq!(c.endpoints(), ["a:1".to_string(), "b:2".to_string()]);
        assert!(c.session_id().is_some_and(|s| s != 0));
    }

    #[tokio::test]
    async fn nothing_listening_is_reported_as_unreachable() {
        // A port that was just free: connections to it are refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a free port")
            .port();
        let opts = ClientOptions { deadline: Duration::from_millis(300), ..Default::default() };
        let c = Client::connect(&[format!("127.0.0.1:{port}")], opts).expect("valid endpoint");
        let err = c.put("k", "v").await.expect_err("nothing listens there");
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("quorumkv demo"), "{err}");
        let err = c.leader().await.expect_err("nothing listens there");
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    }
}
