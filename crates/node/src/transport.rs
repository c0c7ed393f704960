//! Peer transport: one outbound TCP connection per peer, carrying batches of Raft messages of
//! every group; inbound connections deliver to the router.
//!
//! Rules kept:
//! - Each outbound peer has a bounded queue. A full queue drops the message (Raft tolerates
//!   loss) and counts it: a slow or dead peer never blocks the node or grows its memory.
//! - The writer drains whatever is queued into one frame (batching), up to a byte bound.
//! - A connection starts with a handshake carrying the cluster id and node ids. A node of
//!   another cluster, a node claiming our own id, or a node that is not the one we meant to
//!   dial is refused, with a log line on both sides saying why.
//! - A malformed frame closes that one connection and is counted; it never reaches Raft.
//! - Reconnection backs off exponentially (50 ms to 2 s).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use quorumkv_core::NodeId;
use quorumkv_raft::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::codec::{self, CodecError, FrameKind, HEADER_BYTES, Hello};
use crate::metrics::Metrics;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MAX: usize = 8192;
/// A frame stops growing past this many payload bytes.
const BATCH_BYTES_MAX: usize = 8 << 20;
/// Time allowed for a handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a peer told us about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Member name.
    pub name: String,
    /// Peer address.
    pub peer_addr: String,
    /// Client address.
    pub client_addr: String,
    /// HTTP address.
    pub http_addr: String,
}

struct Peer {
    addr: String,
    tx: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    hello: Hello,
    peers: RwLock<BTreeMap<NodeId, Peer>>,
    directory: RwLock<BTreeMap<NodeId, PeerInfo>>,
    inbox: Inbox,
    metrics: Arc<Metrics>,
}

/// Where inbound messages go: called on the connection's task for each message, so it must
/// not block (a group's `deliver` queues without waiting, and drops on overload — Raft
/// resends). Handing over directly, with no router task between, saves a task wake-up per
/// received frame.
pub type Inbox = Arc<dyn Fn(Message) + Send + Sync>;

