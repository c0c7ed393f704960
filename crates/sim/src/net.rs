//! The simulated network between node slots (machines): per-link blocking (partitions of any
//! shape, one-way included), and for every message a chance of loss, a chance of duplication,
//! and a delay with jitter (which reorders).

use std::collections::BTreeSet;

use quorumkv_core::rng::Rng;

/// Network behaviour, changed by the nemesis during a run.
#[derive(Clone, Debug)]
pub struct Net {
    /// Directed links (from slot, to slot) that deliver nothing.
    blocked: BTreeSet<(usize, usize)>,
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Minimum one-way delay, µs.
    pub delay_min_us: u64,
    /// Extra uniformly random delay, µs (this is what reorders messages).
    pub jitter_us: u64,
}

impl Net {
    /// A healthy network: ~100–300 µs, no loss.
    pub fn healthy() -> Self {
        Self {
            blocked: BTreeSet::new(),
            loss: 0.0,
            duplicate: 0.0,
            delay_min_us: 100,
            jitter_us: 200,
        }
    }

    /// Removes every fault.
    pub fn heal(&mut self) {
        *self = Self::healthy();
    }

    /// Blocks traffic from `from` to `to` (one way).
    pub fn block(&mut self, from: usize, to: usize) {
        if from != to {
            self.blocked.insert((from, to));
        }
    }

    /// Unblocks traffic from `from` to `to`.
    pub fn unblock(&mut self, from: usize, to: usize) {
        self.blocked.remove(&(from, to));
    }

    /// Lifts every partition, keeping loss, duplication and delay.
    pub fn clear_partitions(&mut self) {
        self.blocked.clear();
    }

    /// Splits the slots into groups that cannot talk to each other (both ways).
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a {
                    for &y in b {
                        self.block(x, y);
                        self.block(y, x);
                    }
                }
            }
        }
    }

    /// True if `from` can currently send to `to`.
    pub fn connected(&self, from: usize, to: usize) -> bool {
        !self.blocked.contains(&(from, to))
    }

    /// Number of blocked directed links (for status lines).
    pub fn blocked_links(&self) -> usize {
        self.blocked.len()
    }

    /// The delays (µs) after which copies of one message arrive: none if lost or blocked, two
    /// if duplicated.
    pub fn route(&self, rng: &mut Rng, from: usize, to: usize) -> ([u64; 2], usize) {
        if !self.connected(from, to) || rng.chance(self.loss) {
            return ([0, 0], 0);
        }
        let d1 = self.delay_min_us + rng.range(0, self.jitter_us + 1);
        if rng.chance(self.duplicate) {
            let d2 = self.delay_min_us + rng.range(0, self.jitter_us * 4 + 1);
            return ([d1, d2], 2);
        }
        ([d1, 0], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_block_both_ways_and_one_way_blocks_one() {
        let mut n = Net::healthy();
        n.partition(&[vec![0, 1], vec![2]]);
        assert!(n.connected(0, 1));
        assert!(!n.connected(0, 2) && !n.connected(2, 1));
        n.clear_partitions();
        n.block(0, 2);
        assert!(!n.connected(0, 2) && n.connected(2, 0));
        let mut rng = Rng::new(1);
        assert_eq!(n.route(&mut rng, 0, 2).1, 0);
        assert_eq!(n.route(&mut rng, 2, 0).1, 1);
    }
}
