//! Fuzz target: arbitrary bytes through every WAL decoder and through recovery. Nothing may
//! panic; errors are fine.

#![no_main]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quorumkv_storage::disk::SimDisk;
use quorumkv_storage::wal::codec::{self, RecordKind};
use quorumkv_storage::wal::{Wal, WalOptions};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = codec::decode_all(&bytes);
    let _ = codec::decode_segment_header(data);
    for kind in [
        RecordKind::Checkpoint,
        RecordKind::Entries,
        RecordKind::HardState,
        RecordKind::Compact,
        RecordKind::RemoveGroup,
    ] {
        let _ = codec::decode_payload(kind, bytes.clone());
    }

    // The bytes as the body of the newest segment, then of an older one.
    let dir = Path::new("/fuzz/wal");
    let mut segment = Vec::new();
    codec::encode_segment_header(&mut segment, 1);
    segment.extend_from_slice(data);
    let disk = SimDisk::new(0);
    disk.put_file(&dir.join(codec::segment_file_name(1)), &segment);
    let _ = Wal::open(Arc::new(disk.clone()), dir, WalOptions::default());

    let disk = SimDisk::new(0);
    disk.put_file(&dir.join(codec::segment_file_name(1)), &segment);
    let mut next = Vec::new();
    codec::encode_segment_header(&mut next, 2);
    disk.put_file(&dir.join(codec::segment_file_name(2)), &next);
    let _ = Wal::open(Arc::new(disk), dir, WalOptions::default());
});
