//! Connections over an NTB device.
#![deny(unsafe_code)]
pub mod proto;
