//! `quorumkv verify FILE`: read a history, check it, print a report, pick an exit code.
//!
//! The CLI only has to parse its arguments and call [`verify_path`]:
//!
//! ```no_run
//! use quorumkv_check::{ModelKind, verify_path};
//!
//! let exit = verify_path("history.jsonl".as_ref(), ModelKind::Kv, &mut std::io::stdout());
//! std::process::exit(exit.code());
//! ```

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::Path;

use serde::Serialize;

use crate::checker::{CheckOptions, CheckOutcome, CheckStats, OpRef, Violation, check_history};
use crate::history::{History, ReadError, Status};
use crate::model::ModelKind;

/// The verdict as a process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyExit {
    /// 0: the history is linearizable.
    Linearizable,
    /// 1: it is not; the report explains why.
    NotLinearizable,
    /// 2: the file is malformed (or unreadable, or has operations the model does not know).
    Malformed,
    /// 3: the search budget ran out before a verdict.
    Unknown,
}

impl VerifyExit {
    /// The process exit code: 0, 1, 2 or 3.
    pub fn code(self) -> i32 {
        match self {
            VerifyExit::Linearizable => 0,
            VerifyExit::NotLinearizable => 1,
            VerifyExit::Malformed => 2,
            VerifyExit::Unknown => 3,
        }
    }
}

impl From<VerifyExit> for std::process::ExitCode {
    fn from(exit: VerifyExit) -> Self {
        // Codes are 0..=3, so the narrowing cannot lose anything.
        std::process::ExitCode::from(exit.code() as u8)
    }
}

/// Counts of the operations in a history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OperationCounts {
    /// Completed with `ok`.
    pub ok: usize,
    /// Completed with `fail`.
    pub fail: usize,
    /// Completed with `info` or never completed.
    pub info: usize,
}

/// Everything a report needs, in a form that serialises to JSON for tooling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Where the history came from (a path, or a label).
    pub source: String,
    /// The model checked against.
    pub model: ModelKind,
    /// The verdict.
    pub verdict: VerifyExit,
    /// The exit code of the verdict.
    pub exit_code: i32,
    /// Number of events read (0 when the file is malformed).
    pub events: usize,
    /// Operations by outcome.
    pub operations: OperationCounts,
    /// Search counters (absent when the file is malformed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<CheckStats>,
    /// The violation, for verdict `not_linearizable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
    /// What is wrong with the file, for verdict `malformed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The line of the error, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_line: Option<usize>,
    /// Which limit ran out, for verdict `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_reason: Option<String>,
}

impl VerifyReport {
    fn malformed(
        source: &str,
        model: ModelKind,
        error: String,
        line: Option<usize>,
    ) -> VerifyReport {
        VerifyReport {
            source: source.to_owned(),
            model,
            verdict: VerifyExit::Malformed,
            exit_code: VerifyExit::Malformed.code(),
            events: 0,
            operations: OperationCounts::default(),
            stats: None,
            violation: None,
            error: Some(error),
            error_line: line,
            unknown_reason: None,
        }
    }

    /// The verdict.
    pub fn exit(&self) -> VerifyExit {
        self.verdict
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // Every field serialises; an error here would be a bug in a derive.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes the report for people.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "history: {} (model: {})", self.source, self.model)?;
        if let Some(error) = &self.error {
            writeln!(out, "MALFORMED: {error}")?;
            return Ok(());
        }
        let counts = &self.operations;
        write!(
            out,
            "{} events, {} operations ({} ok, {} fail, {} info)",
            self.events,
            counts.ok + counts.fail + counts.info,
            counts.ok,
            counts.fail,
            counts.info
        )?;
        if let Some(stats) = &self.stats {
            write!(out, " on {} key{}", stats.keys, if stats.keys == 1 { "" } else { "s" })?;
        }
        writeln!(out)?;
        match self.verdict {
            VerifyExit::Linearizable => writeln!(out, "LINEARIZABLE")?,
            VerifyExit::Unknown => writeln!(
                out,
                "UNKNOWN: {} (raise the budget or check a shorter history)",
                self.unknown_reason.as_deref().unwrap_or("budget exhausted")
            )?,
            VerifyExit::NotLinearizable | VerifyExit::Malformed => {}
        }
        if let Some(violation) = &self.violation {
            write_violation(out, violation)?;
        }
        if let Some(stats) = &self.stats {
            writeln!(
                out,
                "searched {} of {} keys, {} operations ({} fail and {} info dropped), {} configurations, {} ms",
                stats.keys_checked,
                stats.keys,
                stats.searched_operations,
                stats.dropped_fail,
                stats.dropped_info,
                stats.configs,
                stats.elapsed_ms
            )?;
        }
        Ok(())
    }
}

