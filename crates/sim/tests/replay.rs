//! A replayed seed gives a byte-identical trace.

use quorumkv_sim::{FaultKind, SimOptions, run};

#[test]
fn same_seed_same_trace_byte_for_byte() {
    for seed in [7, 4242] {
        let mut options = SimOptions::new(seed);
        options.trace = true;
        options.fault_secs = 3;
        let a = run(&options);
        let b = run(&options);
        let (ta, tb) = (a.trace.expect("trace kept"), b.trace.expect("trace kept"));
        assert!(ta.lines().count() > 1000, "trace too short to mean anything");
        assert_eq!(ta.as_bytes(), tb.as_bytes(), "seed {seed} replayed differently");
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.history_lines, b.history_lines);
    }
}

#[test]
fn different_seeds_differ_and_faults_can_be_pinned() {
    let mut a = SimOptions::new(1);
    a.fault_secs = 2;
    let mut b = SimOptions::new(2);
    b.fault_secs = 2;
    assert_ne!(run(&a).digest, run(&b).digest);
    let mut pinned = SimOptions::new(3);
    pinned.fault_secs = 2;
    pinned.nodes = Some(5);
    pinned.faults = Some(vec![FaultKind::Crash]);
    let r = run(&pinned);
    assert_eq!(r.nodes, 5);
    assert_eq!(r.faults, vec![FaultKind::Crash]);
    assert!(r.passed(), "{:?}", r.problems());
    assert_eq!(pinned.replay_command(), "quorumkv sim --seed 3 --nodes 5 --faults crash --time 2");
}
