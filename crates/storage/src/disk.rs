//! The disk interface every part of storage goes through, with a real and a simulated backend.
//!
//! Rules this module keeps:
//! - Synchronous and object safe: storage code holds an `Arc<dyn Disk>` and `Box<dyn DiskFile>`,
//!   so the same code runs over [`RealDisk`] in production and [`SimDisk`] in the simulator.
//! - Nothing is durable until it is synced: file contents need [`DiskFile::sync`], and the
//!   existence of a file under a name (create, rename, remove) needs [`Disk::sync_dir`] on the
//!   directory that holds the name. [`SimDisk`] loses whatever was not synced when it crashes,
//!   so code that forgets a sync fails its simulation tests.
//! - A full disk is reported as [`io::ErrorKind::StorageFull`] and writes nothing; reads go on.
//! - [`SimDisk`] is deterministic: every choice it makes (what survives a crash, how a write
//!   tears) comes from the seed it was built with. It reads no clock and keeps no global state.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use quorumkv_core::rng::Rng;

/// How [`Disk::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file for reading only; writes through the handle fail.
    Read,
    /// Open for reading and writing, creating an empty file if none exists.
    ReadWrite,
    /// Create a new empty file for reading and writing; fails if the name is taken.
    CreateNew,
    /// Create the file if missing and cut it to length zero, for reading and writing.
    CreateTruncate,
}

impl OpenMode {
    fn writable(self) -> bool {
        !matches!(self, OpenMode::Read)
    }
}

/// A file system: names, directories and files. Implementations must be safe to share between
/// threads; one file should have at most one writing handle at a time.
pub trait Disk: Send + Sync + 'static {
    /// Creates `dir` and every missing parent. Directory creation is durable at once.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries directly in `dir`, sorted bytewise.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// True if a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Opens the file at `path`.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>>;
    /// Removes the file at `path`; durable only after [`Disk::sync_dir`] of its directory.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing any file at `to`; durable only after [`Disk::sync_dir`].
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the names in `dir` durable (creates, renames and removes done so far).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Reads a whole file into memory.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open(path, OpenMode::Read)?;
        file.read_to_vec()
    }
}

/// An open file. Offsets are absolute; there is no cursor except for [`DiskFile::append`],
/// which writes at the current end.
pub trait DiskFile: Send + Sync {
    /// Current length in bytes (including writes not yet synced).
    fn len(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read, 0 at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `data` at `offset`, extending the file if needed. Either all of it is
    /// accepted or an error is returned (a full disk accepts none of it).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Cuts or extends (with zeros) the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Makes the contents durable (fdatasync). After an error, the contents are unknown: the
    /// caller must not trust what it reads back and should stop.
    fn sync(&mut self) -> io::Result<()>;

    /// Reserves disk space so the file is at least `len` bytes long, zeros past its old end.
    /// Writes inside reserved space change no file size, so their fsync has no size to record
    /// (cheaper), and cannot fail for want of space. Durable after the next [`DiskFile::sync`].
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        if len > self.len()? { self.truncate(len) } else { Ok(()) }
    }

    /// True if the file has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Writes `data` at the current end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let end = self.len()?;
        self.write_at(end, data)
    }

    /// Fills `buf` from `offset`, failing with `UnexpectedEof` if the file is too short.
    fn read_exact_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(offset, buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file ended before the requested range",
                ));
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Reads the whole file.
    fn read_to_vec(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()?)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "file too large to read"))?;
        let mut buf = vec![0u8; len];
        self.read_exact_at(0, &mut buf)?;
        Ok(buf)
    }
}

// ---------------------------------------------------------------------------------------------
// Real disk
// ---------------------------------------------------------------------------------------------

/// The operating system's file system, through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

impl RealDisk {
    /// A handle on the real file system.
    pub fn new() -> Self {
        RealDisk
    }
}

