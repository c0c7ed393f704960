//! The snapshot stream format: round trips, corruption and truncation detection, the decoder
//! on arbitrary bytes, chunk-by-chunk assembly with lost and damaged chunks, and atomic install.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use quorumkv_core::rng::Rng;
use quorumkv_core::{ConfState, SnapshotMeta};
use quorumkv_storage::disk::{Disk, SimDisk};
use quorumkv_storage::mvcc::conformance::{assert_same_stores, drain, populated_store};
use quorumkv_storage::mvcc::{
    ImageInfo, ImageRecord, ImageSource, MemStore, MvccError, MvccStore, MvccTxn, RedbOptions,
    RedbStore, Revision,
};
use quorumkv_storage::snapshot::{
    Accepted, Chunk, FrameKind, SnapshotAssembler, SnapshotDecoder, SnapshotError, SnapshotWriter,
    decode_all, encode_frame, encode_to_vec, install, snapshot_of,
};

fn meta_at(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 3,
        conf_state: ConfState {
            voters: vec![1, 2, 3],
            voters_outgoing: vec![],
            learners: vec![4],
            learners_next: vec![],
        },
    }
}

fn redb_store(seed: u64) -> RedbStore {
    let disk = SimDisk::new(seed);
    disk.create_dir_all(Path::new("/data")).expect("mkdir");
    RedbStore::open(Arc::new(disk), Path::new("/data/state.redb"), RedbOptions::default())
        .expect("open")
}

fn chunks_of<S: ImageSource>(mut writer: SnapshotWriter<S>) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    while let Some(chunk) = writer.next_chunk().expect("chunk") {
        chunks.push(chunk);
    }
    chunks
}

fn concat(chunks: &[Chunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
}

#[test]
fn a_store_survives_the_round_trip_through_bytes() {
    let original = populated_store(&MemStore::new);
    let writer = snapshot_of(&original, meta_at).expect("snapshot");
    assert_eq!(writer.header().meta.index, 41);
    let chunks = chunks_of(writer.with_chunk_bytes(300));
    assert!(chunks.len() > 5, "small chunks give many frames");
    // Chunks are contiguous.
    let mut offset = 0;
    for chunk in &chunks {
        assert_eq!(chunk.offset, offset);
        offset += chunk.data.len() as u64;
    }
    let bytes = concat(&chunks);
    let (header, records) = decode_all(&bytes).expect("decode");
    assert_eq!(header.meta, meta_at(41));
    assert_eq!(header.image, original.image().expect("image").info());
    assert_eq!(records, drain(&mut original.image().expect("image")));

    let mem = MemStore::new();
    let redb = redb_store(1);
    for_each_install(&bytes, &mem, &redb);
    assert_same_stores(&original, &mem);
    assert_same_stores(&original, &redb);
    // And back from redb to memory.
    let again = MemStore::new();
    let from_redb = encode_to_vec(redb.image().expect("image"), meta_at(41)).expect("encode");
    install(&again, &mut SnapshotDecoder::new(&from_redb[..]).expect("decoder")).expect("install");
    assert_same_stores(&original, &again);
}

fn for_each_install(bytes: &[u8], mem: &MemStore, redb: &RedbStore) {
    let header = install(mem, &mut SnapshotDecoder::new(bytes).expect("decoder")).expect("install");
    assert_eq!(header.meta.index, 41);
    install(redb, &mut SnapshotDecoder::new(bytes).expect("decoder")).expect("install");
}

#[test]
fn metadata_must_describe_the_image() {
    let store = populated_store(&MemStore::new);
    let err =
        SnapshotWriter::new(store.image().expect("image"), meta_at(40)).err().expect("mismatch");
    assert!(matches!(err, SnapshotError::MetaMismatch { meta_index: 40, applied_index: 41 }));
}

#[test]
fn every_truncation_and_every_bit_flip_is_caught_and_install_changes_nothing() {
    let source = populated_store(&MemStore::new);
    let bytes = encode_to_vec(source.image().expect("image"), meta_at(41)).expect("encode");
    let target = MemStore::new();
    let mut txn = target.write_txn().expect("txn");
    txn.put(b"keep", b"me", 0).expect("put");
    txn.commit(5).expect("commit");
    let mut rng = Rng::new(11);
    let mut cuts: Vec<usize> = (0..bytes.len()).step_by(7).collect();
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        assert!(decode_all(&bytes[..cut]).is_err(), "truncated at {cut} decoded");
    }
    for _ in 0..300 {
        let mut damaged = bytes.clone();
        let at = rng.range(0, damaged.len() as u64) as usize;
        damaged[at] ^= 1 << rng.range(0, 8);
        assert!(decode_all(&damaged).is_err(), "flip at {at} decoded");
        if let Ok(mut decoder) = SnapshotDecoder::new(&damaged[..]) {
            assert!(install(&target, &mut decoder).is_err());
        }
        assert_eq!(target.applied_index(), 5);
        assert_eq!(target.current_revision(), 2);
    }
    // Bytes after the trailer are refused too.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(decode_all(&longer), Err(SnapshotError::Malformed { .. })));
    let err =
        install(&target, &mut SnapshotDecoder::new(&bytes[..bytes.len() - 3]).expect("header"))
            .expect_err("truncated");
    assert!(matches!(err, SnapshotError::Truncated { .. }), "{err}");
    assert_eq!(target.applied_index(), 5);
}

