//! Linux and Android: `mmap` + `madvise` + a touch pass, `mincore` for
//! residency, `MADV_PAGEOUT`/`posix_fadvise` for eviction.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use memmap2::{Advice, Mmap};

use super::{WarmupError, WarmupReport};

/// Pages touched between progress reports and cancellation checks (16 MiB of 4 KiB pages).
const STEP: usize = 16 << 20;

fn io(e: std::io::Error) -> WarmupError {
    WarmupError::Io(e.kind().to_string())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

fn map(file: &File) -> Result<Option<Mmap>, WarmupError> {
    if file.metadata().map_err(io)?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: the mapping is read-only and read through MADV_POPULATE_READ
    // (an error, not a SIGBUS, on a truncated file), `mincore` and, on old
    // kernels only, a touch loop. The host never writes or truncates a file
    // it has marked in use (fs.rs), and the warmup job marks its file.
    let m = unsafe { Mmap::map(file) }.map_err(io)?;
    Ok(Some(m))
}

fn resident_fraction(m: &Mmap) -> Result<f32, WarmupError> {
    // SAFETY: the range is exactly our mapping.
    let (resident, pages) = unsafe { mincore_counts(m.as_ptr() as usize, m.len()) }
        .map_err(|e| WarmupError::Io(format!("mincore: {e}")))?;
    Ok(resident as f32 / pages.max(1) as f32)
}

/// Pages of `[addr, addr + len)` in memory, and pages in all.
///
/// # Safety
/// `addr` is page-aligned. `mincore` reads no memory, so a range that is not
/// mapped is an error (`ENOMEM`), never a fault.
unsafe fn mincore_counts(addr: usize, len: usize) -> std::io::Result<(usize, usize)> {
    let pages = len.div_ceil(page_size());
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the range (the caller's part above).
    if unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((vec.iter().filter(|&&b| b & 1 == 1).count(), pages))
}

/// The residency of the file read through a mapping this process already
/// has of it (llama.cpp's model mapping, which starts at the page holding
/// the first tensor and runs to the end), if there is one; the pages before
/// it through a small mapping of their own.
///
/// `mincore` answers a page with a page-table entry from the entry, and any
/// other page by a page-cache lookup. A fresh mapping has no entries, so
/// each check of the demo model's 24,000 pages took 2.2–2.8 ms, and 23 ms
/// for the full-size model's 404,000 (measured here), on every turn,
/// before the prompt. llama.cpp's mapping has entries for the pages it
/// decodes with (and the warm pass fills them, `populate_other_mappings`).
fn residency_through_existing(file: &File) -> Option<f32> {
    let meta = file.metadata().ok()?;
    let len = meta.len();
    let (addr, offset) = covering_mapping(&mappings_of(meta.dev(), meta.ino()), len)?;
    let tail = usize::try_from(len - offset).ok()?;
    // SAFETY: `addr` is the page-aligned start of a mapping (from
    // /proc/self/maps) of the file from `offset` to its end; if it was
    // unmapped since (a warm job's own mapping ends), `mincore` fails and
    // the caller maps the file. (Were the range mapped anew in those
    // microseconds, the figure would be wrong, not unsafe: `mincore` reads
    // no memory.)
    let (mut resident, mut pages) = unsafe { mincore_counts(addr, tail) }.ok()?;
    if offset > 0 {
        // SAFETY: read-only, and only `mincore` looks at it (see `map`).
        let head = unsafe { memmap2::MmapOptions::new().len(offset as usize).map(file) }.ok()?;
        // SAFETY: exactly our mapping.
        let (r, p) = unsafe { mincore_counts(head.as_ptr() as usize, head.len()) }.ok()?;
        (resident, pages) = (resident + r, pages + p);
    }
    Some(resident as f32 / pages.max(1) as f32)
}

/// The start address and file offset of a mapping of the file from that
/// offset to `len`, contiguous in addresses and offsets (`madvise` may have
/// split it into several entries), among `maps`; the one from the smallest
/// offset.
fn covering_mapping(maps: &[(Range<usize>, u64)], len: u64) -> Option<(usize, u64)> {
    let mut firsts: Vec<_> = maps.iter().filter(|(_, offset)| *offset < len).collect();
    firsts.sort_by_key(|(_, offset)| *offset);
    firsts.into_iter().find_map(|(first, offset)| {
        let mut end = first.end;
        while offset + ((end - first.start) as u64) < len {
            let expected = offset + (end - first.start) as u64;
            let (next, _) = maps.iter().find(|(r, o)| r.start == end && *o == expected)?;
            end = next.end;
        }
        Some((first.start, *offset))
    })
}

/// Fraction of the file's pages in memory (0.0–1.0).
pub fn residency(file: &File) -> Result<f32, WarmupError> {
    if let Some(r) = residency_through_existing(file) {
        return Ok(r);
    }
    match map(file)? {
        Some(m) => resident_fraction(&m),
        None => Ok(1.0),
    }
}

/// Reads in flight during a pass. The forward-pass order jumps from
/// tensor to tensor, and one stream then keeps at most one read-ahead
/// request outstanding, so each request pays the device's latency on top
/// of its transfer. Measured here under the `ufs2` profile on the
/// full-size model (`bittybot bench --storage ufs2`): one stream 352 MB/s
/// (0.71x of `cat`, 4.7 s a pass, residency 0.60 at `prepare` + 3 s), two
/// 467 MB/s (0.94x, 3.5 s, 0.88); four read no more than two. The
/// threads only wait on I/O.
const STREAMS: usize = 2;

/// Bring the file's pages into memory, the byte ranges of `order` first
/// (in that order), then the rest front to back: a `SEQUENTIAL` read-ahead
/// hint, then `MADV_POPULATE_READ` per 16 MiB step, on
/// [`STREAMS`] threads that take the steps in that order (a read per page
/// where the kernel lacks it). `step(done, total)` reports progress;
/// returning false cancels.
pub fn warm_up(
    file: &File,
    order: &[Range<u64>],
    mut step: impl FnMut(u64, u64) -> bool,
) -> Result<WarmupReport, WarmupError> {
    let start = Instant::now();
    let Some(m) = map(file)? else {
        return Ok(WarmupReport {
            bytes: 0,
            millis: 0.0,
            bytes_per_s: 0.0,
            residency_before: 1.0,
            residency_after: 1.0,
        });
    };
    let before = resident_fraction(&m)?;
    let _ = m.advise(Advice::Sequential);
    let page = page_size();
    let total = m.len();
    let steps: Vec<Range<usize>> = pass_order(order, total, page)
        .into_iter()
        .flat_map(|r| (r.start..r.end).step_by(STEP).map(move |at| at..(at + STEP).min(r.end)))
        .collect();
    let pass = Pass {
        map: &m,
        page,
        steps: &steps,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        no_populate: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    let outcome = std::thread::scope(|s| {
        for _ in 1..STREAMS {
            s.spawn(|| while pass.next_step().is_some() {});
        }
        // This thread reads too, and reports after each of its steps.
        while pass.next_step().is_some() {
            if !step(pass.done.load(Ordering::Relaxed) as u64, total as u64) {
                pass.stop.store(true, Ordering::Relaxed);
                return Err(WarmupError::Cancelled);
            }
        }
        Ok(())
    });
    let _ = m.advise(Advice::Normal);
    outcome?;
    if let Some(e) = pass.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(io(e));
    }
    let _ = step(total as u64, total as u64);
    populate_other_mappings(file, &m);
    let millis = start.elapsed().as_secs_f64() * 1000.0;
    Ok(WarmupReport {
        bytes: total as u64,
        millis,
        bytes_per_s: total as f64 / (millis / 1000.0).max(1e-9),
        residency_before: before,
        residency_after: resident_fraction(&m)?,
    })
}

/// A pass shared by its streams: the steps, the next one to take, and how
/// it ends.
struct Pass<'a> {
    map: &'a Mmap,
    page: usize,
    steps: &'a [Range<usize>],
    next: AtomicUsize,
    done: AtomicUsize,
    stop: AtomicBool,
    /// MADV_POPULATE_READ (Linux 5.14) faults a whole range in with one
    /// call and the kernel's read-ahead; older kernels say EINVAL and get
    /// the touch loop.
    no_populate: AtomicBool,
    error: Mutex<Option<std::io::Error>>,
}

impl Pass<'_> {
    /// Read the next step; `None` when there is none or the pass stopped.
    fn next_step(&self) -> Option<()> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let range = self.steps.get(self.next.fetch_add(1, Ordering::Relaxed))?;
        if let Err(e) = self.read(range.clone()) {
            self.stop.store(true, Ordering::Relaxed);
            self.error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
            return None;
        }
        self.done.fetch_add(range.len(), Ordering::Relaxed);
        Some(())
    }

    fn read(&self, range: Range<usize>) -> std::io::Result<()> {
        let m = self.map;
        while !self.no_populate.load(Ordering::Relaxed) {
            // SAFETY: the range lies inside our read-only mapping and starts
            // page-aligned (pass_order aligns every range, steps are whole
            // pages); the call only reads.
            let rc = unsafe {
                libc::madvise(
                    m.as_ptr().add(range.start) as *mut libc::c_void,
                    range.len(),
                    libc::MADV_POPULATE_READ,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN) => continue,
                // A kernel without it.
                Some(libc::EINVAL) => self.no_populate.store(true, Ordering::Relaxed),
                // EFAULT on a file truncated under us, EIO: an error, not a
                // reason to touch the pages and take a SIGBUS.
                _ => return Err(e),
            }
        }
        let mut sum = 0u8;
        for off in range.step_by(self.page) {
            // A volatile read so the touch is not optimised away.
            // SAFETY: `off` is inside the mapping.
            sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(m.as_ptr().add(off)) });
        }
        std::hint::black_box(sum);
        Ok(())
    }
}

