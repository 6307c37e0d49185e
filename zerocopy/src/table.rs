//! [`HostTable`]: a feature table of `rows x row_bytes` in pinned, device-mapped host memory,
//! and [`TableView`], the borrowed window of it that the gathers read.
//!
//! A table is either allocated by the driver ([`HostTable::alloc`], `cuMemHostAlloc`;
//! [`HostTable::alloc_vmm`], `cuMemCreate` on a host NUMA node, mapped with large GPU pages) or made
//! of memory that already exists and is pinned in place ([`HostTable::register`] over a `Vec`,
//! [`HostTable::map_file`] over a private `mmap` of a file, [`HostTable::create_shared`] /
//! [`HostTable::open_shared`] over a shared `mmap` that several processes map, all
//! `cuMemHostRegister`). Tables the crate allocates are placed on the NUMA node nearest the GPU
//! ([`HostTable::placement`] says where).
//!
//! Memory pinned with the PORTABLE flag is mapped for every GPU of the process at one address
//! (unified addressing: the device pointer is the host pointer), so one table serves a
//! gatherer per GPU ([`HostTable::view`] works on any of them). Ranks on one host share one
//! table by mapping the same file (e.g. under `/dev/shm`) and registering it each.
//!
//! When pinning fails (the locked-memory limit, size), the error says so and
//! [`TableView::host_only`] over the same rows in ordinary memory still serves the CPU path
//! ([`crate::CpuGather`]); GPU gathers refuse such a view with an error.
//!
//! Not done yet: read-only registration of `PROT_READ` mappings (ferry-gpu lacks the flag, so
//! files are mapped copy-on-write or shared writable), tables above one allocation.

use std::any::Any;
use std::path::Path;

use ferry_gpu::{Gpu, HostRegistration, MappedHostBuffer, Plain, VmmHostBuffer};
use rayon::prelude::*;

use crate::error::{Result, ZeroCopyError, invalid};
use crate::numa::{NumaPlacement, gpu_numa_node, prefer_node_for_range, with_preferred_node};

/// Where a table's bytes live.
enum Storage {
    /// Allocated pinned and mapped by the driver.
    Mapped(MappedHostBuffer),
    /// Allocated on a host NUMA node through the virtual memory management API.
    Vmm(VmmHostBuffer),
    /// Pinned in place; `reg` is declared first so it is unregistered before `owner` frees.
    Registered {
        reg: HostRegistration<'static>,
        _owner: Box<dyn Any + Send + Sync>,
    },
}

/// A feature table: `rows` rows of `row_bytes` bytes each, contiguous, in pinned host memory
/// that kernels read through [`device_ptr`](Self::device_ptr).
pub struct HostTable {
    storage: Storage,
    rows: usize,
    row_bytes: usize,
    placement: NumaPlacement,
}

impl std::fmt::Debug for HostTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTable")
            .field("rows", &self.rows)
            .field("row_bytes", &self.row_bytes)
            .field("device_ptr", &format_args!("{:#x}", self.device_ptr()))
            .field("placement", &self.placement)
            .field(
                "storage",
                &match self.storage {
                    Storage::Mapped(_) => "mapped",
                    Storage::Vmm(_) => "vmm",
                    Storage::Registered { .. } => "registered",
                },
            )
            .finish()
    }
}

fn table_bytes(rows: usize, row_bytes: usize) -> Result<usize> {
    if row_bytes == 0 {
        return Err(invalid("a feature table needs rows of at least one byte"));
    }
    rows.checked_mul(row_bytes)
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| {
            invalid(format!(
                "{rows} rows of {row_bytes} bytes do not fit in memory"
            ))
        })
}

impl HostTable {
    /// Allocates a zero-filled table of `rows x row_bytes` pinned, device-mapped bytes.
    pub fn alloc(gpu: &Gpu, rows: usize, row_bytes: usize) -> Result<Self> {
        let bytes = table_bytes(rows, row_bytes)?;
        // The driver allocates and ferry-gpu zero-fills on this thread: its policy places the
        // pages.
        let (buf, placement) = with_preferred_node(gpu_numa_node(gpu.ordinal()), || {
            MappedHostBuffer::new(gpu, bytes)
        });
        let buf = buf.map_err(|source| ZeroCopyError::Pin {
            bytes,
            how: "cuMemHostAlloc",
            source,
        })?;
        Ok(HostTable {
            storage: Storage::Mapped(buf),
            rows,
            row_bytes,
            placement,
        })
    }

