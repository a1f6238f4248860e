//! Looking for the service's answer to an offer without waiting for it: whether it arrived
//! (a close or a readiness check asks), and a blocking connect's looks before it sleeps. Called
//! by the service link's completion; it never sleeps.

use std::time::Duration;

use super::{link, Link, Offered};
use crate::ProcessState;

/// Has the service's final answer to offer `o` arrived (taken in now, never waiting)? `false`
/// when the service connection is busy — in this very thread too: a close inside
/// [`Link::with`] (the service connection closing a descriptor it received) runs the
/// application's close path, which asks this — or is not this process's (after a fork).
pub(crate) fn answer_arrived(shared: &ProcessState, o: &Offered) -> bool {
    let Ok(l) = link(shared) else {
        return false;
    };
    let Ok(mut g) = l.client.try_lock() else {
        return false;
    };
    match g.as_mut() {
        Some((pid, c)) if *pid == ntbdrv::process::pid() => {
            c.take_replies().is_ok() && c.answered(&o.offer)
        }
        _ => false,
    }
}

/// Before a blocking `connect` sleeps for its answer (not a completion at first use, where the
/// application's other connections may need the CPU): look for it, yielding the CPU before each
/// look ([`crate::look::yielding`]), for up to the adaptive spin (`Settings::spin`; none in
/// doorbell mode) and at most `left`; true once it arrived.
pub(super) fn look_before_sleep(
    shared: &ProcessState,
    link: &Link,
    o: &Offered,
    left: Duration,
) -> bool {
    let spin = match shared.settings.completion {
        crate::CompletionMode::Doorbell => return false,
        crate::CompletionMode::Adaptive => shared.settings.spin.min(left),
        crate::CompletionMode::Poll => left,
    };
    crate::look::yielding(spin, || {
        let arrived = link.with(|c| {
            c.take_replies()?;
            Ok(c.answered(&o.offer))
        });
        !matches!(arrived, Ok(false))
    })
}
