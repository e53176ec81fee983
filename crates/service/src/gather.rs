//! Work of concurrent requests gathered per tenant environment, as a database gathers commits:
//! each item waits its turn in its tenant environment's queue; the task whose turn it is takes
//! every item waiting (at most a limit) and does them together — one transaction, one statement
//! per table — then hands each item its result. With no load an item is done alone at once;
//! under load each transaction serves whatever arrived while the previous one ran, so the
//! statements per item fall as the rate rises (decision 0007, "Checkouts settled together";
//! decision 0006, "Claims and responses gathered").
//!
//! The queues are per tenant environment because a transaction is (its scope is set when it
//! begins); the turn is per queue, so one tenant environment's transactions run one at a time
//! in a process and others' are not held up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use azotte_domain::id::TenantId;
use azotte_domain::tenant::Environment;
use azotte_store::TenantScope;
use tokio::sync::oneshot;

/// A tenant environment: the queue an item waits in.
pub(crate) type Where = (TenantId, Environment);

/// The tenant environment of `scope`.
pub(crate) fn at(scope: &TenantScope) -> Where {
    (scope.tenant_id(), scope.environment())
}

/// How many items a kind of gathered work did in shared transactions (one alone included), and
/// in how many transactions: their ratio is the mean batch (exported in `/metrics`).
pub(crate) struct Tally {
    items: AtomicU64,
    transactions: AtomicU64,
}

impl Tally {
    pub(crate) const fn new() -> Self {
        Self { items: AtomicU64::new(0), transactions: AtomicU64::new(0) }
    }

    /// One transaction did `items` items.
    pub(crate) fn add(&self, items: usize) {
        self.items.fetch_add(items as u64, Ordering::Relaxed);
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    /// (items, transactions) so far.
    pub(crate) fn get(&self) -> (u64, u64) {
        (self.items.load(Ordering::Relaxed), self.transactions.load(Ordering::Relaxed))
    }
}

/// The queues of one kind of work, per tenant environment, of this process.
pub(crate) struct Gather<T, R> {
    queues: Mutex<HashMap<Where, Arc<Queue<T, R>>>>,
}

/// One tenant environment's waiting items, and whose turn it is to do them.
struct Queue<T, R> {
    waiting: Mutex<Vec<(T, oneshot::Sender<R>)>>,
    /// Held while a batch of the tenant environment is done.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl<T, R> Default for Gather<T, R> {
    fn default() -> Self {
        Self { queues: Mutex::default() }
    }
}

impl<T, R> std::fmt::Debug for Gather<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather").finish_non_exhaustive()
    }
}

