//! The history format: typed events, a validating parser and a recorder.
//!
//! A history is a file of JSON lines, one event per line, in the shape Jepsen made common:
//! a client process `invoke`s an operation and later sees it complete with `ok`, `fail`
//! (definitely did not happen) or `info` (outcome unknown). `docs/HISTORY.md` is the
//! normative description; this module is its implementation.
//!
//! Parsing validates everything a checker relies on and reports the first problem with its
//! line number, because a checker that silently repairs a broken history would report on a
//! history nobody recorded.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

/// A value carried by an event: what was written, what was read, or the `[expected, new]`
/// pair of a compare-and-set.
///
/// Serialised as plain JSON: `null`, an integer, a string or an array.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// JSON `null`: nothing, or a key that is absent.
    #[default]
    Null,
    /// A signed 64-bit integer.
    Int(i64),
    /// A UTF-8 string.
    Str(String),
    /// An array; the register models use it only for the `[expected, new]` pair of a `cas`.
    List(Vec<Value>),
}

impl Value {
    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Converts a parsed JSON value, or says what kind of JSON it was when it has no
    /// counterpart (booleans, floats, objects, integers beyond `i64`).
    fn from_json(json: &serde_json::Value) -> Result<Value, String> {
        match json {
            serde_json::Value::Null => Ok(Value::Null),
            serde_json::Value::String(s) => Ok(Value::Str(s.clone())),
            serde_json::Value::Number(n) => {
                n.as_i64().map(Value::Int).ok_or_else(|| short_json(json))
            }
            serde_json::Value::Array(items) => {
                items.iter().map(Value::from_json).collect::<Result<Vec<_>, _>>().map(Value::List)
            }
            serde_json::Value::Bool(_) | serde_json::Value::Object(_) => Err(short_json(json)),
        }
    }
}

impl fmt::Display for Value {
    /// Writes the value as JSON, so strings are quoted and `"1"` is not confused with `1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{}", serde_json::Value::String(s.clone())),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The `type` of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client starts an operation.
    Invoke,
    /// The operation completed and took effect.
    Ok,
    /// The operation completed and definitely did not take effect.
    Fail,
    /// The outcome is unknown: it may take effect at any time after the invoke, or never.
    Info,
}

