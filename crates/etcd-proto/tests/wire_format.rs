//! Pins the wire format to etcd's field numbers: each message below is encoded and compared
//! byte for byte with a hand-computed protobuf encoding (tag = field number << 3 | wire
//! type; varint type 0, length-delimited type 2), and decoded back.

use bytes::Bytes;
use prost::Message;
use quorumkv_etcd_proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseTimeToLiveResponse, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, WatchCreateRequest, WatchResponse, compare, range_request, request_op,
    watch_create_request,
};
use quorumkv_etcd_proto::mvccpb::{Event, KeyValue, event::EventType};

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, wire: &[u8]) {
    assert_eq!(msg.encode_to_vec(), wire, "encoding of {msg:?}");
    assert_eq!(&M::decode(wire).expect("decodes"), msg);
}

#[test]
fn put_request_fields_1_to_6() {
    let msg = PutRequest {
        key: b("k"),
        value: b("v"),
        lease: 3,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    check(
        &msg,
        &[
            0x0a, 0x01, b'k', // 1: key
            0x12, 0x01, b'v', // 2: value
            0x18, 0x03, // 3: lease
            0x20, 0x01, // 4: prev_kv
            0x28, 0x01, // 5: ignore_value
            0x30, 0x01, // 6: ignore_lease
        ],
    );
}

#[test]
fn range_request_fields_1_to_13() {
    let msg = RangeRequest {
        key: b("a"),
        range_end: b("b"),
        limit: 3,
        revision: 4,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Mod as i32,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 10,
        max_mod_revision: 11,
        min_create_revision: 12,
        max_create_revision: 13,
    };
    check(
        &msg,
        &[
            0x0a, 0x01, b'a', // 1: key
            0x12, 0x01, b'b', // 2: range_end
            0x18, 0x03, // 3: limit
            0x20, 0x04, // 4: revision
            0x28, 0x02, // 5: sort_order = DESCEND
            0x30, 0x03, // 6: sort_target = MOD
            0x38, 0x01, // 7: serializable
            0x40, 0x01, // 8: keys_only
            0x48, 0x01, // 9: count_only
            0x50, 0x0a, // 10: min_mod_revision
            0x58, 0x0b, // 11: max_mod_revision
            0x60, 0x0c, // 12: min_create_revision
            0x68, 0x0d, // 13: max_create_revision
        ],
    );
}

#[test]
fn response_header_fields_1_to_4() {
    let msg = ResponseHeader { cluster_id: 1, member_id: 2, revision: 3, raft_term: 4 };
    check(&msg, &[0x08, 0x01, 0x10, 0x02, 0x18, 0x03, 0x20, 0x04]);
}

#[test]
fn key_value_and_event() {
    let kv = KeyValue {
        key: b("k"),
        create_revision: 2,
        mod_revision: 3,
        version: 4,
        value: b("v"),
        lease: -1,
    };
    let kv_wire: Vec<u8> = [
        &[0x0a, 0x01, b'k', 0x10, 0x02, 0x18, 0x03, 0x20, 0x04, 0x2a, 0x01, b'v'][..],
        // 6: lease = -1, a ten-byte varint (int64, not zigzag).
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    ]
    .concat();
    check(&kv, &kv_wire);

    let ev = Event { r#type: EventType::Delete as i32, kv: Some(kv.clone()), prev_kv: None };
    let mut ev_wire = vec![0x08, 0x01, 0x12, kv_wire.len() as u8];
    ev_wire.extend_from_slice(&kv_wire);
    check(&ev, &ev_wire);

    // WatchResponse carries its events in field 11.
    let wr = WatchResponse { watch_id: 7, events: vec![ev], ..WatchResponse::default() };
    let mut wr_wire = vec![0x10, 0x07, 0x5a, ev_wire.len() as u8];
    wr_wire.extend_from_slice(&ev_wire);
    check(&wr, &wr_wire);
}

#[test]
fn compare_uses_field_64_for_range_end_and_a_oneof_for_targets() {
    let msg = Compare {
        result: compare::CompareResult::NotEqual as i32,
        target: compare::CompareTarget::Lease as i32,
        key: b("k"),
        target_union: Some(compare::TargetUnion::Lease(5)),
        range_end: b("z"),
    };
    // Field order on the wire does not matter to a decoder; check each part decodes.
    let wire = [
        0x08, 0x03, // 1: result = NOT_EQUAL
        0x10, 0x04, // 2: target = LEASE
        0x1a, 0x01, b'k', // 3: key
        0x40, 0x05, // 8: lease
        0x82, 0x04, 0x01, b'z', // 64: range_end (tag 514 as a varint)
    ];
    assert_eq!(Compare::decode(&wire[..]).expect("decodes"), msg);
    let mut enc = msg.encode_to_vec();
    let mut want = wire.to_vec();
    enc.sort_unstable();
    want.sort_unstable();
    assert_eq!(enc, want, "same fields, whatever the order");

    let value =
        Compare { target_union: Some(compare::TargetUnion::Value(b("x"))), ..Compare::default() };
    check(&value, &[0x3a, 0x01, b'x']);
}

#[test]
fn request_op_oneof_numbers() {
    let op = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b("k"),
            ..PutRequest::default()
        })),
    };
    check(&op, &[0x12, 0x03, 0x0a, 0x01, b'k']);
    let op = RequestOp { request: Some(request_op::Request::RequestTxn(Default::default())) };
    check(&op, &[0x22, 0x00]);
}