/// The ranges of a pass: those of `order` (page-aligned, clipped, without
/// overlap) in that order, then what they leave out, front to back; a
/// range that starts where the one before it ends is joined to it, so a
/// layer's tensors (adjacent in the file) are read as one run of whole
/// steps rather than one short read per tensor.
fn pass_order(order: &[Range<u64>], total: usize, page: usize) -> Vec<Range<usize>> {
    let mut plan: Vec<Range<usize>> = Vec::new();
    for r in pieces_in_order(order, total, page) {
        match plan.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => plan.push(r),
        }
    }
    plan
}

/// [`pass_order`]'s pieces before the join: each range of `order`, minus
/// what earlier ones covered, then the rest.
fn pieces_in_order(order: &[Range<u64>], total: usize, page: usize) -> Vec<Range<usize>> {
    let mut covered: Vec<Range<usize>> = Vec::new();
    let mut plan = Vec::new();
    for r in order {
        let start = (r.start as usize).min(total) / page * page;
        let end = (r.end as usize).min(total).div_ceil(page).saturating_mul(page).min(total);
        let mut pieces = vec![start..end];
        for c in &covered {
            pieces = pieces.into_iter().flat_map(|p| subtract(p, c)).collect();
        }
        covered.extend(pieces.iter().cloned());
        plan.extend(pieces.into_iter().filter(|p| !p.is_empty()));
    }
    let mut rest = vec![0..total];
    for c in &covered {
        rest = rest.into_iter().flat_map(|p| subtract(p, c)).collect();
    }
    plan.extend(rest.into_iter().filter(|p| !p.is_empty()));
    plan
}

