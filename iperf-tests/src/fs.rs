//! Private scratch directories and cross-process lock files for the tests. Used by every test through
//! [`crate::Fixture`]; a directory made here is ours alone (mode 0700, owned by our euid) and is removed on drop.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::sys;

/// Set this variable to keep every test's scratch directory (logs, stats files) after the test.
pub const KEEP_DIRS_VAR: &str = "PCISOCK_KEEP_TEST_DIRS";

/// A fresh directory under [`std::env::temp_dir`], mode 0700, owned by us; removed (with its contents) on drop.
///
/// If the thread is panicking when it drops (a failed test), the directory is kept and its path printed, so the
/// logs and stats files can be read.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep_on_panic: bool,
}

impl TempDir {
    /// Creates `$TMPDIR/pcisock-<tag>-<pid>-<n>-<nanos>` with mode 0700 and checks that we own it.
    pub fn new(tag: &str) -> Result<TempDir, String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        for _ in 0..100 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = base.join(format!("pcisock-{tag}-{}-{n}-{nanos}", std::process::id()));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
            // The umask may have cleared bits of 0700; set it exactly.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod 0700 {}: {e}", path.display()))?;
            let meta = fs::metadata(&path).map_err(|e| format!("stat {}: {e}", path.display()))?;
            if meta.uid() != sys::euid() || meta.mode() & 0o777 != 0o700 {
                return Err(format!("{} is not ours with mode 0700", path.display()));
            }
            return Ok(TempDir {
                path,
                keep_on_panic: true,
            });
        }
        Err(format!(
            "could not create a unique directory under {}",
            base.display()
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let keep = std::env::var_os(KEEP_DIRS_VAR).is_some()
            || (self.keep_on_panic && std::thread::panicking());
        if keep {
            eprintln!("iperf-tests: kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The emulated NTB device directory handed to the library as `PCISOCK_EMU_DIR`: a [`TempDir`] that is always
/// removed on drop (it holds shared-memory files, not logs).
#[derive(Debug)]
pub struct EmuDir(TempDir);

impl EmuDir {
    /// A fresh private (0700) device directory.
    pub fn new() -> Result<EmuDir, String> {
        let mut dir = TempDir::new("emu")?;
        dir.keep_on_panic = false;
        Ok(EmuDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// How a [`FileLock`] is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once.
    Shared,
    /// One holder, no shared holders.
    Exclusive,
}

/// An advisory `flock(2)` on `$TMPDIR/<name>.lock`, shared by every test process on the machine; released on
/// drop. Blocks until granted.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the lock named `name` in `mode`.
    pub fn acquire(name: &str, mode: LockMode) -> Result<FileLock, String> {
        let path = std::env::temp_dir().join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        sys::flock(&file, op).map_err(|e| format!("flock {}: {e}", path.display()))?;
        Ok(FileLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_private_and_removed() {
        let dir = TempDir::new("unit").unwrap();
        let path = dir.path().to_path_buf();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        fs::write(dir.join("x"), b"y").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn emu_dirs_are_distinct() {
        let a = EmuDir::new().unwrap();
        let b = EmuDir::new().unwrap();
        assert_ne!(a.path(), b.path());
    }

    #[test]
    fn shared_locks_coexist() {
        let _a = FileLock::acquire("pcisock-iperf-tests-unit", LockMode::Shared).unwrap();
        let _b = FileLock::acquire("pcisock-iperf-tests-unit", LockMode::Shared).unwrap();
    }
}
