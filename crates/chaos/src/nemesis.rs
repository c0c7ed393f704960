//! Nemeses: the faults, injected on a schedule drawn from the run's seed.
//!
//! The schedule alternates quiet gaps (2–4 s) and fault windows (3–7 s). A window holds one
//! fault, dealt from a shuffled deck of the enabled kinds (so every kind comes up once per
//! round, and a short run still sees each of them), or two of different kinds at once (with probability 0.3, when two or more kinds
//! are enabled; membership changes and clock skew always run alone). At the end of a window
//! the fault is healed. Every window is recorded with its start and end, for the report's
//! shading.
//!
//! One fault cannot be injected against real processes here: losing writes the OS had not
//! flushed at a crash (dm-flakey or a FUSE file system would be needed). SIGKILL loses the
//! process, not the page cache. That fault, with torn writes and bit flips, is the
//! simulator's (`quorumkv sim --faults crash,bitflip`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use quorumkv_core::rng::Rng;
use quorumkv_etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use quorumkv_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use quorumkv_etcd_proto::etcdserverpb::{
    MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest,
};
use serde::Serialize;
use tokio::time::Instant;

use crate::client::{Channels, MEMBER_ID_HEADER, timed};
use crate::cluster::Cluster;
use crate::proxy::{Link, LinkFaults, NodeId};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Network partitions: random halves, isolated leader or follower, ring, bridge,
    /// one-way; silent drops or connection resets.
    Partition,
    /// A lossy, slow, duplicating network on every link.
    Net,
    /// SIGKILL a node, restart it at the end of the window.
    Kill,
    /// SIGSTOP a node, SIGCONT it at the end of the window.
    Pause,
    /// Move the leadership (etcd `Maintenance.MoveLeader`).
    Transfer,
    /// Remove a node and add it back wiped under a new id (learner, then promoted).
    Membership,
    /// Restart a node with its lease clock offset.
    Skew,
}

impl Kind {
    /// Every kind, in the order `all` lists them.
    pub const ALL: [Kind; 7] = [
        Kind::Partition,
        Kind::Net,
        Kind::Kill,
        Kind::Pause,
        Kind::Transfer,
        Kind::Membership,
        Kind::Skew,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::Net => "net",
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Transfer => "transfer",
            Kind::Membership => "membership",
            Kind::Skew => "skew",
        }
    }

    /// Parses `all`, `none` or a comma-separated list.
    pub fn parse_list(text: &str) -> Result<Vec<Kind>, String> {
        match text.trim() {
            "all" => return Ok(Kind::ALL.to_vec()),
            "none" | "" => return Ok(Vec::new()),
            _ => {}
        }
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let kind = Kind::ALL.iter().copied().find(|k| k.name() == name).ok_or_else(|| {
                format!(
                    "unknown nemesis {name:?}; choose from {}, all, none",
                    Kind::ALL.map(Kind::name).join(", ")
                )
            })?;
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        Ok(out)
    }

    /// Runs alone, never combined with another fault.
    fn solo(self) -> bool {
        matches!(self, Kind::Membership | Kind::Skew)
    }
}

/// One fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// The kind.
    pub kind: Kind,
    /// What exactly, e.g. `isolate follower n2 (silent)`.
    pub detail: String,
    /// Start, ms since the run started.
    pub start_ms: f64,
    /// End (healed), ms since the run started.
    pub end_ms: f64,
}

/// What the nemesis did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NemesisLog {
    /// Every window, in order.
    pub windows: Vec<Window>,
    /// Faults injected per kind.
    pub counts: BTreeMap<String, u64>,
    /// Faults that could not be injected, with why (e.g. no leader to transfer from).
    pub skipped: Vec<String>,
}

/// How to undo an active fault.
enum Undo {
    Heal,
    Restart(usize),
    Resume(usize),
    Unskew(usize),
    Nothing,
}

/// The fault injector.
pub struct Nemesis {
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    channels: Channels,
    kinds: Vec<Kind>,
    rng: Rng,
    t0: Instant,
    /// What is active now, for the progress bar.
    pub now: Arc<Mutex<String>>,
    /// Faults injected so far, for the progress bar.
    pub injected: Arc<AtomicU64>,
    log: NemesisLog,
}