#[test]
fn lease_and_watch_create_fields() {
    check(&LeaseGrantRequest { ttl: 1, id: 2 }, &[0x08, 0x01, 0x10, 0x02]);
    check(
        &LeaseTimeToLiveResponse {
            header: None,
            id: 1,
            ttl: 2,
            granted_ttl: 3,
            keys: vec![b("a")],
        },
        &[0x10, 0x01, 0x18, 0x02, 0x20, 0x03, 0x2a, 0x01, b'a'],
    );
    let wc = WatchCreateRequest {
        key: b("a"),
        range_end: b("b"),
        start_revision: 3,
        progress_notify: true,
        filters: vec![watch_create_request::FilterType::Nodelete as i32],
        prev_kv: true,
        watch_id: 7,
        fragment: true,
    };
    check(
        &wc,
        &[
            0x0a, 0x01, b'a', 0x12, 0x01, b'b', 0x18, 0x03, 0x20, 0x01,
            // 5: filters, packed (proto3 default for repeated enums)
            0x2a, 0x01, 0x01, 0x30, 0x01, 0x38, 0x07, 0x40, 0x01,
        ],
    );
}

#[test]
fn descriptor_set_names_etcds_services_and_methods() {
    let fds = prost_types::FileDescriptorSet::decode(quorumkv_etcd_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let mut methods = Vec::new();
    for file in &fds.file {
        for svc in &file.service {
            for m in &svc.method {
                methods.push(format!("{}.{}/{}", file.package(), svc.name(), m.name()));
            }
        }
    }
    for want in [
        "etcdserverpb.KV/Range",
        "etcdserverpb.KV/Txn",
        "etcdserverpb.KV/Compact",
        "etcdserverpb.Watch/Watch",
        "etcdserverpb.Lease/LeaseKeepAlive",
        "etcdserverpb.Lease/LeaseTimeToLive",
        "etcdserverpb.Lease/LeaseLeases",
        "etcdserverpb.Cluster/MemberPromote",
        "etcdserverpb.Maintenance/HashKV",
        "etcdserverpb.Maintenance/MoveLeader",
        "etcdserverpb.Auth/AuthStatus",
        "v3lockpb.Lock/Lock",
        "v3electionpb.Election/Observe",
    ] {
        assert!(methods.iter().any(|m| m == want), "missing {want}");
    }
}

#[cfg(feature = "grpc")]
#[test]
fn grpc_service_names_are_etcds() {
    use quorumkv_etcd_proto::etcdserverpb::{auth_server, kv_server, lease_server, watch_server};
    assert_eq!(kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(auth_server::SERVICE_NAME, "etcdserverpb.Auth");
}

mod decoding {
    use proptest::prelude::*;

    use super::*;
    use quorumkv_etcd_proto::etcdserverpb::{TxnRequest, WatchRequest};
    use quorumkv_etcd_proto::internal::Command;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes either fail to decode or decode to a message that survives an
        /// encode/decode round trip; they never panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(m) = TxnRequest::decode(&data[..]) {
                prop_assert_eq!(TxnRequest::decode(&m.encode_to_vec()[..]).ok(), Some(m));
            }
            if let Ok(m) = WatchRequest::decode(&data[..]) {
                prop_assert_eq!(WatchRequest::decode(&m.encode_to_vec()[..]).ok(), Some(m));
            }
            if let Ok(m) = RangeRequest::decode(&data[..]) {
                prop_assert_eq!(RangeRequest::decode(&m.encode_to_vec()[..]).ok(), Some(m));
            }
            if let Ok(m) = Command::decode(&data[..]) {
                prop_assert_eq!(Command::decode(&m.encode_to_vec()[..]).ok(), Some(m));
            }
        }
    }
}