/// The peer transport of one node.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// A transport for the node described by `hello` (its `expect_id` is ignored), delivering
    /// inbound messages to `inbox`.
    pub fn new(hello: Hello, inbox: Inbox, metrics: Arc<Metrics>) -> Self {
        let mut directory = BTreeMap::new();
        directory.insert(
            hello.node_id,
            PeerInfo {
                name: hello.name.clone(),
                peer_addr: hello.peer_addr.clone(),
                client_addr: hello.client_addr.clone(),
                http_addr: hello.http_addr.clone(),
            },
        );
        Self {
            inner: Arc::new(Inner {
                hello,
                peers: RwLock::new(BTreeMap::new()),
                directory: RwLock::new(directory),
                inbox,
                metrics,
            }),
        }
    }

    /// Starts (or re-targets) the connection to peer `id` at `addr`.
    pub fn set_peer(&self, id: NodeId, addr: &str) {
        if id == self.inner.hello.node_id {
            return;
        }
        let mut peers = self.inner.peers.write();
        if peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        if let Some(old) = peers.remove(&id) {
            old.task.abort();
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        let inner = self.inner.clone();
        let target = addr.to_string();
        let task = tokio::spawn(async move { dial_loop(inner, id, target, rx).await });
        peers.insert(id, Peer { addr: addr.to_string(), tx, task });
        self.inner.directory.write().entry(id).or_default().peer_addr = addr.to_string();
    }

    /// Stops talking to peer `id`.
    pub fn remove_peer(&self, id: NodeId) {
        if let Some(p) = self.inner.peers.write().remove(&id) {
            p.task.abort();
        }
    }

    /// Ids of the peers we dial.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.inner.peers.read().keys().copied().collect()
    }

    /// Queues a message for its destination; drops it (counted) if the queue is full or the
    /// peer unknown.
    pub fn send(&self, m: Message) {
        let Some(m) = self.send_if_dialled(m) else { return };
        // A peer we were never told to dial but that introduced itself (a leader replicating
        // to a node that joined with an empty log): answer it.
        let known = self
            .inner
            .directory
            .read()
            .get(&m.to)
            .map(|p| p.peer_addr.clone())
            .filter(|a| !a.is_empty());
        if let Some(addr) = known {
            self.set_peer(m.to, &addr);
        }
        if self.send_if_dialled(m).is_some() {
            self.inner.metrics.peer_messages_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Queues a message if its destination is a peer we dial (dropped, counted, if its queue
    /// is full) and returns `None`; gives the message back otherwise. Callable from any
    /// thread: it starts no task.
    pub fn send_if_dialled(&self, m: Message) -> Option<Message> {
        let peers = self.inner.peers.read();
        let Some(p) = peers.get(&m.to) else { return Some(m) };
        if p.tx.try_send(m).is_err() {
            self.inner.metrics.peer_messages_dropped.fetch_add(1, Relaxed);
        }
        None
    }

    /// What we know of every member (ourselves included), from configuration and handshakes.
    pub fn directory(&self) -> BTreeMap<NodeId, PeerInfo> {
        self.inner.directory.read().clone()
    }

    /// Records what we know of a member (from the replicated member table).
    pub fn learn(&self, id: NodeId, info: PeerInfo) {
        let mut d = self.inner.directory.write();
        let e = d.entry(id).or_default();
        for (slot, v) in [
            (&mut e.name, info.name),
            (&mut e.peer_addr, info.peer_addr),
            (&mut e.client_addr, info.client_addr),
            (&mut e.http_addr, info.http_addr),
        ] {
            if !v.is_empty() {
                *slot = v;
            }
        }
    }

    /// Accepts inbound peer connections until the listener fails.
    pub async fn serve(&self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        if let Err(e) = accept(inner, stream).await {
                            debug!(%remote, error = %e, "peer connection closed");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "peer listener accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Codec(#[from] CodecError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("handshake timed out")]
    Timeout,
}

async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    metrics: &Metrics,
) -> Result<(FrameKind, Bytes), ConnError> {
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).await?;
    let h = match codec::parse_header(&header) {
        Ok(h) => h,
        Err(e) => {
            metrics.malformed_frames.fetch_add(1, Relaxed);
            return Err(e.into());
        }
    };
    let mut payload = BytesMut::zeroed(h.len);
    stream.read_exact(&mut payload).await?;
    if let Err(e) = codec::verify(&h, &payload) {
        metrics.malformed_frames.fetch_add(1, Relaxed);
        return Err(e.into());
    }
    metrics.peer_bytes_in.fetch_add((HEADER_BYTES + h.len) as u64, Relaxed);
    Ok((h.kind, payload.freeze()))
}

async fn write_frame(
    stream: &mut TcpStream,
    kind: FrameKind,
    payload: &[u8],
) -> std::io::Result<usize> {
    let mut out = BytesMut::new();
    codec::encode_frame(kind, payload, &mut out);
    stream.write_all(&out).await?;
    Ok(out.len())
}

/// Checks a peer's introduction against ourselves; `Err` carries the reason to send back.
fn check_hello(me: &Hello, them: &Hello) -> Result<(), String> {
    if them.cluster_id != me.cluster_id {
        return Err(format!(
            "cluster id mismatch: node {} belongs to cluster {:016x}, this node ({}) to {:016x}; check the `cluster` setting",
            them.node_id, them.cluster_id, me.node_id, me.cluster_id
        ));
    }
    if them.node_id == me.node_id {
        return Err(format!(
            "duplicate node id {}: {} and {} both claim it; give every node a unique `id`",
            me.node_id, them.peer_addr, me.peer_addr
        ));
    }
    if them.expect_id != 0 && them.expect_id != me.node_id {
        return Err(format!(
            "wrong node: {} dialed {} expecting node {}, but this is node {}",
            them.node_id, me.peer_addr, them.expect_id, me.node_id
        ));
    }
    Ok(())
}

async fn accept(inner: Arc<Inner>, mut stream: TcpStream) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let (kind, payload) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream, &inner.metrics))
            .await
            .map_err(|_| ConnError::Timeout)??;
    if kind != FrameKind::Hello {
        inner.metrics.malformed_frames.fetch_add(1, Relaxed);
        return Err(ConnError::Refused("first frame was not a handshake".into()));
    }
    let hello = match Hello::decode(payload) {
        Ok(h) => h,
        Err(e) => {
            inner.metrics.malformed_frames.fetch_add(1, Relaxed);
            return Err(e.into());
        }
    };
    if let Err(reason) = check_hello(&inner.hello, &hello) {
        inner.metrics.peer_handshakes_refused.fetch_add(1, Relaxed);
        warn!(peer = hello.node_id, addr = %hello.peer_addr, %reason, "refused peer connection");
        let _ = write_frame(&mut stream, FrameKind::Reject, reason.as_bytes()).await;
        return Err(ConnError::Refused(reason));
    }
    let from = hello.node_id;
    inner.directory.write().insert(
        from,
        PeerInfo {
            name: hello.name,
            peer_addr: hello.peer_addr,
            client_addr: hello.client_addr,
            http_addr: hello.http_addr,
        },
    );
    let mut ack = inner.hello.clone();
    ack.expect_id = from;
    write_frame(&mut stream, FrameKind::HelloAck, &ack.encode()).await?;
    debug!(peer = from, "peer connected (inbound)");
    // Buffered: a frame's header and payload (and often the next frame) in one read call.
    let mut stream = BufReader::with_capacity(64 << 10, stream);
    loop {
        let (kind, payload) = read_frame(&mut stream, &inner.metrics).await?;
        if kind != FrameKind::Messages {
            inner.metrics.malformed_frames.fetch_add(1, Relaxed);
            return Err(ConnError::Refused(format!(
                "unexpected {kind:?} frame after the handshake"
            )));
        }
        let msgs = match codec::decode_batch(payload) {
            Ok(m) => m,
            Err(e) => {
                inner.metrics.malformed_frames.fetch_add(1, Relaxed);
                return Err(e.into());
            }
        };
        for m in msgs {
            // A peer speaks only for itself.
            if m.from != from || m.to != inner.hello.node_id {
                inner.metrics.malformed_frames.fetch_add(1, Relaxed);
                return Err(ConnError::Refused(format!(
                    "message from {} to {} on node {from}'s connection",
                    m.from, m.to
                )));
            }
            (inner.inbox)(m);
        }
    }
}

