//! Sequential specifications the checker compares histories against.
//!
//! A [`Model`] does two things. It splits a history into sub-histories that can be checked
//! independently (one per key for a map: P-compositionality) and translates each operation
//! into a compact, model-specific form with values interned into small integers. Then it
//! gives the sequential semantics: from a state, does an operation take effect with the
//! result it reported, and what state follows.
//!
//! Two models exist today: [`RegisterModel`] (one register, read / write / cas) and
//! [`KvModel`] (a map of independent registers, read / write / cas / delete). Sets,
//! counters and queues fit the same trait later.

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::history::{F, History, Operation, Status, Value};

/// An operation a model cannot interpret: unknown `f`, malformed value, or a key the model
/// does not allow. Reported like a format error, with the invoke's line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ModelError {
    /// 1-based line of the operation's invoke.
    pub line: usize,
    /// What is wrong, in words.
    pub message: String,
}

/// One operation of a [`Partition`], in the model's compact form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOp<O> {
    /// Index of the operation in [`History::operations`].
    pub operation: usize,
    /// The model's form of the operation (input and expected output).
    pub op: O,
    /// True when the outcome is unknown (`info`, or never completed): the operation may take
    /// effect at any point after its invoke, or never.
    pub info: bool,
    /// Tokens this operation observes (for a register: the value a read returned, the value
    /// a cas expected). See [`PartitionOp::effect`].
    pub observes: Vec<u32>,
    /// The token of the state this operation leaves when it changes the state (for a
    /// register: the value written; `null` for a delete). `None` promises that it never
    /// changes the state (a read).
    ///
    /// For an `info` operation this is also how its effect could ever be noticed: once every
    /// operation observing the token is linearized, applying it can only make later
    /// operations harder, so the search stops trying it.
    pub effect: Option<u32>,
    /// The token of the only state in which this operation can take effect (for a
    /// register: the value a read returned or a cas expected); `None` if there is no such
    /// single state. Lets the search see early that a deadline cannot be met.
    pub needs: Option<u32>,
}

/// A sub-history checked on its own: the operations on one key, for a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition<O, S> {
    /// The key (`""` for the single register).
    pub key: String,
    /// The state before any operation.
    pub init: S,
    /// Operations, in invoke order. `fail` operations and `info` reads are already left out.
    pub ops: Vec<PartitionOp<O>>,
    /// Interned values: token `i` stands for `values[i]`; token 0 is `null`.
    pub values: Vec<Value>,
    /// Number of relevance tokens (at least `values.len()`).
    pub tokens: usize,
}

/// An operation that no order can explain, found without searching (for example a read of a
/// value nobody wrote).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Impossible {
    /// Index into [`Partition::ops`].
    pub op: usize,
    /// Why, in one sentence.
    pub reason: String,
}

/// The partition type of a model.
pub type ModelPartition<M> = Partition<<M as Model>::Op, <M as Model>::State>;

/// A sequential specification.
pub trait Model {
    /// Compact form of one operation. Equal values must mean interchangeable operations.
    type Op: Clone + Eq + Hash + fmt::Debug;
    /// State of the object. Small and cheap to clone: the search keeps one per stack frame.
    type State: Clone + Eq + Hash + fmt::Debug;

    /// Name used in reports (`register`, `kv`).
    fn name(&self) -> &'static str;

    /// Splits the history into independently checkable partitions and translates their
    /// operations; rejects operations the model does not know.
    fn partition(&self, history: &History) -> Result<Vec<ModelPartition<Self>>, ModelError>;

    /// Applies `op` to `state`: the next state if the operation can take effect there with
    /// the result it reported, `None` if not.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;

    /// True for a *blind* operation: it always succeeds and the state after it does not
    /// depend on the state before (a register write). The search uses this to avoid
    /// placing an `info` blind operation right before another blind one, where its effect
    /// could never be seen. The default, `false`, is always safe.
    fn is_blind(&self, _op: &Self::Op) -> bool {
        false
    }

    /// True for a *read-only* operation: wherever it succeeds it leaves the state as it
    /// was (a read, a cas from a value to itself). When one such operation that must happen
    /// can take effect now, the search takes it without trying alternatives, since moving it
    /// earlier changes no state. The default, `false`, is always safe.
    fn is_read_only(&self, _op: &Self::Op) -> bool {
        false
    }

    /// The token of a state, in the sense of [`PartitionOp::effect`] and
    /// [`PartitionOp::needs`], when states are tokens. The default, `None`, turns off the
    /// look-ahead that uses them.
    fn state_token(&self, _state: &Self::State) -> Option<u32> {
        None
    }

    /// A short human description of a state ("3", "null").
    fn describe_state(
        &self,
        partition: &Partition<Self::Op, Self::State>,
        state: &Self::State,
    ) -> String;