fn write_violation(out: &mut dyn Write, violation: &Violation) -> io::Result<()> {
    /// Operations listed per section; the JSON report has them all.
    const SHOWN_MAX: usize = 12;
    let key = if violation.key.is_empty() {
        "the register".to_owned()
    } else {
        format!("key {:?}", violation.key)
    };
    writeln!(out, "NOT LINEARIZABLE on {key}")?;
    writeln!(out)?;
    writeln!(out, "{}", wrap(&violation.explanation, 92, "  "))?;
    writeln!(out)?;
    let line = |op: &OpRef| {
        format!("    process {:<5} {:<24} {}", op.process, op.description, op.window())
    };
    if !violation.prefix.is_empty() {
        let skipped = violation.prefix.len().saturating_sub(SHOWN_MAX);
        writeln!(
            out,
            "  longest linearizable prefix: {} of {} operations{}",
            violation.prefix.len(),
            violation.operations_on_key,
            if skipped > 0 { format!(", the last {SHOWN_MAX}:") } else { ":".to_owned() }
        )?;
        for op in &violation.prefix[skipped..] {
            writeln!(out, "{}", line(op))?;
        }
        writeln!(out, "  value after the prefix: {}", violation.state_after_prefix)?;
    }
    writeln!(out, "  could not be linearized:")?;
    writeln!(out, "{}", line(&violation.stuck))?;
    let others: Vec<&OpRef> =
        violation.unordered.iter().filter(|op| **op != violation.stuck).collect();
    if !others.is_empty() {
        writeln!(out, "  other operations in flight that no order could place with it:")?;
        for op in others.iter().take(SHOWN_MAX) {
            writeln!(out, "{}", line(op))?;
        }
        if others.len() > SHOWN_MAX {
            writeln!(out, "    ... and {} more (see the JSON report)", others.len() - SHOWN_MAX)?;
        }
    }
    writeln!(out)
}

/// Greedy word wrap with an indent, for the explanation paragraph.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut lines = Vec::new();
    let mut current = String::from(indent);
    for word in text.split_whitespace() {
        if current.len() > indent.len() && current.len() + 1 + word.len() > width {
            lines.push(std::mem::replace(&mut current, String::from(indent)));
        }
        if current.len() > indent.len() {
            current.push(' ');
        }
        current.push_str(word);
    }
    lines.push(current);
    lines.join("\n")
}

/// Checks a parsed history and builds the report. `source` labels it in the report.
pub fn verify_history(
    history: &History,
    model: ModelKind,
    options: &CheckOptions,
    source: &str,
) -> VerifyReport {
    let mut operations = OperationCounts::default();
    for op in &history.operations {
        match op.status {
            Status::Ok => operations.ok += 1,
            Status::Fail => operations.fail += 1,
            Status::Info => operations.info += 1,
        }
    }
    let report = match check_history(history, model, options) {
        Ok(report) => report,
        Err(e) => return VerifyReport::malformed(source, model, e.to_string(), Some(e.line)),
    };
    let (verdict, violation, unknown_reason) = match report.outcome {
        CheckOutcome::Linearizable => (VerifyExit::Linearizable, None, None),
        CheckOutcome::NotLinearizable(v) => (VerifyExit::NotLinearizable, Some(*v), None),
        CheckOutcome::Unknown { reason } => (VerifyExit::Unknown, None, Some(reason)),
    };
    VerifyReport {
        source: source.to_owned(),
        model,
        verdict,
        exit_code: verdict.code(),
        events: history.events.len(),
        operations,
        stats: Some(report.stats),
        violation,
        error: None,
        error_line: None,
        unknown_reason,
    }
}

/// Reads and checks the history in a file; every failure is a report, never a panic.
pub fn verify_file(path: &Path, model: ModelKind, options: &CheckOptions) -> VerifyReport {
    let source = path.display().to_string();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            return VerifyReport::malformed(
                &source,
                model,
                format!("cannot open {source}: {e}"),
                None,
            );
        }
    };
    match History::read(BufReader::new(file)) {
        Ok(history) => verify_history(&history, model, options, &source),
        Err(ReadError::Format(e)) => {
            VerifyReport::malformed(&source, model, e.to_string(), Some(e.line))
        }
        Err(e @ ReadError::Io(_)) => VerifyReport::malformed(&source, model, e.to_string(), None),
    }
}

/// What `quorumkv verify FILE [--model register|kv]` does with default limits: check,
/// print the human report to `out`, return the exit code to use.
pub fn verify_path(path: &Path, model: ModelKind, out: &mut dyn Write) -> VerifyExit {
    verify_path_with(path, model, &CheckOptions::default(), out)
}

/// [`verify_path`] with explicit limits.
pub fn verify_path_with(
    path: &Path,
    model: ModelKind,
    options: &CheckOptions,
    out: &mut dyn Write,
) -> VerifyExit {
    let report = verify_file(path, model, options);
    // A broken pipe on the report must not change the verdict.
    let _ = report.write_human(out);
    report.exit()
}