    /// Allocates a zero-filled table of `rows x row_bytes` pinned bytes on the NUMA node
    /// nearest the GPU through CUDA's virtual memory management API (`cuMemCreate` with a host
    /// location, mapped for the CPU and every GPU at one address; CUDA 12.2 or newer). Its
    /// 2 MiB allocation granularity lets the driver map the table with large GPU pages, which
    /// widens the GPU's address-translation reach for random rows over large tables (see
    /// bench/RESULTS.md for what it measured).
    pub fn alloc_vmm(gpu: &Gpu, rows: usize, row_bytes: usize) -> Result<Self> {
        let bytes = table_bytes(rows, row_bytes)?;
        if bytes == 0 {
            return Self::alloc(gpu, rows, row_bytes);
        }
        let placement = gpu_numa_node(gpu.ordinal());
        let node = match placement {
            NumaPlacement::Node(n) => n as usize,
            _ => 0,
        };
        let buf = VmmHostBuffer::new(gpu, bytes, node).map_err(|source| ZeroCopyError::Pin {
            bytes,
            how: "cuMemCreate (host NUMA)",
            source,
        })?;
        Ok(HostTable {
            storage: Storage::Vmm(buf),
            rows,
            row_bytes,
            placement,
        })
    }

    /// Allocates a zero-filled table of `rows` rows of `cols` elements of `T`.
    pub fn alloc_typed<T: Plain>(gpu: &Gpu, rows: usize, cols: usize) -> Result<Self> {
        let row_bytes = cols
            .checked_mul(size_of::<T>())
            .ok_or_else(|| invalid(format!("{cols} columns overflow")))?;
        Self::alloc(gpu, rows, row_bytes)
    }

