//! A fault-injecting TCP proxy for the peer links, in user space (this kernel has no netem).
//!
//! Every peer connection of the cluster passes through a listener of one [`ProxyNet`]. A node
//! dials its peers and sends its Raft traffic on the connection it dialed; the peer it dialed
//! only answers the handshake. So the direction dialer → acceptor of a proxied connection is
//! the link "dialer's node → acceptor's node", and a fault on that direction is a fault on
//! exactly that ordered link: one-way partitions come for free.
//!
//! The proxy reads the dialer's byte stream as frames (`len u32 | version u8 | kind u8 |
//! crc32c u32 | payload`, parsed with the node's own [`codec`]) and decides per whole frame:
//! forward, drop, duplicate, or delay (with jitter, so frames of one connection can overtake
//! each other, as they can in the simulator). A frame is never cut, so the receiver never sees
//! a corrupt stream. The acceptor's answers (the handshake reply) are copied as bytes.
//!
//! The first frame is the dialer's handshake. It names the dialer's node id, so the proxy
//! learns which link a connection belongs to from the traffic itself, not from the port it
//! came in on: a node that learnt another proxy's address (a new member reading the member
//! table, a member's own advertised address) is still judged by the link it really uses.
//! The handshake is only ever blackholed, never dropped at random, duplicated or delayed:
//! a duplicated handshake would be a protocol error, not a network fault.
//!
//! A partition is a blackhole on a set of ordered links: frames are dropped silently (like a
//! firewall's DROP; the dialer's handshake times out) or, in reset mode, every connection of
//! the link is closed at once and new ones are closed as soon as they introduce themselves
//! (like a REJECT).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use quorumkv_core::rng::Rng;
use quorumkv_node::codec::{self, FrameKind, HEADER_BYTES, Hello};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

/// A node id, as the cluster names it.
pub type NodeId = u64;

/// An ordered link: traffic sent by `.0` to `.1`.
pub type Link = (NodeId, NodeId);

/// How long the proxy waits to reach the node it stands for.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The faults applied to one ordered link. The default is a clean link.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LinkFaults {
    /// Drop every frame (a partition of this direction).
    pub blackhole: bool,
    /// With `blackhole`: close the link's connections instead of dropping silently.
    pub reset: bool,
    /// Probability that a frame is dropped.
    pub drop_rate: f64,
    /// Added delay of every frame, in milliseconds.
    pub delay_ms: u64,
    /// Extra random delay, uniform in `[0, jitter_ms]`; lets frames overtake each other.
    pub jitter_ms: u64,
    /// Probability that a frame is delivered twice.
    pub dup_rate: f64,
}

impl LinkFaults {
    /// A blackhole; `reset` closes connections instead of dropping silently.
    pub fn blackhole(reset: bool) -> Self {
        LinkFaults { blackhole: true, reset, ..LinkFaults::default() }
    }

    /// True when the link is clean.
    pub fn is_clear(&self) -> bool {
        *self == LinkFaults::default()
    }
}

/// Counters of one ordered link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections the proxy closed because of a reset-mode partition.
    pub connections_reset: u64,
    /// Frames delivered (a duplicate counts twice).
    pub frames_forwarded: u64,
    /// Frames dropped (randomly or by a blackhole).
    pub frames_dropped: u64,
    /// Extra copies delivered.
    pub frames_duplicated: u64,
    /// Frames held back by a delay.
    pub frames_delayed: u64,
    /// Bytes delivered.
    pub bytes_forwarded: u64,
}

struct Inner {
    /// Seed of the per-connection generators.
    seed: u64,
    /// Faults per link; absent = clean.
    faults: RwLock<HashMap<Link, LinkFaults>>,
    /// Bumped when a link's connections must close.
    generations: Mutex<HashMap<Link, u64>>,
    /// Wakes connections to look at their generation.
    reset_notify: Notify,
    /// Counters per link.
    stats: Mutex<BTreeMap<Link, LinkStats>>,
    /// Connections accepted so far (seeds each connection's generator).
    connections: AtomicU64,
    /// Accept loops, aborted on shutdown.
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set to true on shutdown; every connection task watches it.
    shutdown: watch::Sender<bool>,
}

/// A set of proxy listeners sharing one fault table.
#[derive(Clone)]
pub struct ProxyNet {
    inner: Arc<Inner>,
}

