//! A directory of snapshot files, through the [`Disk`] trait.
//!
//! Rules this store keeps:
//! - A snapshot file is named `snap-<index, 20 digits>-<term>.snap` and appears under that name
//!   only once complete and durable: it is written to `<name>.tmp`, fsynced, renamed, and the
//!   directory fsynced. A crash leaves either the whole file or a temp file, and temp files
//!   are deleted when the store is opened.
//! - The newest `keep` snapshots (by index, then term) are kept; older ones are deleted after
//!   each new one is in place, never before.
//! - A file that does not decode is reported with its path and the cause; nothing here
//!   deletes a damaged snapshot by itself (an operator or the caller decides).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use quorumkv_core::{LogIndex, Term};

use super::{
    Chunk, ChunkSink, FRAME_HEADER_BYTES, FRAME_PAYLOAD_MAX, SnapshotDecoder, SnapshotError,
    SnapshotHeader, SnapshotWriter, parse_frame_header,
};
use crate::disk::{Disk, DiskFile, OpenMode};
use crate::mvcc::ImageSource;

const PREFIX: &str = "snap-";
const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".tmp";

/// One snapshot file in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFileInfo {
    /// Log index the snapshot covers.
    pub index: LogIndex,
    /// Term of that index.
    pub term: Term,
    /// Full path of the file.
    pub path: PathBuf,
}

/// The file name of the snapshot at (`index`, `term`).
fn file_name(index: LogIndex, term: Term) -> String {
    format!("{PREFIX}{index:020}-{term}{SUFFIX}")
}

/// Parses a snapshot file name; `None` for any other name.
fn parse_name(name: &str) -> Option<(LogIndex, Term)> {
    let body = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (index, term) = body.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if index.len() != 20 || !digits(index) || !digits(term) {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

/// A directory holding snapshot files.
pub struct SnapshotFileStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    keep: usize,
}

impl std::fmt::Debug for SnapshotFileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFileStore")
            .field("dir", &self.dir)
            .field("keep", &self.keep)
            .finish()
    }
}

impl SnapshotFileStore {
    /// Number of snapshots kept by default.
    pub const KEEP_DEFAULT: usize = 2;

