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

/// Run `f` under loom as a model that must fail (a check that the model can see the race a
/// mechanism exists for): true if loom found a failing execution. The expected panic is not
/// reported (the CI log shows failures only); other threads' panics go to the hook as before.
#[allow(dead_code)] // not every model file has such a check
pub fn check_fails(name: &str, f: impl Fn() + Sync + Send + 'static) -> bool {
    let me = std::thread::current().id();
    let before: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send> =
        Arc::from(std::panic::take_hook());
    let others = before.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            others(info)
        }
    }));
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(name, f))).is_err();
    std::panic::set_hook(Box::new(move |info| before(info)));
    failed
}