    /// Pins `data` in place (`cuMemHostRegister`) as a table whose rows hold `row_len`
    /// elements of `T`; the table owns `data` from now on.
    pub fn register<T: Plain>(gpu: &Gpu, mut data: Vec<T>, row_len: usize) -> Result<Self> {
        let row_bytes = row_len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| invalid(format!("{row_len} elements per row overflow")))?;
        if row_len == 0 || data.len() % row_len != 0 {
            return Err(invalid(format!(
                "{} elements do not make whole rows of {row_len}",
                data.len()
            )));
        }
        let rows = data.len() / row_len;
        let bytes = table_bytes(rows, row_bytes)?;
        let ptr = data.as_mut_ptr().cast::<u8>();
        // SAFETY: `ptr..ptr+bytes` is the Vec's heap allocation, which moving the Vec into the
        // table's `_owner` below does not move; the registration is dropped before the owner
        // (field order), and the host reaches the bytes only through the table afterwards.
        unsafe {
            Self::pinned_in_place(gpu, ptr, bytes, Box::new(data), rows, row_bytes, in_place())
        }
    }

    /// Allocates a zero-filled table in anonymous memory and pins it in place; with
    /// `huge_pages`, asks the kernel for transparent huge pages first (`madvise`), which can
    /// widen the GPU's address-translation reach over the table for random rows.
    pub fn alloc_registered(
        gpu: &Gpu,
        rows: usize,
        row_bytes: usize,
        huge_pages: bool,
    ) -> Result<Self> {
        Self::alloc_anonymous(
            gpu,
            rows,
            row_bytes,
            if huge_pages {
                Pages::Transparent
            } else {
                Pages::Normal
            },
        )
    }

    /// Allocates a zero-filled table from the kernel's reserved 2 MiB huge pages
    /// (`MAP_HUGETLB`; reserve them first, e.g. `echo N > /proc/sys/vm/nr_hugepages`) and pins
    /// it in place. Fails with a clear error when too few huge pages are reserved.
    pub fn alloc_hugetlb(gpu: &Gpu, rows: usize, row_bytes: usize) -> Result<Self> {
        Self::alloc_anonymous(gpu, rows, row_bytes, Pages::HugeTlb)
    }

    fn alloc_anonymous(gpu: &Gpu, rows: usize, row_bytes: usize, pages: Pages) -> Result<Self> {
        let bytes = table_bytes(rows, row_bytes)?;
        if bytes == 0 {
            return Self::alloc(gpu, rows, row_bytes);
        }
        let io = |what: &str, e: std::io::Error| ZeroCopyError::Io {
            what: format!("{what} {bytes} bytes of anonymous memory"),
            message: e.to_string(),
        };
        let mut options = memmap2::MmapOptions::new();
        options.len(bytes);
        if pages == Pages::HugeTlb {
            // 2^21 bytes: the x86-64 2 MiB huge page. The length must be a multiple of it.
            options.huge(Some(21)).len(bytes.div_ceil(1 << 21) << 21);
        }
        let mut map = options.map_anon().map_err(|e| io("mapping", e))?;
        let placement =
            prefer_node_for_range(gpu_numa_node(gpu.ordinal()), map.as_mut_ptr(), map.len());
        #[cfg(target_os = "linux")]
        if pages == Pages::Transparent {
            map.advise(memmap2::Advice::HugePage)
                .map_err(|e| io("asking for huge pages for", e))?;
        }
        // Touch every page so that it is backed (by huge pages where granted) before pinning.
        map.par_chunks_mut(4096).for_each(|p| p[0] = 0);
        let ptr = map.as_mut_ptr();
        // SAFETY: `ptr..ptr+bytes` is the mapping, which lives in `_owner` (moving `MmapMut`
        // does not move the pages) until after the registration is dropped (field order).
        unsafe {
            Self::pinned_in_place(
                gpu,
                ptr,
                map.len(),
                Box::new(map),
                rows,
                row_bytes,
                placement,
            )
        }
    }

    /// Maps the file at `path` privately (copy-on-write) and pins the mapping in place as a
    /// table of `row_bytes`-byte rows; the file's length must be a whole number of rows.
    pub fn map_file(gpu: &Gpu, path: &Path, row_bytes: usize) -> Result<Self> {
        let io = |what: &str, e| file_error(what, path, e);
        let file = std::fs::File::open(path).map_err(|e| io("opening", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("reading the size of", e))?
            .len() as usize;
        if row_bytes == 0 || len % row_bytes != 0 {
            return Err(invalid(format!(
                "{} holds {len} bytes, not a whole number of {row_bytes}-byte rows",
                path.display()
            )));
        }
        let rows = len / row_bytes;
        if len == 0 {
            return Ok(HostTable {
                storage: Storage::Mapped(
                    MappedHostBuffer::new(gpu, 0).map_err(ZeroCopyError::Gpu)?,
                ),
                rows: 0,
                row_bytes,
                placement: in_place(),
            });
        }
        // SAFETY: a private mapping: other processes changing the file may still show through
        // pages not yet copied, which the table documents as the caller's concern.
        let mut map =
            unsafe { memmap2::MmapOptions::new().map_copy(&file) }.map_err(|e| io("mapping", e))?;
        let ptr = map.as_mut_ptr();
        // SAFETY: `ptr..ptr+len` is the mapping, which lives in `_owner` (moving `MmapMut`
        // does not move the pages) until after the registration is dropped (field order).
        unsafe { Self::pinned_in_place(gpu, ptr, len, Box::new(map), rows, row_bytes, in_place()) }
    }

    /// Creates (or truncates) the file at `path` with room for `rows x row_bytes` zero bytes,
    /// maps it shared and pins it as a table: the first step of one table shared by several
    /// processes on a host. Use a file on a memory file system (`/dev/shm/...`); the pages are
    /// placed on the NUMA node nearest `gpu`. Fill it, then let the other processes
    /// [`open_shared`](Self::open_shared) it; the file stays until someone removes it.
    pub fn create_shared(gpu: &Gpu, path: &Path, rows: usize, row_bytes: usize) -> Result<Self> {
        let bytes = table_bytes(rows, row_bytes)?;
        if bytes == 0 {
            return Err(invalid("a shared table needs at least one row"));
        }
        let io = |what: &str, e| file_error(what, path, e);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io("creating", e))?;
        file.set_len(bytes as u64).map_err(|e| io("sizing", e))?;
        Self::register_shared(gpu, &file, path, rows, row_bytes, true)
    }

    /// Maps the existing file at `path` shared (every process that maps it sees the same
    /// pages) and pins the mapping in place as a table of `row_bytes`-byte rows; the file's
    /// length must be a whole, non-zero number of rows. Writes through one process's table
    /// are seen by all.
    pub fn open_shared(gpu: &Gpu, path: &Path, row_bytes: usize) -> Result<Self> {
        let io = |what: &str, e| file_error(what, path, e);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io("opening", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("reading the size of", e))?
            .len() as usize;
        if row_bytes == 0 || len == 0 || len % row_bytes != 0 {
            return Err(invalid(format!(
                "{} holds {len} bytes, not a whole, non-zero number of {row_bytes}-byte rows",
                path.display()
            )));
        }
        Self::register_shared(gpu, &file, path, len / row_bytes, row_bytes, false)
    }

    fn register_shared(
        gpu: &Gpu,
        file: &std::fs::File,
        path: &Path,
        rows: usize,
        row_bytes: usize,
        place: bool,
    ) -> Result<Self> {
        let bytes = rows * row_bytes;
        // SAFETY: a shared mapping: other processes may write the file while it is mapped,
        // which the table documents as the caller's to order (as for any shared memory).
        let mut map =
            unsafe { memmap2::MmapOptions::new().len(bytes).map_mut(file) }.map_err(|e| {
                ZeroCopyError::Io {
                    what: format!("mapping {} shared", path.display()),
                    message: e.to_string(),
                }
            })?;
        let placement = if place {
            prefer_node_for_range(gpu_numa_node(gpu.ordinal()), map.as_mut_ptr(), bytes)
        } else {
            in_place()
        };
        let ptr = map.as_mut_ptr();
        // SAFETY: `ptr..ptr+bytes` is the mapping, which lives in `_owner` (moving `MmapMut`
        // does not move the pages) until after the registration is dropped (field order).
        unsafe { Self::pinned_in_place(gpu, ptr, bytes, Box::new(map), rows, row_bytes, placement) }
    }

    /// Pins the `bytes` at `ptr` in place (`cuMemHostRegister`) as a table that keeps `owner`,
    /// the owner of that memory, alive until after the registration is dropped (field order).
    ///
    /// # Safety
    /// `ptr..ptr+bytes` is memory that `owner` owns and neither moves nor frees while it
    /// lives (a `Vec`'s heap allocation, a mapping), and that nothing else frees or reuses.
    unsafe fn pinned_in_place(
        gpu: &Gpu,
        ptr: *mut u8,
        bytes: usize,
        owner: Box<dyn Any + Send + Sync>,
        rows: usize,
        row_bytes: usize,
        placement: NumaPlacement,
    ) -> Result<Self> {
        // SAFETY: the caller's contract; `owner` moves into the table with the registration.
        let reg = unsafe { HostRegistration::from_raw(gpu, ptr, bytes) }.map_err(|source| {
            ZeroCopyError::Pin {
                bytes,
                how: "cuMemHostRegister",
                source,
            }
        })?;
        Ok(HostTable {
            storage: Storage::Registered { reg, _owner: owner },
            rows,
            row_bytes,
            placement,
        })
    }

    /// Where the table's pages were asked to live: the NUMA node nearest the GPU for tables
    /// this crate allocates, or why not.
    pub fn placement(&self) -> &NumaPlacement {
        &self.placement
    }

    /// The host address of the first byte. With unified addressing (every 64-bit CUDA
    /// platform) it equals [`device_ptr`](Self::device_ptr), on every GPU of the process.
    pub fn host_ptr(&self) -> *const u8 {
        self.as_bytes().as_ptr()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Total bytes.
    pub fn len_bytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// The address kernels use for the first byte.
    pub fn device_ptr(&self) -> u64 {
        match &self.storage {
            Storage::Mapped(b) => b.device_ptr(),
            Storage::Vmm(b) => b.device_ptr(),
            Storage::Registered { reg, .. } => reg.device_ptr(),
        }
    }

    /// All bytes, row after row. Synchronize kernels writing the table first.
    pub fn as_bytes(&self) -> &[u8] {
        let all = match &self.storage {
            Storage::Mapped(b) => b.as_slice(),
            Storage::Vmm(b) => b.as_slice(),
            Storage::Registered { reg, .. } => reg.as_slice(),
        };
        &all[..self.len_bytes()]
    }

    /// All bytes, for writing. No kernel may read the table meanwhile.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len_bytes();
        let all = match &mut self.storage {
            Storage::Mapped(b) => b.as_mut_slice(),
            Storage::Vmm(b) => b.as_mut_slice(),
            Storage::Registered { reg, .. } => reg.as_mut_slice(),
        };
        &mut all[..len]
    }

    /// Row `i`; panics when `i >= rows()`.
    pub fn row(&self, i: usize) -> &[u8] {
        assert!(i < self.rows, "row {i} of a table of {} rows", self.rows);
        &self.as_bytes()[i * self.row_bytes..(i + 1) * self.row_bytes]
    }

    /// Row `i` for writing; panics when `i >= rows()`.
    pub fn row_mut(&mut self, i: usize) -> &mut [u8] {
        assert!(i < self.rows, "row {i} of a table of {} rows", self.rows);
        let rb = self.row_bytes;
        &mut self.as_bytes_mut()[i * rb..(i + 1) * rb]
    }

    /// Fills every row with `f(row_index, row_bytes)`, rows in parallel.
    pub fn fill_with(&mut self, f: impl Fn(usize, &mut [u8]) + Sync) {
        let rb = self.row_bytes;
        self.as_bytes_mut()
            .par_chunks_mut(rb)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    }

    /// Fills the table with a deterministic pattern of `seed` in which every row differs;
    /// [`pattern_byte`] gives the byte at any row and column.
    pub fn fill_pattern(&mut self, seed: u64) {
        self.fill_with(|i, row| {
            for (c, b) in row.iter_mut().enumerate() {
                *b = pattern_byte(seed, i, c);
            }
        });
    }

    /// The whole table as a [`TableView`].
    pub fn view(&self) -> TableView<'_> {
        TableView {
            device_ptr: self.device_ptr(),
            bytes: self.as_bytes(),
            rows: self.rows,
            row_bytes: self.row_bytes,
        }
    }

    /// A view of `rows` rows of `row_bytes` bytes starting `byte_offset` bytes into the table
    /// (any offset: tests use it for unaligned bases).
    pub fn view_at(
        &self,
        byte_offset: usize,
        rows: usize,
        row_bytes: usize,
    ) -> Result<TableView<'_>> {
        let bytes = table_bytes(rows, row_bytes)?;
        let end = byte_offset
            .checked_add(bytes)
            .filter(|&e| e <= self.len_bytes())
            .ok_or_else(|| {
                invalid(format!(
                    "a view of {rows} x {row_bytes} bytes at offset {byte_offset} exceeds a table of {} bytes",
                    self.len_bytes()
                ))
            })?;
        Ok(TableView {
            device_ptr: self.device_ptr() + byte_offset as u64,
            bytes: &self.as_bytes()[byte_offset..end],
            rows,
            row_bytes,
        })
    }
}