    /// A 128-bit fingerprint of a state for the search's visited set. The default hashes
    /// twice with different prefixes; models with tiny states can do better.
    fn fingerprint(&self, state: &Self::State) -> u128 {
        let half = |salt: u8| {
            let mut hasher = DefaultHasher::new();
            salt.hash(&mut hasher);
            state.hash(&mut hasher);
            hasher.finish()
        };
        (u128::from(half(0)) << 64) | u128::from(half(1))
    }

    /// A cheap static check for an operation that can never take effect, so that a hopeless
    /// history is reported at once instead of after an exhaustive search.
    fn impossible(
        &self,
        _history: &History,
        _partition: &Partition<Self::Op, Self::State>,
    ) -> Option<Impossible> {
        None
    }
}

/// The models the CLI can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A single register: read, write, cas; every operation on the same key (or none).
    Register,
    /// A map of registers: read, write, cas, delete on any keys. The default, because it
    /// also accepts every single-register history.
    #[default]
    Kv,
}

impl ModelKind {
    /// All models, for help texts.
    pub const ALL: [ModelKind; 2] = [ModelKind::Register, ModelKind::Kv];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Register => "register",
            ModelKind::Kv => "kv",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown model name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown model {0:?}: expected register or kv")]
pub struct UnknownModel(pub String);

impl FromStr for ModelKind {
    type Err = UnknownModel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "register" => Ok(ModelKind::Register),
            "kv" => Ok(ModelKind::Kv),
            other => Err(UnknownModel(other.to_owned())),
        }
    }
}

/// A register operation with values interned (token 0 is `null`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// A read that returned this value.
    Read(u32),
    /// A write of this value.
    Write(u32),
    /// A successful (or possibly successful) compare-and-set: expected, new.
    Cas(u32, u32),
    /// Removal: the value becomes `null`.
    Delete,
}

/// One register per history: read / write / cas, initial value `null`, values need not be
/// unique. Every operation must name the same key, or none.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterModel;

/// A map from keys to independent registers (initially absent, i.e. `null`): read / write /
/// cas / delete. Each key is checked on its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

/// Builds a register partition: interns values and drops what cannot matter.
struct RegisterBuilder {
    partition: Partition<RegisterOp, u32>,
    index: HashMap<Value, u32>,
}

impl RegisterBuilder {
    fn new(key: String) -> Self {
        let mut index = HashMap::new();
        index.insert(Value::Null, 0);
        RegisterBuilder {
            partition: Partition {
                key,
                init: 0,
                ops: Vec::new(),
                values: vec![Value::Null],
                tokens: 1,
            },
            index,
        }
    }

    fn intern(&mut self, value: &Value) -> u32 {
        if let Some(&token) = self.index.get(value) {
            return token;
        }
        let token = u32::try_from(self.partition.values.len()).unwrap_or(u32::MAX);
        self.partition.values.push(value.clone());
        self.index.insert(value.clone(), token);
        self.partition.tokens = self.partition.values.len();
        token
    }

    /// Adds one operation (already known to be of a supported `f`).
    fn push(&mut self, index: usize, operation: &Operation) -> Result<(), ModelError> {
        // A failed operation did not take effect; it constrains nothing.
        if operation.status == Status::Fail {
            return Ok(());
        }
        let info = operation.status == Status::Info;
        let (op, needs, effect) = match operation.f {
            // A read whose outcome is unknown returned nothing we know: it constrains nothing.
            F::Read if info => return Ok(()),
            F::Read => {
                let token = self.intern(&operation.result);
                (RegisterOp::Read(token), Some(token), None)
            }
            F::Write => {
                let token = self.intern(&operation.value);
                (RegisterOp::Write(token), None, Some(token))
            }
            F::Cas => {
                let (expected, new) = cas_pair(operation)?;
                let (expected, new) = (self.intern(expected), self.intern(new));
                (RegisterOp::Cas(expected, new), Some(expected), Some(new))
            }
            F::Delete => (RegisterOp::Delete, None, Some(0)),
            F::Other(_) => return Ok(()),
        };
        // States are tokens, so what an operation needs is exactly what it observes.
        let observes = needs.into_iter().collect();
        self.partition.ops.push(PartitionOp {
            operation: index,
            op,
            info,
            observes,
            effect,
            needs,
        });
        Ok(())
    }
}

/// The `[expected, new]` pair of a cas.
fn cas_pair(operation: &Operation) -> Result<(&Value, &Value), ModelError> {
    match &operation.value {
        Value::List(pair) if pair.len() == 2 => Ok((&pair[0], &pair[1])),
        other => Err(ModelError {
            line: operation.invoke.line,
            message: format!("the value of a cas must be an array [expected, new], got {other}"),
        }),
    }
}

