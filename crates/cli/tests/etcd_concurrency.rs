//! `etcdctl lock` and `etcdctl elect` against a 3-node quorumkv cluster. Both are built on
//! clientv3's concurrency package: a session lease kept alive, a txn on a key's create
//! revision, ranges sorted by create revision with a limit and a max-create-revision filter,
//! and a watch for the delete of the key ahead — each piece has to work for them to.

mod etcd_support;

use std::collections::HashMap;
use std::time::Duration;

use etcd_support::{Background, Cluster, etcdctl_bin, lines, wait_until};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn lock_gives_mutual_exclusion_between_concurrent_holders() {
    let c = Cluster::start(3);
    let log = c.dir.join("lock.log");
    c.etcdctl(&["put", "counter", "0"]).ok();
    // A read-modify-write of the counter with two separate etcdctl calls: without mutual
    // exclusion, concurrent holders lose increments and interleave in the log.
    let ctl = format!("{} --endpoints=$QKV_ENDPOINTS", etcdctl_bin().display());
    let script = format!(
        "echo \"enter $$\" >> {log}; n=$({ctl} get --print-value-only counter); \
         {ctl} put counter $((n+1)) > /dev/null; echo \"exit $$\" >> {log}",
        log = log.display()
    );
    // In a file: etcdctl would take `sh -c`'s `-c` for one of its own flags.
    let section = c.dir.join("section.sh");
    std::fs::write(&section, script).expect("write the critical section script");
    let section = section.display().to_string();
    let env: HashMap<String, String> = [
        ("QKV_ENDPOINTS".to_string(), c.endpoints()),
        ("ETCDCTL_API".to_string(), "3".to_string()),
    ]
    .into();
    let holders = 6;
    let mut procs: Vec<Background> = (0..holders)
        .map(|i| {
            // Each holder talks to a different member.
            let ep = c.nodes[i % c.nodes.len()].endpoint();
            c.etcdctl_background_env(&ep, &["lock", "--ttl=5", "qlock", "sh", &section], &env)
        })
        .collect();
    for p in &mut procs {
        let code = p.wait_exit(Duration::from_secs(90));
        assert_eq!(code, Some(0), "a lock holder failed: {:?} {:?}", p.lines, p.err_lines);
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let entries: Vec<&str> = text.lines().collect();
    assert_eq!(entries.len(), 2 * holders, "{text}");
    for pair in entries.chunks(2) {
        let (enter, exit) = (pair[0], pair[1]);
        assert!(enter.starts_with("enter "), "{text}");
        assert_eq!(exit, enter.replacen("enter", "exit", 1), "sections overlapped:\n{text}");
    }
    assert_eq!(
        c.etcdctl(&["get", "counter", "--print-value-only"]).ok().trim(),
        holders.to_string(),
        "no increment was lost"
    );
    // Every holder unlocked: no lock key is left.
    assert!(lines(&c.etcdctl(&["get", "--prefix", "qlock/"]).ok()).is_empty());
}

#[test]
fn elect_picks_one_leader_and_a_new_one_after_its_lease_is_revoked() {
    let c = Cluster::start(3);
    let mut candidates: Vec<Background> = (0..3)
        .map(|i| {
            let ep = c.nodes[i].endpoint();
            c.etcdctl_background(&ep, &["elect", "qelection", &format!("proposal{i}")])
        })
        .collect();
    let elected = |cands: &mut Vec<Background>| -> Vec<usize> {
        (0..cands.len()).filter(|&i| cands[i].text_lines().len() >= 2).collect()
    };
    wait_until(WAIT, "a candidate to be elected", || !elected(&mut candidates).is_empty());
    let first = elected(&mut candidates);
    assert_eq!(first.len(), 1, "exactly one leader");
    let w = first[0];
    let out = candidates[w].text_lines();
    let key = out[0].clone();
    assert!(key.starts_with("qelection/"), "{out:?}");
    assert_eq!(out[1], format!("proposal{w}"));

    // An observer sees the same leader.
    let mut observer = c.etcdctl_background(&c.endpoints(), &["elect", "-l", "qelection"]);
    observer.wait_for(WAIT, "the observer to print the leader", |l| {
        l.iter().filter(|x| !x.trim().is_empty()).count() >= 2
    });
    assert_eq!(observer.text_lines()[..2], out[..2]);

    // Revoke the leader's session lease (the key's suffix is the lease id, in hex): its key
    // goes, and one of the others takes over.
    let lease = key.rsplit('/').next().unwrap_or_default().to_string();
    let revoked = c.etcdctl(&["lease", "revoke", &lease]).ok();
    assert_eq!(revoked.trim(), format!("lease {lease} revoked"));
    wait_until(WAIT, "a new leader", || elected(&mut candidates).len() >= 2);
    let now = elected(&mut candidates);
    assert_eq!(now.len(), 2, "exactly one new leader");
    let next = now.into_iter().find(|&i| i != w).unwrap_or(w);
    let out2 = candidates[next].text_lines();
    assert!(out2[0].starts_with("qelection/") && out2[0] != key, "{out2:?}");
    assert_eq!(out2[1], format!("proposal{next}"));
    observer.wait_for(WAIT, "the observer to print the new leader", |l| {
        l.iter().filter(|x| !x.trim().is_empty()).count() >= 4
    });
    assert_eq!(observer.text_lines()[2..4], out2[..2]);
    // The old leader's next keep-alive is answered "lease gone": its session ends and
    // etcdctl exits with an error (clientv3 renews every TTL/3 = 20 s).
    let code = candidates[w].wait_exit(Duration::from_secs(60));
    assert_ne!(code, Some(0), "the revoked leader must notice it lost its session");
    // The new leader resigns on interrupt; the last candidate is elected.
    candidates[next].interrupt();
    let last = 3 - w - next;
    candidates[last].wait_for(WAIT, "the last candidate to be elected", |l| {
        l.iter().filter(|x| !x.trim().is_empty()).count() >= 2
    });
    assert_eq!(candidates[last].text_lines()[1], format!("proposal{last}"));
}