fn subtract(a: Range<usize>, b: &Range<usize>) -> Vec<Range<usize>> {
    if b.end <= a.start || b.start >= a.end {
        return vec![a];
    }
    [a.start..b.start.max(a.start), b.end.min(a.end)..a.end].into_iter().filter(|r| !r.is_empty()).collect()
}

/// The address ranges of every mapping of the file `(dev, ino)` in this
/// process (llama.cpp's, the warmup's own), from `/proc/self/maps`, with
/// the file offset each starts at.
fn mappings_of(dev: u64, ino: u64) -> Vec<(Range<usize>, u64)> {
    if ino == 0 {
        return Vec::new();
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(device), Some(inode)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some((ma, mi)) = device.split_once(':') else { continue };
        let same_dev = u32::from_str_radix(ma, 16) == Ok(major) && u32::from_str_radix(mi, 16) == Ok(minor);
        if !same_dev || inode.parse::<u64>() != Ok(ino) {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else { continue };
        if let (Ok(a), Ok(b), Ok(o)) =
            (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16), u64::from_str_radix(offset, 16))
        {
            out.push((a..b, o));
        }
    }
    out
}

/// Fill the page tables of the file's other mappings in this process
/// (llama.cpp's model mapping) from the page cache the pass just filled, so
/// the first decode after a warm pass takes no minor fault per 4 KiB page.
/// No I/O: the pages are in memory; a page that is not (evicted again
/// meanwhile) is read, and an error (a truncated file) is ignored, never a
/// SIGBUS. Without it, reading a warmed 32 MiB mapping took 512 faults
/// (one per 64 KiB of fault-around); the test below checks that it no
/// longer does.
fn populate_other_mappings(file: &File, ours: &Mmap) {
    let Ok(meta) = file.metadata() else { return };
    let own = ours.as_ptr() as usize;
    for (r, _) in mappings_of(meta.dev(), meta.ino()) {
        if r.start == own {
            continue;
        }
        // SAFETY: the range is a live mapping of this process (from
        // /proc/self/maps), page-aligned; MADV_POPULATE_READ only reads, and
        // reports a failure as an error instead of faulting.
        unsafe {
            libc::madvise(r.start as *mut libc::c_void, r.end - r.start, libc::MADV_POPULATE_READ);
        }
    }
}