impl EventType {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        }
    }

    fn parse(s: &str) -> Option<EventType> {
        match s {
            "invoke" => Some(EventType::Invoke),
            "ok" => Some(EventType::Ok),
            "fail" => Some(EventType::Fail),
            "info" => Some(EventType::Info),
            _ => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The function of an operation (the `f` field).
///
/// The parser accepts any name so that histories of future models still parse; each model
/// rejects the names it does not know, with the line number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum F {
    /// Read the value of a key.
    Read,
    /// Write a value to a key.
    Write,
    /// Compare-and-set: `value` is `[expected, new]`.
    Cas,
    /// Remove a key (it reads as `null` afterwards).
    Delete,
    /// Any other name, kept verbatim.
    Other(String),
}

impl F {
    /// The name used in the file.
    pub fn as_str(&self) -> &str {
        match self {
            F::Read => "read",
            F::Write => "write",
            F::Cas => "cas",
            F::Delete => "delete",
            F::Other(s) => s,
        }
    }
}

impl From<String> for F {
    fn from(s: String) -> Self {
        match s.as_str() {
            "read" => F::Read,
            "write" => F::Write,
            "cas" => F::Cas,
            "delete" => F::Delete,
            _ => F::Other(s),
        }
    }
}

impl From<&str> for F {
    fn from(s: &str) -> Self {
        F::from(s.to_owned())
    }
}

impl From<F> for String {
    fn from(f: F) -> Self {
        match f {
            F::Other(s) => s,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for F {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The client process (one operation in flight at a time).
    pub process: u64,
    /// `invoke`, `ok`, `fail` or `info`.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation's function.
    pub f: F,
    /// The key; absent means the single register `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The operation's argument (invoke) or result (completion).
    #[serde(default)]
    pub value: Value,
    /// Monotonic nanoseconds; either every event of a history has it or none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
}

impl Event {
    /// The key with absence normalised to the single register `""`.
    pub fn key_or_default(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    /// The event as one JSON line, without the trailing newline.
    pub fn to_json_line(&self) -> String {
        // Serialising a struct of plain fields into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What went wrong on one line of a history.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatErrorKind {
    /// The line is not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// The line is JSON but not an object.
    #[error("expected a JSON object, got {0}")]
    NotAnObject(String),
    /// A required field is absent.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type or an unknown value.
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// What it must be, in words.
        expected: &'static str,
        /// What it was, as JSON.
        got: String,
    },
    /// A completion from a process with nothing in flight.
    #[error("`{kind}` from process {process}, which has no operation in progress")]
    CompletionWithoutInvoke {
        /// The process.
        process: u64,
        /// The completion's type.
        kind: EventType,
    },
    /// A second invoke while the process still has an operation in flight.
    #[error(
        "process {process} invokes a new operation while its operation invoked at line \
         {pending_line} is still in progress"
    )]
    InvokeWhileOutstanding {
        /// The process.
        process: u64,
        /// Line of the invoke still in flight.
        pending_line: usize,
    },
    /// An event from a process after its `info`.
    #[error(
        "process {process} has an event after its `info` at line {info_line}; a process whose \
         last outcome is unknown must not issue further operations"
    )]
    EventAfterInfo {
        /// The process.
        process: u64,
        /// Line of the `info` completion.
        info_line: usize,
    },
    /// A completion whose `f` or `key` differs from its invoke.
    #[error(
        "completion has {field} {got} but its invoke at line {invoke_line} has {field} {expected}"
    )]
    Mismatch {
        /// `f` or `key`.
        field: &'static str,
        /// Line of the invoke.
        invoke_line: usize,
        /// The invoke's value of the field, as JSON.
        expected: String,
        /// The completion's value of the field, as JSON.
        got: String,
    },
    /// Some events have `time` and others do not.
    #[error(
        "field `time` is {here} here but {there} at line {first_line}; either every event has \
         `time` or none does"
    )]
    MixedTime {
        /// "present" or "absent".
        here: &'static str,
        /// The opposite.
        there: &'static str,
        /// The first event of the file.
        first_line: usize,
    },
    /// A process's time went backwards.
    #[error(
        "time {time} of process {process} is earlier than the time {previous} of its previous \
         event at line {previous_line}"
    )]
    TimeBackwards {
        /// The process.
        process: u64,
        /// This event's time.
        time: u64,
        /// The previous event's time.
        previous: u64,
        /// The previous event's line.
        previous_line: usize,
    },
}

/// A problem in a history, with the 1-based line it was found on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct FormatError {
    /// 1-based line number (for events built in memory: 1-based event number).
    pub line: usize,
    /// What is wrong.
    pub kind: FormatErrorKind,
}

/// Failure to read a history from a file or stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes could not be read.
    #[error("cannot read history: {0}")]
    Io(#[from] io::Error),
    /// The history is malformed.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Completed with `ok`: took effect between invoke and completion.
    Ok,
    /// Completed with `fail`: did not take effect.
    Fail,
    /// Completed with `info`, or never completed: may take effect after the invoke, or never.
    Info,
}

/// Where an event sits in a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Index in the real-time order of all events (0-based).
    pub index: usize,
    /// 1-based line in the file.
    pub line: usize,
    /// The event's `time`, when the history has times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.time {
            Some(t) => write!(f, "line {} (t={t})", self.line),
            None => write!(f, "line {}", self.line),
        }
    }
}

/// An invoke paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client process.
    pub process: u64,
    /// The function.
    pub f: F,
    /// The key, `""` when the events had none.
    pub key: String,
    /// The invoke's value (what is written; `[expected, new]` for `cas`).
    pub value: Value,
    /// The `ok` completion's value (what a read returned); `null` otherwise.
    pub result: Value,
    /// How it ended.
    pub status: Status,
    /// The invoke event.
    pub invoke: Position,
    /// The completion event; `None` when the file ends with the operation in flight.
    pub complete: Option<Position>,
}

