//! Byte-exactness through one flagged connection: 256 MiB of a deterministic stream echoed back must be
//! identical, with both processes preloaded and strict, and must not cross the loopback interface.

mod common;

use common::{run_echo, MIB};

#[test]
fn echo_256m_is_byte_identical() {
    run_echo("echo_256m", 256 * MIB, 0x5eed_1234);
}

#[test]
fn echo_odd_length_is_byte_identical() {
    // A length that is no multiple of any frame or page size.
    run_echo("echo_odd", 3 * MIB + 12345, 42);
}
