//! The client verbs of `quorumkv`: get, put, delete, cas, scan, watch, status, admin.
//!
//! Exit status, like grep's: 0 the answer is yes (found, swapped, all healthy), 1 a clean
//! negative answer (key not found, comparison failed, a member unhealthy), 2 an error (the
//! cluster is unreachable, the request was refused, bad arguments).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use quorumkv_client::{
    CasResult, Client, ClientOptions, EventKind, KeyRange, KeyValue, MemberStatus, ReadConsistency,
    ScanOptions,
};
use serde_json::{Value, json};

/// The endpoints of `quorumkv demo`.
const DEMO_ENDPOINTS: &str = "127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399";

/// Client verbs, at the top level of `quorumkv`.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Print a key's value (exit 1 if the key does not exist).
    Get(GetArgs),
    /// Write a value under a key.
    Put(PutArgs),
    /// Delete a key; prints how many keys were deleted.
    Delete(DeleteArgs),
    /// Compare-and-set: write only if the key's value (or revision, or absence) is as
    /// expected (exit 1 if it is not).
    Cas(CasArgs),
    /// List the keys under a prefix, or in [--from, --to).
    Scan(ScanArgs),
    /// Print changes to keys under a prefix as they happen, until Ctrl-C.
    Watch(WatchArgs),
    /// A table of the cluster's members: role, term, commit and applied index, lag, health
    /// (exit 1 unless every member is healthy and one leads).
    Status(StatusArgs),
    /// Membership and leadership.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// Connection flags every client verb takes.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Client addresses of some members, comma-separated.
    #[arg(
        long,
        env = "QUORUMKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = DEMO_ENDPOINTS
    )]
    pub endpoints: Vec<String>,
    /// Machine-readable output (one JSON document; one per line for watch).
    #[arg(long)]
    pub json: bool,
    /// Give up after this long, retries included (e.g. 500ms, 10s, 1m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Consistency {
    /// Sees every write acknowledged before the read (goes through the leader).
    #[default]
    Linearizable,
    /// Answered by one member from its local state: possibly stale, works without a quorum.
    Serializable,
}

/// `get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Read consistency.
    #[arg(long, value_enum, default_value_t)]
    pub consistency: Consistency,
    #[command(flatten)]
    pub conn: Conn,
}

/// `put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value (omitted: read from standard input, as bytes, to its end).
    pub value: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `delete`.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// Delete every key that starts with KEY.
    #[arg(long)]
    pub prefix: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `cas`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("expectation").required(true)))]
pub struct CasArgs {
    /// The key.
    pub key: String,
    /// The value to write if the expectation holds.
    pub new_value: String,
    /// Write only if the key's current value is this.
    #[arg(long, group = "expectation")]
    pub expect: Option<String>,
    /// Write only if the key does not exist.
    #[arg(long, group = "expectation")]
    pub expect_absent: bool,
    /// Write only if the key was last written at this revision.
    #[arg(long, group = "expectation", value_name = "REV")]
    pub expect_rev: Option<i64>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `scan`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("range").required(true).args(["prefix", "from"])))]
pub struct ScanArgs {
    /// List keys starting with this (the empty string lists every key).
    pub prefix: Option<String>,
    /// List keys from this one on (inclusive).
    #[arg(long, value_name = "START")]
    pub from: Option<String>,
    /// Stop before this key (with --from; omitted: no upper bound).
    #[arg(long, value_name = "END", requires = "from")]
    pub to: Option<String>,
    /// At most this many keys.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Read as of this store revision.
    #[arg(long, value_name = "R")]
    pub rev: Option<i64>,
    /// Print keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Read consistency.
    #[arg(long, value_enum, default_value_t)]
    pub consistency: Consistency,
    #[command(flatten)]
    pub conn: Conn,
}

