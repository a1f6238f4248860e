//! Decoding the C ABI's arguments into Rust values: a buffer and its length into a slice, an
//! iovec array into slices. Only from non-null pointers and the lengths the same call carries;
//! it must never read past what the application described, or keep a slice beyond the call.

use libc::{c_int, c_void, iovec, size_t};

/// Bytes at `buf` (`n` long) as a slice; empty if null or zero.
pub(super) unsafe fn slice<'a>(buf: *const c_void, n: size_t) -> &'a [u8] {
    if buf.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: the caller passes the application's buffer and its length.
        unsafe { std::slice::from_raw_parts(buf as *const u8, n) }
    }
}

pub(super) unsafe fn slice_mut<'a>(buf: *mut c_void, n: size_t) -> &'a mut [u8] {
    if buf.is_null() || n == 0 {
        &mut []
    } else {
        // SAFETY: the caller passes the application's buffer and its length.
        unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, n) }
    }
}

pub(super) unsafe fn iovecs<'a>(iov: *const iovec, n: c_int) -> Result<Vec<&'a [u8]>, c_int> {
    if !(0..=libc::UIO_MAXIOV).contains(&n) {
        return Err(libc::EINVAL);
    }
    if n == 0 || iov.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: `iov` holds `n` iovecs (the application's contract).
    let v = unsafe { std::slice::from_raw_parts(iov, n as usize) };
    // SAFETY: each iovec describes a readable buffer.
    Ok(v.iter()
        .map(|e| unsafe { slice(e.iov_base, e.iov_len) })
        .collect())
}

pub(super) unsafe fn iovecs_mut<'a>(
    iov: *const iovec,
    n: c_int,
) -> Result<Vec<&'a mut [u8]>, c_int> {
    if !(0..=libc::UIO_MAXIOV).contains(&n) {
        return Err(libc::EINVAL);
    }
    if n == 0 || iov.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: `iov` holds `n` iovecs (the application's contract).
    let v = unsafe { std::slice::from_raw_parts(iov, n as usize) };
    // SAFETY: each iovec describes a writable buffer, and they do not overlap.
    Ok(v.iter()
        .map(|e| unsafe { slice_mut(e.iov_base, e.iov_len) })
        .collect())
}