#[test]
fn garbage_is_not_a_snapshot() {
    assert!(matches!(decode_all(b""), Err(SnapshotError::Truncated { .. })));
    assert!(matches!(decode_all(&[0xff; 9]), Err(SnapshotError::FrameTooLarge { .. })));
    // A well-formed frame that is not a header.
    let store = MemStore::new();
    let bytes = encode_to_vec(store.image().expect("image"), meta_at(0)).expect("encode");
    let mut wrong_magic = bytes.clone();
    wrong_magic[9] = b'X';
    // Fix the frame CRC so only the magic is wrong.
    let len = u32::from_le_bytes(wrong_magic[..4].try_into().expect("len")) as usize;
    let mut crc = crc32c::crc32c(&wrong_magic[..4]);
    crc = crc32c::crc32c_append(crc, &wrong_magic[8..9 + len]);
    wrong_magic[4..8].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(decode_all(&wrong_magic), Err(SnapshotError::BadMagic)));
}

#[test]
fn the_assembler_survives_lost_duplicated_and_damaged_chunks() {
    let store = populated_store(&MemStore::new);
    let writer = snapshot_of(&store, meta_at).expect("snapshot").with_chunk_bytes(200);
    let chunks = chunks_of(writer);
    let whole = concat(&chunks);
    let mut asm = SnapshotAssembler::new(Vec::new());
    assert_eq!(asm.next_offset(), 0);
    let mut i = 0;
    let mut rng = Rng::new(5);
    let mut faults = 0;
    while i < chunks.len() {
        let chunk = &chunks[i];
        match rng.range(0, 5) {
            // Lost: the next one arrives instead and is refused with the offset to re-send.
            0 if i + 1 < chunks.len() => {
                let next = &chunks[i + 1];
                let err = asm.accept(next.offset, &next.data).expect_err("gap");
                assert!(
                    matches!(err, SnapshotError::OutOfOrder { expected, .. } if expected == chunk.offset)
                );
                faults += 1;
            }
            // Damaged in transit: refused, and the same offset is still needed.
            1 => {
                let mut bad = chunk.data.to_vec();
                let at = rng.range(0, bad.len() as u64) as usize;
                bad[at] ^= 0x40;
                assert!(asm.accept(chunk.offset, &bad).is_err());
                assert_eq!(asm.next_offset(), chunk.offset);
                faults += 1;
            }
            // An old chunk re-sent: ignored.
            2 if i > 0 => {
                let old = &chunks[i - 1];
                assert_eq!(
                    asm.accept(old.offset, &old.data).expect("duplicate"),
                    Accepted::Duplicate(chunk.offset)
                );
                faults += 1;
            }
            _ => {
                let res = asm.accept(chunk.offset, &chunk.data).expect("accept");
                i += 1;
                if i == chunks.len() {
                    assert_eq!(res, Accepted::Complete);
                } else {
                    assert_eq!(res, Accepted::Next(chunks[i].offset));
                }
            }
        }
    }
    assert!(faults > 5);
    assert!(asm.is_complete());
    assert_eq!(asm.header().expect("header").meta.index, 41);
    assert!(matches!(
        asm.accept(whole.len() as u64, &chunks[1].data),
        Err(SnapshotError::AlreadyComplete)
    ));
    let received = asm.into_sink();
    assert_eq!(received, whole);
    let copy = MemStore::new();
    install(&copy, &mut SnapshotDecoder::new(&received[..]).expect("decoder")).expect("install");
    assert_same_stores(&store, &copy);
}