/// Push the file's pages out of memory, as the kernel does to an idle app,
/// without root: `MADV_PAGEOUT` on every mapping of the file in this process
/// (llama.cpp's included; `posix_fadvise` alone skips mapped pages), then
/// `POSIX_FADV_DONTNEED`. Returns the residency afterwards.
pub fn evict(path: &Path) -> Result<f32, WarmupError> {
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    for (r, _) in mappings_of(meta.dev(), meta.ino()) {
        // SAFETY: the range is a live mapping of this process (from
        // /proc/self/maps); MADV_PAGEOUT only drops clean pages, which are
        // read back from the file on the next access.
        unsafe {
            libc::madvise(r.start as *mut libc::c_void, r.end - r.start, libc::MADV_PAGEOUT);
        }
    }
    // SAFETY: a valid descriptor; the call only drops cached pages.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    residency(&file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_mapping_to_the_end_of_the_file_answers_residency() {
        let split = [(0x1000..0x3000, 0), (0x3000..0x9000, 0x2000), (0x20000..0x21000, 0)];
        assert_eq!(covering_mapping(&split, 0x8000), Some((0x1000, 0)), "split by madvise, contiguous");
        assert_eq!(covering_mapping(&split, 0x8001), None, "shorter than the file");
        let gap = [(0x1000..0x3000, 0), (0x4000..0x9000, 0x2000)];
        assert_eq!(covering_mapping(&gap, 0x8000), None, "not contiguous in addresses");
        let shifted = [(0x1000..0x3000, 0), (0x3000..0x9000, 0x3000)];
        // The first entry does not continue in the file; the second alone
        // covers the file from 0x3000.
        assert_eq!(covering_mapping(&shifted, 0x8000), Some((0x3000, 0x3000)));
        // llama.cpp's: from the first tensor's page to the end.
        let tensors = [(0x7000..0xd000, 0x2000), (0x40000..0x42000, 0)];
        assert_eq!(covering_mapping(&tensors, 0x8000), Some((0x7000, 0x2000)));
        assert_eq!(covering_mapping(&tensors, 0x9000), None);
    }

    #[test]
    fn residency_through_a_mapping_of_the_tail_counts_the_head_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        std::fs::write(&path, vec![7u8; 8 << 20]).unwrap();
        let f = File::open(&path).unwrap();
        // Only the tail mapped, as llama.cpp maps a model from its first tensor.
        // SAFETY: read-only mapping of a file nobody truncates during the test.
        let tail = unsafe { memmap2::MmapOptions::new().offset(2 << 20).map(&f) }.unwrap();
        let fresh = || resident_fraction(&map(&f).unwrap().unwrap()).unwrap();
        assert_eq!(residency_through_existing(&f).unwrap(), fresh());
        // SAFETY: a valid descriptor; the call only drops cached pages.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(residency_through_existing(&f).unwrap(), fresh());
        drop(tail);
    }

    #[test]
    fn warm_evict_residency_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        std::fs::write(&path, vec![7u8; 32 << 20]).unwrap();
        std::fs::File::open(&path).unwrap().sync_all().unwrap();
        let f = File::open(&path).unwrap();
        let r = warm_up(&f, &[], |_, _| true).unwrap();
        assert!(r.residency_after >= 0.99, "{r:?}");
        // A mapping that stays, like llama.cpp's.
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: read-only mapping of a file nobody truncates during the test.
        let keep = unsafe { Mmap::map(&file) }.unwrap();
        let touched: u64 = keep.iter().step_by(4096).map(|&b| b as u64).sum();
        assert!(touched > 0);
        // Residency read through the mapping that stays (llama.cpp's, here
        // `keep`) is what a fresh mapping of the file reads.
        let fresh = || resident_fraction(&map(&f).unwrap().unwrap()).unwrap();
        assert_eq!(residency(&f).unwrap(), fresh());
        let after = evict(&path).unwrap();
        eprintln!("residency after eviction: {after}");
        assert_eq!(after, fresh());
        if after > 0.5 {
            eprintln!("skipped: this kernel keeps the pages (residency {after})");
            return;
        }
        let r = warm_up(&f, &[(8 << 20)..(9 << 20)], |_, _| true).unwrap();
        assert!(r.residency_before < 0.5 && r.residency_after >= 0.99, "{r:?}");
        assert_eq!(r.bytes, 32 << 20);
        // The pass also filled the other mapping's page tables: reading it
        // now takes (almost) no page faults, where 32 MiB would take at least
        // 512 even with the kernel's 64 KiB fault-around.
        let faults = || {
            // SAFETY: getrusage writes into the zeroed struct we pass.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
            u.ru_minflt + u.ru_majflt
        };
        let before = faults();
        let touched: u64 = keep.iter().step_by(4096).map(|&b| b as u64).sum();
        let taken = faults() - before;
        assert!(touched > 0);
        assert!(taken < 64, "{taken} page faults reading a warmed mapping");
    }

    #[test]
    fn a_pass_reports_progress_to_the_end_and_a_cancelled_one_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        let total = 8 * STEP as u64;
        std::fs::write(&path, vec![1u8; total as usize]).unwrap();
        let f = File::open(&path).unwrap();
        f.sync_all().unwrap();
        let drop_pages = || {
            // SAFETY: a valid descriptor; the call only drops cached pages.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            residency(&f).unwrap()
        };
        drop_pages();
        let mut seen = Vec::new();
        let r = warm_up(&f, &[], |done, all| {
            seen.push((done, all));
            true
        })
        .unwrap();
        assert!(r.residency_after >= 0.99, "{r:?}");
        assert_eq!(seen.last(), Some(&(total, total)));
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "progress goes forward: {seen:?}");
        let evicted = drop_pages() < 0.5;
        let mut calls = 0;
        let cancelled = warm_up(&f, &[], |_, _| {
            calls += 1;
            false
        });
        assert_eq!(cancelled, Err(WarmupError::Cancelled));
        assert_eq!(calls, 1, "no report after the cancel");
        if evicted {
            // The streams stop after the step each is on.
            assert!(residency(&f).unwrap() < 0.99, "a cancelled pass read the whole file");
        }
    }

    #[test]
    fn a_pass_reads_the_ordered_ranges_first_then_everything_else_once() {
        // Pieces that follow each other in the file are one range.
        let plan = pass_order(&[100..5000, 0..10, 4096..9000], 20_000, 4096);
        assert_eq!(plan, vec![0..20_000]);
        let plan = pass_order(&[8192..12_288, 0..4096, 4096..8192], 20_000, 4096);
        assert_eq!(plan, vec![8192..12_288, 0..8192, 12_288..20_000]);
        let plan = pass_order(&[12_288..16_384], 20_000, 4096);
        assert_eq!(plan, vec![12_288..16_384, 0..12_288, 16_384..20_000]);
        let total: usize = plan.iter().map(|r| r.len()).sum();
        assert_eq!(total, 20_000);
    }
}