fn unsupported(model: &str, operation: &Operation, known: &str, hint: &str) -> ModelError {
    ModelError {
        line: operation.invoke.line,
        message: format!(
            "the {model} model does not know `f` = {:?} (it knows {known}){hint}",
            operation.f.as_str()
        ),
    }
}

fn register_step(state: &u32, op: &RegisterOp) -> Option<u32> {
    match *op {
        RegisterOp::Read(v) => (*state == v).then_some(*state),
        RegisterOp::Write(v) => Some(v),
        RegisterOp::Cas(expected, new) => (*state == expected).then_some(new),
        RegisterOp::Delete => Some(0),
    }
}

fn register_describe(partition: &Partition<RegisterOp, u32>, state: &u32) -> String {
    partition
        .values
        .get(*state as usize)
        .map_or_else(|| format!("<token {state}>"), ToString::to_string)
}

/// Cheap, strong mixing of a small integer into 128 bits (splitmix64 twice).
pub(crate) fn mix128(x: u64) -> u128 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    (u128::from(splitmix(x)) << 64) | u128::from(splitmix(x ^ 0x5851_f42d_4c95_7f2d))
}

/// A read or cas that needs a value no operation on the key could have produced.
fn register_impossible(
    history: &History,
    partition: &Partition<RegisterOp, u32>,
) -> Option<Impossible> {
    let mut produced = vec![false; partition.values.len()];
    produced[0] = true; // the initial value
    for op in &partition.ops {
        match op.op {
            RegisterOp::Write(v) | RegisterOp::Cas(_, v) => produced[v as usize] = true,
            RegisterOp::Read(_) | RegisterOp::Delete => {}
        }
    }
    partition.ops.iter().enumerate().find_map(|(i, op)| {
        // An info operation may simply never have happened.
        if op.info {
            return None;
        }
        let (needed, what) = match op.op {
            RegisterOp::Read(v) => (v, "returned"),
            RegisterOp::Cas(v, _) => (v, "expected"),
            _ => return None,
        };
        if produced[needed as usize] {
            return None;
        }
        let value = &partition.values[needed as usize];
        let failed = history
            .operations
            .iter()
            .filter(|o| o.key == partition.key && o.status == Status::Fail)
            .any(|o| match o.f {
                F::Write => o.value == *value,
                F::Cas => cas_pair(o).is_ok_and(|(_, new)| new == value),
                _ => false,
            });
        let operation = &history.operations[op.operation];
        let why = if failed {
            "the only writes of that value failed"
        } else {
            "no operation wrote that value"
        };
        Some(Impossible {
            op: i,
            reason: format!(
                "the {} of process {} ({}) {what} {value}, but {why} and the initial value is null",
                operation.f, operation.process, operation.invoke,
            ),
        })
    })
}

impl Model for RegisterModel {
    type Op = RegisterOp;
    type State = u32;

    fn name(&self) -> &'static str {
        "register"
    }

    fn partition(&self, history: &History) -> Result<Vec<Partition<RegisterOp, u32>>, ModelError> {
        let Some(first) = history.operations.first() else {
            return Ok(Vec::new());
        };
        let mut builder = RegisterBuilder::new(first.key.clone());
        for (index, operation) in history.operations.iter().enumerate() {
            if !matches!(operation.f, F::Read | F::Write | F::Cas) {
                let hint =
                    if operation.f == F::Delete { "; use the kv model for deletes" } else { "" };
                return Err(unsupported("register", operation, "read, write, cas", hint));
            }
            if operation.key != first.key {
                return Err(ModelError {
                    line: operation.invoke.line,
                    message: format!(
                        "the register model checks a single register, but this operation has key {:?} \
                         while the one at line {} has key {:?}; use the kv model for several keys",
                        operation.key, first.invoke.line, first.key
                    ),
                });
            }
            builder.push(index, operation)?;
        }
        Ok(vec![builder.partition])
    }

    fn step(&self, state: &u32, op: &RegisterOp) -> Option<u32> {
        register_step(state, op)
    }

    fn describe_state(&self, partition: &Partition<RegisterOp, u32>, state: &u32) -> String {
        register_describe(partition, state)
    }

    fn fingerprint(&self, state: &u32) -> u128 {
        mix128(u64::from(*state))
    }

    fn is_blind(&self, op: &RegisterOp) -> bool {
        matches!(op, RegisterOp::Write(_) | RegisterOp::Delete)
    }

    fn state_token(&self, state: &u32) -> Option<u32> {
        Some(*state)
    }

    fn is_read_only(&self, op: &RegisterOp) -> bool {
        match *op {
            RegisterOp::Read(_) => true,
            RegisterOp::Cas(expected, new) => expected == new,
            RegisterOp::Write(_) | RegisterOp::Delete => false,
        }
    }

    fn impossible(
        &self,
        history: &History,
        partition: &Partition<RegisterOp, u32>,
    ) -> Option<Impossible> {
        register_impossible(history, partition)
    }
}

