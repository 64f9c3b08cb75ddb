//! Parts of one source parsed on several threads and handed on in the source's order.
//!
//! The calling thread reads the parts (cheap: it only finds where they end) and delivers the
//! results; `threads` workers parse. Results wait for their turn, so the run sees batches,
//! rejected rows and the first error in the same order as a single pass would give them. At
//! most `threads + 1` parts are in flight (read, being parsed, or waiting), which bounds memory
//! whatever the speed of each part.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex};

use crate::error::Result;

/// Parses each part `next` yields with `parse`, on `threads` threads, and gives the results to
/// `deliver` in the parts' order. Ends at the first error in that order (an error reading a part
/// counts at that part's place), or when `deliver` answers `false` (the run stopped listening).
/// A panic in `parse` is raised again on the calling thread.
pub(crate) fn parse_in_order<P, T>(
    mut next: impl FnMut() -> Result<Option<P>>,
    threads: usize,
    parse: impl Fn(P) -> Result<T> + Sync,
    mut deliver: impl FnMut(T) -> Result<bool>,
) -> Result<()>
where
    P: Send,
    T: Send,
{
    let threads = threads.max(1);
    let window = threads as u64 + 1;
    std::thread::scope(|scope| {
        let (work_tx, work_rx) = sync_channel::<(u64, P)>(threads);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (done_tx, done_rx) = channel::<(u64, std::thread::Result<Result<T>>)>();
        for _ in 0..threads {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let parse = &parse;
            scope.spawn(move || {
                loop {
                    // One worker waits on the queue at a time; the others wait for the lock.
                    let job = work_rx
                        .lock()
                        .map_err(|_| ())
                        .and_then(|rx| rx.recv().map_err(|_| ()));
                    let Ok((seq, part)) = job else {
                        break;
                    };
                    let result = catch_unwind(AssertUnwindSafe(|| parse(part)));
                    if done_tx.send((seq, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);

        let mut waiting: BTreeMap<u64, Result<T>> = BTreeMap::new();
        let (mut sent, mut delivered, mut ended) = (0u64, 0u64, false);
        loop {
            while !ended && sent - delivered < window {
                match next() {
                    Ok(Some(part)) => {
                        if work_tx.send((sent, part)).is_err() {
                            unreachable!("workers live as long as the queue");
                        }
                    }
                    Ok(None) => {
                        ended = true;
                        continue;
                    }
                    Err(e) => {
                        waiting.insert(sent, Err(e));
                        ended = true;
                    }
                }
                sent += 1;
            }
            while let Some(result) = waiting.remove(&delivered) {
                delivered += 1;
                if !result.and_then(&mut deliver)? {
                    return Ok(());
                }
            }
            if delivered == sent {
                if ended {
                    return Ok(());
                }
                // Everything read so far is delivered: read on.
                continue;
            }
            let (seq, result) = done_rx
                .recv()
                .expect("a part in flight is being parsed by a worker");
            match result {
                Ok(result) => {
                    waiting.insert(seq, result);
                }
                Err(panic) => resume_unwind(panic),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::JobError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn numbers(count: u64) -> impl FnMut() -> Result<Option<u64>> {
        let mut i = 0;
        move || {
            i += 1;
            Ok((i <= count).then_some(i))
        }
    }

    #[test]
    fn results_come_in_the_parts_order_whatever_their_speed() {
        let mut seen = Vec::new();
        parse_in_order(
            numbers(40),
            4,
            |n| {
                // Early parts are the slowest.
                std::thread::sleep(Duration::from_millis((40 - n) / 4));
                Ok(n * 10)
            },
            |r| {
                seen.push(r);
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(seen, (1..=40).map(|n| n * 10).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_error_in_order_wins_and_nothing_after_it_is_delivered() {
        let mut seen = Vec::new();
        let err = parse_in_order(
            numbers(30),
            3,
            |n| {
                if n == 7 {
                    std::thread::sleep(Duration::from_millis(30));
                    return Err(JobError::Internal("part 7".into()));
                }
                if n == 9 {
                    return Err(JobError::Internal("part 9".into()));
                }
                Ok(n)
            },
            |r| {
                seen.push(r);
                Ok(true)
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("part 7"), "{err}");
        assert_eq!(seen, (1..7).collect::<Vec<_>>());
    }

    #[test]
    fn a_read_error_counts_at_its_place() {
        let mut i = 0;
        let mut seen = Vec::new();
        let err = parse_in_order(
            move || {
                i += 1;
                if i == 5 {
                    return Err(JobError::Internal("read 5".into()));
                }
                Ok(Some(i))
            },
            2,
            Ok,
            |r| {
                seen.push(r);
                Ok(true)
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("read 5"));
        assert_eq!(seen, vec![1, 2, 3, 4]);
    }

    #[test]
    fn memory_is_bounded_by_the_parts_in_flight() {
        let in_flight = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let mut i = 0;
        parse_in_order(
            || {
                i += 1;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                Ok((i <= 50).then_some(i))
            },
            3,
            |n| {
                std::thread::sleep(Duration::from_millis(if n % 7 == 0 { 20 } else { 1 }));
                Ok(n)
            },
            |_| {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(true)
            },
        )
        .unwrap();
        // The final `None` is counted as a read too.
        assert!(most.load(Ordering::SeqCst) <= 3 + 1 + 1, "{most:?}");
    }

    #[test]
    fn a_listener_that_stops_ends_the_read() {
        let mut seen = 0;
        parse_in_order(
            || Ok(Some(1u8)),
            2,
            Ok,
            |_| {
                seen += 1;
                Ok(seen < 5)
            },
        )
        .unwrap();
        assert_eq!(seen, 5);
    }

    #[test]
    #[should_panic(expected = "bad part")]
    fn a_panic_in_a_worker_is_raised_on_the_caller() {
        let _ = parse_in_order(
            numbers(10),
            2,
            |n| {
                if n == 3 {
                    panic!("bad part");
                }
                Ok(n)
            },
            |_| Ok(true),
        );
    }
}