/// A validated history: events in real-time order and the operations they form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Events in real-time order, each with its 1-based line.
    pub events: Vec<(usize, Event)>,
    /// Operations in invoke order.
    pub operations: Vec<Operation>,
}

impl History {
    /// Parses and validates JSON lines. Blank lines are skipped.
    pub fn parse(text: &str) -> Result<History, FormatError> {
        let mut events = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if let Some(event) = parse_line(i + 1, line)? {
                events.push((i + 1, event));
            }
        }
        History::from_located(events)
    }

    /// Reads, parses and validates JSON lines from a stream.
    pub fn read(reader: impl BufRead) -> Result<History, ReadError> {
        let mut events = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            if let Some(event) = parse_line(i + 1, &line?)? {
                events.push((i + 1, event));
            }
        }
        Ok(History::from_located(events)?)
    }

    /// Validates events built in memory; "line" numbers in errors count events from 1.
    pub fn from_events(events: Vec<Event>) -> Result<History, FormatError> {
        History::from_located(events.into_iter().enumerate().map(|(i, e)| (i + 1, e)).collect())
    }

    /// Validates events in file order, pairs them into operations and puts them in
    /// real-time order.
    fn from_located(mut events: Vec<(usize, Event)>) -> Result<History, FormatError> {
        let mut validator = Validator::default();
        let mut operations: Vec<Operation> = Vec::new();
        // Per event, the operation it belongs to, so positions can be filled in after sorting.
        let mut owner = Vec::with_capacity(events.len());
        for (line, event) in &events {
            match validator.push(*line, event, operations.len())? {
                Step::Invoke => {
                    owner.push(operations.len());
                    let position = Position { index: 0, line: *line, time: event.time };
                    operations.push(Operation {
                        process: event.process,
                        f: event.f.clone(),
                        key: event.key_or_default().to_owned(),
                        value: event.value.clone(),
                        result: Value::Null,
                        status: Status::Info,
                        invoke: position,
                        complete: None,
                    });
                }
                Step::Complete(op) => {
                    owner.push(op);
                    let operation = &mut operations[op];
                    operation.status = match event.kind {
                        EventType::Ok => Status::Ok,
                        EventType::Fail => Status::Fail,
                        _ => Status::Info,
                    };
                    if event.kind == EventType::Ok {
                        operation.result = event.value.clone();
                    }
                    operation.complete = Some(Position { index: 0, line: *line, time: event.time });
                }
            }
        }
        // Real-time order: file order, or time order when times are present. The sort is
        // stable and each process's times never decrease, so every process keeps its order.
        let mut order: Vec<usize> = (0..events.len()).collect();
        if matches!(validator.timed, Some((true, _))) {
            order.sort_by_key(|&i| events[i].1.time);
        }
        for (index, &i) in order.iter().enumerate() {
            let operation = &mut operations[owner[i]];
            if operation.invoke.line == events[i].0 {
                operation.invoke.index = index;
            } else if let Some(complete) = operation.complete.as_mut() {
                complete.index = index;
            }
        }
        let mut slots: Vec<Option<(usize, Event)>> = events.drain(..).map(Some).collect();
        let events = order.iter().filter_map(|&i| slots[i].take()).collect();
        Ok(History { events, operations })
    }
}

