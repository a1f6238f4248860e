//! Helpers for the integration tests that run real apps under libpcisock.so.
#![deny(unsafe_code)]
