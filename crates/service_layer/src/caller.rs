//! Commands that run to their end whoever stops waiting for them.
//!
//! An async caller that goes away (a client hanging up, a request timeout)
//! drops its future wherever that future had got to: between a transaction's
//! `BEGIN` and its `COMMIT`, or after a commit and before the follow-up it
//! started. [`ToTheEnd`] runs a command's work inside the caller's future
//! while the caller waits, which costs nothing, and when the caller drops it
//! mid-way, hands the rest of the work to a task of its own. [`Caller`] tells
//! that work whether anyone still waits for it: a command that has not begun
//! by then never does.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio_util::task::TaskTracker;

/// Whoever waits for a command's answer, as the command's work sees it.
/// Clones share the one flag.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` for the bus itself, which never leaves.
    left: Option<Arc<AtomicBool>>,
    /// The key of the incoming message the command came in, if it may be
    /// delivered again: its unit of work runs it only once.
    delivery: Option<Arc<str>>,
}

impl Caller {
    /// The bus, starting a follow-up command: it never leaves.
    pub(crate) fn bus() -> Self {
        Self {
            left: None,
            delivery: None,
        }
    }

    /// A caller who is waiting, and the flag that says they left.
    pub(crate) fn waiting() -> (Self, Arc<AtomicBool>) {
        let left = Arc::new(AtomicBool::new(false));
        let caller = Self {
            left: Some(Arc::clone(&left)),
            delivery: None,
        };
        (caller, left)
    }

    /// The same caller, delivering the incoming message `delivery`.
    pub(crate) fn delivering(self, delivery: Option<Arc<str>>) -> Self {
        Self { delivery, ..self }
    }

    /// The key of the incoming message the command came in, if any.
    pub(crate) fn delivery(&self) -> Option<&str> {
        self.delivery.as_deref()
    }

    /// Whether the caller has left.
    pub(crate) fn has_left(&self) -> bool {
        self.left
            .as_ref()
            .is_some_and(|left| left.load(Ordering::Acquire))
    }

    /// Resolves once the caller has left. It registers no waker, and needs
    /// none: a caller leaves only by dropping its [`ToTheEnd`], which then
    /// hands the work to a new task, whose first poll sees it.
    pub(crate) fn left(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|_| {
            if self.has_left() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// A command's work, polled by its caller while the caller waits, and
/// moved into a task of its own (tracked by `running`, for shutdown) if the
/// caller drops it before it is done.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct ToTheEnd<'t, F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    work: Option<Pin<Box<F>>>,
    left: Arc<AtomicBool>,
    running: &'t TaskTracker,
}

impl<'t, F> ToTheEnd<'t, F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    /// The work that `work` returns when given its caller.
    pub(crate) fn new(running: &'t TaskTracker, work: impl FnOnce(Caller) -> F) -> Self {
        let (caller, left) = Caller::waiting();
        Self {
            work: Some(Box::pin(work(caller))),
            left,
            running,
        }
    }
}

impl<F> Future for ToTheEnd<'_, F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(work) = self.work.as_mut() else {
            panic!("ToTheEnd polled after it completed");
        };
        let output = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for ToTheEnd<'_, F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return; // done: nothing left to finish
        };
        self.left.store(true, Ordering::Release);
        // Without a runtime (it is shutting down) nothing can run any more;
        // what was begun is rolled back when its connection goes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.running.track_future(async move {
                // Nobody is left to take the answer.
                let _ = work.await;
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn work_whose_caller_waits_runs_in_the_callers_future() {
        let running = TaskTracker::new();
        let answer = ToTheEnd::new(&running, |caller| async move {
            tokio::task::yield_now().await;
            !caller.has_left()
        })
        .await;
        assert!(answer, "the caller never left");
        assert!(running.is_empty(), "no task was needed");
    }

    #[tokio::test]
    async fn work_whose_caller_left_finishes_in_a_task_and_knows_it() {
        let running = TaskTracker::new();
        let (done, finished) = tokio::sync::oneshot::channel();
        let mut work = ToTheEnd::new(&running, |caller| async move {
            tokio::task::yield_now().await;
            let _ = done.send(caller.has_left());
        });
        assert!((&mut work).now_or_never().is_none(), "begun, not done");
        drop(work);
        running.close();
        running.wait().await;
        assert_eq!(
            finished.await,
            Ok(true),
            "finished, knowing its caller left"
        );
    }
}