/// Parses one line; `None` for a blank line.
fn parse_line(line: usize, text: &str) -> Result<Option<Event>, FormatError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let err = |kind| FormatError { line, kind };
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err(FormatErrorKind::Json(e.to_string())))?;
    let serde_json::Value::Object(map) = &json else {
        return Err(err(FormatErrorKind::NotAnObject(short_json(&json))));
    };
    let field = |name: &'static str| map.get(name).ok_or(err(FormatErrorKind::MissingField(name)));
    let wrong = |field: &'static str, expected: &'static str, got: &serde_json::Value| {
        err(FormatErrorKind::WrongType { field, expected, got: short_json(got) })
    };

    let process = field("process")?;
    let process =
        process.as_u64().ok_or_else(|| wrong("process", "a non-negative integer", process))?;

    let kind = field("type")?;
    let kind = kind
        .as_str()
        .and_then(EventType::parse)
        .ok_or_else(|| wrong("type", "one of invoke, ok, fail, info", kind))?;

    let f = field("f")?;
    let f = F::from(f.as_str().ok_or_else(|| wrong("f", "a string", f))?);

    let key = match map.get("key") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(wrong("key", "a string", other)),
    };

    let value = match map.get("value") {
        None => Value::Null,
        Some(v) => Value::from_json(v)
            .map_err(|_| wrong("value", "null, an integer, a string or an array of those", v))?,
    };

    let time = match map.get("time") {
        None => None,
        Some(t) => Some(
            t.as_u64().ok_or_else(|| wrong("time", "a non-negative integer (nanoseconds)", t))?,
        ),
    };

    Ok(Some(Event { process, kind, f, key, value, time }))
}

/// JSON text of a value, cut short so an error message stays one readable line.
fn short_json(json: &serde_json::Value) -> String {
    const MAX_CHARS: usize = 60;
    let text = json.to_string();
    if text.chars().count() <= MAX_CHARS {
        text
    } else {
        let cut: String = text.chars().take(MAX_CHARS).collect();
        format!("{cut}...")
    }
}

/// What the validator made of one event.
enum Step {
    /// A new operation starts.
    Invoke,
    /// The completion of the operation with this index.
    Complete(usize),
}

/// Per-process bookkeeping of the validator.
#[derive(Default)]
struct ProcessState {
    /// The operation in flight: invoke line, f, normalised key, operation index.
    pending: Option<(usize, F, String, usize)>,
    /// Line of the `info` that ended this process.
    info_line: Option<usize>,
    /// Time and line of the process's previous event.
    last_time: Option<(u64, usize)>,
}

/// The format rules, checked event by event; shared by the parser and the recorder so that
/// what one writes the other accepts.
#[derive(Default)]
struct Validator {
    /// Whether the first event had a time, and its line.
    timed: Option<(bool, usize)>,
    /// Per process state.
    processes: HashMap<u64, ProcessState>,
}

