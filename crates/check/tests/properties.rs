//! Property tests: the checker against histories that are linearizable by construction,
//! against the same histories with one result corrupted, and against a brute-force oracle
//! on small random histories.

use proptest::prelude::*;
use quorumkv_check::generate::{GenConfig, generate};
use quorumkv_check::{
    CheckOptions, CheckOutcome, Event, EventType, F, History, HistoryRecorder, ModelKind, Status,
    Value, check_history,
};

fn config() -> impl Strategy<Value = GenConfig> {
    (
        any::<u64>(),
        1_usize..80,
        1_usize..8,
        0_usize..4,
        0_i64..6,
        (0_u32..5, 0_u32..5, 0_u32..4, 0_u32..2),
        0_u32..25,
        0_u32..25,
        any::<bool>(),
    )
        .prop_map(|(seed, operations, processes, keys, values, w, info, fail, timed)| {
            GenConfig {
                seed,
                operations,
                processes,
                keys,
                values,
                // At least one kind of operation.
                weights: [w.0 + 1, w.1, w.2, w.3],
                info_percent: info,
                fail_percent: fail,
                timed,
            }
        })
}

fn outcome(events: Vec<Event>, model: ModelKind) -> CheckOutcome {
    let history = History::from_events(events).expect("well-formed history");
    check_history(&history, model, &CheckOptions::default()).expect("model accepts ops").outcome
}

/// Index of the `ok` completion event of the `n`-th (modulo count) ok read, if any.
fn ok_read_completion(events: &[Event], n: usize) -> Option<usize> {
    let reads: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EventType::Ok && e.f == F::Read)
        .map(|(i, _)| i)
        .collect();
    (!reads.is_empty()).then(|| reads[n % reads.len()])
}

proptest! {
    #[test]
    fn generated_histories_are_accepted(config in config()) {
        let events = generate(&config);
        prop_assert_eq!(outcome(events.clone(), ModelKind::Kv), CheckOutcome::Linearizable);
        if config.keys <= 1 && config.weights[3] == 0 {
            prop_assert_eq!(outcome(events, ModelKind::Register), CheckOutcome::Linearizable);
        }
    }

    #[test]
    fn a_read_of_a_value_never_written_is_rejected(config in config(), pick in any::<usize>()) {
        let mut events = generate(&config);
        let Some(i) = ok_read_completion(&events, pick) else { return Ok(()) };
        events[i].value = Value::Int(1_000_000);
        let rejected = matches!(outcome(events, ModelKind::Kv), CheckOutcome::NotLinearizable(_));
        prop_assert!(rejected);
    }

    /// With every write writing a fresh value, a read changed to return the value of a
    /// write invoked only after the read completed cannot be explained. Unlike a value
    /// never written, no static check sees this: the search has to.
    #[test]
    fn a_read_of_a_value_from_the_future_is_rejected(
        mut config in config(),
        pick in any::<usize>(),
        later in any::<usize>(),
    ) {
        config.values = 0;
        config.weights[3] = 0;
        let mut events = generate(&config);
        let Some(read) = ok_read_completion(&events, pick) else { return Ok(()) };
        let key = events[read].key.clone();
        let future: Vec<Value> = events[read + 1..]
            .iter()
            .filter(|e| e.kind == EventType::Invoke && e.f == F::Write && e.key == key)
            .filter(|e| e.value != events[read].value)
            .map(|e| e.value.clone())
            .collect();
        if future.is_empty() {
            return Ok(());
        }
        events[read].value = future[later % future.len()].clone();
        let rejected = matches!(outcome(events, ModelKind::Kv), CheckOutcome::NotLinearizable(_));
        prop_assert!(rejected);
    }

    #[test]
    fn the_recorder_writes_what_the_parser_reads(config in config()) {
        let events = generate(&config);
        let mut recorder = HistoryRecorder::new(Vec::new());
        for event in &events {
            recorder.record(event).unwrap();
        }
        let parsed = recorder.to_history().unwrap();
        prop_assert_eq!(parsed, History::from_events(events).unwrap());
    }

    #[test]
    fn the_checker_agrees_with_brute_force(actions in prop::collection::vec(action(), 0..18)) {
        let events = build(&actions);
        let history = History::from_events(events).expect("built histories are well formed");
        let expected = brute_force(&history);
        let got = check_history(&history, ModelKind::Register, &CheckOptions::default())
            .expect("register ops only")
            .outcome;
        prop_assert_eq!(matches!(got, CheckOutcome::Linearizable), expected, "{:?}", got);
    }
}

