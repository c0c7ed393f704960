//! Watches that survive the loss of the member serving them: the client remembers the next
//! revision it owes the caller and resumes from it on another member, so no event is lost
//! or delivered twice.

use std::collections::VecDeque;

use futures::{Stream, StreamExt};
use quorumkv_etcd_proto::etcdserverpb::watch_client::WatchClient;
use quorumkv_etcd_proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_request,
};
use quorumkv_etcd_proto::mvccpb::event::EventType;
use tonic::{Status, Streaming};

use crate::client::{Client, Target};
use crate::error::{Disposition, Error, classify, rejected};
use crate::range::KeyRange;
use crate::types::{EventKind, KeyValue, WatchEvent};

/// A live watch: [`Watch::next`] yields its events in revision order.
pub struct Watch {
    client: Client,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The first revision not yet delivered (0 before the server named "now").
    next_revision: i64,
    /// `next_revision` when the current stream was opened: anything older was delivered.
    floor: i64,
    stream: Option<Streaming<WatchResponse>>,
    pending: VecDeque<WatchEvent>,
}

impl Client {
    /// Watches `range` from `from_revision`. None means "changes after now", where now is
    /// the latest revision this client has seen (so a member that lags behind the client's
    /// own writes does not replay them), or, for a client that has seen none, the serving
    /// member's current revision. The watch is established before this returns, so changes
    /// made after it returns are seen.
    pub async fn watch(
        &self,
        range: &KeyRange,
        from_revision: Option<i64>,
    ) -> Result<Watch, Error> {
        let (key, range_end) = range.to_etcd();
        let mut w = Watch {
            client: self.clone(),
            key,
            range_end,
            next_revision: match from_revision {
                Some(r) => r.max(0),
                None if self.seen_revision() > 0 => self.seen_revision() + 1,
                None => 0,
            },
            floor: 0,
            stream: None,
            pending: VecDeque::new(),
        };
        w.open().await?;
        Ok(w)
    }
}

impl Watch {
    /// The next event; waits for one. Fails if the watched revision was compacted, if the
    /// server canceled the watch, or if no member could serve it until the deadline.
    pub async fn next(&mut self) -> Result<WatchEvent, Error> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.open().await?;
                continue;
            };
            match stream.message().await {
                Ok(Some(resp)) => self.absorb(resp)?,
                Ok(None) => self.stream = None,
                Err(status) if classify(&status) == Disposition::Final => {
                    return Err(rejected("watch", &status));
                }
                Err(_) => self.stream = None,
            }
        }
    }

    /// The first revision not delivered yet: a new watch from here misses nothing.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// The events as a stream, which ends after its first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<WatchEvent, Error>> + Send {
        futures::stream::unfold(Some(self), |state| async move {
            let mut w = state?;
            match w.next().await {
                Ok(e) => Some((Ok(e), Some(w))),
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// (Re)opens the stream on some member, from `next_revision`.
    async fn open(&mut self) -> Result<(), Error> {
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.key.clone().into(),
                range_end: self.range_end.clone().into(),
                start_revision: self.next_revision,
                prev_kv: true,
                ..Default::default()
            })),
        };
        let (stream, first) = self
            .client
            .run("watch", Target::Any, None, |ch, _| {
                // The request stream stays open: closing it would end the watch.
                let requests = futures::stream::once(futures::future::ready(create.clone()))
                    .chain(futures::stream::pending());
                async move {
                    let mut stream = WatchClient::new(ch).watch(requests).await?.into_inner();
                    match stream.message().await? {
                        Some(first) => Ok((stream, first)),
                        None => {
                            Err(Status::unavailable("watch stream closed before it was created"))
                        }
                    }
                }
            })
            .await?;
        if !first.created && !first.canceled && first.events.is_empty() {
            return Err(Error::Protocol {
                detail: "the first watch response neither creates nor cancels the watch".into(),
            });
        }
        self.stream = Some(stream);
        self.floor = self.next_revision;
        self.absorb(first)
    }

    /// Takes in one response: its events, or the reason the watch ended.
    fn absorb(&mut self, resp: WatchResponse) -> Result<(), Error> {
        if resp.compact_revision > 0 {
            self.stream = None;
            return Err(Error::Compacted {
                requested: self.next_revision,
                compact_revision: Some(resp.compact_revision),
            });
        }
        if resp.canceled {
            self.stream = None;
            let reason = if resp.cancel_reason.is_empty() {
                "no reason given".into()
            } else {
                resp.cancel_reason
            };
            return Err(Error::WatchCanceled { reason });
        }
        if resp.created && self.next_revision == 0 {
            // "From now" is pinned to the revision the server started at, so a resumed
            // watch neither skips nor repeats anything.
            self.next_revision = resp.header.as_ref().map_or(0, |h| h.revision) + 1;
        }
        for e in resp.events {
            let Some(kv) = e.kv else {
                return Err(Error::Protocol { detail: "a watch event without its key".into() });
            };
            let kv = KeyValue::from(kv);
            if kv.mod_revision < self.floor {
                // Delivered before a resume. (Events of one revision, from one transaction,
                // share it, so only revisions below the resume point are skipped.)
                continue;
            }
            self.next_revision = self.next_revision.max(kv.mod_revision + 1);
            self.client.observe(kv.mod_revision);
            let kind = match EventType::try_from(e.r#type) {
                Ok(EventType::Put) => EventKind::Put,
                Ok(EventType::Delete) => EventKind::Delete,
                Err(_) => {
                    return Err(Error::Protocol {
                        detail: format!("watch event type {}", e.r#type),
                    });
                }
            };
            self.pending.push_back(WatchEvent { kind, kv, prev: e.prev_kv.map(KeyValue::from) });
        }
        Ok(())
    }
}