impl Validator {
    /// Checks one event; `next_op` is the index a new operation would get.
    fn push(&mut self, line: usize, event: &Event, next_op: usize) -> Result<Step, FormatError> {
        let err = |kind| FormatError { line, kind };
        let has_time = event.time.is_some();
        match self.timed {
            None => self.timed = Some((has_time, line)),
            Some((timed, first_line)) if timed != has_time => {
                let (here, there) =
                    if has_time { ("present", "absent") } else { ("absent", "present") };
                return Err(err(FormatErrorKind::MixedTime { here, there, first_line }));
            }
            Some(_) => {}
        }

        let state = self.processes.entry(event.process).or_default();
        if let Some(info_line) = state.info_line {
            return Err(err(FormatErrorKind::EventAfterInfo { process: event.process, info_line }));
        }
        if let (Some(time), Some((previous, previous_line))) = (event.time, state.last_time)
            && time < previous
        {
            return Err(err(FormatErrorKind::TimeBackwards {
                process: event.process,
                time,
                previous,
                previous_line,
            }));
        }
        // Recorded only once the event is accepted, so a rejected event leaves no trace.
        let time = event.time.map(|t| (t, line));

        if event.kind == EventType::Invoke {
            if let Some((pending_line, ..)) = state.pending {
                return Err(err(FormatErrorKind::InvokeWhileOutstanding {
                    process: event.process,
                    pending_line,
                }));
            }
            state.pending =
                Some((line, event.f.clone(), event.key_or_default().to_owned(), next_op));
            state.last_time = time.or(state.last_time);
            return Ok(Step::Invoke);
        }

        let Some((invoke_line, f, key, op)) = state.pending.clone() else {
            return Err(err(FormatErrorKind::CompletionWithoutInvoke {
                process: event.process,
                kind: event.kind,
            }));
        };
        if f != event.f {
            return Err(err(FormatErrorKind::Mismatch {
                field: "f",
                invoke_line,
                expected: json_string(f.as_str()),
                got: json_string(event.f.as_str()),
            }));
        }
        // A completion may omit the key; when it names one it must be the invoke's.
        if let Some(got) = &event.key
            && *got != key
        {
            return Err(err(FormatErrorKind::Mismatch {
                field: "key",
                invoke_line,
                expected: json_string(&key),
                got: json_string(got),
            }));
        }
        if event.kind == EventType::Info {
            state.info_line = Some(line);
        }
        state.pending = None;
        state.last_time = time.or(state.last_time);
        Ok(Step::Complete(op))
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Failure to record an event.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The event breaks a format rule; nothing was written.
    #[error("invalid event: {0}")]
    Invalid(#[from] FormatError),
    /// A completion was asked for with type `invoke`.
    #[error("a completion must be ok, fail or info, not invoke")]
    NotACompletion,
    /// Writing failed.
    #[error("cannot write history: {0}")]
    Io(#[from] io::Error),
}

/// Writes client operations as history lines, enforcing the same rules the parser checks,
/// so a simulator or fault harness learns of a bookkeeping bug when it happens rather than
/// when the history is checked.
///
/// ```
/// use quorumkv_check::history::{F, History, HistoryRecorder, Value};
///
/// let mut recorder = HistoryRecorder::new(Vec::new());
/// recorder.invoke(0, F::Write, Some("x"), Value::Int(1), None).unwrap();
/// recorder.ok(0, Value::Int(1), None).unwrap();
/// let bytes = recorder.into_inner();
/// let history = History::parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
/// assert_eq!(history.operations.len(), 1);
/// ```
pub struct HistoryRecorder<W: Write> {
    /// Destination of the lines.
    out: W,
    /// The same rules the parser applies.
    validator: Validator,
    /// Events written so far (the "line" of the next one is this plus one).
    events: usize,
}

impl<W: Write> HistoryRecorder<W> {
    /// A recorder writing to `out`. Wrap files in a `BufWriter`.
    pub fn new(out: W) -> Self {
        HistoryRecorder { out, validator: Validator::default(), events: 0 }
    }

    /// Records that `process` invokes `f` on `key` (`None` = the single register) with
    /// `value` (`Value::Null` for a read; `[expected, new]` for a cas).
    pub fn invoke(
        &mut self,
        process: u64,
        f: F,
        key: Option<&str>,
        value: Value,
        time: Option<u64>,
    ) -> Result<(), RecordError> {
        let event =
            Event { process, kind: EventType::Invoke, f, key: key.map(str::to_owned), value, time };
        self.record(&event)
    }

    /// Records the completion of `process`'s operation in flight; `f` and `key` are copied
    /// from its invoke. `value` is what a read returned (or the value written, echoed).
    pub fn complete(
        &mut self,
        process: u64,
        kind: EventType,
        value: Value,
        time: Option<u64>,
    ) -> Result<(), RecordError> {
        if kind == EventType::Invoke {
            return Err(RecordError::NotACompletion);
        }
        let pending = self.validator.processes.get(&process).and_then(|p| p.pending.clone());
        let (f, key) = match pending {
            Some((_, f, key, _)) => (f, if key.is_empty() { None } else { Some(key) }),
            // No invoke in flight: let the validator produce the precise error.
            None => (F::Read, None),
        };
        self.record(&Event { process, kind, f, key, value, time })
    }

    /// Records `ok` for `process`'s operation in flight.
    pub fn ok(&mut self, process: u64, value: Value, time: Option<u64>) -> Result<(), RecordError> {
        self.complete(process, EventType::Ok, value, time)
    }

    /// Records `fail` (definitely no effect) for `process`'s operation in flight.
    pub fn fail(
        &mut self,
        process: u64,
        value: Value,
        time: Option<u64>,
    ) -> Result<(), RecordError> {
        self.complete(process, EventType::Fail, value, time)
    }

    /// Records `info` (outcome unknown) for `process`'s operation in flight. The process
    /// must not be used again; give the client a fresh process id.
    pub fn info(
        &mut self,
        process: u64,
        value: Value,
        time: Option<u64>,
    ) -> Result<(), RecordError> {
        self.complete(process, EventType::Info, value, time)
    }

    /// Validates and writes any event.
    pub fn record(&mut self, event: &Event) -> Result<(), RecordError> {
        self.validator.push(self.events + 1, event, self.events)?;
        self.events += 1;
        let mut line = event.to_json_line();
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        Ok(())
    }

    /// Processes with an operation in flight, in ascending order (they will read as `info`
    /// if the history ends now).
    pub fn in_flight(&self) -> Vec<u64> {
        let mut processes: Vec<u64> = self
            .validator
            .processes
            .iter()
            .filter(|(_, p)| p.pending.is_some())
            .map(|(id, _)| *id)
            .collect();
        processes.sort_unstable();
        processes
    }

    /// Number of events written.
    pub fn len(&self) -> usize {
        self.events
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Flushes the destination.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Returns the destination.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl HistoryRecorder<Vec<u8>> {
    /// Parses what was recorded in memory (in-flight operations read as `info`).
    pub fn to_history(&self) -> Result<History, ReadError> {
        History::read(self.out.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a history that must not parse.
    fn error(lines: &[&str]) -> FormatError {
        History::parse(&lines.join("\n")).expect_err("history must be rejected")
    }

    const W0: &str = r#"{"process":0,"type":"invoke","f":"write","value":1}"#;
    const W0_OK: &str = r#"{"process":0,"type":"ok","f":"write","value":1}"#;

    #[test]
    fn parses_operations_and_pairs_completions() {
        let h = History::parse(
            &[
                W0,
                r#"{"process":1,"type":"invoke","f":"read","key":"","node":"n1"}"#,
                "",
                W0_OK,
                r#"{"process":1,"type":"ok","f":"read","value":1,"error":null}"#,
                r#"{"process":2,"type":"invoke","f":"cas","key":"x","value":[1,"two"]}"#,
            ]
            .join("\n"),
        )
        .unwrap();
        assert_eq!(h.events.len(), 5);
        assert_eq!(h.operations.len(), 3);
        let read = &h.operations[1];
        assert_eq!(
            (read.f.clone(), read.status, read.result.clone()),
            (F::Read, Status::Ok, Value::Int(1))
        );
        assert_eq!(read.invoke.line, 2);
        assert_eq!(read.complete.map(|c| (c.line, c.index)), Some((5, 3)));
        let cas = &h.operations[2];
        assert_eq!(cas.status, Status::Info, "an invoke without completion reads as info");
        assert_eq!(cas.key, "x");
        assert_eq!(cas.value, Value::List(vec![Value::Int(1), Value::from("two")]));
        assert!(cas.complete.is_none());
    }

    #[test]
    fn time_orders_events_stably() {
        let h = History::parse(
            &[
                r#"{"process":0,"type":"invoke","f":"write","value":1,"time":10}"#,
                r#"{"process":1,"type":"invoke","f":"read","time":5}"#,
                r#"{"process":1,"type":"ok","f":"read","value":null,"time":10}"#,
                r#"{"process":0,"type":"ok","f":"write","value":1,"time":20}"#,
            ]
            .join("\n"),
        )
        .unwrap();
        let lines: Vec<usize> = h.events.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, vec![2, 1, 3, 4], "sorted by time, ties in file order");
        assert_eq!(h.operations[0].invoke.index, 1);
        assert_eq!(h.operations[1].invoke.index, 0);
        assert_eq!(h.operations[1].complete.map(|c| c.index), Some(2));
    }

    #[test]
    fn rejects_bad_json_with_line() {
        let e = error(&[W0, "{\"process\":0,"]);
        assert_eq!(e.line, 2);
        assert!(matches!(e.kind, FormatErrorKind::Json(_)), "{e}");
        let e = error(&["[1,2]"]);
        assert_eq!(e.to_string(), "line 1: expected a JSON object, got [1,2]");
    }

    #[test]
    fn rejects_missing_fields() {
        for (field, line) in [
            ("process", r#"{"type":"invoke","f":"read"}"#),
            ("type", r#"{"process":0,"f":"read"}"#),
            ("f", r#"{"process":0,"type":"invoke"}"#),
        ] {
            let e = error(&[W0, W0_OK, line]);
            assert_eq!(e.line, 3);
            assert_eq!(e.kind, FormatErrorKind::MissingField(field));
        }
    }

    #[test]
    fn rejects_wrong_types() {
        let e = error(&[W0, r#"{"process":0,"type":"okk","f":"write"}"#]);
        assert_eq!(
            e.to_string(),
            "line 2: field `type` must be one of invoke, ok, fail, info, got \"okk\""
        );
        let cases = [
            (r#"{"process":-1,"type":"invoke","f":"read"}"#, "process"),
            (r#"{"process":"p1","type":"invoke","f":"read"}"#, "process"),
            (r#"{"process":0,"type":"invoke","f":3}"#, "f"),
            (r#"{"process":0,"type":"invoke","f":"read","key":7}"#, "key"),
            (r#"{"process":0,"type":"invoke","f":"write","value":1.5}"#, "value"),
            (r#"{"process":0,"type":"invoke","f":"write","value":{"a":1}}"#, "value"),
            (r#"{"process":0,"type":"invoke","f":"write","value":[true]}"#, "value"),
            (r#"{"process":0,"type":"invoke","f":"read","time":"now"}"#, "time"),
        ];
        for (line, field) in cases {
            let e = error(&[line]);
            assert_eq!(e.line, 1);
            assert!(
                matches!(e.kind, FormatErrorKind::WrongType { field: f, .. } if f == field),
                "{line}: {e}"
            );
        }
    }

    #[test]
    fn rejects_completion_without_invoke() {
        let e = error(&[W0, W0_OK, W0_OK]);
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "line 3: `ok` from process 0, which has no operation in progress"
        );
    }

    #[test]
    fn rejects_second_invoke_while_outstanding() {
        let e = error(&[W0, r#"{"process":1,"type":"invoke","f":"read"}"#, W0]);
        assert_eq!(e.line, 3);
        assert_eq!(e.kind, FormatErrorKind::InvokeWhileOutstanding { process: 0, pending_line: 1 });
    }

    #[test]
    fn rejects_any_event_after_info() {
        let info = r#"{"process":0,"type":"info","f":"write","value":1}"#;
        let e = error(&[W0, info, r#"{"process":1,"type":"invoke","f":"read"}"#, W0]);
        assert_eq!(e.line, 4);
        assert_eq!(e.kind, FormatErrorKind::EventAfterInfo { process: 0, info_line: 2 });
    }

    #[test]
    fn rejects_mismatched_completion() {
        let e = error(&[W0, r#"{"process":0,"type":"ok","f":"read","value":1}"#]);
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            "line 2: completion has f \"read\" but its invoke at line 1 has f \"write\""
        );
        let e = error(&[W0, r#"{"process":0,"type":"ok","f":"write","key":"x"}"#]);
        assert!(
            matches!(e.kind, FormatErrorKind::Mismatch { field: "key", invoke_line: 1, .. }),
            "{e}"
        );
        // A completion that omits the key inherits it.
        let invoke = r#"{"process":0,"type":"invoke","f":"write","key":"x","value":1}"#;
        assert!(History::parse(&[invoke, W0_OK].join("\n")).is_ok());
    }

    #[test]
    fn rejects_mixed_time() {
        let e = error(&[W0, r#"{"process":0,"type":"ok","f":"write","time":3}"#]);
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            "line 2: field `time` is present here but absent at line 1; either every event has \
             `time` or none does"
        );
    }

    #[test]
    fn rejects_time_going_backwards_within_a_process() {
        let e = error(&[
            r#"{"process":0,"type":"invoke","f":"write","value":1,"time":100}"#,
            r#"{"process":1,"type":"invoke","f":"read","time":50}"#,
            r#"{"process":0,"type":"ok","f":"write","value":1,"time":99}"#,
        ]);
        assert_eq!(e.line, 3);
        assert_eq!(
            e.kind,
            FormatErrorKind::TimeBackwards {
                process: 0,
                time: 99,
                previous: 100,
                previous_line: 1
            }
        );
    }

    #[test]
    fn reports_physical_line_numbers_across_blank_lines() {
        let e = error(&[W0, "", "   ", W0_OK, "nonsense"]);
        assert_eq!(e.line, 5);
    }

    #[test]
    fn recorder_writes_what_the_parser_reads() {
        let mut recorder = HistoryRecorder::new(Vec::new());
        recorder.invoke(3, F::Write, Some("k"), Value::Int(4), Some(10)).unwrap();
        recorder.invoke(4, F::Read, Some("k"), Value::Null, Some(11)).unwrap();
        recorder.ok(3, Value::Int(4), Some(12)).unwrap();
        recorder.info(4, Value::Null, Some(13)).unwrap();
        recorder
            .invoke(5, F::Cas, None, Value::List(vec![Value::Null, "a".into()]), Some(14))
            .unwrap();
        assert_eq!(recorder.in_flight(), vec![5]);
        assert_eq!(recorder.len(), 5);
        let history = recorder.to_history().unwrap();
        assert_eq!(history.operations.len(), 3);
        assert_eq!(history.operations[1].status, Status::Info);
        assert_eq!(history.operations[1].key, "k", "the completion copies the invoke's key");
        let text = String::from_utf8(recorder.into_inner()).unwrap();
        assert_eq!(
            text.lines().next(),
            Some(r#"{"process":3,"type":"invoke","f":"write","key":"k","value":4,"time":10}"#)
        );
    }

    #[test]
    fn recorder_refuses_events_the_parser_would_reject() {
        let mut recorder = HistoryRecorder::new(Vec::new());
        recorder.invoke(0, F::Read, None, Value::Null, None).unwrap();
        let err = recorder.invoke(0, F::Read, None, Value::Null, None).unwrap_err();
        assert!(matches!(
            err,
            RecordError::Invalid(FormatError {
                kind: FormatErrorKind::InvokeWhileOutstanding { .. },
                ..
            })
        ));
        assert!(matches!(recorder.ok(1, Value::Null, None), Err(RecordError::Invalid(_))));
        assert!(matches!(
            recorder.complete(0, EventType::Invoke, Value::Null, None),
            Err(RecordError::NotACompletion)
        ));
        recorder.info(0, Value::Null, None).unwrap();
        assert!(
            recorder.invoke(0, F::Read, None, Value::Null, None).is_err(),
            "no reuse after info"
        );
        assert!(recorder.invoke(1, F::Read, None, Value::Null, Some(1)).is_err(), "no mixed time");
        assert_eq!(recorder.len(), 2, "rejected events are not written");
    }

    #[test]
    fn values_display_as_json() {
        assert_eq!(Value::from("a\"b").to_string(), r#""a\"b""#);
        assert_eq!(Value::List(vec![Value::Null, Value::Int(-2)]).to_string(), "[null, -2]");
        assert_eq!(Value::from(None::<i64>), Value::Null);
        assert_eq!(F::from("scan"), F::Other("scan".into()));
        assert_eq!(String::from(F::Cas), "cas");
    }

    #[test]
    fn events_round_trip_through_serde() {
        let event = Event {
            process: 1,
            kind: EventType::Fail,
            f: F::Other("add".into()),
            key: None,
            value: Value::List(vec![1.into(), "x".into()]),
            time: None,
        };
        let line = event.to_json_line();
        assert_eq!(line, r#"{"process":1,"type":"fail","f":"add","value":[1,"x"]}"#);
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }
}