/// `watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Watch keys starting with this (with --exact: only this key).
    pub prefix: String,
    /// Watch only the key named, not the keys under it.
    #[arg(long)]
    pub exact: bool,
    /// Start from this store revision (replays the changes since); default: now.
    #[arg(long, value_name = "R")]
    pub rev: Option<i64>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// `admin` verbs.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Add a member (then start it with `quorumkv server --join`).
    AddNode {
        /// The new member's id.
        #[arg(long)]
        id: u64,
        /// The address the new member will listen on for peers (host:port).
        #[arg(long, value_name = "A")]
        peer_addr: String,
        /// Add it as a non-voting learner (promote it once it caught up).
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a member.
    RemoveNode {
        /// The member's id.
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id.
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Move leadership to another voter.
    TransferLeader {
        /// The member that should lead.
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Parses `500ms`, `10s`, `2m` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 10s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s or m")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A clean negative answer: printed on stderr, exit status 1.
struct Negative(String);

type Outcome = anyhow::Result<Result<(), Negative>>;

/// Runs one client verb; returns the process exit status.
pub fn run(cmd: ClientCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(dispatch(cmd)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Negative(message))) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn connect(conn: &Conn, consistency: Consistency) -> anyhow::Result<Client> {
    let options = ClientOptions {
        deadline: conn.timeout,
        read_consistency: match consistency {
            Consistency::Linearizable => ReadConsistency::Linearizable,
            Consistency::Serializable => ReadConsistency::Serializable,
        },
        ..ClientOptions::default()
    };
    Ok(Client::connect(&conn.endpoints, options)?)
}

async fn dispatch(cmd: ClientCommand) -> Outcome {
    match cmd {
        ClientCommand::Get(a) => get(a).await,
        ClientCommand::Put(a) => put(a).await,
        ClientCommand::Delete(a) => delete(a).await,
        ClientCommand::Cas(a) => cas(a).await,
        ClientCommand::Scan(a) => scan(a).await,
        ClientCommand::Watch(a) => watch(a).await,
        ClientCommand::Status(a) => status(a).await,
        ClientCommand::Admin { command } => admin(command).await,
    }
}

async fn get(a: GetArgs) -> Outcome {
    let client = connect(&a.conn, a.consistency)?;
    let kv = client.get(&a.key).await.with_context(|| format!("cannot read {:?}", a.key))?;
    match kv {
        Some(kv) if a.conn.json => {
            let mut v = kv_json(&kv);
            v["found"] = json!(true);
            print_json(&v)?;
        }
        Some(kv) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&kv.value)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        None if a.conn.json => {
            print_json(&json!({ "key": a.key, "found": false }))?;
            return Ok(Err(Negative(String::new())));
        }
        None => return Ok(Err(Negative(format!("key {:?} not found", a.key)))),
    }
    Ok(Ok(()))
}

async fn put(a: PutArgs) -> Outcome {
    let value = match a.value {
        Some(v) => v.into_bytes(),
        None => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut v)
                .context("cannot read the value from standard input")?;
            v
        }
    };
    let client = connect(&a.conn, Consistency::default())?;
    let r =
        client.put(&a.key, &value).await.with_context(|| format!("cannot write {:?}", a.key))?;
    if a.conn.json {
        print_json(&json!({
            "revision": r.revision,
            "prev": r.prev.as_ref().map(kv_json),
        }))?;
    } else {
        println!("OK (revision {})", r.revision);
    }
    Ok(Ok(()))
}

async fn delete(a: DeleteArgs) -> Outcome {
    let client = connect(&a.conn, Consistency::default())?;
    let range =
        if a.prefix { KeyRange::prefix(a.key.as_bytes()) } else { KeyRange::key(a.key.as_bytes()) };
    let n =
        client.delete_range(&range).await.with_context(|| format!("cannot delete {:?}", a.key))?;
    if a.conn.json {
        print_json(&json!({ "deleted": n }))?;
    } else {
        println!("{n}");
    }
    Ok(Ok(()))
}

