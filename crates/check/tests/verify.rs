//! `verify_path`, as the CLI calls it: exit codes and what the reports say.

use std::path::{Path, PathBuf};

use quorumkv_check::{
    CheckOptions, ModelKind, VerifyExit, verify_file, verify_path, verify_path_with,
};

/// Writes `lines` to a fresh temporary file.
fn file(name: &str, lines: &[&str]) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("quorumkv-check-{}-{name}.jsonl", std::process::id()));
    std::fs::write(&path, lines.join("\n") + "\n").expect("temp dir is writable");
    path
}

fn run(path: &Path, model: ModelKind) -> (VerifyExit, String) {
    let mut out = Vec::new();
    let exit = verify_path(path, model, &mut out);
    (exit, String::from_utf8(out).expect("reports are UTF-8"))
}

const STALE_READ: [&str; 6] = [
    r#"{"process":0,"type":"invoke","f":"write","key":"x","value":1}"#,
    r#"{"process":0,"type":"ok","f":"write","key":"x","value":1}"#,
    r#"{"process":0,"type":"invoke","f":"write","key":"x","value":2}"#,
    r#"{"process":0,"type":"ok","f":"write","key":"x","value":2}"#,
    r#"{"process":1,"type":"invoke","f":"read","key":"x","value":null}"#,
    r#"{"process":1,"type":"ok","f":"read","key":"x","value":1}"#,
];

#[test]
fn linearizable_exits_0() {
    let path = file("ok", &STALE_READ[..4]);
    let (exit, out) = run(&path, ModelKind::Kv);
    assert_eq!((exit, exit.code()), (VerifyExit::Linearizable, 0));
    assert!(out.contains("4 events, 2 operations (2 ok, 0 fail, 0 info) on 1 key"), "{out}");
    assert!(out.contains("\nLINEARIZABLE\n"), "{out}");
}

#[test]
fn not_linearizable_exits_1_with_an_explanation() {
    let path = file("stale", &STALE_READ);
    let (exit, out) = run(&path, ModelKind::Register);
    assert_eq!(exit.code(), 1);
    assert!(out.contains("NOT LINEARIZABLE on key \"x\""), "{out}");
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("the value could only be 2 while it was in flight"), "{out}");
    assert!(out.contains("longest linearizable prefix: 2 of 3 operations:"), "{out}");
    assert!(out.contains("read → 1"), "{out}");
}

#[test]
fn malformed_exits_2_with_the_line() {
    let path = file("malformed", &[STALE_READ[0], r#"{"process":0,"type":"okk","f":"write"}"#]);
    let (exit, out) = run(&path, ModelKind::Kv);
    assert_eq!(exit.code(), 2);
    assert!(
        out.contains(
            r#"MALFORMED: line 2: field `type` must be one of invoke, ok, fail, info, got "okk""#
        ),
        "{out}"
    );

    // An operation the model does not know is reported the same way.
    let path = file("unknown-f", &[r#"{"process":0,"type":"invoke","f":"enqueue","value":1}"#]);
    let (exit, out) = run(&path, ModelKind::Register);
    assert_eq!(exit, VerifyExit::Malformed);
    assert!(
        out.contains("MALFORMED: line 1: the register model does not know `f` = \"enqueue\""),
        "{out}"
    );

    let (exit, out) =
        run(&std::env::temp_dir().join("quorumkv-check-no-such-file.jsonl"), ModelKind::Kv);
    assert_eq!(exit, VerifyExit::Malformed);
    assert!(out.contains("cannot open"), "{out}");
}

#[test]
fn budget_exhausted_exits_3() {
    let mut lines: Vec<String> = (0..10)
        .map(|p| format!(r#"{{"process":{p},"type":"invoke","f":"write","value":{p}}}"#))
        .collect();
    for v in [3, 4, 3] {
        lines.push(r#"{"process":20,"type":"invoke","f":"read"}"#.to_owned());
        lines.push(format!(r#"{{"process":20,"type":"ok","f":"read","value":{v}}}"#));
    }
    lines.extend(
        (0..10).map(|p| format!(r#"{{"process":{p},"type":"ok","f":"write","value":{p}}}"#)),
    );
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let path = file("budget", &refs);
    let options = CheckOptions { max_configs_per_key: 50, time_limit: None };
    let mut out = Vec::new();
    let exit = verify_path_with(&path, ModelKind::Register, &options, &mut out);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(exit.code(), 3, "{out}");
    assert!(out.contains("UNKNOWN: configuration limit reached on the register"), "{out}");
}

#[test]
fn the_json_report_carries_the_verdict_and_violation() {
    let path = file("json", &STALE_READ);
    let report = verify_file(&path, ModelKind::Kv, &CheckOptions::default());
    assert_eq!(report.exit(), VerifyExit::NotLinearizable);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["verdict"], "not_linearizable");
    assert_eq!(json["exit_code"], 1);
    assert_eq!(json["model"], "kv");
    assert_eq!(json["violation"]["key"], "x");
    assert_eq!(json["violation"]["stuck"]["invoke"]["line"], 5);
    assert_eq!(json["violation"]["stuck"]["result"], 1);
    assert_eq!(json["violation"]["refused_in"][0], "2");
    assert_eq!(json["stats"]["keys"], 1);
}
