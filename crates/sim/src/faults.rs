//! The faults a run can inject, and how a seed picks its mix (swarm testing: each run enables
//! a random subset, so rare combinations get their turn instead of being drowned in noise).

use std::fmt;
use std::str::FromStr;

use quorumkv_core::rng::Rng;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Messages are lost at random.
    Loss,
    /// Messages are delayed, with jitter (and so reordered).
    Delay,
    /// Messages are delivered twice.
    Duplicate,
    /// Random split into two sides (majority/minority for odd sizes).
    Partition,
    /// Some directed links drop everything while the reverse direction works.
    OneWay,
    /// The current leader is cut off from everyone.
    IsolateLeader,
    /// Each node hears only its neighbours on a ring: overlapping majorities.
    Ring,
    /// Two sides that cannot talk, joined by one bridge node that hears both.
    Bridge,
    /// One link goes up and down rapidly.
    Flap,
    /// A node crashes, losing (or tearing) what it had not fsynced, and restarts.
    Crash,
    /// Leader churn: for a while, a node that has just won an election often crashes within
    /// microseconds to milliseconds, before its term's first entry reaches a quorum, and
    /// restarts soon (the window of the dissertation's Figure 3.7).
    LeaderCrash,
    /// A node's process stops, then resumes (and catches up its missed ticks first).
    Pause,
    /// A bit flips in a durable WAL record of a node, which then crashes: it must refuse to
    /// start (corruption, with file and offset) and is later wiped and re-added under a new id.
    Bitflip,
    /// A node's next fsync fails: the process stops and restarts from what is durable.
    FsyncFail,
    /// A node's disk is full for a while: the process stops at the first rejected write and
    /// restarts once space is back.
    DiskFull,
    /// A node is removed, wiped and re-added under a new id (learner, then voter).
    Wipe,
    /// Voters are demoted to learners and promoted back (joint consensus both ways).
    Membership,
    /// Leadership is transferred to another voter.
    Transfer,
    /// Nodes' tick rates differ and drift, within the bound lease reads assume.
    Skew,
    /// Tick rates differ beyond that bound (lease reads are then off for the run).
    SkewBeyond,
}

impl FaultKind {
    /// Every fault, in a fixed order.
    pub const ALL: [FaultKind; 20] = [
        FaultKind::Loss,
        FaultKind::Delay,
        FaultKind::Duplicate,
        FaultKind::Partition,
        FaultKind::OneWay,
        FaultKind::IsolateLeader,
        FaultKind::Ring,
        FaultKind::Bridge,
        FaultKind::Flap,
        FaultKind::Crash,
        FaultKind::LeaderCrash,
        FaultKind::Pause,
        FaultKind::Bitflip,
        FaultKind::FsyncFail,
        FaultKind::DiskFull,
        FaultKind::Wipe,
        FaultKind::Membership,
        FaultKind::Transfer,
        FaultKind::Skew,
        FaultKind::SkewBeyond,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Loss => "loss",
            FaultKind::Delay => "delay",
            FaultKind::Duplicate => "dup",
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one-way",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::Ring => "ring",
            FaultKind::Bridge => "bridge",
            FaultKind::Flap => "flap",
            FaultKind::Crash => "crash",
            FaultKind::LeaderCrash => "leader-crash",
            FaultKind::Pause => "pause",
            FaultKind::Bitflip => "bitflip",
            FaultKind::FsyncFail => "fsync-fail",
            FaultKind::DiskFull => "disk-full",
            FaultKind::Wipe => "wipe",
            FaultKind::Membership => "membership",
            FaultKind::Transfer => "transfer",
            FaultKind::Skew => "skew",
            FaultKind::SkewBeyond => "skew-beyond",
        }
    }

    /// True for faults the nemesis starts and stops during the run (the others are background
    /// conditions set for the whole fault phase).
    pub fn is_episodic(self) -> bool {
        !matches!(
            self,
            FaultKind::Loss
                | FaultKind::Delay
                | FaultKind::Duplicate
                | FaultKind::Skew
                | FaultKind::SkewBeyond
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault name that is not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault {0:?}; known faults: {known}", known = FaultKind::ALL.map(|f| f.name()).join(", "))]
pub struct UnknownFault(pub String);

impl FromStr for FaultKind {
    type Err = UnknownFault;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFault(s.to_string()))
    }
}

/// Parses a comma-separated list of fault names (`all` means every fault).
pub fn parse_faults(list: &str) -> Result<Vec<FaultKind>, UnknownFault> {
    if list.trim() == "all" {
        return Ok(FaultKind::ALL.to_vec());
    }
    let mut out: Vec<FaultKind> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// The faults one run enables: from `allowed` (every fault if `None`), each kept with
/// probability one half, at least one kept; `skew` and `skew-beyond` never together.
pub fn pick_mix(rng: &mut Rng, allowed: Option<&[FaultKind]>) -> Vec<FaultKind> {
    let pool: Vec<FaultKind> =
        allowed.map_or_else(|| FaultKind::ALL.to_vec(), <[FaultKind]>::to_vec);
    if pool.is_empty() {
        return Vec::new();
    }
    let mut mix: Vec<FaultKind> = pool.iter().copied().filter(|_| rng.chance(0.5)).collect();
    if mix.is_empty() {
        mix.extend(rng.pick(&pool).copied());
    }
    if mix.contains(&FaultKind::Skew) && mix.contains(&FaultKind::SkewBeyond) {
        let drop = if rng.chance(0.5) { FaultKind::Skew } else { FaultKind::SkewBeyond };
        mix.retain(|&f| f != drop);
    }
    mix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_refused() {
        for f in FaultKind::ALL {
            assert_eq!(f.name().parse::<FaultKind>(), Ok(f));
        }
        assert_eq!(parse_faults("crash, loss").unwrap(), vec![FaultKind::Loss, FaultKind::Crash]);
        assert_eq!(parse_faults("all").unwrap().len(), FaultKind::ALL.len());
        let err = parse_faults("crash,meteor").unwrap_err();
        assert!(err.to_string().contains("meteor") && err.to_string().contains("partition"));
    }

    #[test]
    fn mixes_are_non_empty_and_respect_the_allowed_set() {
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let mix = pick_mix(
                &mut rng,
                Some(&[FaultKind::Crash, FaultKind::Skew, FaultKind::SkewBeyond]),
            );
            assert!(!mix.is_empty());
            assert!(
                mix.iter().all(|f| matches!(
                    f,
                    FaultKind::Crash | FaultKind::Skew | FaultKind::SkewBeyond
                ))
            );
            assert!(!(mix.contains(&FaultKind::Skew) && mix.contains(&FaultKind::SkewBeyond)));
        }
    }
}