impl Nemesis {
    /// A nemesis over `cluster` injecting `kinds`, seeded.
    pub fn new(
        cluster: Arc<tokio::sync::Mutex<Cluster>>,
        channels: Channels,
        kinds: Vec<Kind>,
        seed: u64,
        t0: Instant,
    ) -> Self {
        Nemesis {
            cluster,
            channels,
            kinds,
            rng: Rng::new(seed ^ 0x004e_454d_4553_4953),
            t0,
            now: Arc::new(Mutex::new(String::new())),
            injected: Arc::new(AtomicU64::new(0)),
            log: NemesisLog::default(),
        }
    }

    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }

    /// Injects faults until `until`, healing each at the end of its window; returns the log.
    pub async fn run(mut self, until: Instant) -> NemesisLog {
        if self.kinds.is_empty() {
            return self.log;
        }
        // A short warm-up: the workloads start against a healthy cluster.
        tokio::time::sleep_until(Instant::now() + Duration::from_secs(2)).await;
        let mut deck: Vec<Kind> = Vec::new();
        loop {
            let hold = Duration::from_millis(self.rng.range(3000, 7000));
            if Instant::now() + Duration::from_secs(3) > until {
                break;
            }
            if deck.is_empty() {
                deck = self.kinds.clone();
                // Fisher–Yates, from the run's seed.
                for i in (1..deck.len()).rev() {
                    let j = self.rng.range(0, i as u64 + 1) as usize;
                    deck.swap(i, j);
                }
            }
            let Some(first) = deck.pop() else { break };
            let mut chosen = vec![first];
            if !first.solo() && self.kinds.len() > 1 && self.rng.chance(0.3) {
                let others: Vec<Kind> =
                    self.kinds.iter().copied().filter(|k| *k != first && !k.solo()).collect();
                if let Some(&k) = self.rng.pick(&others) {
                    chosen.push(k);
                }
            }
            let start = self.ms();
            let mut active = Vec::new();
            for kind in chosen {
                match self.inject(kind).await {
                    Ok((detail, undo)) => {
                        *self.log.counts.entry(kind.name().to_string()).or_default() += 1;
                        self.injected.fetch_add(1, Relaxed);
                        active.push((kind, detail, undo, self.ms()));
                    }
                    Err(why) => self.log.skipped.push(format!("{}: {why}", kind.name())),
                }
            }
            *self.now.lock() =
                active.iter().map(|(_, d, _, _)| d.clone()).collect::<Vec<_>>().join(" + ");
            let instant = active.iter().all(|(_, _, u, _)| matches!(u, Undo::Nothing));
            if !instant {
                let end = (Instant::now() + hold).min(until);
                tokio::time::sleep_until(end).await;
            }
            for (kind, detail, undo, injected) in active {
                self.undo(undo).await;
                self.log.windows.push(Window {
                    kind,
                    detail,
                    start_ms: start.min(injected),
                    end_ms: self.ms(),
                });
            }
            self.now.lock().clear();
            let gap = Duration::from_millis(self.rng.range(2000, 4000));
            if Instant::now() + gap >= until {
                break;
            }
            tokio::time::sleep(gap).await;
        }
        self.log
    }

    async fn undo(&mut self, undo: Undo) {
        let mut c = self.cluster.lock().await;
        match undo {
            Undo::Heal => c.net.heal_all(),
            Undo::Restart(i) => {
                if let Err(e) = c.spawn(i) {
                    self.log.skipped.push(format!("restart of slot {i} failed: {e}"));
                }
            }
            Undo::Resume(i) => c.resume(i),
            Undo::Unskew(i) => {
                if let Err(e) = c.restart_with_offset(i, 0) {
                    self.log.skipped.push(format!("restart of slot {i} failed: {e}"));
                }
            }
            Undo::Nothing => {}
        }
    }

    /// Running, unpaused members.
    fn live(c: &Cluster) -> Vec<usize> {
        c.active().into_iter().filter(|&i| c.slots[i].running() && !c.slots[i].paused).collect()
    }

    async fn inject(&mut self, kind: Kind) -> Result<(String, Undo), String> {
        match kind {
            Kind::Partition => self.partition().await,
            Kind::Net => {
                let c = self.cluster.lock().await;
                let ids = c.active_ids();
                let faults = LinkFaults {
                    drop_rate: self.rng.range(5, 21) as f64 / 100.0,
                    delay_ms: self.rng.range(5, 40),
                    jitter_ms: self.rng.range(0, 40),
                    dup_rate: self.rng.range(2, 11) as f64 / 100.0,
                    ..LinkFaults::default()
                };
                for &a in &ids {
                    for &b in &ids {
                        if a != b {
                            c.net.set_link((a, b), faults.clone());
                        }
                    }
                }
                Ok((
                    format!(
                        "lossy network: drop {:.0}%, delay {} ms + jitter {} ms, dup {:.0}%",
                        faults.drop_rate * 100.0,
                        faults.delay_ms,
                        faults.jitter_ms,
                        faults.dup_rate * 100.0
                    ),
                    Undo::Heal,
                ))
            }
            Kind::Kill | Kind::Pause => {
                let mut c = self.cluster.lock().await;
                let leader = c.leader().await;
                let live = Self::live(&c);
                let victim = match leader {
                    Some(l) if self.rng.chance(0.5) => l,
                    _ => *self.rng.pick(&live).ok_or("no live node")?,
                };
                let id = c.slots[victim].id;
                let role = if Some(victim) == leader { "leader" } else { "node" };
                if kind == Kind::Kill {
                    c.kill(victim);
                    Ok((format!("kill -9 {role} n{id}"), Undo::Restart(victim)))
                } else {
                    c.pause(victim);
                    Ok((format!("SIGSTOP {role} n{id}"), Undo::Resume(victim)))
                }
            }
            Kind::Skew => {
                let mut c = self.cluster.lock().await;
                let live = Self::live(&c);
                let victim = *self.rng.pick(&live).ok_or("no live node")?;
                let magnitude = self.rng.range(500, 5000) as i64;
                let offset = if self.rng.chance(0.5) { magnitude } else { -magnitude };
                c.restart_with_offset(victim, offset).map_err(|e| e.to_string())?;
                let id = c.slots[victim].id;
                Ok((format!("clock skew n{id} {offset:+} ms"), Undo::Unskew(victim)))
            }
            Kind::Transfer => self.transfer().await,
            Kind::Membership => self.replace_member().await,
        }
    }

    async fn partition(&mut self) -> Result<(String, Undo), String> {
        let c = self.cluster.lock().await;
        let mut ids = c.active_ids();
        let leader = c.leader().await.map(|i| c.slots[i].id);
        self.rng.shuffle(&mut ids);
        let n = ids.len();
        let reset = self.rng.chance(0.5);
        let mode = if reset { "reset" } else { "silent" };
        let cut = |a: &[NodeId], b: &[NodeId]| -> Vec<Link> {
            let mut links = Vec::new();
            for &x in a {
                for &y in b {
                    links.push((x, y));
                    links.push((y, x));
                }
            }
            links
        };
        let names = |s: &[NodeId]| s.iter().map(|i| format!("n{i}")).collect::<Vec<_>>().join(",");
        let variant = self.rng.range(0, 6);
        let (detail, links) = match variant {
            0 => {
                let (a, b) = ids.split_at(n / 2);
                (format!("partition {} | {}", names(a), names(b)), cut(a, b))
            }
            1 | 2 => {
                // Isolate the leader or a follower: a minority of one, which keeps serving
                // whatever it is allowed to serve alone.
                let pick = if variant == 1 {
                    leader.unwrap_or(ids[0])
                } else {
                    ids.iter().copied().find(|i| Some(*i) != leader).unwrap_or(ids[0])
                };
                let rest: Vec<NodeId> = ids.iter().copied().filter(|&i| i != pick).collect();
                let who = if Some(pick) == leader { "leader" } else { "follower" };
                (format!("isolate {who} n{pick}"), cut(&[pick], &rest))
            }
            3 => {
                // Overlapping majorities: on a ring, each node reaches its neighbours only
                // (five nodes); with three, links go one way round the ring.
                let mut links = Vec::new();
                for (p, &x) in ids.iter().enumerate() {
                    for (q, &y) in ids.iter().enumerate() {
                        let d = (q + n - p) % n;
                        let blocked = if n >= 5 { d > 1 && d < n - 1 } else { d == n - 1 };
                        if x != y && blocked {
                            links.push((x, y));
                        }
                    }
                }
                (format!("ring {}", names(&ids)), links)
            }
            4 => {
                let bridge = ids[0];
                let rest = &ids[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                (format!("bridge n{bridge} between {} and {}", names(a), names(b)), cut(a, b))
            }
            _ => {
                let x = ids[0];
                let rest: Vec<NodeId> = ids[1..].to_vec();
                if self.rng.chance(0.5) {
                    let links = rest.iter().map(|&y| (x, y)).collect();
                    (format!("one-way: n{x} cannot send"), links)
                } else {
                    let links = rest.iter().map(|&y| (y, x)).collect();
                    (format!("one-way: n{x} cannot receive"), links)
                }
            }
        };
        c.net.partition(&links, reset);
        Ok((format!("{detail} ({mode})"), Undo::Heal))
    }

    async fn transfer(&mut self) -> Result<(String, Undo), String> {
        let c = self.cluster.lock().await;
        let leader = c.leader().await.ok_or("no leader")?;
        let status = c.status(leader).await.ok_or("the leader does not answer")?;
        let voters: Vec<NodeId> = status["voters"]
            .as_array()
            .map(|v| v.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let live: Vec<NodeId> = Self::live(&c)
            .into_iter()
            .map(|i| c.slots[i].id)
            .filter(|id| *id != c.slots[leader].id && voters.contains(id))
            .collect();
        let target = *self.rng.pick(&live).ok_or("no voter to transfer to")?;
        let from = c.slots[leader].id;
        let mut client = MaintenanceClient::new(self.channels.get(&c.slots[leader].client));
        let req = MoveLeaderRequest { target_id: target };
        let result = timed(Duration::from_secs(5), client.move_leader(req)).await;
        match result {
            Ok(_) => Ok((format!("move leader n{from} → n{target}"), Undo::Nothing)),
            Err(e) => Err(format!("move leader n{from} → n{target}: {}", e.message())),
        }
    }

    /// Removes a follower, wipes it, and adds a fresh node under a new id: as a learner
    /// first (`Cluster.MemberAdd` with `x-quorumkv-member-id`, started with `--join`), then
    /// promoted once it caught up.
    async fn replace_member(&mut self) -> Result<(String, Undo), String> {
        let mut c = self.cluster.lock().await;
        let leader = c.leader().await.ok_or("no leader")?;
        let candidates: Vec<usize> = Self::live(&c).into_iter().filter(|&i| i != leader).collect();
        if c.active().len() < 3 {
            return Err("fewer than three members".into());
        }
        let victim = *self.rng.pick(&candidates).ok_or("no follower to replace")?;
        let old = c.slots[victim].id;
        let via = c.slots[leader].client.clone();
        let mut cluster = ClusterClient::new(self.channels.get(&via));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = timed(
                Duration::from_secs(5),
                cluster.member_remove(MemberRemoveRequest { id: old }),
            )
            .await;
            match r {
                Ok(_) => break,
                Err(e) if e.message().contains("not found") => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("remove n{old}: {}", e.message()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        c.retire(victim);
        let slot = c.prepare_join().await.map_err(|e| e.to_string())?;
        let new = c.slots[slot].id;
        let url = format!("http://{}", c.slots[slot].ingress);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut req = tonic::Request::new(MemberAddRequest {
                peer_ur_ls: vec![url.clone()],
                is_learner: true,
            });
            if let Ok(v) = new.to_string().parse() {
                req.metadata_mut().insert(MEMBER_ID_HEADER, v);
            }
            let leader = c.leader().await.unwrap_or(leader);
            let mut cluster = ClusterClient::new(self.channels.get(&c.slots[leader].client));
            match timed(Duration::from_secs(5), cluster.member_add(req)).await {
                Ok(_) => break,
                Err(e) if e.message().contains("already exists") => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "removed n{old}, but adding n{new} failed: {}",
                        e.message()
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        c.spawn(slot).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = c.leader().await.unwrap_or(leader);
            let mut cluster = ClusterClient::new(self.channels.get(&c.slots[leader].client));
            let r = timed(
                Duration::from_secs(5),
                cluster.member_promote(MemberPromoteRequest { id: new }),
            )
            .await;
            match r {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    c.admit(slot);
                    return Ok((
                        format!("replaced n{old} by n{new} (still a learner: {})", e.message()),
                        Undo::Nothing,
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        c.admit(slot);
        Ok((format!("removed n{old}, added it back wiped as n{new}"), Undo::Nothing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemesis_lists_parse() {
        assert_eq!(Kind::parse_list("all").unwrap().len(), Kind::ALL.len());
        assert!(Kind::parse_list("none").unwrap().is_empty());
        assert_eq!(
            Kind::parse_list("partition, kill,pause,kill").unwrap(),
            vec![Kind::Partition, Kind::Kill, Kind::Pause]
        );
        assert!(Kind::parse_list("partition,flood").unwrap_err().contains("flood"));
    }
}
