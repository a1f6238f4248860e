//! libpcisock.so (work in progress).
#![deny(unsafe_code)]