/// A file of [`RealDisk`]: positional reads and writes (pread/pwrite), fdatasync on sync.
#[derive(Debug)]
pub struct RealFile {
    file: fs::File,
    // Cached so that `append` costs one system call; valid because a file has one writer.
    len: u64,
}

impl Disk for RealDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            // Names that are not UTF-8 are none of ours; skip rather than fail.
            if let Some(name) = name.to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>> {
        let mut opts = fs::OpenOptions::new();
        opts.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                opts.write(true).create(true);
            }
            OpenMode::CreateNew => {
                opts.write(true).create_new(true);
            }
            OpenMode::CreateTruncate => {
                opts.write(true).create(true).truncate(true);
            }
        }
        let file = opts.open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(RealFile { file, len }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }
}

impl DiskFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let result = self.file.write_all_at(data, offset);
        if result.is_err() {
            // A failed write may have extended the file partly; learn the truth from the OS.
            self.len = self.file.metadata()?.len();
            return result;
        }
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        if len <= self.len {
            return Ok(());
        }
        // Real blocks, not a sparse hole: a write into a hole allocates at fsync time, which
        // costs what preallocating is meant to save.
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => {
                self.len = len;
                Ok(())
            }
            // A file system that cannot reserve space: carry on growing the file instead.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated disk
// ---------------------------------------------------------------------------------------------

/// What [`SimDisk::crash_with`] keeps of the writes that were not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Seeded choice per file: a prefix of its unsynced writes survives, the last one of which
    /// may be torn (see [`SimDisk::set_zero_filled_tears`]); a prefix of the unsynced directory
    /// operations survives.
    Random,
    /// Only synced data and synced names survive.
    LoseUnsynced,
    /// Every write and directory operation survives, as if the OS flushed everything.
    KeepUnsynced,
}

/// Counters of a [`SimDisk`], for crash-point tests and assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    /// Successful `write_at` / `append` / `truncate` calls.
    pub writes: u64,
    /// Bytes accepted by successful writes.
    pub bytes_written: u64,
    /// Successful file syncs.
    pub syncs: u64,
    /// Successful directory syncs.
    pub dir_syncs: u64,
    /// Every mutating call that succeeded: writes, syncs, dir syncs, create, rename, remove.
    /// [`SimDisk::power_off_after`] counts in these units.
    pub mutations: u64,
    /// Crashes so far.
    pub crashes: u64,
}

/// An in-memory, deterministic disk with fault injection. Cloning gives another handle on the
/// same disk, so a simulator can keep it across a simulated crash of the process using it.
///
/// Each file keeps its durable (synced) content and the list of writes since its last sync;
/// each name keeps whether its creation/rename/removal was made durable by a directory sync.
/// Directories themselves are durable as soon as they are created.
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<SimState>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("SimDisk")
            .field("files", &state.names.len())
            .field("stats", &state.stats)
            .finish()
    }
}

type InodeId = u64;