#[test]
fn the_assembler_wants_one_frame_per_chunk() {
    let store = populated_store(&MemStore::new);
    let chunks = chunks_of(snapshot_of(&store, meta_at).expect("snapshot"));
    let mut asm = SnapshotAssembler::new(Vec::new());
    let two: Vec<u8> = concat(&chunks[..2]);
    assert!(matches!(asm.accept(0, &two), Err(SnapshotError::ChunkNotOneFrame { .. })));
    assert!(matches!(
        asm.accept(0, &chunks[0].data[..5]),
        Err(SnapshotError::ChunkNotOneFrame { .. })
    ));
    // A records frame first is refused: the stream starts with its header.
    let mut asm2 = SnapshotAssembler::new(Vec::new());
    assert!(matches!(asm2.accept(0, &chunks[1].data), Err(SnapshotError::Malformed { .. })));
    assert_eq!(asm.accept(0, &chunks[0].data).expect("header"), Accepted::Next(chunks[1].offset));
}

/// A fixed list of records as an image.
struct ListImage {
    info: ImageInfo,
    records: Vec<ImageRecord>,
    batch: usize,
}

impl ImageSource for ListImage {
    fn info(&self) -> ImageInfo {
        self.info
    }

    fn next_records(
        &mut self,
        _bytes_max: usize,
        out: &mut Vec<ImageRecord>,
    ) -> Result<bool, MvccError> {
        let n = self.batch.min(self.records.len());
        out.extend(self.records.drain(..n));
        Ok(!self.records.is_empty())
    }
}