/// One step of a random small history: a process and numbers that become an operation or a
/// completion depending on whether that process is idle.
#[derive(Clone, Debug)]
struct Action {
    process: u64,
    kind: u8,
    a: i64,
    b: i64,
    outcome: u8,
}

fn action() -> impl Strategy<Value = Action> {
    (0_u64..3, 0_u8..3, 0_i64..3, 0_i64..3, 0_u8..10)
        .prop_map(|(process, kind, a, b, outcome)| Action { process, kind, a, b, outcome })
}

/// Builds a well-formed (not necessarily linearizable) history of at most 9 operations.
fn build(actions: &[Action]) -> Vec<Event> {
    /// Keeps the brute force cheap: 9! orders at worst.
    const OPS_MAX: usize = 9;
    let mut events = Vec::new();
    let mut in_flight: Vec<Option<(F, Value)>> = vec![None; 3];
    // A process whose operation ended `info` is replaced by a fresh id.
    let mut ids: Vec<u64> = vec![0, 1, 2];
    let mut next_id = 3;
    let mut ops = 0;
    let value = |v: i64| if v == 0 { Value::Null } else { Value::Int(v) };
    for act in actions {
        let slot = act.process as usize;
        match in_flight[slot].take() {
            None if ops < OPS_MAX => {
                ops += 1;
                let (f, v) = match act.kind {
                    0 => (F::Read, Value::Null),
                    1 => (F::Write, Value::Int(act.a + 1)),
                    _ => (F::Cas, Value::List(vec![value(act.a), Value::Int(act.b + 1)])),
                };
                let invoke = Event {
                    process: ids[slot],
                    kind: EventType::Invoke,
                    f: f.clone(),
                    key: None,
                    value: v.clone(),
                    time: None,
                };
                events.push(invoke);
                in_flight[slot] = Some((f, v));
            }
            None => {}
            Some((f, v)) => {
                let kind = match act.outcome {
                    0..=5 => EventType::Ok,
                    6 | 7 => EventType::Fail,
                    _ => EventType::Info,
                };
                let result = if f == F::Read { value(act.b) } else { v };
                events.push(Event {
                    process: ids[slot],
                    kind,
                    f,
                    key: None,
                    value: result,
                    time: None,
                });
                if kind == EventType::Info {
                    ids[slot] = next_id;
                    next_id += 1;
                }
            }
        }
    }
    events
}

/// Tries every order of every subset that contains all `ok` operations and any `info`
/// ones, respecting real time, against a register. Obviously correct, exponentially slow.
fn brute_force(history: &History) -> bool {
    struct Op {
        invoke: usize,
        complete: usize,
        required: bool,
        f: F,
        value: Value,
        result: Value,
    }
    let ops: Vec<Op> = history
        .operations
        .iter()
        .filter(|o| o.status != Status::Fail)
        .map(|o| Op {
            invoke: o.invoke.index,
            complete: match (o.status, o.complete) {
                (Status::Ok, Some(c)) => c.index,
                _ => usize::MAX,
            },
            required: o.status == Status::Ok,
            f: o.f.clone(),
            value: o.value.clone(),
            result: o.result.clone(),
        })
        .collect();

    fn step(state: &Value, op: &Op) -> Option<Value> {
        match op.f {
            F::Read => (op.result == *state).then(|| state.clone()),
            F::Write => Some(op.value.clone()),
            F::Cas => match &op.value {
                Value::List(pair) if pair[0] == *state => Some(pair[1].clone()),
                _ => None,
            },
            _ => None,
        }
    }

    fn search(ops: &[Op], done: &mut Vec<bool>, state: &Value) -> bool {
        if ops.iter().zip(done.iter()).all(|(op, &d)| d || !op.required) {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] {
                continue;
            }
            // `i` may go next only if no pending operation completed before `i` was invoked.
            let blocked = (0..ops.len())
                .any(|j| j != i && !done[j] && ops[j].required && ops[j].complete < ops[i].invoke);
            if blocked {
                continue;
            }
            if let Some(next) = step(state, &ops[i]) {
                done[i] = true;
                let ok = search(ops, done, &next);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }

    search(&ops, &mut vec![false; ops.len()], &Value::Null)
}