async fn dial_loop(inner: Arc<Inner>, id: NodeId, addr: String, mut rx: mpsc::Receiver<Message>) {
    let mut backoff = Duration::from_millis(50);
    let mut logged_refusal = false;
    loop {
        match connect(&inner, id, &addr).await {
            Ok(mut stream) => {
                backoff = Duration::from_millis(50);
                logged_refusal = false;
                info!(peer = id, %addr, "peer connected (outbound)");
                if let Err(e) = pump(&inner, &mut stream, &mut rx).await {
                    debug!(peer = id, error = %e, "peer connection lost; reconnecting");
                }
                if rx.is_closed() {
                    return;
                }
            }
            Err(ConnError::Refused(reason)) => {
                inner.metrics.peer_handshakes_refused.fetch_add(1, Relaxed);
                if !logged_refusal {
                    warn!(peer = id, %addr, %reason, "peer refused our connection");
                    logged_refusal = true;
                }
                backoff = Duration::from_secs(2);
            }
            Err(e) => debug!(peer = id, %addr, error = %e, "cannot reach peer"),
        }
        // Messages queued meanwhile are stale; Raft will resend what matters.
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn connect(inner: &Inner, id: NodeId, addr: &str) -> Result<TcpStream, ConnError> {
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnError::Timeout)??;
    stream.set_nodelay(true)?;
    let mut hello = inner.hello.clone();
    hello.expect_id = id;
    write_frame(&mut stream, FrameKind::Hello, &hello.encode()).await?;
    let (kind, payload) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream, &inner.metrics))
            .await
            .map_err(|_| ConnError::Timeout)??;
    match kind {
        FrameKind::HelloAck => {
            let them = Hello::decode(payload)?;
            check_hello(&inner.hello, &them).map_err(ConnError::Refused)?;
            if them.node_id != id {
                return Err(ConnError::Refused(format!(
                    "{addr} is node {}, expected node {id}",
                    them.node_id
                )));
            }
            inner.directory.write().insert(
                id,
                PeerInfo {
                    name: them.name,
                    peer_addr: them.peer_addr,
                    client_addr: them.client_addr,
                    http_addr: them.http_addr,
                },
            );
            Ok(stream)
        }
        FrameKind::Reject => {
            Err(ConnError::Refused(String::from_utf8_lossy(&payload).into_owned()))
        }
        other => Err(ConnError::Refused(format!("unexpected {other:?} frame in the handshake"))),
    }
}

