//! Waiting with a deadline: polling a condition, and running a child process to completion
//! (shared by the test support modules and the smoke tests).

#![allow(dead_code)] // Each test binary uses part of this module.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a bounded run gave.
#[derive(Debug)]
pub struct Run {
    /// Exit status (None: killed at the deadline).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Standard output, failing the test unless the run exited 0.
    pub fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "the command failed: {self:#?}");
        self.stdout
    }

    /// The error text, failing the test unless the run failed.
    pub fn err(self) -> String {
        assert_ne!(self.code, Some(0), "the command should have failed: {self:#?}");
        self.stderr
    }

    /// Standard output parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

/// Polls `cond` every `every` until it holds (true) or `timeout` passes (false). The one place
/// the tests wait for something they cannot be woken by (a child's exit, a node's files).
pub fn poll_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// [`poll_until`] for a condition that is itself async (a request to a node that may still be
/// starting or catching up), for async tests.
pub async fn poll_until_async(
    timeout: Duration,
    every: Duration,
    mut cond: impl AsyncFnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs `cmd` to completion feeding it `stdin`; kills it at `timeout` (code `None`).
pub fn run_bounded(mut cmd: Command, stdin: &str, timeout: Duration) -> Run {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut status = None;
    let exited = poll_until(timeout, Duration::from_millis(10), || {
        status = child.try_wait().expect("wait for the child");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let code = status.and_then(|s| s.code());
    let _ = writer.join();
    Run { code, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() }
}