/// The placement of memory registered where it already was.
fn in_place() -> NumaPlacement {
    NumaPlacement::Unknown("registered in place: the pages stay where their owner put them".into())
}

/// The byte [`HostTable::fill_pattern`] writes at (`row`, `col`).
pub fn pattern_byte(seed: u64, row: usize, col: usize) -> u8 {
    let mut x = seed
        ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (col as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    x as u8
}

/// A borrowed window of a [`HostTable`]: what the gathers read. The borrow keeps the table
/// alive and unwritten on the host while the view exists.
#[derive(Debug, Clone, Copy)]
pub struct TableView<'a> {
    device_ptr: u64,
    bytes: &'a [u8],
    rows: usize,
    row_bytes: usize,
}

impl<'a> TableView<'a> {
    /// A view of rows in ordinary host memory, for when pinning the table failed (memlock
    /// limit, size): the CPU path ([`crate::gather_rows_cpu`], [`crate::CpuGather`]) reads it,
    /// GPU gathers refuse it with an error. `bytes` must hold a whole number of rows.
    pub fn host_only(bytes: &'a [u8], row_bytes: usize) -> Result<Self> {
        if row_bytes == 0 || bytes.len() % row_bytes != 0 {
            return Err(invalid(format!(
                "{} bytes are not a whole number of {row_bytes}-byte rows",
                bytes.len()
            )));
        }
        Ok(TableView {
            device_ptr: 0,
            bytes,
            rows: bytes.len() / row_bytes,
            row_bytes,
        })
    }

