//! Lanes, for group commit: a lane is a queue where concurrent commands of
//! one kind on the same products (chosen by hash) gather. Whichever of them
//! finds the lane free leads it: it takes everything queued there as one
//! group, which the runner commits in one unit of work, while the others
//! wait for their answers. A hot product (a flash sale) costs one commit per
//! group, not per request.
//!
//! Leader and followers, as databases do with their log: no thread of its
//! own, no timer, and a command that arrives at an idle lane runs at once,
//! in a group of one.
//!
//! The group runs in its leader's future, which runs to its end whoever
//! hangs up (`MessageBus::handle`). Only the runtime itself stopping can
//! drop it half-way; its followers then queue again and their commands run
//! again. A caller that leaves (see `caller`) while its command is still
//! queued takes the command out with it: it never runs.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

// Lanes are chosen per command: foldhash, as SipHash measured costly there
// (docs/BENCHMARKS.md).
use foldhash::fast::RandomState;

use domain::Sku;

use crate::caller::Caller;
use tokio::sync::oneshot::{self, error::TryRecvError};

/// A fixed set of lanes that products hash onto: commands on one product
/// always meet in the same lane, so within a process no two groups of this
/// kind ever hold the same product. (Commands of other kinds on the product
/// are kept out by the runner, which runs a group in its products' turns.)
#[derive(Debug)]
pub struct Lanes<C, R> {
    lanes: Box<[Lane<C, R>]>,
    hasher: RandomState,
}

/// One lane: the commands queued in it, and its leader's seat.
#[derive(Debug)]
pub struct Lane<C, R> {
    queue: Mutex<Vec<Queued<C, R>>>,
    /// Held by the leader while its group runs: one group at a time.
    leader: tokio::sync::Mutex<()>,
    next_ticket: AtomicU64,
}

#[derive(Debug)]
struct Queued<C, R> {
    ticket: Ticket,
    command: C,
    answer: oneshot::Sender<R>,
}

/// A queued command's place in its lane, so that its caller can take it
/// out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket(u64);

/// A command waiting for its answer: where it queued, and the answer.
struct Waiting<R> {
    ticket: Ticket,
    answer: oneshot::Receiver<R>,
}

impl<C, R> Lanes<C, R> {
    pub(crate) fn new(lanes: usize) -> Self {
        Self {
            lanes: (0..lanes.max(1))
                .map(|_| Lane {
                    queue: Mutex::new(Vec::new()),
                    leader: tokio::sync::Mutex::new(()),
                    next_ticket: AtomicU64::new(0),
                })
                .collect(),
            hasher: RandomState::default(),
        }
    }

    /// The lane of a command on `product`; commands that name no product
    /// share the first.
    pub(crate) fn lane(&self, product: Option<&Sku>) -> &Lane<C, R> {
        let index = product.map_or(0, |sku| self.hasher.hash_one(sku) as usize);
        &self.lanes[index % self.lanes.len()]
    }
}

impl<C: Clone, R> Lane<C, R> {
    /// The most commands one group takes: bounds a transaction's size when
    /// a crowd arrives at once. The rest form the next group.
    const MAX_GROUP: usize = 256;