impl Model for KvModel {
    type Op = RegisterOp;
    type State = u32;

    fn name(&self) -> &'static str {
        "kv"
    }

    fn partition(&self, history: &History) -> Result<Vec<Partition<RegisterOp, u32>>, ModelError> {
        // Keys in order of first appearance, so reports are deterministic and follow the file.
        let mut slots: HashMap<&str, usize> = HashMap::new();
        let mut builders: Vec<RegisterBuilder> = Vec::new();
        for (index, operation) in history.operations.iter().enumerate() {
            if matches!(operation.f, F::Other(_)) {
                return Err(unsupported("kv", operation, "read, write, cas, delete", ""));
            }
            let slot = *slots.entry(operation.key.as_str()).or_insert_with(|| {
                builders.push(RegisterBuilder::new(operation.key.clone()));
                builders.len() - 1
            });
            builders[slot].push(index, operation)?;
        }
        Ok(builders.into_iter().map(|b| b.partition).collect())
    }

    fn step(&self, state: &u32, op: &RegisterOp) -> Option<u32> {
        register_step(state, op)
    }

    fn describe_state(&self, partition: &Partition<RegisterOp, u32>, state: &u32) -> String {
        register_describe(partition, state)
    }

    fn fingerprint(&self, state: &u32) -> u128 {
        mix128(u64::from(*state))
    }

    fn is_blind(&self, op: &RegisterOp) -> bool {
        matches!(op, RegisterOp::Write(_) | RegisterOp::Delete)
    }

    fn state_token(&self, state: &u32) -> Option<u32> {
        Some(*state)
    }

    fn is_read_only(&self, op: &RegisterOp) -> bool {
        match *op {
            RegisterOp::Read(_) => true,
            RegisterOp::Cas(expected, new) => expected == new,
            RegisterOp::Write(_) | RegisterOp::Delete => false,
        }
    }

    fn impossible(
        &self,
        history: &History,
        partition: &Partition<RegisterOp, u32>,
    ) -> Option<Impossible> {
        register_impossible(history, partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(lines: &[&str]) -> History {
        History::parse(&lines.join("\n")).expect("valid history")
    }

    #[test]
    fn register_rejects_delete_and_unknown_f_with_line() {
        let h = history(&[
            r#"{"process":0,"type":"invoke","f":"write","value":1}"#,
            r#"{"process":0,"type":"ok","f":"write","value":1}"#,
            r#"{"process":0,"type":"invoke","f":"delete"}"#,
        ]);
        let err = RegisterModel.partition(&h).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("use the kv model"), "{err}");

        let h = history(&[r#"{"process":0,"type":"invoke","f":"add","value":1}"#]);
        let err = KvModel.partition(&h).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 1: the kv model does not know `f` = \"add\" (it knows read, write, cas, delete)"
        );
    }

    #[test]
    fn register_rejects_second_key() {
        let h = history(&[
            r#"{"process":0,"type":"invoke","f":"write","key":"a","value":1}"#,
            r#"{"process":1,"type":"invoke","f":"write","key":"b","value":1}"#,
        ]);
        let err = RegisterModel.partition(&h).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("single register"), "{err}");
    }

    #[test]
    fn cas_value_must_be_a_pair() {
        let h = history(&[r#"{"process":0,"type":"invoke","f":"cas","value":[1]}"#]);
        let err = KvModel.partition(&h).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 1: the value of a cas must be an array [expected, new], got [1]"
        );
    }

    #[test]
    fn partitions_drop_fails_and_info_reads_and_intern_values() {
        let h = history(&[
            r#"{"process":0,"type":"invoke","f":"write","key":"a","value":"x"}"#,
            r#"{"process":1,"type":"invoke","f":"read","key":"b"}"#,
            r#"{"process":0,"type":"fail","f":"write","key":"a","value":"x"}"#,
            r#"{"process":1,"type":"info","f":"read","key":"b"}"#,
            r#"{"process":2,"type":"invoke","f":"cas","key":"a","value":["x","y"]}"#,
        ]);
        let parts = KvModel.partition(&h).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].key, "a");
        assert_eq!(parts[0].ops.len(), 1);
        assert_eq!(parts[0].ops[0].op, RegisterOp::Cas(1, 2));
        assert!(parts[0].ops[0].info);
        assert_eq!(parts[0].ops[0].effect, Some(2));
        assert_eq!(parts[0].values, vec![Value::Null, Value::from("x"), Value::from("y")]);
        assert!(parts[1].ops.is_empty());
    }

    #[test]
    fn model_kind_round_trips_names() {
        for kind in ModelKind::ALL {
            assert_eq!(kind.as_str().parse::<ModelKind>(), Ok(kind));
        }
        assert!("set".parse::<ModelKind>().is_err());
    }
}