#[derive(Clone, Debug)]
enum PendingWrite {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Clone, Debug)]
enum NameOp {
    Create { path: PathBuf, ino: InodeId },
    Remove { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl NameOp {
    fn touches_dir(&self, dir: &Path) -> bool {
        match self {
            NameOp::Create { path, .. } | NameOp::Remove { path } => path.parent() == Some(dir),
            NameOp::Rename { from, to } => from.parent() == Some(dir) || to.parent() == Some(dir),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, InodeId>) {
        match self {
            NameOp::Create { path, ino } => {
                names.insert(path.clone(), *ino);
            }
            NameOp::Remove { path } => {
                names.remove(path);
            }
            NameOp::Rename { from, to } => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }
}

#[derive(Default)]
struct Inode {
    /// What a read sees now.
    content: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Writes since the last sync, in order; replaying them on `durable` gives `content`.
    pending: Vec<PendingWrite>,
}

fn apply_write(buf: &mut Vec<u8>, write: &PendingWrite) {
    match write {
        PendingWrite::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[start..end].copy_from_slice(data);
        }
        PendingWrite::Truncate(len) => buf.resize(*len as usize, 0),
    }
}

struct SimState {
    rng: Rng,
    /// Every directory (durable at once).
    dirs: BTreeSet<PathBuf>,
    /// Names as a process sees them now.
    names: BTreeMap<PathBuf, InodeId>,
    /// Names as they would be after a crash, before replaying `pending_names`.
    durable_names: BTreeMap<PathBuf, InodeId>,
    /// Name operations not yet made durable by a directory sync, in order.
    pending_names: Vec<NameOp>,
    inodes: BTreeMap<InodeId, Inode>,
    next_ino: InodeId,
    /// Bumped by each crash; handles from an older generation are dead.
    generation: u64,
    stats: SimDiskStats,
    fail_next_sync: bool,
    full: bool,
    capacity_bytes: Option<u64>,
    /// Mutations left before the simulated power goes off; `None` = power stays on.
    power_budget: Option<u64>,
    /// Whether a torn write may keep its length with zeros past the written sectors.
    zero_filled_tears: bool,
}

fn power_off_error() -> io::Error {
    io::Error::other("simulated power loss: the disk accepts nothing until crash() is called")
}

fn disk_full_error(path: &Path, need: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        format!(
            "simulated disk full: writing {need} more bytes to {} exceeds the capacity; free space and retry",
            path.display()
        ),
    )
}

impl SimState {
    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|i| i.content.len() as u64).sum()
    }

    /// Takes one unit of the power budget for a mutation, or fails if the power is off.
    fn begin_mutation(&mut self) -> io::Result<()> {
        match self.power_budget {
            Some(0) => Err(power_off_error()),
            _ => Ok(()),
        }
    }

    fn end_mutation(&mut self) {
        self.stats.mutations += 1;
        if let Some(budget) = self.power_budget.as_mut() {
            *budget = budget.saturating_sub(1);
        }
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() && !self.dirs.contains(parent) => {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("directory {} does not exist", parent.display()),
                ))
            }
            _ => Ok(()),
        }
    }

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display()))
    }

    /// Reverts one inode to its durable content plus what `mode` keeps of its pending writes.
    fn settle_inode(rng: &mut Rng, inode: &mut Inode, mode: CrashMode, zero_filled_tears: bool) {
        let pending = std::mem::take(&mut inode.pending);
        let keep = match mode {
            CrashMode::LoseUnsynced => 0,
            CrashMode::KeepUnsynced => pending.len(),
            CrashMode::Random => rng.range(0, pending.len() as u64 + 1) as usize,
        };
        let mut content = std::mem::take(&mut inode.durable);
        for (i, write) in pending.iter().take(keep).enumerate() {
            let last = i + 1 == keep;
            match write {
                PendingWrite::Write { offset, data } if last && mode == CrashMode::Random => {
                    let old_len = content.len() as u64;
                    let torn = torn_write(rng, *offset, data, zero_filled_tears, old_len);
                    apply_write(&mut content, &torn);
                }
                _ => apply_write(&mut content, write),
            }
        }
        inode.durable = content.clone();
        inode.content = content;
    }
}

/// Bytes a crash may leave of the last write that reached the media: all of it, a prefix of it,
/// or, with `zero_filled`, its full length with zeros from a 512-byte sector boundary on (the
/// file size was updated, the last sectors never written). A prefix that ends past the file's
/// old length may end at any byte (the file ends early); inside the old length it ends on a
/// sector boundary, since a disk writes a sector whole or not at all, and the old bytes after
/// it stay.
fn torn_write(
    rng: &mut Rng,
    offset: u64,
    data: &[u8],
    zero_filled: bool,
    old_len: u64,
) -> PendingWrite {
    const SECTOR: u64 = 512;
    let end = offset + data.len() as u64;
    let first_boundary = offset.div_ceil(SECTOR) * SECTOR;
    let boundaries = if first_boundary < end { (end - 1 - first_boundary) / SECTOR + 1 } else { 0 };
    let choice = rng.range(0, if zero_filled && boundaries > 0 { 3 } else { 2 });
    let mut kept = data.to_vec();
    match choice {
        0 => {}
        1 => {
            let mut cut = offset + rng.range(0, data.len() as u64 + 1);
            if cut < old_len {
                cut = (cut / SECTOR * SECTOR).max(offset);
            }
            kept.truncate((cut - offset) as usize);
        }
        _ => {
            let cut = first_boundary + rng.range(0, boundaries) * SECTOR;
            let from = (cut - offset) as usize;
            if let Some(tail) = kept.get_mut(from..) {
                tail.fill(0);
            }
        }
    }
    PendingWrite::Write { offset, data: kept }
}