    /// Queues `command` in this lane and returns its answer. If the lane
    /// is free, or becomes free before a leader has taken the command, this
    /// caller leads: it takes the queue and answers it all with `run`, which
    /// gets the commands in arrival order and returns their answers in the
    /// same order.
    ///
    /// `None` if its `caller` leaves while the command is still queued: it
    /// is taken out, and never runs. Once a group has taken it, it runs,
    /// and its answer is awaited.
    ///
    /// A leader whose future is dropped half-way (only the runtime stopping
    /// does that) drops the answers of its group unsent; each of those
    /// followers then queues its command again rather than wait forever. So
    /// `run` may see a command twice, when it may have committed the first
    /// time: the commands are idempotent (allocating an allocated line,
    /// adding an existing batch, setting a quantity again change nothing),
    /// but for `Deallocate`, whose second run answers "not allocated".
    pub(crate) async fn submit<F>(
        &self,
        command: C,
        caller: &Caller,
        run: impl Fn(Vec<C>) -> F,
    ) -> Option<R>
    where
        F: Future<Output = Vec<R>>,
    {
        if caller.has_left() {
            return None;
        }
        // An idle lane: a group of one, without queueing for it. Commands
        // arriving meanwhile queue, and one of them leads next. This cannot
        // jump the queue: tokio's mutex hands itself straight to a waiting
        // task, so `try_lock` fails while any caller waits for the seat.
        if let Ok(_seat) = self.leader.try_lock() {
            if self.queue_without_abandoned().is_empty() {
                let mut answers = run(vec![command]).await;
                debug_assert_eq!(answers.len(), 1, "one answer per command");
                return answers.pop();
            }
        }
        // Boxed: a command's whole future is boxed (`caller::ToTheEnd`),
        // and the state of waiting in the queue would make every lone
        // command's box larger than the allocator serves from its caches.
        Box::pin(self.queue_then_lead(command, caller, run)).await
    }

    /// A busy lane: queues `command`, and waits until its group answers
    /// it, or until the lane's seat is free, and then leads: runs what is
    /// queued, this command's group first, until this command is answered.
    async fn queue_then_lead<F>(
        &self,
        command: C,
        caller: &Caller,
        run: impl Fn(Vec<C>) -> F,
    ) -> Option<R>
    where
        F: Future<Output = Vec<R>>,
    {
        let mut waiting = self.enqueue(command.clone());
        let mut still_wanted = true;
        // Held until this caller returns, so that one group runs at a time.
        let _seat = loop {
            tokio::select! {
                biased;
                answered = &mut waiting.answer => match answered {
                    Ok(answer) => return Some(answer),
                    // Its leader was dropped mid-group: queue it again.
                    Err(_) => waiting = self.enqueue(command.clone()),
                },
                seat = self.leader.lock() => break seat,
                () = caller.left(), if still_wanted => {
                    if self.withdraw(waiting.ticket) {
                        return None;
                    }
                    // A group has it already: it runs, answer or not.
                    still_wanted = false;
                }
            }
        };
        loop {
            match waiting.answer.try_recv() {
                Ok(answer) => return Some(answer),
                Err(TryRecvError::Closed) => waiting = self.enqueue(command.clone()),
                // Still queued, or beyond the group just run: lead again.
                Err(TryRecvError::Empty) => {}
            }
            if caller.has_left() && self.withdraw(waiting.ticket) {
                return None;
            }
            let group = self.take_group(Self::MAX_GROUP);
            let (commands, answers): (Vec<C>, Vec<_>) = group
                .into_iter()
                .map(|queued| (queued.command, queued.answer))
                .unzip();
            let results = run(commands).await;
            debug_assert_eq!(results.len(), answers.len(), "one answer per command");
            for (answer, result) in answers.into_iter().zip(results) {
                // A follower that gave up no longer listens; nothing to do.
                let _ = answer.send(result);
            }
        }
    }
}

