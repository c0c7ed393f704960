//! Fuzz target: arbitrary bytes through the snapshot decoder, the chunk assembler and install.
//! Nothing may panic; errors are fine. The bytes are tried raw, and also as the payload of a
//! correctly checksummed record frame behind a valid header, so the record decoder and the
//! store's image validation see them too (the CRC would otherwise stop almost every input).

#![no_main]

use libfuzzer_sys::fuzz_target;
use quorumkv_storage::mvcc::{ImageInfo, ImageRecord, ImageSource, MemStore, MvccError};
use quorumkv_storage::snapshot::{
    FrameKind, SnapshotAssembler, SnapshotDecoder, SnapshotMeta, SnapshotWriter, decode_all,
    encode_frame, install,
};

/// An image with a roomy header and no records: its stream is a header frame and a trailer.
struct EmptyImage;

impl ImageSource for EmptyImage {
    fn info(&self) -> ImageInfo {
        ImageInfo {
            applied_index: 9,
            revision: 1 << 40,
            compacted_revision: 0,
            key_count: 3,
            version_count: 3,
        }
    }

    fn next_records(&mut self, _: usize, _: &mut Vec<ImageRecord>) -> Result<bool, MvccError> {
        Ok(false)
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_all(data);
    let mut asm = SnapshotAssembler::new(Vec::new());
    let _ = asm.accept(0, data);

    let meta = SnapshotMeta { index: 9, ..SnapshotMeta::default() };
    let mut writer = SnapshotWriter::new(EmptyImage, meta).expect("writer");
    let header = writer.next_chunk().expect("header").expect("header chunk");
    let trailer = writer.next_chunk().expect("trailer").expect("trailer chunk");
    let Ok(records) = encode_frame(FrameKind::Records, data) else {
        return;
    };
    let mut stream = header.data.to_vec();
    stream.extend_from_slice(&records);
    stream.extend_from_slice(&trailer.data);
    let _ = decode_all(&stream);
    if let Ok(mut decoder) = SnapshotDecoder::new(&stream[..]) {
        let _ = install(&MemStore::new(), &mut decoder);
    }
    let mut asm = SnapshotAssembler::new(Vec::new());
    if asm.accept(0, &header.data).is_ok() {
        let _ = asm.accept(header.data.len() as u64, &records);
    }
});
