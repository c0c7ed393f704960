//! Cluster status and membership: who is there, who leads, who lags; adding, removing and
//! promoting members; moving leadership.

use std::time::Instant;

use quorumkv_etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use quorumkv_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use quorumkv_etcd_proto::etcdserverpb::{
    MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest,
};
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::client::{Client, Target};
use crate::error::{Error, describe};
use crate::types::{Health, MemberInfo, MemberStatus, Role};

/// Metadata key with which the caller chooses the id of a member it adds.
pub const MEMBER_ID_HEADER: &str = "x-quorumkv-member-id";

impl Client {
    /// The cluster's members, from the first member that answers (its local view, so this
    /// works without a quorum).
    pub async fn member_list(&self) -> Result<Vec<MemberInfo>, Error> {
        let members = self
            .run("member list", Target::Any, None, |ch, _| async move {
                let resp = ClusterClient::new(ch)
                    .member_list(quorumkv_etcd_proto::etcdserverpb::MemberListRequest {
                        linearizable: false,
                    })
                    .await?;
                Ok(resp.into_inner().members)
            })
            .await?;
        let members: Vec<MemberInfo> = members.into_iter().map(MemberInfo::from).collect();
        self.learn_members(&members);
        Ok(members)
    }

    /// Every member's state: reachability, role, term, commit and applied index, lag behind
    /// the leader's commit index, and a health verdict. Members are asked at once, each
    /// within the probe timeout.
    pub async fn status(&self) -> Result<Vec<MemberStatus>, Error> {
        let members = self.member_list().await?;
        let probes = futures::future::join_all(members.iter().map(|m| async move {
            match m.client_addrs.first() {
                Some(addr) => self.probe(addr).await.map_err(|s| describe(&s)),
                None => Err("its client address is not known yet (has it started?)".to_string()),
            }
        }))
        .await;
        // The leader's commit index is what everyone else is measured against; if no member
        // claims leadership, the highest commit index seen stands in for it.
        let leader_commit = probes
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter(|s| s.leader != 0 && s.header.as_ref().is_some_and(|h| h.member_id == s.leader))
            .max_by_key(|s| s.raft_term)
            .or_else(|| probes.iter().filter_map(|p| p.as_ref().ok()).max_by_key(|s| s.raft_index))
            .map_or(0, |s| s.raft_index);
        let threshold = self.inner.options.lag_threshold;
        let out = members
            .into_iter()
            .zip(probes)
            .map(|(m, probe)| {
                let client_addr = m.client_addrs.first().cloned().unwrap_or_default();
                let peer_addr = m.peer_addrs.first().cloned().unwrap_or_default();
                match probe {
                    Ok(st) => {
                        let me = st.header.as_ref().map_or(0, |h| h.member_id);
                        let is_leader = st.leader != 0 && st.leader == me;
                        let role = if is_leader {
                            Role::Leader
                        } else if st.is_learner || m.is_learner {
                            Role::Learner
                        } else if st.leader == 0 {
                            Role::Candidate
                        } else {
                            Role::Follower
                        };
                        let lag = leader_commit.saturating_sub(st.raft_applied_index);
                        let health = if !st.errors.is_empty() {
                            Health::Failed(st.errors.join("; "))
                        } else if st.leader == 0 {
                            Health::NoLeader
                        } else if lag > threshold {
                            Health::Lagging
                        } else {
                            Health::Healthy
                        };
                        MemberStatus {
                            id: m.id,
                            name: m.name,
                            client_addr,
                            peer_addr,
                            is_learner: m.is_learner,
                            reachable: true,
                            is_leader,
                            role,
                            term: st.raft_term,
                            leader: st.leader,
                            commit_index: st.raft_index,
                            applied_index: st.raft_applied_index,
                            lag,
                            health,
                            version: st.version,
                            db_size: st.db_size,
                        }
                    }
                    Err(why) => MemberStatus {
                        id: m.id,
                        name: m.name,
                        client_addr,
                        peer_addr,
                        is_learner: m.is_learner,
                        reachable: false,
                        is_leader: false,
                        role: Role::Unknown,
                        term: 0,
                        leader: 0,
                        commit_index: 0,
                        applied_index: 0,
                        lag: 0,
                        health: Health::Unreachable(why),
                        version: String::new(),
                        db_size: 0,
                    },
                }
            })
            .collect();
        Ok(out)
    }