    /// True when kernels can read the view (pinned and mapped host memory).
    pub fn is_mapped(&self) -> bool {
        self.device_ptr != 0
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The device address of the first row (0 for a [`host_only`](Self::host_only) view).
    pub fn device_ptr(&self) -> u64 {
        self.device_ptr
    }

    /// The view's bytes on the host.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Row `i` on the host; panics when `i >= rows()`.
    pub fn row(&self, i: usize) -> &'a [u8] {
        assert!(i < self.rows, "row {i} of a view of {} rows", self.rows);
        &self.bytes[i * self.row_bytes..(i + 1) * self.row_bytes]
    }
}

impl<'a> From<&'a HostTable> for TableView<'a> {
    fn from(t: &'a HostTable) -> Self {
        t.view()
    }
}

/// Which pages back an anonymous table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pages {
    /// The kernel's default 4 KiB pages.
    Normal,
    /// Transparent huge pages, asked for with `madvise`.
    Transparent,
    /// Reserved 2 MiB huge pages (`MAP_HUGETLB`).
    HugeTlb,
}

/// The error of a file operation `what` ("opening", "mapping", ...) on `path`.
fn file_error(what: &str, path: &Path, e: std::io::Error) -> ZeroCopyError {
    ZeroCopyError::Io {
        what: format!("{what} {}", path.display()),
        message: e.to_string(),
    }
}