    /// Opens (creating if needed) the directory `dir`, keeping the newest `keep` snapshots
    /// (at least 1). Deletes temp files a crash left behind.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path, keep: usize) -> Result<Self, SnapshotError> {
        disk.create_dir_all(dir)?;
        let mut removed = false;
        for name in disk.list(dir)? {
            if name.starts_with(PREFIX) && name.ends_with(TMP_SUFFIX) {
                disk.remove(&dir.join(&name))?;
                removed = true;
            }
        }
        if removed {
            disk.sync_dir(dir)?;
        }
        Ok(Self { disk, dir: dir.to_path_buf(), keep: keep.max(1) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every complete snapshot file, oldest first (by index, then term).
    pub fn list(&self) -> Result<Vec<SnapshotFileInfo>, SnapshotError> {
        let mut out: Vec<SnapshotFileInfo> = self
            .disk
            .list(&self.dir)?
            .into_iter()
            .filter_map(|name| {
                let (index, term) = parse_name(&name)?;
                Some(SnapshotFileInfo { index, term, path: self.dir.join(name) })
            })
            .collect();
        out.sort_by_key(|info| (info.index, info.term));
        Ok(out)
    }

    /// The newest snapshot file, if any.
    pub fn latest(&self) -> Result<Option<SnapshotFileInfo>, SnapshotError> {
        Ok(self.list()?.pop())
    }

    /// Starts a new snapshot file for (`index`, `term`); nothing is visible under its final
    /// name until [`SnapshotFileWriter::finish`].
    pub fn create(&self, index: LogIndex, term: Term) -> Result<SnapshotFileWriter, SnapshotError> {
        let name = file_name(index, term);
        let final_path = self.dir.join(&name);
        let tmp_path = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let file = self.disk.open(&tmp_path, OpenMode::CreateTruncate)?;
        Ok(SnapshotFileWriter {
            disk: Arc::clone(&self.disk),
            dir: self.dir.clone(),
            keep: self.keep,
            file: Some(file),
            tmp_path,
            info: SnapshotFileInfo { index, term, path: final_path },
            len: 0,
        })
    }

    /// Writes the whole stream of `writer` to a new file and puts it in place.
    pub fn save<S: ImageSource>(
        &self,
        writer: &mut SnapshotWriter<S>,
    ) -> Result<SnapshotFileInfo, SnapshotError> {
        let meta = &writer.header().meta;
        let mut file = self.create(meta.index, meta.term)?;
        while let Some(chunk) = writer.next_chunk()? {
            file.write_chunk(chunk.offset, &chunk.data)?;
        }
        file.finish()
    }

    fn open_file(&self, info: &SnapshotFileInfo) -> Result<Box<dyn DiskFile>, SnapshotError> {
        Ok(self.disk.open(&info.path, OpenMode::Read)?)
    }

    /// A decoder over the file, ready for [`super::install`]; errors name the file.
    pub fn open_snapshot(
        &self,
        info: &SnapshotFileInfo,
    ) -> Result<SnapshotDecoder<FileReader>, SnapshotError> {
        let file = self.open_file(info).map_err(|e| in_file(&info.path, e))?;
        SnapshotDecoder::new(FileReader { file, offset: 0 }).map_err(|e| in_file(&info.path, e))
    }

    /// Reads the whole file and checks every frame and the trailer; returns its header.
    pub fn verify(&self, info: &SnapshotFileInfo) -> Result<SnapshotHeader, SnapshotError> {
        let mut decoder = self.open_snapshot(info)?;
        let mut scratch = Vec::new();
        loop {
            scratch.clear();
            match decoder.next_frame_records(&mut scratch) {
                Ok(true) => {}
                Ok(false) => return Ok(decoder.header().clone()),
                Err(e) => return Err(in_file(&info.path, e)),
            }
        }
    }

    /// The file's chunks, in order, for sending to a follower. Each chunk is one frame,
    /// bounded in size; frames are checked for length only (the receiver verifies them).
    pub fn frames(&self, info: &SnapshotFileInfo) -> Result<SnapshotFrames, SnapshotError> {
        let file = self.open_file(info).map_err(|e| in_file(&info.path, e))?;
        let len = file.len()?;
        Ok(SnapshotFrames { file, path: info.path.clone(), offset: 0, len })
    }

    /// Deletes every snapshot file but the newest `keep`; returns what it deleted.
    pub fn gc(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        gc(&*self.disk, &self.dir, self.keep, &self.list()?)
    }
}

fn gc(
    disk: &dyn Disk,
    dir: &Path,
    keep: usize,
    files: &[SnapshotFileInfo],
) -> Result<Vec<PathBuf>, SnapshotError> {
    let doomed = files.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for info in files.iter().take(doomed) {
        disk.remove(&info.path)?;
        removed.push(info.path.clone());
    }
    if !removed.is_empty() {
        disk.sync_dir(dir)?;
    }
    Ok(removed)
}

fn in_file(path: &Path, source: SnapshotError) -> SnapshotError {
    match source {
        already @ SnapshotError::File { .. } => already,
        source => SnapshotError::File { path: path.to_path_buf(), source: Box::new(source) },
    }
}

/// A snapshot file being written; dropped without [`SnapshotFileWriter::finish`], its temp
/// file is removed.
pub struct SnapshotFileWriter {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    keep: usize,
    file: Option<Box<dyn DiskFile>>,
    tmp_path: PathBuf,
    info: SnapshotFileInfo,
    len: u64,
}

impl SnapshotFileWriter {
    /// Where the file will appear once finished.
    pub fn info(&self) -> &SnapshotFileInfo {
        &self.info
    }

    /// Fsyncs the file, renames it into place, fsyncs the directory, then deletes snapshots
    /// beyond the newest `keep`.
    pub fn finish(mut self) -> Result<SnapshotFileInfo, SnapshotError> {
        let mut file =
            self.file.take().ok_or_else(|| io::Error::other("snapshot file already finished"))?;
        file.sync()?;
        drop(file);
        self.disk.rename(&self.tmp_path, &self.info.path)?;
        self.disk.sync_dir(&self.dir)?;
        let store_files = {
            let mut files: Vec<SnapshotFileInfo> = self
                .disk
                .list(&self.dir)?
                .into_iter()
                .filter_map(|name| {
                    let (index, term) = parse_name(&name)?;
                    Some(SnapshotFileInfo { index, term, path: self.dir.join(name) })
                })
                .collect();
            files.sort_by_key(|info| (info.index, info.term));
            files
        };
        gc(&*self.disk, &self.dir, self.keep, &store_files)?;
        Ok(self.info.clone())
    }
}

impl ChunkSink for SnapshotFileWriter {
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let file =
            self.file.as_mut().ok_or_else(|| io::Error::other("snapshot file already finished"))?;
        if offset != self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("snapshot chunk at {offset} does not follow byte {}", self.len),
            ));
        }
        file.write_at(offset, data)?;
        self.len += data.len() as u64;
        Ok(())
    }
}