impl<T, R> Gather<T, R> {
    fn queue(&self, key: Where) -> Arc<Queue<T, R>> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .entry(key)
            .or_insert_with(|| Arc::new(Queue { waiting: Mutex::default(), turn: Arc::default() }))
            .clone()
    }

    /// Hands `item` to the tenant environment `at` (see [`at`]) and returns its result, done by
    /// whichever task's turn takes it: that task starts its own `run` with the oldest waiting
    /// items (at most `at_once`, this one among them sooner or later), which answers one result
    /// per item in their order. An item done by another task's turn is answered as soon as
    /// that batch is done.
    ///
    /// A batch runs in a task of its own, holding the turn until it has answered: a request
    /// dropped while its turn runs (its client went away) cuts short neither the batch nor the
    /// answers of the others in it. `None`: the batch doing the item was lost (it panicked) or
    /// its `run` answered too few.
    pub(crate) async fn submit<F, Fut>(&self, at: Where, item: T, at_once: usize, run: F) -> Option<R>
    where
        F: Fn(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<R>> + Send + 'static,
        T: Send + 'static,
        R: Send + 'static,
    {
        let queue = self.queue(at);
        let (done, mut mine) = oneshot::channel();
        queue.waiting.lock().unwrap_or_else(|e| e.into_inner()).push((item, done));
        loop {
            let turn = tokio::select! {
                biased;
                result = &mut mine => return result.ok(),
                turn = queue.turn.clone().lock_owned() => turn,
            };
            let batch: Vec<(T, oneshot::Sender<R>)> = {
                let mut waiting = queue.waiting.lock().unwrap_or_else(|e| e.into_inner());
                let n = waiting.len().min(at_once);
                waiting.drain(..n).collect()
            };
            if batch.is_empty() {
                continue;
            }
            let (items, answers): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
            let results = run(items);
            tokio::spawn(async move {
                for (answer, result) in answers.into_iter().zip(results.await) {
                    // Its task stopped waiting (its request was dropped): nothing to hand.
                    let _ = answer.send(result);
                }
                // Answered first: a waiting item is told before the next turn begins.
                drop(turn);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn scope() -> Where {
        (TenantId::new(), Environment::Development)
    }

    #[tokio::test]
    async fn items_waiting_while_a_batch_runs_are_done_together_in_order() {
        let gather: Arc<Gather<u32, u32>> = Arc::default();
        let scope = scope();
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let (release, held) = tokio::sync::watch::channel(false);
        let run = |batches: Arc<Mutex<Vec<Vec<u32>>>>, held: tokio::sync::watch::Receiver<bool>| {
            move |items: Vec<u32>| {
                let batches = batches.clone();
                let mut held = held.clone();
                async move {
                    // The first batch waits until the others are queued behind it.
                    let _ = held.wait_for(|r| *r).await;
                    batches.lock().unwrap().push(items.clone());
                    items.into_iter().map(|i| i * 10).collect()
                }
            }
        };
        let mut tasks = Vec::new();
        for i in 0..6u32 {
            let (gather, batches, held) = (gather.clone(), batches.clone(), held.clone());
            tasks.push(tokio::spawn(async move { gather.submit(scope, i, 4, run(batches, held)).await }));
            // Each queued before the next, so the first batch is the first item alone.
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        assert_eq!(answers, (0..6).map(|i| Some(i * 10)).collect::<Vec<_>>());
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches.concat(), (0..6).collect::<Vec<_>>(), "every item once, oldest first");
        assert!(batches.iter().all(|b| b.len() <= 4), "at most at_once per batch: {batches:?}");
        assert!(batches.iter().any(|b| b.len() > 1), "items waiting were done together: {batches:?}");
    }

    #[tokio::test]
    async fn other_tenant_environments_are_not_gathered_together() {
        let gather: Gather<u32, usize> = Gather::default();
        let seen = AtomicUsize::new(0);
        let (a, b) = (scope(), scope());
        let run = |items: Vec<u32>| {
            seen.fetch_add(1, Ordering::Relaxed);
            let n = items.len();
            async move { vec![n; n] }
        };
        let (x, y) = tokio::join!(gather.submit(a, 1, 8, run), gather.submit(b, 2, 8, run));
        assert_eq!((x, y), (Some(1), Some(1)), "each alone in its own batch");
        assert_eq!(seen.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_request_dropped_while_its_turn_runs_does_not_cut_the_batch_short() {
        let gather: Arc<Gather<u32, u32>> = Arc::default();
        let ran = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let (started, mut running) = tokio::sync::mpsc::unbounded_channel();
        let (release, held) = tokio::sync::watch::channel(false);
        let run = {
            let ran = ran.clone();
            move |items: Vec<u32>| {
                let (ran, started, mut held) = (ran.clone(), started.clone(), held.clone());
                async move {
                    let _ = started.send(items.clone());
                    let _ = held.wait_for(|r| *r).await;
                    ran.lock().unwrap().push(items.clone());
                    items.into_iter().map(|i| i + 100).collect::<Vec<_>>()
                }
            }
        };
        let at = scope();
        let submit = |item: u32| {
            let (gather, run) = (gather.clone(), run.clone());
            tokio::spawn(async move { gather.submit(at, item, 8, run).await })
        };
        let first = submit(1);
        assert_eq!(running.recv().await, Some(vec![1]), "the first item's own turn runs it");
        let second = submit(2);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // The first item's request goes away while its turn's batch runs.
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        release.send(true).unwrap();
        assert_eq!(second.await.unwrap(), Some(102), "the item waiting behind it is answered");
        assert_eq!(*ran.lock().unwrap(), [vec![1], vec![2]], "the dropped request's batch ran to its end");
    }

    #[tokio::test]
    async fn a_run_that_answers_too_few_leaves_the_rest_without_an_answer() {
        let gather: Gather<u32, u32> = Gather::default();
        let answer = gather.submit(scope(), 1, 8, |_items: Vec<u32>| async { Vec::new() }).await;
        assert_eq!(answer, None);
    }
}