impl SimDisk {
    /// An empty disk whose every random choice derives from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut dirs = BTreeSet::new();
        dirs.insert(PathBuf::from("/"));
        SimDisk {
            inner: Arc::new(Mutex::new(SimState {
                rng: Rng::new(seed),
                dirs,
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending_names: Vec::new(),
                inodes: BTreeMap::new(),
                next_ino: 1,
                generation: 0,
                stats: SimDiskStats::default(),
                fail_next_sync: false,
                full: false,
                capacity_bytes: None,
                power_budget: None,
                zero_filled_tears: false,
            })),
        }
    }

    /// Simulates power loss and restart with [`CrashMode::Random`]. Every open handle dies
    /// (its calls fail); reopen files through the disk.
    pub fn crash(&self) {
        self.crash_with(CrashMode::Random);
    }

    /// Simulates power loss and restart, keeping unsynced data as `mode` says. Clears the power
    /// budget and a pending sync failure; capacity settings stay.
    pub fn crash_with(&self, mode: CrashMode) {
        let mut guard = self.inner.lock();
        let state = &mut *guard;
        let pending_names = std::mem::take(&mut state.pending_names);
        let keep = match mode {
            CrashMode::LoseUnsynced => 0,
            CrashMode::KeepUnsynced => pending_names.len(),
            CrashMode::Random => state.rng.range(0, pending_names.len() as u64 + 1) as usize,
        };
        for op in pending_names.iter().take(keep) {
            op.apply(&mut state.durable_names);
        }
        state.names = state.durable_names.clone();
        let live: BTreeSet<InodeId> = state.names.values().copied().collect();
        state.inodes.retain(|ino, _| live.contains(ino));
        for inode in state.inodes.values_mut() {
            SimState::settle_inode(&mut state.rng, inode, mode, state.zero_filled_tears);
        }
        state.generation += 1;
        state.stats.crashes += 1;
        state.power_budget = None;
        state.fail_next_sync = false;
    }

    /// After `mutations` more successful mutating calls (see [`SimDiskStats::mutations`]),
    /// every call fails as if the power went off, until [`SimDisk::crash`]. `0` = at once.
    pub fn power_off_after(&self, mutations: u64) {
        self.inner.lock().power_budget = Some(mutations);
    }

    /// True once a [`SimDisk::power_off_after`] budget is spent.
    pub fn is_powered_off(&self) -> bool {
        self.inner.lock().power_budget == Some(0)
    }

    /// Flips bit `bit` (0..8) of byte `offset` of the file at `path`, in both what a read sees
    /// and what survives a crash: stored data went bad.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut state = self.inner.lock();
        let ino = *state.names.get(path).ok_or_else(|| SimState::not_found(path))?;
        let inode = state.inodes.get_mut(&ino).ok_or_else(|| SimState::not_found(path))?;
        let mask = 1u8 << (bit % 8);
        let idx = usize::try_from(offset).unwrap_or(usize::MAX);
        let byte = inode.content.get_mut(idx).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "flip_bit offset is past the end of the file",
            )
        })?;
        *byte ^= mask;
        if let Some(byte) = inode.durable.get_mut(idx) {
            *byte ^= mask;
        }
        Ok(())
    }

    /// Makes the next file or directory sync fail. The file's unsynced writes are then partly
    /// lost (seeded), and reads show that: as on Linux, where a failed fsync drops dirty pages.
    pub fn fail_next_sync(&self) {
        self.inner.lock().fail_next_sync = true;
    }

    /// While `full`, every write that would grow the disk's used bytes fails with
    /// [`io::ErrorKind::StorageFull`] and writes nothing.
    pub fn set_full(&self, full: bool) {
        self.inner.lock().full = full;
    }

    /// Lets a torn write (in [`CrashMode::Random`]) also keep its full length with zeros from a
    /// sector boundary on, as file systems that update the size before the data can. Off by
    /// default: a torn write then only ever leaves a prefix.
    pub fn set_zero_filled_tears(&self, enabled: bool) {
        self.inner.lock().zero_filled_tears = enabled;
    }

    /// Total bytes the files may hold (`None` = unlimited); a write past it fails as when full.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.inner.lock().capacity_bytes = capacity_bytes;
    }

    /// Bytes held by all files now.
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().used_bytes()
    }

    /// The counters so far.
    pub fn stats(&self) -> SimDiskStats {
        self.inner.lock().stats
    }

    /// The current content of a file (what a read sees), for tests.
    pub fn file_content(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.inner.lock();
        let ino = state.names.get(path)?;
        state.inodes.get(ino).map(|i| i.content.clone())
    }

    /// Replaces a file's content with `data`, durably, name included: for tests that build
    /// damaged files. Creates the file (and its directories) if needed. Counts as no mutation.
    pub fn put_file(&self, path: &Path, data: &[u8]) {
        let mut guard = self.inner.lock();
        let state = &mut *guard;
        if let Some(parent) = path.parent() {
            for dir in parent.ancestors() {
                if !dir.as_os_str().is_empty() {
                    state.dirs.insert(dir.to_path_buf());
                }
            }
        }
        let ino = match state.names.get(path) {
            Some(ino) => *ino,
            None => {
                let ino = state.next_ino;
                state.next_ino += 1;
                state.names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        state.durable_names.insert(path.to_path_buf(), ino);
        let inode = state.inodes.entry(ino).or_default();
        inode.content = data.to_vec();
        inode.durable = data.to_vec();
        inode.pending.clear();
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.inner.lock();
        state.begin_mutation()?;
        if state.names.contains_key(dir) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is a file", dir.display()),
            ));
        }
        for d in dir.ancestors() {
            if !d.as_os_str().is_empty() {
                state.dirs.insert(d.to_path_buf());
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.inner.lock();
        if !state.dirs.contains(dir) {
            return Err(SimState::not_found(dir));
        }
        let files = state.names.keys().map(PathBuf::as_path);
        let subdirs = state.dirs.iter().map(PathBuf::as_path);
        let mut names: Vec<String> = files
            .chain(subdirs)
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = self.inner.lock();
        Ok(state.names.contains_key(path) || state.dirs.contains(path))
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>> {
        let mut guard = self.inner.lock();
        let state = &mut *guard;
        if state.dirs.contains(path) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory", path.display()),
            ));
        }
        let existing = state.names.get(path).copied();
        let ino = match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", path.display()),
                ));
            }
            (Some(ino), OpenMode::CreateTruncate) => {
                state.begin_mutation()?;
                let inode = state.inodes.entry(ino).or_default();
                if !inode.content.is_empty() {
                    inode.content.clear();
                    inode.pending.push(PendingWrite::Truncate(0));
                }
                state.end_mutation();
                ino
            }
            (Some(ino), _) => ino,
            (None, OpenMode::Read) => return Err(SimState::not_found(path)),
            (None, _) => {
                state.check_parent(path)?;
                state.begin_mutation()?;
                let ino = state.next_ino;
                state.next_ino += 1;
                state.inodes.insert(ino, Inode::default());
                state.names.insert(path.to_path_buf(), ino);
                state.pending_names.push(NameOp::Create { path: path.to_path_buf(), ino });
                state.end_mutation();
                ino
            }
        };
        Ok(Box::new(SimFile {
            disk: self.inner.clone(),
            path: path.to_path_buf(),
            ino,
            generation: state.generation,
            writable: mode.writable(),
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.inner.lock();
        if !state.names.contains_key(path) {
            return Err(SimState::not_found(path));
        }
        state.begin_mutation()?;
        state.names.remove(path);
        state.pending_names.push(NameOp::Remove { path: path.to_path_buf() });
        state.end_mutation();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.inner.lock();
        if !state.names.contains_key(from) {
            return Err(SimState::not_found(from));
        }
        state.check_parent(to)?;
        state.begin_mutation()?;
        if let Some(ino) = state.names.remove(from) {
            state.names.insert(to.to_path_buf(), ino);
        }
        state.pending_names.push(NameOp::Rename { from: from.to_path_buf(), to: to.to_path_buf() });
        state.end_mutation();
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut guard = self.inner.lock();
        let state = &mut *guard;
        if !state.dirs.contains(dir) {
            return Err(SimState::not_found(dir));
        }
        state.begin_mutation()?;
        if state.fail_next_sync {
            state.fail_next_sync = false;
            return Err(io::Error::other(format!(
                "simulated fsync failure on directory {}",
                dir.display()
            )));
        }
        // Journaling file systems commit name operations in order, so syncing a directory
        // also makes every earlier name operation durable.
        if let Some(last) = state.pending_names.iter().rposition(|op| op.touches_dir(dir)) {
            let done: Vec<NameOp> = state.pending_names.drain(..=last).collect();
            for op in &done {
                op.apply(&mut state.durable_names);
            }
        }
        state.stats.dir_syncs += 1;
        state.end_mutation();
        Ok(())
    }
}

/// A file of [`SimDisk`]. Dies (every call fails) when the disk crashes.
struct SimFile {
    disk: Arc<Mutex<SimState>>,
    path: PathBuf,
    ino: InodeId,
    generation: u64,
    writable: bool,
}

impl SimFile {
    fn with_inode<R>(
        &self,
        mutating: bool,
        f: impl FnOnce(&mut SimState, InodeId) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut state = self.disk.lock();
        if state.generation != self.generation {
            return Err(io::Error::other(format!(
                "handle on {} is from before a simulated crash; reopen the file",
                self.path.display()
            )));
        }
        if mutating {
            if !self.writable {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{} was opened read-only", self.path.display()),
                ));
            }
            state.begin_mutation()?;
        }
        let result = f(&mut state, self.ino)?;
        if mutating {
            state.end_mutation();
        }
        Ok(result)
    }
}