impl ProxyNet {
    /// A proxy network whose random choices derive from `seed`.
    pub fn new(seed: u64) -> Self {
        let (shutdown, _) = watch::channel(false);
        ProxyNet {
            inner: Arc::new(Inner {
                seed,
                faults: RwLock::new(HashMap::new()),
                generations: Mutex::new(HashMap::new()),
                reset_notify: Notify::new(),
                stats: Mutex::new(BTreeMap::new()),
                connections: AtomicU64::new(0),
                listeners: Mutex::new(Vec::new()),
                shutdown,
            }),
        }
    }

    /// Listens on a fresh loopback port and forwards every connection to node `to` at
    /// `target`. `from` names the dialer expected on this port; the dialer's handshake
    /// overrides it (`None`: learn the dialer from the handshake only).
    pub async fn listen(
        &self,
        from: Option<NodeId>,
        to: NodeId,
        target: String,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let inner = inner.clone();
                let target = target.clone();
                tokio::spawn(
                    async move { serve_connection(inner, stream, from, to, target).await },
                );
            }
        });
        self.inner.listeners.lock().push(task);
        Ok(addr)
    }

    /// Sets the faults of one ordered link (a clean value clears it).
    pub fn set_link(&self, link: Link, faults: LinkFaults) {
        let reset = faults.blackhole && faults.reset;
        {
            let mut table = self.inner.faults.write();
            if faults.is_clear() {
                table.remove(&link);
            } else {
                table.insert(link, faults);
            }
        }
        if reset {
            self.reset_links(&[link]);
        }
    }

    /// Blackholes every link in `links` (one direction each).
    pub fn partition(&self, links: &[Link], reset: bool) {
        for &link in links {
            self.set_link(link, LinkFaults::blackhole(reset));
        }
    }

    /// The faults of a link now.
    pub fn link(&self, link: Link) -> LinkFaults {
        self.inner.faults.read().get(&link).cloned().unwrap_or_default()
    }

    /// Clears every fault. Connections of links that were blackholed are closed, so that
    /// dialers whose handshake was swallowed reconnect at once instead of waiting for their
    /// handshake timeout.
    pub fn heal_all(&self) {
        let healed: Vec<Link> = {
            let mut table = self.inner.faults.write();
            let blackholed = table.iter().filter(|(_, f)| f.blackhole).map(|(l, _)| *l).collect();
            table.clear();
            blackholed
        };
        self.reset_links(&healed);
    }

    /// Closes every open connection of the given links.
    pub fn reset_links(&self, links: &[Link]) {
        if links.is_empty() {
            return;
        }
        {
            let mut generations = self.inner.generations.lock();
            for link in links {
                *generations.entry(*link).or_insert(0) += 1;
            }
        }
        self.inner.reset_notify.notify_waiters();
    }

    /// Counters per link.
    pub fn stats(&self) -> BTreeMap<Link, LinkStats> {
        self.inner.stats.lock().clone()
    }

    /// Stops every listener and closes every connection.
    pub fn shutdown(&self) {
        for task in self.inner.listeners.lock().drain(..) {
            task.abort();
        }
        let _ = self.inner.shutdown.send(true);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.listeners.get_mut().drain(..) {
            task.abort();
        }
        let _ = self.shutdown.send(true);
    }
}

impl Inner {
    fn generation(&self, link: Link) -> u64 {
        self.generations.lock().get(&link).copied().unwrap_or(0)
    }

    fn count(&self, link: Link, f: impl FnOnce(&mut LinkStats)) {
        f(self.stats.lock().entry(link).or_default());
    }
}

/// Reads one whole frame (header included); `None` at a clean end of stream.
async fn read_frame(r: &mut OwnedReadHalf) -> std::io::Result<Option<(FrameKind, Bytes)>> {
    let mut header = [0u8; HEADER_BYTES];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let h = codec::parse_header(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let mut frame = BytesMut::with_capacity(HEADER_BYTES + h.len);
    frame.extend_from_slice(&header);
    frame.resize(HEADER_BYTES + h.len, 0);
    r.read_exact(&mut frame[HEADER_BYTES..]).await?;
    Ok(Some((h.kind, frame.freeze())))
}

async fn serve_connection(
    inner: Arc<Inner>,
    down: TcpStream,
    from_hint: Option<NodeId>,
    to: NodeId,
    target: String,
) {
    let mut shutdown = inner.shutdown.subscribe();
    if *shutdown.borrow() {
        return;
    }
    let number = inner.connections.fetch_add(1, Relaxed);
    let up = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(&target)).await
    {
        Ok(Ok(s)) => s,
        // The node is down: closing the dialer's connection is what it would see.
        _ => return,
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    let (mut down_r, mut down_w) = down.into_split();
    let (mut up_r, up_w) = up.into_split();
    // The acceptor only answers the handshake: its bytes go back untouched.
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut up_r, &mut down_w).await;
        let _ = down_w.shutdown().await;
    });
    forward(&inner, &mut down_r, up_w, from_hint, to, number, &mut shutdown).await;
    back.abort();
}