fn record_strategy() -> impl Strategy<Value = ImageRecord> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from);
    prop_oneof![
        (bytes(), bytes()).prop_map(|(name, value)| ImageRecord::Meta { name, value }),
        (
            bytes(),
            any::<i64>(),
            any::<u32>(),
            any::<bool>(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            bytes()
        )
            .prop_map(
                |(key, main, sub, tombstone, create_revision, version, lease, value)| {
                    ImageRecord::Version {
                        key,
                        revision: Revision { main, sub },
                        tombstone,
                        create_revision,
                        version,
                        lease,
                        value,
                    }
                }
            ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever records go in come out, in order, with the header intact.
    #[test]
    fn encode_decode_round_trip(
        records in proptest::collection::vec(record_strategy(), 0..40),
        batch in 1usize..8,
        chunk_bytes in 1usize..400,
        applied_index in any::<u64>(),
        term in any::<u64>(),
        voters in proptest::collection::vec(any::<u64>(), 0..5),
    ) {
        let version_count = records.iter().filter(|r| matches!(r, ImageRecord::Version { .. })).count() as u64;
        let info = ImageInfo { applied_index, revision: 9, compacted_revision: 4, key_count: 3, version_count };
        let meta = SnapshotMeta { index: applied_index, term, conf_state: ConfState { voters, ..ConfState::default() } };
        let source = ListImage { info, records: records.clone(), batch };
        let mut out = Vec::new();
        SnapshotWriter::new(source, meta.clone()).expect("writer").with_chunk_bytes(chunk_bytes).write_all_to(&mut out).expect("encode");
        let (header, decoded) = decode_all(&out).expect("decode");
        prop_assert_eq!(header.meta, meta);
        prop_assert_eq!(header.image, info);
        prop_assert_eq!(decoded, records);
    }

    /// The decoder and the assembler return an error, never panic, on arbitrary bytes.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_all(&bytes);
        let mut asm = SnapshotAssembler::new(Vec::new());
        let _ = asm.accept(0, &bytes);
    }

    /// Arbitrary bytes behind a valid header and first frames never panic either.
    #[test]
    fn decoding_a_damaged_tail_never_panics(cut in 0usize..400, tail in proptest::collection::vec(any::<u8>(), 0..600)) {
        let store = MemStore::new();
        let mut txn = store.write_txn().expect("txn");
        for i in 0..20u8 { txn.put(&[b'k', i], &[i; 30], 0).expect("put"); }
        txn.commit(1).expect("commit");
        let mut bytes = encode_to_vec(store.image().expect("image"), meta_at(1)).expect("encode");
        bytes.truncate(cut.min(bytes.len()));
        bytes.extend_from_slice(&tail);
        let _ = decode_all(&bytes);
    }

    /// Arbitrary bytes as a correctly checksummed records frame behind a valid header reach
    /// the record decoder and the store's image checks, and never panic there either.
    #[test]
    fn arbitrary_records_in_valid_frames_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let info = ImageInfo { applied_index: 9, revision: 1 << 40, compacted_revision: 0, key_count: 3, version_count: 3 };
        let source = ListImage { info, records: Vec::new(), batch: 1 };
        let meta = SnapshotMeta { index: 9, ..SnapshotMeta::default() };
        let chunks = chunks_of(SnapshotWriter::new(source, meta).expect("writer"));
        let records = encode_frame(FrameKind::Records, &payload).expect("frame");
        let mut stream = chunks[0].data.to_vec();
        stream.extend_from_slice(&records);
        stream.extend_from_slice(&chunks[1].data);
        let _ = decode_all(&stream);
        if let Ok(mut decoder) = SnapshotDecoder::new(&stream[..]) {
            let store = MemStore::new();
            prop_assert!(install(&store, &mut decoder).is_err(), "the trailer cannot match");
            prop_assert_eq!(store.current_revision(), 1);
        }
    }

    /// A random store, snapshotted in random chunk sizes and installed into both backends,
    /// answers every read and watch at every retained revision like the original.
    #[test]
    fn restored_store_equals_the_original(seed in any::<u64>(), chunk_bytes in 16usize..2000) {
        let original = random_store(seed);
        let writer = snapshot_of(&original, meta_at).expect("snapshot").with_chunk_bytes(chunk_bytes);
        let bytes = concat(&chunks_of(writer));
        let mem = MemStore::new();
        install(&mem, &mut SnapshotDecoder::new(&bytes[..]).expect("decoder")).expect("install");
        assert_same_stores(&original, &mem);
        let redb = redb_store(seed);
        install(&redb, &mut SnapshotDecoder::new(&bytes[..]).expect("decoder")).expect("install");
        assert_same_stores(&original, &redb);
    }
}

/// A store shaped by `seed`: puts, deletes, metadata, a compaction somewhere.
fn random_store(seed: u64) -> MemStore {
    let mut rng = Rng::new(seed);
    let store = MemStore::new();
    let keys: [&[u8]; 6] = [b"key/01", b"key/02", b"key/03", b"key/\0", b"x", b"y"];
    let txns = rng.range(1, 40);
    for index in 1..=txns {
        let mut txn = store.write_txn().expect("txn");
        for _ in 0..rng.range(1, 4) {
            let key = keys[rng.range(0, keys.len() as u64) as usize];
            match rng.range(0, 10) {
                0..=6 => {
                    let value = vec![rng.range(0, 256) as u8; rng.range(0, 50) as usize];
                    txn.put(key, &value, rng.range(0, 3) as i64).expect("put");
                }
                7 | 8 => {
                    txn.delete_range(key, &[]).expect("delete");
                }
                _ => txn.set_meta(key, &index.to_le_bytes()).expect("meta"),
            }
        }
        txn.commit(index).expect("commit");
    }
    let current = store.current_revision();
    if current > 2 && rng.chance(0.7) {
        store.compact(rng.range(2, current as u64 + 1) as i64).expect("compact");
    }
    store
}

// ---------------------------------------------------------------------------------------------
// Version-1 fixture
// ---------------------------------------------------------------------------------------------

fn fixture_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/snapshot-v1/snap-00000000000000000012-5.snap")
}

/// One transaction of the fixture: puts (`Some`) and deletes (`None`).
type Step<'a> = &'a [(&'a [u8], Option<&'a [u8]>)];
/// Key, value, create revision, mod revision, version, lease.
type KvSummary<'a> = (&'a [u8], &'a [u8], i64, i64, i64, i64);

