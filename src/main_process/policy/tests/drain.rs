//! The drain of a generation: the monitor in charge, and main taking it
//! over from a monitor that does not act; the orphans a monitor leaves.

use super::*;

#[test]
fn a_monitor_killed_mid_drain_leaves_its_workers_to_be_terminated_by_main() {
    let mut w = World::serving();
    w.reload(1);
    w.ready(2);
    let effects = w.exited(1, killed());
    assert_eq!(effects, vec![Orphans { generation: 1, terminate: true, kill_at: w.now + GRACE }]);
    // A monitor that drained and exited 0 had signalled them itself.
    let mut w = World::serving();
    w.reload(1);
    w.ready(2);
    w.now += Duration::from_secs(1);
    let effects = w.exited(1, Ended::Exited(0));
    let kill_at = w.now - Duration::from_secs(1) + GRACE;
    assert_eq!(effects, vec![Orphans { generation: 1, terminate: false, kill_at }]);
}

#[test]
fn a_monitor_that_does_not_act_on_a_drain_order_within_a_second_is_taken_over_by_main() {
    let mut w = World::serving();
    w.reload(1);
    assert_eq!(w.ready(2)[0], drain(1, GRACE));
    let grace_ends = w.now + GRACE;
    assert_eq!(w.policy.next_deadline(), Some(w.now + DRAIN_ACT_TIMEOUT));
    // Stopped, or stuck in the kernel: main sends the drain signal itself…
    assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![Effect::DrainGroup(1)]);
    // …and SIGKILL when the grace ends, not a backstop later.
    assert_eq!(w.policy.next_deadline(), Some(grace_ends));
    assert_eq!(w.later(GRACE - DRAIN_ACT_TIMEOUT - Duration::from_millis(1)), vec![]);
    assert_eq!(w.later(Duration::from_millis(1)), vec![KillGroup(1)]);
    // Saying so late changes nothing.
    assert_eq!(w.acted(1), vec![]);
    assert_eq!(w.later(DRAIN_BACKSTOP), vec![]);
}

#[test]
fn a_failed_generation_whose_monitor_does_not_act_is_killed_five_seconds_after_the_failure() {
    let mut w = World::serving();
    w.reload(1);
    // Not ready by the startup timeout: its monitor is stopped.
    let effects = w.later(Duration::from_secs(60));
    assert!(effects.contains(&drain(2, FAILED_GRACE)), "{effects:?}");
    assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![Effect::DrainGroup(2)]);
    assert_eq!(w.later(FAILED_GRACE - DRAIN_ACT_TIMEOUT), vec![KillGroup(2)]);
}

#[test]
fn a_monitor_that_acts_in_time_keeps_its_drain_and_main_kills_only_a_backstop_later() {
    let mut w = World::serving();
    w.reload(1);
    w.ready(2);
    w.now += DRAIN_ACT_TIMEOUT - Duration::from_millis(1);
    assert_eq!(w.acted(1), vec![]);
    assert_eq!(w.later(Duration::from_millis(1)), vec![], "the monitor is in charge");
    assert_eq!(w.later(GRACE - DRAIN_ACT_TIMEOUT), vec![]);
    assert_eq!(w.later(DRAIN_BACKSTOP), vec![KillGroup(1)]);
    // One that had drained on its own (a stray SIGTERM) has acted already.
    let mut w = World::serving();
    w.acted(1);
    w.reload(1);
    w.ready(2);
    assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![]);
}

#[test]
fn a_grace_shorter_than_the_wait_for_the_monitor_ends_in_sigkill_as_main_takes_over() {
    let grace = Duration::from_millis(300);
    let mut w = World::serving_with(Settings { graceful_timeout: grace, ..settings() });
    w.reload(1);
    w.ready(2);
    assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![Effect::DrainGroup(1), KillGroup(1)]);
}

#[test]
fn only_a_draining_generation_has_a_time_when_it_is_killed() {
    let mut w = World::serving();
    assert_eq!(w.policy.generations()[0].grace_ends(), None);
    w.reload(1);
    w.ready(2);
    let ends: Vec<Option<Instant>> = w.policy.generations().iter().map(Generation::grace_ends).collect();
    assert_eq!(ends, vec![Some(w.now + GRACE), None]);
    w.later(Duration::from_secs(60));
    w.reload(2);
    w.later(Duration::from_secs(60));
    let ends: Vec<Option<Instant>> = w.policy.generations().iter().map(Generation::grace_ends).collect();
    assert_eq!(ends[2], Some(w.now + FAILED_GRACE), "a failed generation drains too");
}
