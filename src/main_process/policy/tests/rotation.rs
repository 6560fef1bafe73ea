//! `--balance round-robin`: which slots main puts in rotation as the
//! policy's generations change (`main_process::balance::in_rotation`).

use super::*;
use crate::main_process::balance::InRotation;

/// A world and main's view of the rotation, brought up to date after each
/// event as main does.
struct Balanced(World, InRotation);

fn rotation(w: &mut Balanced) -> Vec<u32> {
    w.1.update(w.0.policy.generations(), w.0.policy.count())
}

fn four() -> Balanced {
    Balanced(World::serving_with(Settings { count: 4, ..settings() }), InRotation::default())
}

#[test]
fn every_ready_slot_is_in_rotation_and_a_dead_worker_leaves_it_until_replaced() {
    let mut w = four();
    assert_eq!(rotation(&mut w), [0, 1, 2, 3]);
    w.0.worker_exited(1, 2, 102);
    assert_eq!(rotation(&mut w), [0, 1, 3]);
    w.0.on(Event::Report { generation: 1, report: Report::WorkerStarted { ordinal: 2, pid: 202 } });
    assert_eq!(rotation(&mut w), [0, 1, 3], "started is not ready");
    w.0.on(Event::Report { generation: 1, report: Report::WorkerReady { ordinal: 2, pid: 202 } });
    assert_eq!(rotation(&mut w), [0, 1, 2, 3]);
}

#[test]
fn a_scale_down_takes_the_slots_out_before_the_order_goes_out() {
    let mut w = four();
    let effects = w.0.on(Event::Command { command: Command::Scale(2), from: None });
    assert!(effects.contains(&scale(1, 2)), "{effects:?}");
    // main syncs the rotation right after `handle`, before the order is sent.
    assert_eq!(rotation(&mut w), [0, 1]);
    w.0.on(Event::Command { command: Command::Scale(4), from: None });
    assert_eq!(rotation(&mut w), [0, 1], "the new workers are not ready yet");
    w.0.worker_ready(1, 2, 302);
    w.0.worker_ready(1, 3, 303);
    assert_eq!(rotation(&mut w), [0, 1, 2, 3]);
}

#[test]
fn a_reload_keeps_every_slot_in_rotation_and_a_draining_generation_counts_for_nothing() {
    let mut w = four();
    w.0.reload(1);
    for ordinal in 0..4 {
        w.0.worker_ready(2, ordinal, 200 + ordinal as i32);
        assert_eq!(rotation(&mut w), [0, 1, 2, 3]);
    }
    w.0.ready(2);
    assert_eq!(w.0.states(), vec![(1, State::Draining), (2, State::Ready)]);
    assert_eq!(rotation(&mut w), [0, 1, 2, 3]);
    w.0.worker_exited(2, 1, 201);
    assert_eq!(rotation(&mut w), [0, 2, 3], "generation 1's worker 1 drains: it takes nothing new");
}

mod stuck {
    use std::collections::BTreeMap;

    use super::*;
    use crate::main_process::balance::{Seen, Watch, STUCK_AFTER};

    /// Per slot: (queued, handed so far).
    fn seen(q: &[(u32, u32, u32)]) -> BTreeMap<u32, Seen> {
        q.iter().map(|&(k, queued, handed)| (k, Seen { queued, handed })).collect()
    }

    #[test]
    fn a_slot_whose_worker_accepts_nothing_of_what_it_is_handed_leaves_until_its_queue_is_empty() {
        let (mut watch, ready, t0) = (Watch::default(), [0, 1], Instant::now());
        assert_eq!(watch.armed(&ready), [0, 1]);
        watch.woke(1, Seen { queued: 1, handed: 10 }, t0);
        assert_eq!(watch.armed(&ready), [0], "looked at later, not polled");
        assert_eq!(watch.next_look(), Some(t0 + STUCK_AFTER));
        let one_more = seen(&[(0, 0, 11), (1, 2, 11)]);
        assert!(watch.look(t0 + STUCK_AFTER, &ready, &one_more).is_empty(), "one more is not enough");
        let at = t0 + STUCK_AFTER * 2;
        assert_eq!(watch.look(at, &ready, &seen(&[(0, 0, 12), (1, 3, 12)])), [(1, true)]);
        let later = at + STUCK_AFTER;
        assert!(watch.look(later, &ready, &seen(&[(0, 0, 20), (1, 3, 12)])).is_empty());
        let accepts = later + STUCK_AFTER;
        assert_eq!(watch.look(accepts, &ready, &seen(&[(0, 0, 20), (1, 0, 12)])), [(1, false)]);
        assert_eq!(watch.armed(&ready), [0, 1]);
        assert_eq!(watch.next_look(), None);
    }

    #[test]
    fn a_busy_worker_that_accepts_is_never_stuck_nor_is_the_last_one() {
        let (mut watch, ready, t0) = (Watch::default(), [0, 1], Instant::now());
        // Its queue is never empty, but it accepts most of what it gets.
        watch.woke(0, Seen { queued: 3, handed: 100 }, t0);
        assert!(watch.look(t0 + STUCK_AFTER, &ready, &seen(&[(0, 5, 400), (1, 0, 400)])).is_empty());
        assert!(watch.look(t0 + STUCK_AFTER * 2, &ready, &seen(&[(0, 4, 700), (1, 0, 700)])).is_empty());
        assert!(watch.look(t0 + STUCK_AFTER * 3, &ready, &seen(&[(0, 0, 900), (1, 0, 900)])).is_empty());
        assert_eq!(watch.armed(&ready), [0, 1]);
        // The last slot serving never leaves.
        let mut watch = Watch::default();
        watch.woke(0, Seen { queued: 1, handed: 0 }, t0);
        assert!(watch.look(t0 + STUCK_AFTER, &[0], &seen(&[(0, 9, 8)])).is_empty());
    }

    #[test]
    fn a_slot_that_accepts_nothing_for_two_looks_leaves_though_nothing_more_reaches_it() {
        // Clients that each wait for their answer: once every one of them
        // waits on the stopped worker's slot, nothing more is handed to it.
        let (mut watch, ready, t0) = (Watch::default(), [0, 1, 2], Instant::now());
        watch.woke(1, Seen { queued: 8, handed: 100 }, t0);
        let still = seen(&[(0, 0, 100), (1, 8, 100), (2, 0, 100)]);
        assert!(watch.look(t0 + STUCK_AFTER, &ready, &still).is_empty(), "one look is not enough");
        assert_eq!(watch.look(t0 + STUCK_AFTER * 2, &ready, &still), [(1, true)]);
        // One that accepted some in between is not stuck.
        let mut watch = Watch::default();
        watch.woke(1, Seen { queued: 8, handed: 100 }, t0);
        let accepted = seen(&[(0, 0, 104), (1, 8, 104), (2, 0, 104)]);
        assert!(watch.look(t0 + STUCK_AFTER, &ready, &accepted).is_empty());
        assert!(watch.look(t0 + STUCK_AFTER * 2, &ready, &accepted).is_empty());
    }

    #[test]
    fn a_slot_that_is_no_longer_ready_is_forgotten() {
        let (mut watch, t0) = (Watch::default(), Instant::now());
        watch.woke(1, Seen { queued: 1, handed: 1 }, t0);
        assert_eq!(watch.look(t0 + STUCK_AFTER, &[0, 1], &seen(&[(0, 0, 4), (1, 4, 4)])), [(1, true)]);
        watch.keep(&[0]);
        assert_eq!(watch.next_look(), None);
        assert_eq!(watch.armed(&[0, 1]), [0, 1], "a new worker on slot 1 starts afresh");
    }
}