impl<C, R> Lane<C, R> {
    fn queue(&self) -> MutexGuard<'_, Vec<Queued<C, R>>> {
        // The queue is left consistent at every step: a panic elsewhere
        // while it was held does not make it unusable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enqueue(&self, command: C) -> Waiting<R> {
        let (answer, receiver) = oneshot::channel();
        let ticket = Ticket(self.next_ticket.fetch_add(1, Ordering::Relaxed));
        self.queue().push(Queued {
            ticket,
            command,
            answer,
        });
        Waiting {
            ticket,
            answer: receiver,
        }
    }

    /// Takes the command of `ticket` out of the queue; whether it was still
    /// there (not yet taken by a group).
    fn withdraw(&self, ticket: Ticket) -> bool {
        let mut queue = self.queue();
        let before = queue.len();
        queue.retain(|queued| queued.ticket != ticket);
        queue.len() < before
    }

    /// The queue, less the commands whose callers gave up before a group
    /// took them: those must not commit later, unannounced, when the lane
    /// next runs (perhaps much later, if their product is quiet).
    fn queue_without_abandoned(&self) -> MutexGuard<'_, Vec<Queued<C, R>>> {
        let mut queue = self.queue();
        queue.retain(|queued| !queued.answer.is_closed());
        queue
    }

    fn take_group(&self, limit: usize) -> Vec<Queued<C, R>> {
        let mut queue = self.queue_without_abandoned();
        if queue.len() <= limit {
            std::mem::take(&mut *queue)
        } else {
            queue.drain(..limit).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use futures::future::join_all;

    use super::*;

    fn sku(raw: &str) -> Sku {
        Sku::parse(raw).expect("valid sku")
    }

    /// Submits `n` to the LAMP lane in a task of its own.
    fn spawn_submit<F>(
        lanes: &Arc<Lanes<u32, u32>>,
        n: u32,
        caller: Caller,
        run: impl Fn(Vec<u32>) -> F + Send + 'static,
    ) -> tokio::task::JoinHandle<Option<u32>>
    where
        F: Future<Output = Vec<u32>> + Send,
    {
        let lanes = Arc::clone(lanes);
        tokio::spawn(async move { lanes.lane(Some(&sku("LAMP"))).submit(n, &caller, run).await })
    }

    /// Runs each group after yielding once, so that commands submitted
    /// together pile up behind the first leader; records the group sizes.
    async fn doubled(groups: &Mutex<Vec<usize>>, commands: Vec<u32>) -> Vec<u32> {
        tokio::task::yield_now().await;
        groups.lock().expect("groups").push(commands.len());
        commands.into_iter().map(|n| n * 2).collect()
    }

    #[tokio::test]
    async fn commands_that_arrive_together_run_as_one_group() {
        let stays = Caller::bus();
        let lanes = Lanes::new(1);
        let (groups, lamp) = (Mutex::new(Vec::new()), sku("LAMP"));
        let answers = join_all((0..10).map(|n| {
            lanes
                .lane(Some(&lamp))
                .submit(n, &stays, |group| doubled(&groups, group))
        }))
        .await;
        assert_eq!(answers, (0..10).map(|n| Some(n * 2)).collect::<Vec<_>>());
        let groups = groups.into_inner().expect("groups");
        assert_eq!(groups.iter().sum::<usize>(), 10, "each command runs once");
        assert_eq!(
            groups,
            [1, 9],
            "the first command leads alone; the nine that queued meanwhile form one group"
        );
    }

    #[tokio::test]
    async fn a_command_at_an_idle_lane_runs_at_once() {
        let stays = Caller::bus();
        let lanes = Lanes::new(4);
        let groups = Mutex::new(Vec::new());
        for n in 0..3 {
            assert_eq!(
                lanes
                    .lane(Some(&sku("LAMP")))
                    .submit(n, &stays, |g| doubled(&groups, g))
                    .await,
                Some(n * 2)
            );
        }
        assert_eq!(groups.into_inner().expect("groups"), [1, 1, 1]);
    }

    #[tokio::test]
    async fn groups_are_bounded() {
        let stays = Caller::bus();
        let lanes = Lanes::new(1);
        let (groups, lamp) = (Mutex::new(Vec::new()), sku("LAMP"));
        let total = Lane::<u32, u32>::MAX_GROUP as u32 + 10;
        let answers = join_all((0..total).map(|n| {
            lanes
                .lane(Some(&lamp))
                .submit(n, &stays, |g| doubled(&groups, g))
        }))
        .await;
        assert_eq!(answers, (0..total).map(|n| Some(n * 2)).collect::<Vec<_>>());
        let groups = groups.into_inner().expect("groups");
        assert!(
            groups
                .iter()
                .all(|&size| size <= Lane::<u32, u32>::MAX_GROUP),
            "a group exceeded the limit: {groups:?}"
        );
        assert_eq!(groups.iter().sum::<usize>(), total as usize);
    }

    #[tokio::test]
    async fn followers_of_a_dropped_leader_run_their_commands_again() {
        let lanes = Arc::new(Lanes::new(1));
        let runs = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(tokio::sync::Notify::new());
        // The first group ever run never finishes; later ones double.
        let run = {
            let (runs, started) = (runs.clone(), started.clone());
            move |group: Vec<u32>| {
                let (runs, started) = (runs.clone(), started.clone());
                async move {
                    if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        started.notify_one();
                        std::future::pending::<()>().await;
                    }
                    group.into_iter().map(|n| n * 2).collect::<Vec<u32>>()
                }
            }
        };
        // Both queue while the lane is busy, so that one group takes both.
        let busy = lanes.lanes[0].leader.lock().await;
        let leader = spawn_submit(&lanes, 1, Caller::bus(), run.clone());
        let follower = spawn_submit(&lanes, 7, Caller::bus(), run);
        tokio::task::yield_now().await;
        drop(busy);
        started.notified().await;
        leader.abort();
        assert_eq!(follower.await.expect("follower answered"), Some(14));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "the stuck group, then the follower's command again"
        );
    }

    /// A caller leaves by saying so (`Caller`: the bus's commands finish
    /// in a task once their caller has left) or by dropping the future: either way a
    /// command still queued is taken out, and never runs.
    #[tokio::test]
    async fn a_command_whose_caller_left_while_queued_never_runs() {
        let lanes = Lanes::new(1);
        let (groups, lamp) = (Mutex::new(Vec::new()), sku("LAMP"));
        let busy = lanes.lanes[0].leader.lock().await;
        let ((leaving, left), stays) = (Caller::waiting(), Caller::bus());
        let mut cancelled = Box::pin(
            lanes
                .lane(Some(&lamp))
                .submit(1, &leaving, |g| doubled(&groups, g)),
        );
        let mut dropped = Box::pin(
            lanes
                .lane(Some(&lamp))
                .submit(3, &stays, |g| doubled(&groups, g)),
        );
        assert!(
            (&mut cancelled).now_or_never().is_none(),
            "the lane is busy"
        );
        assert!((&mut dropped).now_or_never().is_none(), "the lane is busy");
        left.store(true, Ordering::SeqCst);
        assert_eq!(cancelled.await, None, "taken out of the queue");
        drop(dropped);
        drop(busy);
        assert_eq!(
            lanes
                .lane(Some(&lamp))
                .submit(2, &stays, |g| doubled(&groups, g))
                .await,
            Some(4)
        );
        assert_eq!(
            groups.into_inner().expect("groups"),
            [1],
            "only the last ran"
        );
    }

    #[tokio::test]
    async fn a_command_whose_group_took_it_runs_and_answers_though_its_caller_left() {
        let lanes = Arc::new(Lanes::new(1));
        let started = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        // The group waits to be released once it has started.
        let run = {
            let (started, release) = (started.clone(), release.clone());
            move |group: Vec<u32>| {
                let (started, release) = (started.clone(), release.clone());
                async move {
                    started.notify_one();
                    release.notified().await;
                    group.into_iter().map(|n| n * 2).collect::<Vec<u32>>()
                }
            }
        };
        let busy = lanes.lanes[0].leader.lock().await;
        let leader = spawn_submit(&lanes, 1, Caller::bus(), run.clone());
        let (leaving, left) = Caller::waiting();
        let follower = spawn_submit(&lanes, 7, leaving, run);
        tokio::task::yield_now().await;
        drop(busy);
        started.notified().await; // the group of both runs
        left.store(true, Ordering::SeqCst);
        tokio::task::yield_now().await;
        release.notify_one();
        assert_eq!(leader.await.expect("leader answered"), Some(2));
        assert_eq!(follower.await.expect("follower answered"), Some(14));
    }
}