impl Drop for SnapshotFileWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Unfinished: the temp file is garbage. A failure here leaves it for the next
            // open to delete.
            let _ = self.disk.remove(&self.tmp_path);
        }
    }
}

/// Reads a [`DiskFile`] front to back.
pub struct FileReader {
    file: Box<dyn DiskFile>,
    offset: u64,
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(self.offset, buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// The frames of a snapshot file, one chunk each.
pub struct SnapshotFrames {
    file: Box<dyn DiskFile>,
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl SnapshotFrames {
    /// The chunk at `offset` (which must be a frame start, e.g. what a follower asked for).
    pub fn chunk_at(&self, offset: u64) -> Result<Option<Chunk>, SnapshotError> {
        if offset >= self.len {
            return Ok(None);
        }
        let mut head = [0u8; FRAME_HEADER_BYTES];
        self.file.read_exact_at(offset, &mut head).map_err(|e| in_file(&self.path, e.into()))?;
        let (payload_len, _, _) =
            parse_frame_header(&head, offset).map_err(|e| in_file(&self.path, e))?;
        let total = (FRAME_HEADER_BYTES + payload_len) as u64;
        if offset + total > self.len {
            return Err(in_file(&self.path, SnapshotError::Truncated { offset: self.len }));
        }
        debug_assert!(payload_len <= FRAME_PAYLOAD_MAX);
        let mut data = vec![0u8; total as usize];
        self.file.read_exact_at(offset, &mut data).map_err(|e| in_file(&self.path, e.into()))?;
        Ok(Some(Chunk { offset, data: Bytes::from(data) }))
    }

    /// Moves the cursor to `offset` (to re-send from where a follower needs).
    pub fn seek(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// Total bytes of the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Iterator for SnapshotFrames {
    type Item = Result<Chunk, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.chunk_at(self.offset) {
            Ok(Some(chunk)) => {
                self.offset += chunk.data.len() as u64;
                Some(Ok(chunk))
            }
            Ok(None) => None,
            Err(e) => {
                // Stop after an error rather than repeat it forever.
                self.offset = self.len;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_ignored() {
        let name = file_name(42, 7);
        assert_eq!(name, "snap-00000000000000000042-7.snap");
        assert_eq!(parse_name(&name), Some((42, 7)));
        assert_eq!(parse_name(&file_name(u64::MAX, u64::MAX)), Some((u64::MAX, u64::MAX)));
        for other in [
            "snap-42-7.snap",
            "snap-00000000000000000042-.snap",
            "snap-00000000000000000042-7.snap.tmp",
            "snap-0000000000000000004x-7.snap",
            "wal-00000000000000000042-7.snap",
            "snap-00000000000000000042-+7.snap",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }
}
