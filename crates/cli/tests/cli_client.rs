//! The client verbs of the `quorumkv` binary against a real 3-node cluster.

mod client_support;

use std::time::Duration;

use client_support::{Cluster, Run, run_cli};

fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

fn code(r: &Run) -> Option<i32> {
    r.code
}

#[test]
fn client_verbs_against_a_cluster() {
    let cluster = Cluster::start(3);

    // put, then get prints just the value.
    let out = cluster.cli(&["put", "greeting", "hello"]).ok();
    assert!(out.starts_with("OK (revision "), "{out}");
    assert_eq!(cluster.cli(&["get", "greeting"]).ok(), "hello\n");
    assert_eq!(
        cluster.cli(&["get", "greeting", "--consistency", "serializable"]).ok().trim(),
        "hello"
    );

    // A missing key: a message on stderr, exit status 1, nothing on stdout.
    let r = cluster.cli(&["get", "nope"]);
    assert_eq!(code(&r), Some(1), "{r:#?}");
    assert!(r.stdout.is_empty(), "{r:#?}");
    assert!(r.stderr.contains("not found"), "{r:#?}");

    // --json output parses.
    let r = cluster.cli(&["get", "greeting", "--json"]);
    assert_eq!(code(&r), Some(0), "{r:#?}");
    let v = r.json();
    assert_eq!(
        (v["key"].as_str(), v["value"].as_str(), v["version"].as_i64()),
        (Some("greeting"), Some("hello"), Some(1))
    );
    let r = cluster.cli(&["put", "greeting", "world", "--json"]);
    let v = r.json();
    assert!(v["revision"].as_i64().is_some_and(|r| r > 0), "{r:#?}");
    assert_eq!(v["prev"]["value"], "hello");
    let r = cluster.cli(&["get", "nope", "--json"]);
    assert_eq!(code(&r), Some(1));
    assert_eq!(r.json()["found"], false);

    // A value from standard input.
    let mut args: Vec<String> = ["put", "note"].iter().map(|s| s.to_string()).collect();
    args.extend(["--endpoints".to_string(), cluster.endpoints().join(",")]);
    assert_eq!(run_cli(&args, "line one\nline two").code, Some(0));
    assert_eq!(cluster.cli(&["get", "note"]).ok(), "line one\nline two\n");

    // cas: success exits 0, a failed comparison exits 1 and says what the key holds.
    assert_eq!(code(&cluster.cli(&["cas", "greeting", "--expect", "world", "hi"])), Some(0));
    let r = cluster.cli(&["cas", "greeting", "--expect", "world", "again"]);
    assert_eq!(code(&r), Some(1), "{r:#?}");
    assert!(r.stderr.contains("\"hi\""), "{r:#?}");
    assert_eq!(cluster.cli(&["get", "greeting"]).ok().trim(), "hi");
    assert_eq!(code(&cluster.cli(&["cas", "fresh", "--expect-absent", "1"])), Some(0));
    assert_eq!(code(&cluster.cli(&["cas", "fresh", "--expect-absent", "2"])), Some(1));
    let rev =
        cluster.cli(&["get", "fresh", "--json"]).json()["mod_revision"].as_i64().expect("rev");
    let stale = (rev - 1).to_string();
    assert_eq!(code(&cluster.cli(&["cas", "fresh", "--expect-rev", &stale, "3"])), Some(1));
    let r = cluster.cli(&["cas", "fresh", "--expect-rev", &rev.to_string(), "3", "--json"]);
    assert_eq!(code(&r), Some(0), "{r:#?}");
    assert_eq!(r.json()["succeeded"], true);
    // Exactly one expectation is required.
    let r = cluster.cli(&["cas", "fresh", "4"]);
    assert_eq!(code(&r), Some(2), "{r:#?}");

    // scan with a limit, a range, and JSON.
    for i in 1..=5 {
        cluster.cli(&["put", &format!("user/{i}"), &format!("name{i}")]).ok();
    }
    let r = cluster.cli(&["scan", "user/", "--limit", "3"]);
    assert_eq!(lines(&r.stdout), ["user/1\tname1", "user/2\tname2", "user/3\tname3"], "{r:#?}");
    assert!(r.stderr.contains("3 of 5 keys shown"), "{r:#?}");
    let out = cluster.cli(&["scan", "--from", "user/2", "--to", "user/4", "--keys-only"]).ok();
    assert_eq!(lines(&out), ["user/2", "user/3"]);
    let v = cluster.cli(&["scan", "user/", "--limit", "2", "--json"]).json();
    assert_eq!(v["kvs"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!((v["more"].as_bool(), v["count"].as_i64()), (Some(true), Some(5)));

    // delete prints the count.
    assert_eq!(cluster.cli(&["delete", "user/", "--prefix"]).ok().trim(), "5");
    assert_eq!(cluster.cli(&["delete", "user/1", "--json"]).json()["deleted"], 0);

    // status: three healthy members, exactly one leader, marked.
    let r = cluster.cli(&["status"]);
    assert_eq!(code(&r), Some(0), "{r:#?}");
    let rows = lines(&r.stdout);
    assert_eq!(rows.len(), 4, "a header and three members: {r:#?}");
    assert!(rows[0].contains("ROLE") && rows[0].contains("LAG") && rows[0].contains("HEALTH"));
    assert_eq!(rows.iter().filter(|l| l.starts_with('*')).count(), 1, "{r:#?}");
    assert_eq!(rows.iter().filter(|l| l.contains(" leader ")).count(), 1, "{r:#?}");
    assert_eq!(rows.iter().filter(|l| l.ends_with("healthy")).count(), 3, "{r:#?}");
    let v = cluster.cli(&["status", "--json"]).json();
    let members = v["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{v}");
    assert_eq!(members.iter().filter(|m| m["leader"] == true).count(), 1, "{v}");
    assert!(members.iter().all(|m| m["healthy"] == true && m["reachable"] == true), "{v}");
    let leader = cluster.wait_for_leader();
    assert_eq!(v["leader"].as_u64(), Some(leader), "{v}");

    // admin transfer-leader moves leadership, and status shows it.
    let target = cluster.other_than(leader);
    let out = cluster.cli(&["admin", "transfer-leader", &target.to_string()]).ok();
    assert!(out.contains(&format!("member {target} now leads")), "{out}");
    assert_eq!(cluster.cli(&["status", "--json"]).json()["leader"].as_u64(), Some(target));

    // Nothing listening: exit status 2 and a message that says what to do.
    let args: Vec<String> = ["get", "greeting", "--endpoints", "127.0.0.1:1", "--timeout", "300ms"]
        .map(String::from)
        .into();
    let r = run_cli(&args, "");
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert!(r.stderr.contains("is the cluster running?"), "{r:#?}");
    assert!(r.stderr.contains("quorumkv demo"), "{r:#?}");
}

/// A child process killed (by its pid) when dropped, also when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_prints_events_as_they_happen() {
    let cluster = Cluster::start(3);
    let start =
        cluster.cli(&["put", "w/seed", "0", "--json"]).json()["revision"].as_i64().expect("rev");
    cluster.cli(&["put", "w/a", "1"]).ok();
    cluster.cli(&["delete", "w/a"]).ok();
    // From a past revision the watch replays history, then goes on with live changes until
    // it is stopped.
    let mut child = KillOnDrop(
        std::process::Command::new(client_support::quorumkv_bin())
            .args(["watch", "w/", "--rev", &start.to_string(), "--json", "--endpoints"])
            .arg(cluster.endpoints().join(","))
            .env_remove("QUORUMKV_ENDPOINTS")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start quorumkv watch"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let recv = |what: &str| {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {what} from quorumkv watch within 30 s"))
    };
    let mut got = vec![recv("first event"), recv("second event"), recv("third event")];
    cluster.cli(&["put", "w/live", "yes"]).ok();
    got.push(recv("live event"));
    drop(child);
    let events: Vec<serde_json::Value> =
        got.iter().map(|l| serde_json::from_str(l).expect("one JSON event per line")).collect();
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or(""), e["key"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        summary,
        [("PUT", "w/seed"), ("PUT", "w/a"), ("DELETE", "w/a"), ("PUT", "w/live")],
        "{got:#?}"
    );
    assert_eq!(events[0]["revision"].as_i64(), Some(start));
}

