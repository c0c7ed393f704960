//! Synthetic histories that are linearizable by construction, for tests and benchmarks.
//!
//! A seeded generator runs a sequential map of registers and wraps every operation in a
//! random invoke/complete window around the instant it is applied: each step picks a
//! client slot and either invokes a new operation, applies the pending one to the model
//! (its linearization point), or completes it. Some operations end `fail` (not applied)
//! or `info` (applied or not, at random), and a client whose operation ended `info` comes
//! back under a fresh process id, as a real harness must do.

use crate::history::{Event, EventType, F, Value};

/// Shape of a generated history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// Seed: the same configuration always gives the same history.
    pub seed: u64,
    /// Number of operations invoked.
    pub operations: usize,
    /// Concurrent clients.
    pub processes: usize,
    /// Number of keys; 0 means no `key` field at all (the single register).
    pub keys: usize,
    /// Written values are drawn from `0..values`; 0 means every write writes a fresh value.
    pub values: i64,
    /// Relative weights of read, write, cas, delete.
    pub weights: [u32; 4],
    /// Percentage of operations whose outcome is reported as `info`.
    pub info_percent: u32,
    /// Percentage of writes and deletes reported as `fail` (and not applied).
    pub fail_percent: u32,
    /// Whether events carry a `time` field.
    pub timed: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            operations: 100,
            processes: 5,
            keys: 0,
            values: 5,
            weights: [4, 3, 2, 0],
            info_percent: 2,
            fail_percent: 2,
            timed: false,
        }
    }
}

/// A tiny seeded generator (splitmix64): deterministic and dependency-free.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift keeps the bias negligible for the small n used here.
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }
}

/// What will happen to a slot's pending operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Ok,
    Fail,
    /// Reported as info; the flag says whether it is applied.
    Info(bool),
}

/// A client slot's operation in flight.
struct Pending {
    f: F,
    key: Option<String>,
    value: Value,
    fate: Fate,
    /// Set once applied (or decided not to be): the value to report on completion.
    resolved: Option<Value>,
}

/// Generates a history per `config`. It is linearizable under the `kv` model (and under
/// `register` when `keys` is 0 or 1 and there are no deletes).
pub fn generate(config: &GenConfig) -> Vec<Event> {
    let mut rng = SplitMix64::new(config.seed);
    let processes = config.processes.max(1);
    let mut slot_process: Vec<u64> = (0..processes as u64).collect();
    let mut next_process = processes as u64;
    let mut pending: Vec<Option<Pending>> = (0..processes).map(|_| None).collect();
    let mut store: Vec<Value> = vec![Value::Null; config.keys.max(1)];
    let mut events = Vec::with_capacity(config.operations * 2);
    let mut invoked = 0;
    let mut fresh_value: i64 = 0;
    let mut clock: u64 = 0;
    let total_weight: u32 = config.weights.iter().sum::<u32>().max(1);

    while invoked < config.operations || pending.iter().any(Option::is_some) {
        let slot = rng.below(processes as u64) as usize;
        clock += 1 + rng.below(1000);
        let time = config.timed.then_some(clock);
        match pending[slot].take() {
            None if invoked < config.operations => {
                invoked += 1;
                let key_index =
                    if config.keys > 1 { rng.below(config.keys as u64) as usize } else { 0 };
                let key = (config.keys > 0).then(|| format!("k{key_index}"));
                let mut pick = rng.below(u64::from(total_weight)) as u32;
                let mut kind = 0;
                while pick >= config.weights[kind] {
                    pick -= config.weights[kind];
                    kind += 1;
                }
                let mut draw = |rng: &mut SplitMix64| {
                    if config.values > 0 {
                        Value::Int(rng.below(config.values as u64) as i64)
                    } else {
                        fresh_value += 1;
                        Value::Int(fresh_value)
                    }
                };
                let (f, value) = match kind {
                    0 => (F::Read, Value::Null),
                    1 => (F::Write, draw(&mut rng)),
                    2 => {
                        // Usually expect the current value so that many cas succeed.
                        let expected =
                            if rng.percent(70) { store[key_index].clone() } else { draw(&mut rng) };
                        (F::Cas, Value::List(vec![expected, draw(&mut rng)]))
                    }
                    _ => (F::Delete, Value::Null),
                };
                let fate = if rng.percent(config.info_percent) {
                    Fate::Info(rng.percent(50))
                } else if matches!(f, F::Write | F::Delete) && rng.percent(config.fail_percent) {
                    Fate::Fail
                } else {
                    Fate::Ok
                };
                events.push(Event {
                    process: slot_process[slot],
                    kind: EventType::Invoke,
                    f: f.clone(),
                    key: key.clone(),
                    value: value.clone(),
                    time,
                });
                pending[slot] = Some(Pending { f, key, value, fate, resolved: None });
            }
            None => {}
            Some(mut op) if op.resolved.is_none() => {
                // The linearization point: apply to the sequential model now.
                let key_index =
                    op.key.as_deref().and_then(|k| k[1..].parse::<usize>().ok()).unwrap_or(0);
                let applies = matches!(op.fate, Fate::Ok | Fate::Info(true));
                let current = &mut store[key_index];
                op.resolved = Some(match (&op.f, &op.value) {
                    (F::Read, _) => current.clone(),
                    (F::Write, v) => {
                        if applies {
                            *current = v.clone();
                        }
                        v.clone()
                    }
                    (F::Cas, Value::List(pair)) => {
                        if *current != pair[0] {
                            // The compare fails: a definite no-op, reported as fail.
                            if op.fate == Fate::Ok {
                                op.fate = Fate::Fail;
                            }
                        } else if applies {
                            *current = pair[1].clone();
                        }
                        op.value.clone()
                    }
                    _ => {
                        if applies {
                            *current = Value::Null;
                        }
                        Value::Null
                    }
                });
                pending[slot] = Some(op);
            }
            Some(op)
                if invoked >= config.operations
                    && matches!(op.fate, Fate::Info(_))
                    && rng.percent(50) =>
            {
                // Leave it without a completion: the history ends with it in flight.
                slot_process[slot] = next_process;
                next_process += 1;
            }
            Some(op) => {
                let kind = match op.fate {
                    Fate::Ok => EventType::Ok,
                    Fate::Fail => EventType::Fail,
                    Fate::Info(_) => EventType::Info,
                };
                let value = match kind {
                    EventType::Info if op.f == F::Read => Value::Null,
                    _ => op.resolved.unwrap_or_default(),
                };
                events.push(Event {
                    process: slot_process[slot],
                    kind,
                    f: op.f,
                    key: op.key,
                    value,
                    time,
                });
                if kind == EventType::Info {
                    slot_process[slot] = next_process;
                    next_process += 1;
                }
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    #[test]
    fn generated_histories_are_valid_and_deterministic() {
        let config = GenConfig {
            operations: 300,
            keys: 3,
            timed: true,
            weights: [3, 3, 2, 1],
            ..GenConfig::default()
        };
        let a = generate(&config);
        assert_eq!(a, generate(&config));
        let history = History::from_events(a).expect("generator output follows the format");
        assert_eq!(history.operations.len(), 300);
        assert!(history.operations.iter().any(|o| o.status == crate::history::Status::Info));
    }
}
