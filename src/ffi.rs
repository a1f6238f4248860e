//! The CLI's only unsafe code: loading a library with `dlopen` to check what it exports, and three
//! process facts (uid, path access, leaving the session) that std does not offer.
//!
//! # Safety
//! Every function here passes libc only NUL-terminated strings built from Rust values that
//! outlive the call, and reads results only as libc documents them (`dlerror`'s string before
//! the next dl call, `Dl_info` after a successful `dladdr`). A loaded library is never closed,
//! so addresses taken from it stay valid for the life of the process; the CLI never calls
//! through them, it only compares where they live.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use libc::c_void;

/// A shared library loaded with `RTLD_LAZY | RTLD_LOCAL` (so its symbols interpose on nothing in
/// this process). Loading it runs its constructors.
pub struct Library {
    handle: NonNull<c_void>,
    path: PathBuf,
}

/// Where a symbol looked up through a [`Library`] handle was found.
#[derive(Debug, PartialEq, Eq)]
pub enum Symbol {
    /// Defined by the library itself.
    Defined,
    /// Not defined by the library, but found in one of its dependencies (e.g. libc).
    Elsewhere(String),
    /// Not found at all.
    Missing,
}

impl Library {
    /// Load `path` (which should be absolute and canonical, so [`Library::lookup`] can tell the
    /// library's own symbols from its dependencies').
    pub fn open(path: &Path) -> Result<Library, String> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
        // SAFETY: `c` is a valid NUL-terminated path that lives across the call. Loading runs the
        // library's constructors; for libpcisock.so that only reads the environment.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
        match NonNull::new(handle) {
            Some(handle) => Ok(Library {
                handle,
                path: path.to_path_buf(),
            }),
            None => Err(dl_error().unwrap_or_else(|| "dlopen failed".to_owned())),
        }
    }

    /// Look `name` up through the library's handle and say whether the library itself defines it.
    /// (`dlsym` on a handle also searches the library's dependencies, so finding a name is not
    /// enough: `read` would always be found in libc.)
    pub fn lookup(&self, name: &str) -> Symbol {
        let Ok(c) = CString::new(name) else {
            return Symbol::Missing;
        };
        // SAFETY: the handle came from a successful dlopen and is never closed; `c` is a valid
        // NUL-terminated name that lives across the call.
        let addr = unsafe { libc::dlsym(self.handle.as_ptr(), c.as_ptr()) };
        if addr.is_null() {
            return Symbol::Missing;
        }
        // SAFETY: an all-zero Dl_info is a valid value (null pointers); dladdr fills it in.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: `addr` is an address inside a loaded object (dlsym returned it); `info` is a
        // valid, writable Dl_info.
        let found = unsafe { libc::dladdr(addr, &mut info) };
        if found == 0 || info.dli_fname.is_null() {
            return Symbol::Elsewhere("an unknown object".to_owned());
        }
        // SAFETY: after a successful dladdr, dli_fname points to the NUL-terminated name of the
        // loaded object, which stays loaded (nothing here unloads it).
        let fname = unsafe { CStr::from_ptr(info.dli_fname) };
        let fname = Path::new(std::ffi::OsStr::from_bytes(fname.to_bytes()));
        let same = fname == self.path || std::fs::canonicalize(fname).is_ok_and(|p| p == self.path);
        if same {
            Symbol::Defined
        } else {
            Symbol::Elsewhere(fname.display().to_string())
        }
    }
}

/// The last dl error message, if any.
fn dl_error() -> Option<String> {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call on this
    // thread; it is copied at once.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated (see above).
    Some(
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The real user id of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Whether this process may create entries in directory `dir` (write and search permission).
pub fn can_create_in(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// Close every descriptor from 3 up: a service started on demand from inside an application
/// must not keep the application's sockets (a listening port would stay bound).
pub fn close_inherited() {
    // SAFETY: close_range on descriptors this process owns; nothing in it uses them after.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
}

/// Leave the caller's session (a detached service must not die with its starter's terminal)
/// and point stderr at /dev/null (its starter stops reading it once the service answers).
pub fn detach() {
    // SAFETY: setsid takes no arguments; it fails harmlessly if we already lead a group.
    unsafe {
        libc::setsid();
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are open; dup2 replaces fd 2 atomically.
        unsafe {
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_defines_read_and_not_a_made_up_name() {
        let libc_path = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
        ]
        .iter()
        .find_map(|p| std::fs::canonicalize(p).ok());
        let Some(path) = libc_path else { return };
        let lib = Library::open(&path).expect("dlopen libc");
        assert_eq!(lib.lookup("read"), Symbol::Defined);
        assert_eq!(lib.lookup("pcisock_no_such_symbol"), Symbol::Missing);
        assert_eq!(lib.lookup("bad\0name"), Symbol::Missing);
    }

    #[test]
    fn open_reports_errors() {
        assert!(Library::open(Path::new("/nonexistent/libx.so")).is_err());
        assert!(Library::open(Path::new("bad\0path")).is_err());
    }

    #[test]
    fn access_checks() {
        assert!(!can_create_in(Path::new("/nonexistent/dir")));
        assert!(can_create_in(&std::env::temp_dir()) || uid() != 0);
    }
}