#[test]
fn admin_verbs_add_promote_and_remove_a_node() {
    let mut cluster = Cluster::start(3);
    cluster.cli(&["put", "before-join", "1"]).ok();
    let peer = cluster.spawn_joining(4);

    let out =
        cluster.cli(&["admin", "add-node", "--id", "4", "--peer-addr", &peer, "--learner"]).ok();
    assert!(out.contains("added member 4 as a learner"), "{out}");
    // Adding the same member again is refused, with etcd's reason.
    let r = cluster.cli(&["admin", "add-node", "--id", "4", "--peer-addr", &peer, "--learner"]);
    assert_eq!(code(&r), Some(2), "{r:#?}");
    assert!(r.stderr.contains("already exists"), "{r:#?}");

    let member = |v: &serde_json::Value, id: u64| {
        v["members"].as_array().and_then(|ms| ms.iter().find(|m| m["id"] == id).cloned())
    };
    let wait = Duration::from_secs(60);
    client_support::wait_until(wait, "the learner to start and catch up", || {
        let v = cluster.cli(&["status", "--json"]).json();
        member(&v, 4).is_some_and(|m| {
            m["reachable"] == true
                && m["learner"] == true
                && m["role"] == "learner"
                && m["healthy"] == true
        })
    });
    // A serializable read from the learner shows the data it received.
    let mut args: Vec<String> =
        ["get", "before-join", "--consistency", "serializable"].map(String::from).into();
    args.extend(["--endpoints".to_string(), cluster.node(4).endpoint()]);
    assert_eq!(run_cli(&args, "").stdout.trim(), "1");

    let mut promoted = String::new();
    client_support::wait_until(wait, "the learner to be promoted", || {
        let r = cluster.cli(&["admin", "promote", "4"]);
        promoted = r.stdout.clone();
        r.code == Some(0)
    });
    assert!(promoted.contains("member 4 is now a voter"), "{promoted}");
    client_support::wait_until(wait, "four healthy voters", || {
        let r = cluster.cli(&["status", "--json"]);
        let v = r.json();
        r.code == Some(0)
            && v["members"].as_array().is_some_and(|ms| {
                ms.len() == 4 && ms.iter().all(|m| m["learner"] == false && m["healthy"] == true)
            })
    });

    let out = cluster.cli(&["admin", "remove-node", "4"]).ok();
    assert!(out.contains("removed member 4"), "{out}");
    let v = cluster.cli(&["status", "--json"]).json();
    assert!(member(&v, 4).is_none(), "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
    let r = cluster.cli(&["admin", "remove-node", "4"]);
    assert_eq!(code(&r), Some(2), "{r:#?}");
    assert!(r.stderr.contains("member not found"), "{r:#?}");
}