async fn cas(a: CasArgs) -> Outcome {
    let client = connect(&a.conn, Consistency::default())?;
    let r: CasResult = if let Some(rev) = a.expect_rev {
        client.cas_revision(&a.key, rev, &a.new_value).await
    } else if a.expect_absent {
        client.cas_value(&a.key, None, &a.new_value).await
    } else {
        let expected = a.expect.clone().unwrap_or_default();
        client.cas_value(&a.key, Some(expected.as_bytes()), &a.new_value).await
    }
    .with_context(|| format!("cannot compare-and-set {:?}", a.key))?;
    if a.conn.json {
        print_json(&json!({
            "succeeded": r.succeeded,
            "revision": r.revision,
            "current": r.current.as_ref().map(kv_json),
        }))?;
        return Ok(if r.succeeded { Ok(()) } else { Err(Negative(String::new())) });
    }
    if r.succeeded {
        println!("OK (revision {})", r.revision);
        return Ok(Ok(()));
    }
    let expected = if let Some(rev) = a.expect_rev {
        format!("last written at revision {rev}")
    } else if a.expect_absent {
        "absent".to_string()
    } else {
        format!("{:?}", a.expect.unwrap_or_default())
    };
    let actual = match &r.current {
        Some(kv) => format!(
            "{:?} (last written at revision {})",
            String::from_utf8_lossy(&kv.value),
            kv.mod_revision
        ),
        None => "absent".to_string(),
    };
    Ok(Err(Negative(format!(
        "not written: {:?} was expected to be {expected}, but is {actual}",
        a.key
    ))))
}

async fn scan(a: ScanArgs) -> Outcome {
    let client = connect(&a.conn, a.consistency)?;
    let range = match (&a.prefix, &a.from) {
        (_, Some(from)) => KeyRange::between(from.as_bytes(), a.to.clone().unwrap_or_default()),
        (Some(p), None) => KeyRange::prefix(p.as_bytes()),
        (None, None) => bail!("give a PREFIX, or --from START [--to END]"),
    };
    let options = ScanOptions {
        limit: a.limit.map_or(0, i64::from),
        revision: a.rev,
        keys_only: a.keys_only,
    };
    let r = client.scan(&range, options).await.context("cannot scan")?;
    if a.conn.json {
        print_json(&json!({
            "revision": r.revision,
            "count": r.count,
            "more": r.more,
            "kvs": r.kvs.iter().map(|kv| {
                let mut v = kv_json(kv);
                if a.keys_only
                    && let Some(o) = v.as_object_mut()
                {
                    o.remove("value");
                }
                v
            }).collect::<Vec<_>>(),
        }))?;
        return Ok(Ok(()));
    }
    let mut out = std::io::stdout().lock();
    for kv in &r.kvs {
        out.write_all(&kv.key)?;
        if !a.keys_only {
            out.write_all(b"\t")?;
            out.write_all(&kv.value)?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if r.more {
        eprintln!(
            "({} of {} keys shown; continue with --from after the last key, or raise --limit)",
            r.kvs.len(),
            r.count
        );
    }
    Ok(Ok(()))
}

async fn watch(a: WatchArgs) -> Outcome {
    let client = connect(&a.conn, Consistency::default())?;
    let range = if a.exact {
        KeyRange::key(a.prefix.as_bytes())
    } else {
        KeyRange::prefix(a.prefix.as_bytes())
    };
    let mut w = client.watch(&range, a.rev).await.context("cannot start the watch")?;
    if !a.conn.json {
        eprintln!(
            "watching {} {:?} from revision {}; Ctrl-C to stop",
            if a.exact { "key" } else { "prefix" },
            a.prefix,
            w.next_revision()
        );
    }
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(Ok(())),
            e = w.next() => e.context("the watch ended")?,
        };
        let mut out = std::io::stdout().lock();
        if a.conn.json {
            let mut v = kv_json(&event.kv);
            v["type"] = json!(event.kind.to_string());
            v["revision"] = json!(event.revision());
            if let Some(prev) = &event.prev {
                v["prev"] = kv_json(prev);
            }
            writeln!(out, "{v}")?;
        } else {
            match event.kind {
                EventKind::Put => writeln!(
                    out,
                    "PUT {} = {} (revision {})",
                    String::from_utf8_lossy(&event.kv.key),
                    String::from_utf8_lossy(&event.kv.value),
                    event.revision()
                )?,
                EventKind::Delete => writeln!(
                    out,
                    "DELETE {} (revision {})",
                    String::from_utf8_lossy(&event.kv.key),
                    event.revision()
                )?,
            }
        }
        out.flush()?;
    }
}