/// The fixture's store. Keep it unchanged: the checked-in file was written from it, and
/// `fixture_v1_decodes_exactly` states what it holds.
fn fixture_store() -> MemStore {
    let store = MemStore::new();
    let steps: [Step<'_>; 6] = [
        &[(b"a", Some(b"1")), (b"b", Some(b"1"))],
        &[(b"a", Some(b"2"))],
        &[(b"b", None)],
        &[(b"c\0zero", Some(b"\0\xff")), (b"a", Some(b"3"))],
        &[(b"d", Some(b""))],
        &[(b"c\0zero", None), (b"e", Some(b"e"))],
    ];
    for (i, step) in steps.iter().enumerate() {
        let mut txn = store.write_txn().expect("txn");
        for (key, value) in step.iter() {
            match value {
                Some(v) => {
                    txn.put(key, v, i as i64).expect("put");
                }
                None => {
                    txn.delete_range(key, &[]).expect("delete");
                }
            }
        }
        txn.commit(i as u64 + 1).expect("commit");
    }
    let mut txn = store.write_txn().expect("txn");
    txn.set_meta(b"leases", b"L1").expect("meta");
    txn.set_meta(b"sessions", b"").expect("meta");
    txn.compact(4).expect("compact");
    txn.commit(12).expect("commit");
    store
}

fn fixture_meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 5,
        conf_state: ConfState {
            voters: vec![1, 2, 3],
            voters_outgoing: vec![],
            learners: vec![4],
            learners_next: vec![],
        },
    }
}

fn fixture_bytes_fresh() -> Vec<u8> {
    let store = fixture_store();
    let writer = snapshot_of(&store, fixture_meta).expect("snapshot").with_chunk_bytes(64);
    concat(&chunks_of(writer))
}

#[test]
fn fixture_v1_decodes_exactly() {
    if std::env::var("QUORUMKV_REGEN_FIXTURES").is_ok_and(|v| v == "1") {
        let path = fixture_path();
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, fixture_bytes_fresh()).expect("write fixture");
    }
    let bytes = std::fs::read(fixture_path()).expect("the version-1 snapshot fixture");
    let (header, records) = decode_all(&bytes).expect("the version-1 fixture must decode");
    assert_eq!(header.meta, fixture_meta(12));
    assert_eq!(
        header.image,
        ImageInfo {
            applied_index: 12,
            revision: 7,
            compacted_revision: 4,
            key_count: 3,
            version_count: 8,
        }
    );
    let metas = records.iter().filter(|r| matches!(r, ImageRecord::Meta { .. })).count();
    assert_eq!((metas, records.len()), (2, 10));
    let store = MemStore::new();
    install(&store, &mut SnapshotDecoder::new(&bytes[..]).expect("decoder")).expect("install");
    let all =
        store.range(b"\0", &[0], &quorumkv_storage::mvcc::RangeOptions::default()).expect("range");
    let summary: Vec<KvSummary<'_>> = all
        .kvs
        .iter()
        .map(|kv| {
            (
                kv.key.as_ref(),
                kv.value.as_ref(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease,
            )
        })
        .collect();
    let want: Vec<KvSummary<'_>> =
        vec![(b"a", b"3", 2, 5, 3, 3), (b"d", b"", 6, 6, 1, 4), (b"e", b"e", 7, 7, 1, 5)];
    assert_eq!(summary, want);
    assert_eq!(store.get_meta(b"leases").expect("meta").as_deref(), Some(&b"L1"[..]));
    // History from the compacted revision on came along: "c\0zero" lived at revision 5.
    let at5 = store
        .range(
            b"c\0zero",
            &[],
            &quorumkv_storage::mvcc::RangeOptions { revision: 5, ..Default::default() },
        )
        .expect("range");
    assert_eq!(at5.kvs.len(), 1);
    // The current writer still produces the same bytes. If this fails, the format changed:
    // bump FORMAT_VERSION, keep reading version 1, and add a snapshot-v2 fixture.
    assert_eq!(fixture_bytes_fresh(), bytes, "the snapshot writer's output changed");
}