/// Forwards the dialer's frames until either side closes, the link is reset, or the proxy
/// shuts down.
async fn forward(
    inner: &Arc<Inner>,
    down_r: &mut OwnedReadHalf,
    up_w: OwnedWriteHalf,
    from_hint: Option<NodeId>,
    to: NodeId,
    number: u64,
    shutdown: &mut watch::Receiver<bool>,
) {
    let Ok(Some((kind, hello))) = read_frame(down_r).await else { return };
    let from = if kind == FrameKind::Hello {
        Hello::decode(hello.slice(HEADER_BYTES..)).ok().map(|h| h.node_id).or(from_hint)
    } else {
        from_hint
    };
    let Some(from) = from else { return };
    let link = (from, to);
    inner.count(link, |s| s.connections += 1);
    let generation = inner.generation(link);
    let faults = inner.faults.read().get(&link).cloned().unwrap_or_default();
    if faults.blackhole && faults.reset {
        inner.count(link, |s| s.connections_reset += 1);
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(deliver(rx, up_w, inner.clone(), link));
    if faults.blackhole {
        inner.count(link, |s| s.frames_dropped += 1);
    } else {
        let _ = tx.send((Instant::now(), hello));
    }
    let mut rng =
        Rng::new(inner.seed ^ number.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ from << 32 ^ to);
    loop {
        // Created before the generation is read, so a reset between the two is not missed.
        let reset = inner.reset_notify.notified();
        if inner.generation(link) != generation {
            inner.count(link, |s| s.connections_reset += 1);
            break;
        }
        tokio::select! {
            frame = read_frame(down_r) => {
                let Ok(Some((_, frame))) = frame else { break };
                let faults = inner.faults.read().get(&link).cloned().unwrap_or_default();
                if faults.blackhole && faults.reset {
                    inner.count(link, |s| s.connections_reset += 1);
                    break;
                }
                if faults.blackhole || rng.chance(faults.drop_rate) {
                    inner.count(link, |s| s.frames_dropped += 1);
                    continue;
                }
                let copies = if rng.chance(faults.dup_rate) { 2 } else { 1 };
                for copy in 0..copies {
                    let delay = faults.delay_ms + rng.range(0, faults.jitter_ms + 1);
                    if delay > 0 {
                        inner.count(link, |s| s.frames_delayed += 1);
                    }
                    if copy > 0 {
                        inner.count(link, |s| s.frames_duplicated += 1);
                    }
                    let due = Instant::now() + Duration::from_millis(delay);
                    if tx.send((due, frame.clone())).is_err() {
                        break;
                    }
                }
            }
            // The generation is checked at the top of the loop.
            () = reset => {}
            _ = shutdown.changed() => break,
        }
        if writer.is_finished() {
            break;
        }
    }
    writer.abort();
}

/// Writes frames to the acceptor when they are due, earliest first (equal times in arrival
/// order).
async fn deliver(
    mut rx: mpsc::UnboundedReceiver<(Instant, Bytes)>,
    mut up_w: OwnedWriteHalf,
    inner: Arc<Inner>,
    link: Link,
) {
    let mut queue: BinaryHeap<Reverse<(Instant, u64, Bytes)>> = BinaryHeap::new();
    let mut order = 0u64;
    loop {
        let next = queue.peek().map(|Reverse((due, _, _))| *due);
        tokio::select! {
            item = rx.recv() => match item {
                Some((due, frame)) => {
                    queue.push(Reverse((due, order, frame)));
                    order += 1;
                }
                None => return,
            },
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while let Some(Reverse((due, _, _))) = queue.peek() {
                    if *due > now {
                        break;
                    }
                    let Some(Reverse((_, _, frame))) = queue.pop() else { break };
                    if up_w.write_all(&frame).await.is_err() {
                        return;
                    }
                    inner.count(link, |s| {
                        s.frames_forwarded += 1;
                        s.bytes_forwarded += frame.len() as u64;
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake acceptor: answers each handshake and records every frame after it as
    /// (payload, arrival), verifying each frame's checksum.
    async fn acceptor() -> (String, mpsc::UnboundedReceiver<(Vec<u8>, Instant)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.into_split();
                    let mut first = true;
                    while let Ok(Some((kind, frame))) = read_frame(&mut r).await {
                        let mut header = [0u8; HEADER_BYTES];
                        header.copy_from_slice(&frame[..HEADER_BYTES]);
                        let h = codec::parse_header(&header).unwrap();
                        codec::verify(&h, &frame[HEADER_BYTES..]).expect("frame arrives intact");
                        if first {
                            assert_eq!(kind, FrameKind::Hello);
                            first = false;
                            let mut out = BytesMut::new();
                            let ack = Hello { node_id: 99, ..Hello::default() };
                            codec::encode_frame(FrameKind::HelloAck, &ack.encode(), &mut out);
                            w.write_all(&out).await.unwrap();
                        } else {
                            let _ = tx.send((frame[HEADER_BYTES..].to_vec(), Instant::now()));
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// A dialer claiming node `from`: connects, sends its handshake and reads the answer.
    async fn dial(addr: SocketAddr, from: NodeId) -> TcpStream {
        tokio::time::timeout(Duration::from_secs(10), dial_unbounded(addr, from))
            .await
            .expect("the handshake completes")
    }

    async fn dial_unbounded(addr: SocketAddr, from: NodeId) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = BytesMut::new();
        let hello = Hello { node_id: from, ..Hello::default() };
        codec::encode_frame(FrameKind::Hello, &hello.encode(), &mut out);
        s.write_all(&out).await.unwrap();
        let mut header = [0u8; HEADER_BYTES];
        s.read_exact(&mut header).await.unwrap();
        let h = codec::parse_header(&header).unwrap();
        assert_eq!(h.kind, FrameKind::HelloAck);
        let mut payload = vec![0u8; h.len];
        s.read_exact(&mut payload).await.unwrap();
        s
    }

    async fn send(s: &mut TcpStream, payloads: impl IntoIterator<Item = Vec<u8>>) {
        let mut out = BytesMut::new();
        for p in payloads {
            codec::encode_frame(FrameKind::Messages, &p, &mut out);
        }
        s.write_all(&out).await.unwrap();
    }

    /// Frames received within `wait` after the last one.
    async fn collect(
        rx: &mut mpsc::UnboundedReceiver<(Vec<u8>, Instant)>,
        wait: Duration,
    ) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while let Ok(Some((p, _))) = tokio::time::timeout(wait, rx.recv()).await {
            got.push(p);
        }
        got
    }

    fn payloads(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i; 100 + usize::from(i)]).collect()
    }

    #[tokio::test]
    async fn clean_link_forwards_frames_in_order() {
        let (target, mut rx) = acceptor().await;
        let net = ProxyNet::new(1);
        let addr = net.listen(Some(1), 2, target).await.unwrap();
        let mut s = dial(addr, 1).await;
        send(&mut s, payloads(20)).await;
        let got = collect(&mut rx, Duration::from_millis(500)).await;
        assert_eq!(got, payloads(20));
        let stats = net.stats()[&(1, 2)].clone();
        assert_eq!(stats.connections, 1);
        assert_eq!(stats.frames_forwarded, 21, "the handshake and 20 frames");
    }

    #[tokio::test]
    async fn dropped_frames_vanish_whole_and_the_stream_stays_intact() {
        let (target, mut rx) = acceptor().await;
        let net = ProxyNet::new(7);
        let addr = net.listen(Some(1), 2, target).await.unwrap();
        net.set_link((1, 2), LinkFaults { drop_rate: 0.5, ..LinkFaults::default() });
        let mut s = dial(addr, 1).await;
        send(&mut s, payloads(100)).await;
        let got = collect(&mut rx, Duration::from_millis(500)).await;
        // The acceptor verified every checksum; what arrived is a subsequence of what was sent.
        assert!(got.len() > 10 && got.len() < 90, "about half must arrive, got {}", got.len());
        let sent = payloads(100);
        let mut at = 0;
        for p in &got {
            at += sent[at..].iter().position(|q| q == p).expect("an intact frame, in order") + 1;
        }
        assert_eq!(net.stats()[&(1, 2)].frames_dropped, 100 - got.len() as u64);
    }

    #[tokio::test]
    async fn duplicated_frames_arrive_twice_and_intact() {
        let (target, mut rx) = acceptor().await;
        let net = ProxyNet::new(3);
        let addr = net.listen(Some(1), 2, target).await.unwrap();
        net.set_link((1, 2), LinkFaults { dup_rate: 1.0, ..LinkFaults::default() });
        let mut s = dial(addr, 1).await;
        send(&mut s, payloads(10)).await;
        let got = collect(&mut rx, Duration::from_millis(500)).await;
        let want: Vec<Vec<u8>> = payloads(10).into_iter().flat_map(|p| [p.clone(), p]).collect();
        assert_eq!(got, want);
        assert_eq!(net.stats()[&(1, 2)].frames_duplicated, 10);
    }

    #[tokio::test]
    async fn delay_holds_frames_back_and_jitter_reorders_them() {
        let (target, mut rx) = acceptor().await;
        let net = ProxyNet::new(5);
        let addr = net.listen(Some(1), 2, target).await.unwrap();
        net.set_link((1, 2), LinkFaults { delay_ms: 150, ..LinkFaults::default() });
        let mut s = dial(addr, 1).await;
        let sent_at = Instant::now();
        send(&mut s, payloads(1)).await;
        let (_, arrived) =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert!(arrived - sent_at >= Duration::from_millis(150));

        net.set_link((1, 2), LinkFaults { jitter_ms: 200, ..LinkFaults::default() });
        send(&mut s, payloads(40)).await;
        let got = collect(&mut rx, Duration::from_millis(600)).await;
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, payloads(40), "every frame arrives once");
        assert_ne!(got, payloads(40), "jitter lets frames overtake each other");
    }

    #[tokio::test]
    async fn one_way_partition_blocks_one_direction_only() {
        let (target2, mut rx2) = acceptor().await;
        let (target1, mut rx1) = acceptor().await;
        let net = ProxyNet::new(9);
        let to2 = net.listen(Some(1), 2, target2).await.unwrap();
        let to1 = net.listen(Some(2), 1, target1).await.unwrap();
        let mut s12 = dial(to2, 1).await;
        let mut s21 = dial(to1, 2).await;
        net.partition(&[(1, 2)], false);
        send(&mut s12, payloads(5)).await;
        send(&mut s21, payloads(5)).await;
        assert_eq!(collect(&mut rx1, Duration::from_millis(400)).await, payloads(5));
        assert!(collect(&mut rx2, Duration::from_millis(400)).await.is_empty());
        assert_eq!(net.stats()[&(1, 2)].frames_dropped, 5);

        net.heal_all();
        // Healing closes the blackholed link's connections; a new one flows again.
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), s12.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "healing resets the link");
        let mut s12 = dial(to2, 1).await;
        send(&mut s12, payloads(3)).await;
        assert_eq!(collect(&mut rx2, Duration::from_millis(400)).await, payloads(3));
    }

    #[tokio::test]
    async fn reset_partition_closes_connections_and_refuses_new_ones() {
        let (target, mut rx) = acceptor().await;
        let net = ProxyNet::new(11);
        let addr = net.listen(None, 2, target).await.unwrap();
        let mut s = dial(addr, 4).await;
        send(&mut s, payloads(2)).await;
        assert_eq!(collect(&mut rx, Duration::from_millis(300)).await, payloads(2));
        net.partition(&[(4, 2)], true);
        // The existing connection is closed by the proxy.
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "connection must be closed");
        // A new connection of that link is closed as soon as it introduces itself.
        let mut again = TcpStream::connect(addr).await.unwrap();
        let mut out = BytesMut::new();
        codec::encode_frame(
            FrameKind::Hello,
            &Hello { node_id: 4, ..Hello::default() }.encode(),
            &mut out,
        );
        again.write_all(&out).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), again.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "new connection must be closed");
        // Another dialer of the same listener is not partitioned: links are learnt from the
        // handshake, not from the port.
        let mut other = dial(addr, 3).await;
        send(&mut other, payloads(1)).await;
        assert_eq!(collect(&mut rx, Duration::from_millis(300)).await, payloads(1));
        assert!(net.stats()[&(4, 2)].connections_reset >= 2);
    }
}