async fn pump(
    inner: &Inner,
    stream: &mut TcpStream,
    rx: &mut mpsc::Receiver<Message>,
) -> Result<(), ConnError> {
    let mut batch = Vec::with_capacity(256);
    let mut out = BytesMut::with_capacity(64 << 10);
    loop {
        let Some(first) = rx.recv().await else { return Ok(()) };
        let mut bytes = codec::message_size(&first);
        batch.push(first);
        while bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(m) => {
                    bytes += codec::message_size(&m);
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let payload = codec::encode_batch(&batch);
        batch.clear();
        out.clear();
        codec::encode_frame(FrameKind::Messages, &payload, &mut out);
        stream.write_all(&out).await?;
        inner.metrics.peer_bytes_out.fetch_add(out.len() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(cluster: u64, id: u64) -> Hello {
        Hello {
            cluster_id: cluster,
            node_id: id,
            peer_addr: format!("p{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn handshake_refusals_say_why() {
        let me = hello(1, 1);
        assert!(check_hello(&me, &hello(1, 2)).is_ok());
        assert!(check_hello(&me, &hello(2, 2)).unwrap_err().contains("cluster id mismatch"));
        assert!(check_hello(&me, &hello(1, 1)).unwrap_err().contains("duplicate node id"));
        let mut wrong = hello(1, 2);
        wrong.expect_id = 3;
        assert!(check_hello(&me, &wrong).unwrap_err().contains("wrong node"));
    }

    #[tokio::test]
    async fn messages_flow_between_two_transports_and_strangers_are_refused() {
        let metrics = Arc::new(Metrics::default());
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a1, a2) = (l1.local_addr().unwrap().to_string(), l2.local_addr().unwrap().to_string());
        let to_channel =
            |tx: mpsc::Sender<Message>| -> Inbox { Arc::new(move |m| drop(tx.try_send(m))) };
        let (tx1, _rx1) = mpsc::channel(16);
        let (tx2, mut rx2) = mpsc::channel(16);
        let mut h1 = hello(7, 1);
        h1.peer_addr = a1.clone();
        let mut h2 = hello(7, 2);
        h2.peer_addr = a2.clone();
        let t1 = Transport::new(h1, to_channel(tx1), metrics.clone());
        let t2 = Transport::new(h2, to_channel(tx2), metrics.clone());
        tokio::spawn({
            let t = t1.clone();
            async move { t.serve(l1).await }
        });
        tokio::spawn({
            let t = t2.clone();
            async move { t.serve(l2).await }
        });
        t1.set_peer(2, &a2);
        let m = Message {
            group: 1,
            from: 1,
            to: 2,
            term: 3,
            body: quorumkv_raft::MessageBody::Heartbeat { commit: 1, read_seq: 2 },
        };
        // The first sends may race the connection; keep sending until one arrives.
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                t1.send(m.clone());
                if let Ok(Some(x)) =
                    tokio::time::timeout(Duration::from_millis(100), rx2.recv()).await
                {
                    return x;
                }
            }
        })
        .await
        .expect("message delivered");
        assert_eq!(got, m);
        assert_eq!(t2.directory().get(&1).map(|p| p.peer_addr.clone()), Some(a1));

        // A node of another cluster is refused, and counted.
        let (tx3, _rx3) = mpsc::channel(16);
        let stranger = Transport::new(hello(8, 3), to_channel(tx3), metrics.clone());
        stranger.set_peer(2, &a2);
        let refused = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                stranger.send(Message { from: 3, ..m.clone() });
                if metrics.peer_handshakes_refused.load(Relaxed) >= 2 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "stranger was not refused");

        // Garbage on the wire closes that connection and is counted; the node keeps serving.
        let before = metrics.malformed_frames.load(Relaxed);
        let mut raw = TcpStream::connect(&a2).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await;
        assert!(metrics.malformed_frames.load(Relaxed) > before);
        t1.send(m.clone());
        let again = tokio::time::timeout(Duration::from_secs(10), rx2.recv()).await;
        assert!(matches!(again, Ok(Some(_))));
    }
}
