//! Connections over an NTB device (work in progress).
#![deny(unsafe_code)]