    /// Adds a member that will listen for peers at `peer_addr` (`host:port`), as a voter or
    /// a learner, with the id `id` (None: the server derives one from the address). Start
    /// the new node afterwards with `--join`.
    pub async fn member_add(
        &self,
        peer_addr: &str,
        id: Option<u64>,
        learner: bool,
    ) -> Result<MemberInfo, Error> {
        let peer = crate::types::strip_scheme(peer_addr).to_string();
        let body =
            MemberAddRequest { peer_ur_ls: vec![format!("http://{peer}")], is_learner: learner };
        // Sent to the leader itself: a follower forwarding the call would not pass the
        // chosen id on.
        let result = self
            .run("member add", Target::Leader, None, |ch, _| {
                let mut req = tonic::Request::new(body.clone());
                if let Some(id) = id {
                    req.metadata_mut().insert(MEMBER_ID_HEADER, MetadataValue::from(id));
                }
                async move { ClusterClient::new(ch).member_add(req).await.map(|r| r.into_inner()) }
            })
            .await;
        match result {
            Ok(resp) => {
                let members: Vec<MemberInfo> =
                    resp.members.into_iter().map(MemberInfo::from).collect();
                self.learn_members(&members);
                resp.member.map(MemberInfo::from).ok_or_else(|| Error::Protocol {
                    detail: "member add answered without the new member".into(),
                })
            }
            // An earlier attempt may have added it before its answer was lost.
            Err(f) if f.uncertain && is_rejected_with(&f.error, "already exists") => {
                let found = self.member_list().await?.into_iter().find(|m| {
                    m.peer_addrs.contains(&peer)
                        && id.is_none_or(|i| i == m.id)
                        && m.is_learner == learner
                });
                found.ok_or(f.error)
            }
            Err(f) => Err(f.error),
        }
    }

    /// Removes member `id` from the cluster.
    pub async fn member_remove(&self, id: u64) -> Result<(), Error> {
        let result = self
            .run("member remove", Target::Leader, None, move |ch, _| async move {
                ClusterClient::new(ch).member_remove(MemberRemoveRequest { id }).await.map(|_| ())
            })
            .await;
        match result {
            Ok(()) => {
                self.forget_leader();
                Ok(())
            }
            Err(f)
                if f.uncertain
                    && matches!(&f.error, Error::Rejected { code: Code::NotFound, .. }) =>
            {
                // An earlier attempt removed it before its answer was lost.
                Ok(())
            }
            Err(f) => Err(f.error),
        }
    }

    /// Makes learner `id` a voter (the server refuses while it trails the leader).
    pub async fn member_promote(&self, id: u64) -> Result<(), Error> {
        let result = self
            .run("member promote", Target::Leader, None, move |ch, _| async move {
                ClusterClient::new(ch).member_promote(MemberPromoteRequest { id }).await.map(|_| ())
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(f)
                if f.uncertain
                    && is_rejected_with(&f.error, "can only promote a learner member") =>
            {
                let voter = self.member_list().await?.iter().any(|m| m.id == id && !m.is_learner);
                if voter { Ok(()) } else { Err(f.error) }
            }
            Err(f) => Err(f.error),
        }
    }

    /// Moves leadership to member `to` and waits until it leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), Error> {
        if self.leader().await?.id == to {
            return Ok(());
        }
        self.run("transfer leader", Target::Leader, None, move |ch, _| async move {
            MaintenanceClient::new(ch)
                .move_leader(MoveLeaderRequest { target_id: to })
                .await
                .map(|_| ())
        })
        .await?;
        self.forget_leader();
        let started = Instant::now();
        let deadline = started + self.inner.options.deadline;
        let mut attempt = 0;
        loop {
            let leader = self.leader().await?;
            if leader.id == to {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    op: "transfer leader",
                    waited: started.elapsed(),
                    detail: format!("member {} still leads, not member {to}", leader.id),
                });
            }
            self.forget_leader();
            self.pause(attempt, deadline).await;
            attempt = (attempt + 1).min(4);
        }
    }
}

fn is_rejected_with(e: &Error, text: &str) -> bool {
    matches!(e, Error::Rejected { message, .. } if message.contains(text))
}