async fn status(a: StatusArgs) -> Outcome {
    let client = connect(&a.conn, Consistency::default())?;
    let members = client.status().await.context("cannot read the cluster's status")?;
    let leaders = members.iter().filter(|m| m.is_leader).count();
    let healthy = members.iter().filter(|m| m.health.is_healthy()).count();
    if a.conn.json {
        print_json(&json!({
            "leader": members.iter().find(|m| m.is_leader).map(|m| m.id),
            "members": members.iter().map(member_json).collect::<Vec<_>>(),
        }))?;
    } else {
        print!("{}", status_table(&members));
    }
    if leaders == 1 && healthy == members.len() {
        return Ok(Ok(()));
    }
    let why = match leaders {
        0 => "no member leads".to_string(),
        1 => format!("{} of {} members are not healthy", members.len() - healthy, members.len()),
        n => format!("{n} members claim to lead (different terms: an election is settling)"),
    };
    Ok(Err(Negative(if a.conn.json { String::new() } else { why })))
}

/// The status table; the leader is marked with `*`.
fn status_table(members: &[MemberStatus]) -> String {
    let header =
        ["", "ID", "NAME", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "HEALTH"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for m in members {
        let reachable = |n: u64| if m.reachable { n.to_string() } else { "-".into() };
        rows.push(vec![
            if m.is_leader { "*".into() } else { String::new() },
            m.id.to_string(),
            if m.name.is_empty() { "-".into() } else { m.name.clone() },
            if m.client_addr.is_empty() { "-".into() } else { m.client_addr.clone() },
            m.role.to_string(),
            reachable(m.term),
            reachable(m.commit_index),
            reachable(m.applied_index),
            reachable(m.lag),
            m.health.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> =
            r.iter()
                .enumerate()
                .map(|(c, cell)| {
                    if c + 1 == r.len() {
                        cell.clone()
                    } else {
                        format!("{cell:<w$}", w = widths[c])
                    }
                })
                .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn admin(cmd: AdminCommand) -> Outcome {
    match cmd {
        AdminCommand::AddNode { id, peer_addr, learner, conn } => {
            let client = connect(&conn, Consistency::default())?;
            let m = client
                .member_add(&peer_addr, Some(id), learner)
                .await
                .with_context(|| format!("cannot add member {id} at {peer_addr}"))?;
            let kind = if m.is_learner { "learner" } else { "voter" };
            if conn.json {
                print_json(
                    &json!({ "id": m.id, "peer_addr": peer_addr, "learner": m.is_learner }),
                )?;
            } else {
                println!("added member {} as a {kind} (peer address {peer_addr})", m.id);
                println!(
                    "start it with: quorumkv server --id {} --peer-addr {peer_addr} \
                     --client-addr HOST:PORT --data-dir DIR --join",
                    m.id
                );
            }
        }
        AdminCommand::RemoveNode { id, conn } => {
            let client = connect(&conn, Consistency::default())?;
            client.member_remove(id).await.with_context(|| format!("cannot remove member {id}"))?;
            if conn.json {
                print_json(&json!({ "removed": id }))?;
            } else {
                println!("removed member {id}");
            }
        }
        AdminCommand::Promote { id, conn } => {
            let client = connect(&conn, Consistency::default())?;
            client
                .member_promote(id)
                .await
                .with_context(|| format!("cannot promote member {id}"))?;
            if conn.json {
                print_json(&json!({ "promoted": id }))?;
            } else {
                println!("member {id} is now a voter");
            }
        }
        AdminCommand::TransferLeader { id, conn } => {
            let client = connect(&conn, Consistency::default())?;
            client
                .transfer_leader(id)
                .await
                .with_context(|| format!("cannot move leadership to member {id}"))?;
            if conn.json {
                print_json(&json!({ "leader": id }))?;
            } else {
                println!("member {id} now leads");
            }
        }
    }
    Ok(Ok(()))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// Bytes as JSON: a string when they are UTF-8; otherwise a lossy string plus the exact
/// bytes in base64 under `<name>_base64`.
fn put_bytes(obj: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            obj.insert(name.into(), json!(s));
        }
        Err(_) => {
            obj.insert(name.into(), json!(String::from_utf8_lossy(bytes)));
            obj.insert(format!("{name}_base64"), json!(base64(bytes)));
        }
    }
}

fn kv_json(kv: &KeyValue) -> Value {
    let mut obj = serde_json::Map::new();
    put_bytes(&mut obj, "key", &kv.key);
    put_bytes(&mut obj, "value", &kv.value);
    obj.insert("create_revision".into(), json!(kv.create_revision));
    obj.insert("mod_revision".into(), json!(kv.mod_revision));
    obj.insert("version".into(), json!(kv.version));
    obj.insert("lease".into(), json!(kv.lease));
    Value::Object(obj)
}

fn member_json(m: &MemberStatus) -> Value {
    json!({
        "id": m.id,
        "name": m.name,
        "client_addr": m.client_addr,
        "peer_addr": m.peer_addr,
        "learner": m.is_learner,
        "reachable": m.reachable,
        "leader": m.is_leader,
        "role": m.role.to_string(),
        "term": m.term,
        "leader_id": m.leader,
        "commit_index": m.commit_index,
        "applied_index": m.applied_index,
        "lag": m.lag,
        "healthy": m.health.is_healthy(),
        "health": m.health.to_string(),
        "version": m.version,
        "db_size": m.db_size,
    })
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input), want);
        }
    }

    #[test]
    fn json_keeps_non_utf8_bytes_exactly() {
        let kv = KeyValue {
            key: b"k".to_vec().into(),
            value: vec![0xff, 0x00].into(),
            create_revision: 2,
            mod_revision: 3,
            version: 1,
            lease: 0,
        };
        let v = kv_json(&kv);
        assert_eq!(v["key"], "k");
        assert!(v.get("key_base64").is_none());
        assert_eq!(v["value_base64"], "/wA=");
        assert_eq!(v["mod_revision"], 3);
    }

    #[test]
    fn the_status_table_marks_the_leader_and_aligns_columns() {
        let member = |id: u64, leader: bool| MemberStatus {
            id,
            name: format!("node{id}"),
            client_addr: format!("127.0.0.1:{}", 2369 + 10 * id),
            peer_addr: String::new(),
            is_learner: false,
            reachable: true,
            is_leader: leader,
            role: if leader {
                quorumkv_client::Role::Leader
            } else {
                quorumkv_client::Role::Follower
            },
            term: 3,
            leader: 1,
            commit_index: 120,
            applied_index: 118,
            lag: 2,
            health: quorumkv_client::Health::Healthy,
            version: String::new(),
            db_size: 0,
        };
        let table = status_table(&[member(1, true), member(2, false)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].contains("ID") && lines[0].contains("HEALTH"), "{table}");
        assert!(lines[1].starts_with('*') && lines[1].contains("leader"), "{table}");
        assert!(!lines[2].starts_with('*') && lines[2].contains("follower"), "{table}");
        let col = |l: &str| l.find("127.0.0.1");
        assert_eq!(col(lines[1]), col(lines[2]), "{table}");
    }
}