impl DiskFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.with_inode(false, |state, ino| {
            Ok(state.inodes.get(&ino).map_or(0, |i| i.content.len() as u64))
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with_inode(false, |state, ino| {
            let content = state.inodes.get(&ino).map_or(&[][..], |i| &i.content[..]);
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(content.len());
            let src = &content[start..];
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            Ok(n)
        })
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let path = &self.path;
        self.with_inode(true, |state, ino| {
            let current = state.inodes.get(&ino).map_or(0, |i| i.content.len() as u64);
            let end = offset.checked_add(data.len() as u64).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "write past the largest offset")
            })?;
            let growth = end.saturating_sub(current);
            if growth > 0 {
                let over_capacity = state
                    .capacity_bytes
                    .is_some_and(|cap| state.used_bytes().saturating_add(growth) > cap);
                if state.full || over_capacity {
                    return Err(disk_full_error(path, growth));
                }
            }
            let inode = state.inodes.entry(ino).or_default();
            let write = PendingWrite::Write { offset, data: data.to_vec() };
            apply_write(&mut inode.content, &write);
            inode.pending.push(write);
            state.stats.writes += 1;
            state.stats.bytes_written += data.len() as u64;
            Ok(())
        })
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let path = &self.path;
        self.with_inode(true, |state, ino| {
            let current = state.inodes.get(&ino).map_or(0, |i| i.content.len() as u64);
            if len > current {
                let growth = len - current;
                let over_capacity = state
                    .capacity_bytes
                    .is_some_and(|cap| state.used_bytes().saturating_add(growth) > cap);
                if state.full || over_capacity {
                    return Err(disk_full_error(path, growth));
                }
            }
            let inode = state.inodes.entry(ino).or_default();
            let write = PendingWrite::Truncate(len);
            apply_write(&mut inode.content, &write);
            inode.pending.push(write);
            state.stats.writes += 1;
            Ok(())
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        let path = &self.path;
        self.with_inode(true, |state, ino| {
            if state.fail_next_sync {
                state.fail_next_sync = false;
                // Like Linux after a write-back error: some dirty data is gone for good, and
                // the page cache now shows whatever survived.
                let SimState { rng, inodes, zero_filled_tears, .. } = state;
                if let Some(inode) = inodes.get_mut(&ino) {
                    SimState::settle_inode(rng, inode, CrashMode::Random, *zero_filled_tears);
                }
                return Err(io::Error::other(format!(
                    "simulated fsync failure on {}: its unsynced data may be lost",
                    path.display()
                )));
            }
            if let Some(inode) = state.inodes.get_mut(&ino) {
                for write in std::mem::take(&mut inode.pending) {
                    apply_write(&mut inode.durable, &write);
                }
            }
            state.stats.syncs += 1;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn sim_synced_data_survives_and_unsynced_is_lost() {
        let disk = SimDisk::new(1);
        disk.create_dir_all(&p("/d")).unwrap();
        let mut f = disk.open(&p("/d/a"), OpenMode::CreateNew).unwrap();
        f.append(b"hello").unwrap();
        f.sync().unwrap();
        disk.sync_dir(&p("/d")).unwrap();
        f.append(b" world").unwrap();
        assert_eq!(f.read_to_vec().unwrap(), b"hello world");
        disk.crash_with(CrashMode::LoseUnsynced);
        assert!(f.len().is_err(), "old handles die with the crash");
        assert_eq!(disk.read_all(&p("/d/a")).unwrap(), b"hello");
    }

    #[test]
    fn sim_unsynced_create_and_rename_can_be_lost() {
        let disk = SimDisk::new(2);
        disk.create_dir_all(&p("/d")).unwrap();
        let mut f = disk.open(&p("/d/a"), OpenMode::CreateNew).unwrap();
        f.append(b"x").unwrap();
        f.sync().unwrap();
        disk.crash_with(CrashMode::LoseUnsynced);
        assert!(!disk.exists(&p("/d/a")).unwrap(), "create without sync_dir is lost");

        let mut f = disk.open(&p("/d/a"), OpenMode::CreateNew).unwrap();
        f.append(b"x").unwrap();
        f.sync().unwrap();
        disk.sync_dir(&p("/d")).unwrap();
        disk.rename(&p("/d/a"), &p("/d/b")).unwrap();
        assert_eq!(disk.list(&p("/d")).unwrap(), vec!["b".to_owned()]);
        disk.crash_with(CrashMode::LoseUnsynced);
        assert_eq!(disk.list(&p("/d")).unwrap(), vec!["a".to_owned()]);
        disk.rename(&p("/d/a"), &p("/d/b")).unwrap();
        disk.sync_dir(&p("/d")).unwrap();
        disk.crash_with(CrashMode::LoseUnsynced);
        assert_eq!(disk.list(&p("/d")).unwrap(), vec!["b".to_owned()]);
        assert_eq!(disk.read_all(&p("/d/b")).unwrap(), b"x");
    }

    #[test]
    fn sim_random_crash_keeps_a_prefix_of_the_unsynced_writes() {
        for seed in 0..200 {
            let disk = SimDisk::new(seed);
            disk.create_dir_all(&p("/d")).unwrap();
            let mut f = disk.open(&p("/d/a"), OpenMode::CreateNew).unwrap();
            f.append(b"base").unwrap();
            f.sync().unwrap();
            disk.sync_dir(&p("/d")).unwrap();
            f.append(b"0123").unwrap();
            f.append(b"4567").unwrap();
            disk.crash();
            let got = disk.read_all(&p("/d/a")).unwrap();
            let full = b"base01234567";
            assert!(got.len() >= 4 && full.starts_with(&got), "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn sim_zero_filled_tears_keep_the_length_and_zero_whole_sectors() {
        let mut zero_filled = 0;
        for seed in 0..100 {
            let disk = SimDisk::new(seed);
            disk.set_zero_filled_tears(true);
            disk.create_dir_all(&p("/d")).unwrap();
            let mut f = disk.open(&p("/d/a"), OpenMode::CreateNew).unwrap();
            f.append(&[1u8; 100]).unwrap();
            f.sync().unwrap();
            disk.sync_dir(&p("/d")).unwrap();
            f.append(&[2u8; 1400]).unwrap();
            disk.crash();
            let got = disk.read_all(&p("/d/a")).unwrap();
            assert!(got[..100].iter().all(|&b| b == 1), "seed {seed}");
            if got.len() == 1500 && got[1499] == 0 {
                zero_filled += 1;
                let zero_from = got.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                assert_eq!(zero_from % 512, 0, "seed {seed}: zeros start at a sector boundary");
                assert!(got[100..zero_from].iter().all(|&b| b == 2), "seed {seed}");
            } else {
                assert!(got[100..].iter().all(|&b| b == 2), "seed {seed}: a prefix otherwise");
            }
        }
        assert!(zero_filled > 5, "zero-filled tears happen: {zero_filled}");
    }

    #[test]
    fn sim_faults_full_sync_failure_flip_and_power_off() {
        let disk = SimDisk::new(3);
        disk.create_dir_all(&p("/d")).unwrap();
        let mut f = disk.open(&p("/d/a"), OpenMode::CreateNew).unwrap();
        f.append(b"abc").unwrap();
        disk.set_capacity(Some(4));
        let err = f.append(b"de").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(f.read_to_vec().unwrap(), b"abc", "a rejected write writes nothing");
        f.write_at(0, b"x").unwrap();
        disk.set_capacity(None);
        disk.set_full(true);
        assert_eq!(f.append(b"d").unwrap_err().kind(), io::ErrorKind::StorageFull);
        disk.set_full(false);

        disk.fail_next_sync();
        assert!(f.sync().is_err());
        f.sync().unwrap();

        disk.flip_bit(&p("/d/a"), 1, 0).unwrap();
        let content = disk.file_content(&p("/d/a")).unwrap();
        assert_eq!(content.get(1).copied(), Some(b'b' ^ 1));

        let before = disk.stats();
        disk.power_off_after(1);
        f.append(b"z").unwrap();
        assert!(disk.is_powered_off());
        assert!(f.append(b"z").is_err());
        assert!(f.sync().is_err());
        assert_eq!(disk.stats().mutations, before.mutations + 1);
        disk.crash();
        assert!(!disk.is_powered_off());
    }

    #[test]
    fn real_disk_round_trip() {
        let dir = std::env::temp_dir().join(format!("qkv-disk-test-{}", std::process::id()));
        let disk = RealDisk::new();
        disk.create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let mut f = disk.open(&path, OpenMode::CreateTruncate).unwrap();
        f.append(b"hello").unwrap();
        f.write_at(1, b"E").unwrap();
        f.sync().unwrap();
        disk.sync_dir(&dir).unwrap();
        assert_eq!(f.len().unwrap(), 5);
        assert_eq!(disk.read_all(&path).unwrap(), b"hEllo");
        f.truncate(2).unwrap();
        assert_eq!(disk.list(&dir).unwrap(), vec!["f".to_owned()]);
        disk.rename(&path, &dir.join("g")).unwrap();
        assert_eq!(disk.read_all(&dir.join("g")).unwrap(), b"hE");
        disk.remove(&dir.join("g")).unwrap();
        assert!(!disk.exists(&dir.join("g")).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
