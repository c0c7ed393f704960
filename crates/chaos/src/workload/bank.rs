//! The `bank` workload: a few accounts whose balances always add up to the same total.
//! A transfer reads every account (one range, one revision), picks two accounts and an
//! amount the source can pay, and commits a transaction that compares both accounts' mod
//! revisions with what it read and then puts both new balances. Every read — one range
//! over all accounts, served at one revision — must see every account, no negative
//! balance, and the total.

use std::sync::Arc;
use std::time::Duration;

use quorumkv_check::history::{F, History, Operation, Status, Value};
use quorumkv_core::rng::Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Ctx, Recorder, TimelineOp, Verdict, WorkloadResult, Written, op_counts, problem};
use crate::ChaosError;
use crate::client::{
    Session, compare_create, compare_mod, op_put, range_prefix, timed, txn, with_session,
};

/// Accounts live under this prefix.
pub const PREFIX: &str = "chaos/bank/";
/// Number of accounts.
pub const ACCOUNTS: usize = 5;
/// Opening balance of each account.
pub const OPENING: i64 = 100;
/// Process ids of the dedicated reader.
const READER: u64 = 1_000_000;
/// Process ids of the final reads.
const FINAL: u64 = 2_000_000;

fn account(i: usize) -> String {
    format!("{PREFIX}{i}")
}

/// The running workload.
pub struct Running {
    ctx: Arc<Ctx>,
    rec: Arc<Recorder>,
    tasks: Vec<JoinHandle<()>>,
}

/// Balances and mod revisions of every account, from one range.
#[derive(Clone, Debug)]
struct Snapshot {
    balances: Vec<Option<i64>>,
    revisions: Vec<i64>,
}

async fn read_accounts(ctx: &Ctx, client: &str) -> Result<Snapshot, String> {
    let mut kv = ctx.channels.kv(client);
    let resp = timed(ctx.call_timeout, kv.range(range_prefix(PREFIX)))
        .await
        .map_err(|e| e.message().to_string())?;
    let mut snap = Snapshot { balances: vec![None; ACCOUNTS], revisions: vec![0; ACCOUNTS] };
    for kv in &resp.kvs {
        let key = String::from_utf8_lossy(&kv.key);
        let Some(i) = key.strip_prefix(PREFIX).and_then(|s| s.parse::<usize>().ok()) else {
            continue;
        };
        if i < ACCOUNTS {
            snap.balances[i] = std::str::from_utf8(&kv.value).ok().and_then(|v| v.parse().ok());
            snap.revisions[i] = kv.mod_revision;
        }
    }
    Ok(snap)
}

fn balances_value(snap: &Snapshot) -> Value {
    Value::List(snap.balances.iter().map(|b| b.map_or(Value::Null, Value::Int)).collect())
}

/// Opens the accounts (once: the transaction only runs while the first account is absent)
/// and starts `workers` transferring clients and one reader.
pub async fn start(ctx: Arc<Ctx>, rec: Arc<Recorder>, workers: u64) -> Result<Running, ChaosError> {
    let opening = Value::List(vec![Value::Int(OPENING); ACCOUNTS]);
    let process = 3_000_000;
    let session = Session::new(ctx.session_id("bank-open", process));
    rec.invoke(process, F::from("open"), None, opening.clone());
    let outcome = {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut attempt = 0u64;
        loop {
            let mut kv = ctx.channels.kv(&ctx.endpoints.pick(attempt).client);
            let puts =
                (0..ACCOUNTS).map(|i| op_put(&account(i), &OPENING.to_string(), 0)).collect();
            let req = txn(vec![compare_create(&account(0), 0)], puts);
            match timed(ctx.call_timeout, kv.txn(with_session(req, session.id, 1))).await {
                Ok(_) => break true,
                Err(_) if Instant::now() < deadline => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => break false,
            }
        }
    };
    if !outcome {
        rec.info(process, opening);
        return Err(ChaosError::Cluster("the bank accounts could not be opened".into()));
    }
    rec.ok(process, opening);
    let mut tasks: Vec<JoinHandle<()>> = (0..workers)
        .map(|w| tokio::spawn(transferrer(ctx.clone(), rec.clone(), w, workers)))
        .collect();
    tasks.push(tokio::spawn(reader(ctx.clone(), rec.clone())));
    Ok(Running { ctx, rec, tasks })
}

