//! What the transport's loom models share: running one model with the preemption bound the CI
//! sets (or 3) and printing how many executions it explored (scripts/test.sh adds them up).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Preemptions per execution when LOOM_MAX_PREEMPTIONS does not say.
const DEFAULT_PREEMPTIONS: usize = 3;

/// Run `f` under loom, print how many executions it explored.
pub fn check(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    b.check(move || {
        counted.fetch_add(1, Relaxed);
        f()
    });
    println!("loom model {name}: {} executions", runs.load(Relaxed));
}