async fn transferrer(ctx: Arc<Ctx>, rec: Arc<Recorder>, w: u64, workers: u64) {
    let mut rng = Rng::new(ctx.seed ^ 0x4241_4e4b ^ w);
    let mut process = w;
    let mut session = Session::new(ctx.session_id("bank", process));
    while !ctx.stopping() {
        let client = ctx.endpoints.pick(process).client;
        rec.invoke(process, F::Read, None, Value::Null);
        let snap = match read_accounts(&ctx, &client).await {
            Ok(s) => {
                rec.ok(process, balances_value(&s));
                s
            }
            Err(_) => {
                rec.fail(process, Value::Null);
                ctx.pause(Duration::from_millis(50)).await;
                continue;
            }
        };
        let from = rng.range(0, ACCOUNTS as u64) as usize;
        let to = (from + 1 + rng.range(0, ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
        let (Some(have), Some(dest)) = (snap.balances[from], snap.balances[to]) else { continue };
        if have <= 0 {
            continue;
        }
        let amount = (rng.range(1, 6) as i64).min(have);
        let value =
            Value::List(vec![Value::Int(from as i64), Value::Int(to as i64), Value::Int(amount)]);
        let seq = session.take();
        let sid = session.id;
        rec.invoke(process, F::from("transfer"), None, value.clone());
        let (rf, rt) = (snap.revisions[from], snap.revisions[to]);
        let outcome = super::write_retrying(&ctx, |attempt| {
            let mut kv = ctx.channels.kv(&ctx.endpoints.pick(process + attempt).client);
            let limit = ctx.call_timeout;
            let req = txn(
                vec![compare_mod(&account(from), rf), compare_mod(&account(to), rt)],
                vec![
                    op_put(&account(from), &(have - amount).to_string(), 0),
                    op_put(&account(to), &(dest + amount).to_string(), 0),
                ],
            );
            async move { timed(limit, kv.txn(with_session(req, sid, seq))).await }
        })
        .await;
        match outcome {
            Written::Ok(r) if r.succeeded => rec.ok(process, value),
            Written::Ok(_) | Written::Fail(_) => rec.fail(process, value),
            Written::Info(_) => {
                rec.info(process, value);
                process += workers;
                session = Session::new(ctx.session_id("bank", process));
            }
        }
    }
}

async fn reader(ctx: Arc<Ctx>, rec: Arc<Recorder>) {
    let mut n = 0u64;
    while !ctx.stopping() {
        let client = ctx.endpoints.pick(n).client;
        n += 1;
        rec.invoke(READER, F::Read, None, Value::Null);
        match read_accounts(&ctx, &client).await {
            Ok(s) => rec.ok(READER, balances_value(&s)),
            Err(_) => rec.fail(READER, Value::Null),
        }
        ctx.pause(Duration::from_millis(200)).await;
    }
}

impl Running {
    /// Waits for the clients, reads every node once more, and checks.
    pub async fn finish(self) -> Result<WorkloadResult, ChaosError> {
        for t in self.tasks {
            let _ = t.await;
        }
        for (i, endpoint) in self.ctx.endpoints.list().into_iter().enumerate() {
            let process = FINAL + i as u64;
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                self.rec.invoke(process, F::Read, None, Value::Null);
                match read_accounts(&self.ctx, &endpoint.client).await {
                    Ok(s) => {
                        self.rec.ok(process, balances_value(&s));
                        break;
                    }
                    Err(_) => self.rec.fail(process, Value::Null),
                }
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let history = self.rec.finish()?;
        Ok(check(&history, ACCOUNTS, OPENING * ACCOUNTS as i64, "bank/history.jsonl"))
    }
}

/// Checks a bank history: every `ok` read lists `accounts` balances, none negative, adding
/// up to `total`; and some read began after every transfer ended.
pub fn check(history: &History, accounts: usize, total: i64, path: &str) -> WorkloadResult {
    let ops = op_counts(history);
    let mut problems = Vec::new();
    let mut timeline = Vec::new();
    let mut bad = 0u64;
    let mut reads = 0u64;
    let transfers: Vec<&Operation> =
        history.operations.iter().filter(|o| o.f.as_str() == "transfer").collect();
    let transfers_done = transfers
        .iter()
        .map(|o| o.complete.and_then(|c| c.time).unwrap_or(u64::MAX))
        .max()
        .unwrap_or(0);
    let mut final_reads = 0u64;
    for op in history.operations.iter().filter(|o| o.f == F::Read && o.status == Status::Ok) {
        reads += 1;
        if op.invoke.time.unwrap_or(0) >= transfers_done {
            final_reads += 1;
        }
        let balances: Vec<Option<i64>> = match &op.result {
            Value::List(items) => items.iter().map(super::int).collect(),
            _ => Vec::new(),
        };
        let sum: i64 = balances.iter().flatten().sum();
        let why = if balances.len() != accounts || balances.iter().any(Option::is_none) {
            Some(format!("{} of {accounts} accounts", balances.iter().flatten().count()))
        } else if balances.iter().flatten().any(|&b| b < 0) {
            Some("a negative balance".to_string())
        } else if sum != total {
            Some(format!("total {sum}, expected {total}"))
        } else {
            None
        };
        if let Some(why) = why {
            bad += 1;
            problem(
                &mut problems,
                format!(
                    "read by p{} at {:.3} s saw {} ({why})",
                    op.process,
                    op.invoke.time.unwrap_or(0) as f64 / 1e9,
                    op.result
                ),
            );
            if timeline.len() < 10 {
                timeline.push(TimelineOp::of(op, format!("read {}", op.result), true));
            }
        }
    }
    let ok_transfers = transfers.iter().filter(|o| o.status == Status::Ok).count();
    let verdict = if bad > 0 {
        Verdict::Fail
    } else if final_reads == 0 {
        problems.push("no read began after the last transfer ended".into());
        Verdict::Unknown
    } else {
        Verdict::Pass
    };
    WorkloadResult {
        workload: "bank".into(),
        verdict,
        summary: format!(
            "{reads} reads, {bad} with a wrong total; {} transfers ({ok_transfers} committed)",
            transfers.len()
        ),
        stats: serde_json::json!({
            "reads": reads,
            "bad_reads": bad,
            "final_reads": final_reads,
            "transfers": transfers.len(),
            "transfers_committed": ok_transfers,
            "accounts": accounts,
            "total": total,
        }),
        problems,
        timeline,
        notes: Vec::new(),
        history: path.into(),
        ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(p: u64, f: &str, kind: &str, value: &str, t: u64) -> String {
        format!(r#"{{"process":{p},"type":"{kind}","f":"{f}","value":{value},"time":{t}}}"#)
    }

    fn history(lines: &[String]) -> History {
        History::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn constant_totals_pass() {
        let h = history(&[
            line(0, "transfer", "invoke", "[0,1,5]", 1),
            line(0, "transfer", "ok", "[0,1,5]", 2),
            line(1, "read", "invoke", "null", 3),
            line(1, "read", "ok", "[5,15]", 4),
        ]);
        let r = check(&h, 2, 20, "h");
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.summary);
    }

    #[test]
    fn a_total_mismatch_fails() {
        let h = history(&[
            line(0, "transfer", "invoke", "[0,1,5]", 1),
            line(1, "read", "invoke", "null", 2),
            line(1, "read", "ok", "[5,10]", 3),
            line(0, "transfer", "ok", "[0,1,5]", 4),
            line(1, "read", "invoke", "null", 5),
            line(1, "read", "ok", "[5,15]", 6),
        ]);
        let r = check(&h, 2, 20, "h");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.stats["bad_reads"], 1);
        assert!(r.problems[0].contains("total 15, expected 20"), "{:?}", r.problems);
        assert_eq!(r.timeline.len(), 1);
    }

    #[test]
    fn a_missing_account_or_negative_balance_fails() {
        let h = history(&[
            line(1, "read", "invoke", "null", 1),
            line(1, "read", "ok", "[20,null]", 2),
            line(1, "read", "invoke", "null", 3),
            line(1, "read", "ok", "[-1,21]", 4),
        ]);
        let r = check(&h, 2, 20, "h");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.stats["bad_reads"], 2);
    }
}
