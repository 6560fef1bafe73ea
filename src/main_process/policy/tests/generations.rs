//! Generations and their workers: boot, reloads and their outcomes,
//! replacements and their backoff, lost monitors, scale, readiness.

use super::*;

#[test]
fn a_reload_starts_the_next_generation_then_drains_the_previous_when_it_is_ready() {
    let mut w = World::serving();
    assert_eq!(w.reload(7), vec![Systemd(Note::Reloading), Spawn { generation: 2, count: 2 }]);
    assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Starting)]);
    let effects = w.ready(2);
    assert_eq!(
        effects,
        vec![drain(1, GRACE), ok(7, 2), Systemd(Note::Ready("generation 2 serving with 2 worker(s)".into()))]
    );
    assert_eq!(w.exited(1, Ended::Exited(0)).len(), 1, "only the orphans of a drained monitor");
    assert_eq!(w.states(), vec![(2, State::Ready)]);
    assert_eq!(w.policy.reloads().ok, 1);
}

#[test]
fn reloads_during_a_reload_coalesce_into_one_more_that_answers_every_waiting_client() {
    let mut w = World::serving();
    w.reload(1);
    for client in 2..20 {
        assert_eq!(w.reload(client), vec![]);
    }
    let effects = w.ready(2);
    assert_eq!(spawns(&effects), vec![3]);
    assert_eq!(replies(&effects), vec![(1, true, String::new())]);
    let effects = w.ready(3);
    assert_eq!(replies(&effects).len(), 18, "every queued client hears about generation 3");
    assert!(replies(&effects).iter().all(|r| r.1));
}

#[test]
fn a_failed_reload_drains_the_new_generation_within_five_seconds_and_keeps_the_old_one() {
    let mut w = World::serving();
    w.reload(1);
    let effects = w.failed(2, "worker 1 exited 5 times before it was ready");
    assert_eq!(effects[0], drain(2, FAILED_GRACE), "drained, never SIGKILLed at once");
    assert_eq!(
        replies(&effects),
        vec![(1, false, "worker 1 exited 5 times before it was ready; generation 1 keeps serving".into())]
    );
    assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
    assert!(!effects.iter().any(|e| matches!(e, KillGroup(_))));
    // Its workers get FAILED_GRACE; the group is killed a backstop later.
    assert_eq!(w.acted(2), vec![]);
    assert_eq!(w.later(FAILED_GRACE), vec![]);
    assert_eq!(w.later(DRAIN_BACKSTOP), vec![KillGroup(2)]);
}

#[test]
fn the_startup_timeout_fails_a_reload_and_a_late_ready_changes_nothing() {
    let mut w = World::serving();
    w.reload(1);
    let effects = w.later(Duration::from_secs(60));
    assert_eq!(
        replies(&effects)[0].2,
        "not ready within 60.0s (0/2 workers ready); generation 1 keeps serving"
    );
    assert_eq!(w.ready(2), vec![], "a late READY after the failure");
    assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
}

#[test]
fn a_starting_generation_logs_progress_every_five_seconds_until_the_timeout() {
    let mut w = World::serving();
    w.reload(1);
    w.on(Event::Report { generation: 2, report: Report::WorkerStarted { ordinal: 0, pid: 10 } });
    w.on(Event::Report { generation: 2, report: Report::WorkerReady { ordinal: 0, pid: 10 } });
    let g = &w.policy.generations()[1];
    assert_eq!(
        progress(g, w.now + Duration::from_secs(10)),
        "generation 2 starting: 1/2 ready after 10 s; worker 1 not ready"
    );
    let deadline = w.policy.next_deadline().unwrap();
    assert_eq!(deadline, w.now + PROGRESS_EVERY);
}

#[test]
fn generation_one_failing_ends_main_with_status_one() {
    let mut w = World::new();
    w.on(Event::Boot);
    let effects = w.failed(1, "workers keep crashing");
    assert_eq!(effects[0], drain(1, FAILED_GRACE));
    assert!(w.policy.stopping());
    assert_eq!(w.exited(1, Ended::Exited(1)).last(), Some(&Exit(1)));
    assert_eq!(w.policy.last_failure(), Some("workers keep crashing"));
}

#[test]
fn a_monitor_killed_while_generation_one_starts_is_replaced_with_backoff_not_fatal() {
    let mut w = World::new();
    w.on(Event::Boot);
    let effects = w.exited(1, killed());
    assert!(!w.policy.stopping());
    assert!(effects.contains(&Orphans { generation: 1, terminate: true, kill_at: w.now + GRACE }));
    assert!(spawns(&effects).is_empty(), "the replacement waits for its backoff");
    assert_eq!(w.later(BACKOFF_START), vec![Spawn { generation: 2, count: 2 }]);
    w.ready(2);
    assert_eq!(w.states(), vec![(2, State::Ready)]);
    // Its replacement crashing for real is the application failing: exit 1.
    let mut w = World::new();
    w.on(Event::Boot);
    w.exited(1, killed());
    w.later(BACKOFF_START);
    w.failed(2, "worker 0 exited 5 times before it was ready");
    assert_eq!(w.exited(2, Ended::Exited(1)).last(), Some(&Exit(1)));
}

#[test]
fn a_serving_monitor_that_dies_has_its_workers_drained_while_a_replacement_starts_at_once() {
    let mut w = World::serving();
    let effects = w.exited(1, killed());
    assert_eq!(
        effects,
        vec![
            Orphans { generation: 1, terminate: true, kill_at: w.now + GRACE },
            Spawn { generation: 2, count: 2 }
        ]
    );
    assert_eq!(w.ready(2)[0], Systemd(Note::Ready("generation 2 serving with 2 worker(s)".into())));
}

#[test]
fn replacements_that_keep_failing_back_off_up_to_the_cap() {
    let mut w = World::serving();
    w.exited(1, killed());
    let mut delays = Vec::new();
    for generation in 2..12 {
        let effects = w.failed(generation, "crash");
        assert!(spawns(&effects).is_empty());
        let State::Delayed(at) = w.states().last().unwrap().1 else { panic!("{:?}", w.states()) };
        delays.push(at - w.now);
        w.exited(generation, Ended::Exited(1));
        w.now = at;
        assert_eq!(spawns(&w.on(Event::Tick)), vec![generation + 1]);
    }
    assert_eq!(delays[0], BACKOFF_START);
    assert_eq!(delays[1], BACKOFF_START * 2);
    assert_eq!(*delays.last().unwrap(), BACKOFF_CAP);
}

#[test]
fn a_reload_during_a_delayed_replacement_waits_for_it() {
    let mut w = World::serving();
    w.exited(1, killed());
    w.failed(2, "crash");
    w.exited(2, Ended::Exited(1));
    assert!(matches!(w.states()[0].1, State::Delayed(_)));
    assert_eq!(w.reload(5), vec![], "queued behind the delayed replacement");
    let effects = w.later(BACKOFF_START);
    assert_eq!(spawns(&effects), vec![3]);
    let effects = w.ready(3);
    assert_eq!(spawns(&effects), vec![4], "then the reload runs");
    assert_eq!(replies(&w.ready(4)), vec![(5, true, String::new())]);
}

#[test]
fn a_monitor_that_exits_on_its_own_while_generation_one_starts_is_replaced_too() {
    let mut w = World::new();
    w.on(Event::Boot);
    // A stray SIGTERM made it drain and exit 0, without GenerationFailed.
    w.exited(1, Ended::Exited(0));
    assert!(!w.policy.stopping());
    assert_eq!(w.later(BACKOFF_START), vec![Spawn { generation: 2, count: 2 }]);
}

#[test]
fn monitors_lost_five_times_in_a_row_before_anything_served_end_main_with_status_one() {
    let mut w = World::new();
    w.on(Event::Boot);
    for generation in 1..MAX_LOST_MONITORS {
        w.exited(generation, killed());
        w.later(BACKOFF_CAP);
        assert!(!w.policy.stopping(), "gave up after {generation}");
    }
    let effects = w.exited(MAX_LOST_MONITORS, killed());
    assert_eq!(effects.last(), Some(&Exit(1)));
    assert!(w.policy.last_failure().unwrap().contains("5 times in a row"));
}

#[test]
fn a_killed_reload_monitor_fails_the_reload_and_the_old_generation_serves() {
    let mut w = World::serving();
    w.reload(3);
    let effects = w.exited(2, killed());
    assert_eq!(
        replies(&effects),
        vec![(
            3,
            false,
            "its monitor was killed by SIGKILL before it was ready; generation 1 keeps serving".into()
        )]
    );
    assert_eq!(w.states(), vec![(1, State::Ready)]);
}

#[test]
fn each_reload_outcome_records_how_long_it_took_from_its_start() {
    let mut w = World::serving();
    assert_eq!(w.policy.reloads().last_duration_ms, None, "generation 1 is no reload");
    w.reload(1);
    w.now += Duration::from_millis(250);
    w.ready(2);
    assert_eq!(w.policy.reloads().last_duration_ms, Some(250));
    // A failed one: the startup timeout, counted from its own start.
    w.now += Duration::from_secs(3);
    w.reload(2);
    w.later(Duration::from_secs(60));
    assert_eq!((w.policy.reloads().failed, w.policy.reloads().last_duration_ms), (1, Some(60_000)));
    // A queued reload starts when the one before it is done, not when it was asked for.
    w.reload(3);
    w.now += Duration::from_millis(10);
    w.reload(4);
    w.now += Duration::from_millis(90);
    w.ready(4);
    assert_eq!(w.policy.reloads().last_duration_ms, Some(100));
    w.now += Duration::from_millis(40);
    w.ready(5);
    assert_eq!(w.policy.reloads().last_duration_ms, Some(40));
    // A reload whose monitor is killed while it starts fails, with its time.
    w.reload(5);
    w.now += Duration::from_millis(7);
    w.exited(6, killed());
    assert_eq!((w.policy.reloads().failed, w.policy.reloads().last_duration_ms), (2, Some(7)));
}

#[test]
fn a_monitor_that_cannot_be_spawned_fails_its_reload_without_waiting() {
    let mut w = World::serving();
    w.reload(4);
    let effects =
        w.on(Event::SpawnFailed { generation: 2, reason: "cannot start its monitor: cannot fork".into() });
    assert_eq!(replies(&effects)[0].0, 4);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Order { .. })));
    assert_eq!(w.states(), vec![(1, State::Ready)]);
}

#[test]
fn a_worker_replaced_by_supervision_keeps_its_slot_ready_and_counts_no_restart() {
    let mut w = World::serving_with(settings());
    let report = Report::WorkerReplaced {
        ordinal: 1,
        old_pid: 101,
        new_pid: 201,
        reason: "age".into(),
        replacements: 1,
    };
    assert_eq!(w.on(Event::Report { generation: 1, report }), vec![]);
    let slot = &w.policy.generations()[0].workers[&1];
    assert_eq!((slot.pid, slot.ready, slot.restarts, slot.replaced), (201, true, 0, 1));
    // The old worker's exit, later, no longer matches the slot.
    w.worker_exited(1, 1, 101);
    assert_eq!(w.policy.generations()[0].workers[&1].pid, 201);
}

#[test]
fn scale_has_a_ceiling_and_reaches_every_live_generation() {
    let mut w = World::serving();
    let effects = w.on(Event::Command { command: Command::Scale(100), from: Some(ClientId(1)) });
    assert_eq!(replies(&effects), vec![(1, false, "scale 100: at most 64 workers".into())]);
    w.reload(2);
    let effects = w.on(Event::Command { command: Command::Scale(5), from: None });
    assert_eq!(
        effects,
        vec![
            Effect::Order { generation: 1, order: Order::Scale { count: 5 } },
            Effect::Order { generation: 2, order: Order::Scale { count: 5 } }
        ]
    );
    assert_eq!(w.on(Event::Command { command: Command::ScaleBy(-9), from: None }).len(), 2);
    assert_eq!(w.policy.count(), 1);
}

#[test]
fn a_scale_or_sigttin_past_what_the_descriptor_limit_allows_is_refused_with_the_reason() {
    use crate::limits::{CountCeiling, MonitorFds};
    let fds = MonitorFds { sockets: 1, tag_output: true, library: false, round_robin: false };
    let ceiling = CountCeiling::of(None, Some((26, fds)));
    let mut w = World::serving_with(Settings { ceiling, ..settings() });
    let effects = w.on(Event::Command { command: Command::Scale(4), from: Some(ClientId(1)) });
    let (_, ok, message) = replies(&effects).remove(0);
    assert!(!ok && message.starts_with("scale 4: at most 3 workers (RLIMIT_NOFILE is 26"), "{message}");
    assert_eq!(effects.len(), 1, "nothing but the answer: {effects:?}");
    let effects = w.on(Event::Command { command: Command::Scale(3), from: None });
    assert_eq!(effects, vec![Effect::Order { generation: 1, order: Order::Scale { count: 3 } }]);
    let effects = w.on(Event::Command { command: Command::ScaleBy(1), from: None });
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(w.policy.count(), 3);
}

fn readiness(w: &World) -> (bool, String) {
    let r = w.policy.readiness();
    (r.ready, r.line)
}

#[test]
fn readiness_says_which_generation_starts_and_how_many_of_its_workers_are_ready() {
    let mut w = World::new();
    assert_eq!(readiness(&w), (false, "no generation".into()));
    w.on(Event::Boot);
    assert_eq!(readiness(&w), (false, "generation 1 starting: 0/2 workers ready".into()));
    w.worker_ready(1, 0, 100);
    assert_eq!(readiness(&w), (false, "generation 1 starting: 1/2 workers ready".into()));
    w.worker_ready(1, 1, 101);
    w.ready(1);
    assert_eq!(readiness(&w), (true, "generation 1 ready: 2/2 workers ready".into()));
}

#[test]
fn a_reload_keeps_panzer_ready_on_the_generation_that_serves() {
    let mut w = World::serving_with(settings());
    w.reload(1);
    assert_eq!(readiness(&w), (true, "generation 1 ready: 2/2 workers ready".into()));
    w.worker_ready(2, 0, 200);
    w.worker_ready(2, 1, 201);
    w.ready(2);
    assert_eq!(readiness(&w), (true, "generation 2 ready: 2/2 workers ready".into()));
}

#[test]
fn a_lost_serving_monitor_makes_panzer_not_ready_until_its_replacement_is() {
    let mut w = World::serving_with(settings());
    w.exited(1, killed());
    assert_eq!(readiness(&w), (false, "generation 2 starting: 0/2 workers ready".into()));
}

#[test]
fn a_graceful_or_immediate_stop_makes_panzer_not_ready_at_once() {
    for command in [Command::Stop, Command::StopNow] {
        let mut w = World::serving_with(settings());
        assert!(!w.policy.stopping());
        w.on(Event::Command { command, from: None });
        assert!(w.policy.stopping());
        assert_eq!(readiness(&w), (false, "stopping".into()), "{command:?}");
    }
}

/// The settings a re-read file with `count` gives.
fn with_count(count: u32) -> Settings {
    Settings { count, ..settings() }
}

#[test]
fn a_reload_asked_for_while_one_starts_reads_its_file_when_it_starts() {
    // File A (2 workers) serves; reload 1 reads file B (3 workers).
    let mut w = World::serving();
    w.policy.reconfigure(with_count(3), Some(3));
    assert!(w.reload(1).contains(&Spawn { generation: 2, count: 3 }));
    // Reload 2 comes while generation 2 starts: main leaves its file (C)
    // unread until it starts, so nothing of C reaches reload 1.
    w.policy.reread_when_queued_starts();
    assert!(w.reload(2).is_empty());
    let effects = w.ready(2);
    let scaled = effects.iter().any(|e| matches!(e, Effect::Order { order: Order::Scale { .. }, .. }));
    assert!(!scaled, "{effects:?}");
    assert!(effects.ends_with(&[Effect::Reread { clients: vec![ClientId(2)] }]), "{effects:?}");
    // main read C (5 workers): the queued reload starts with it.
    w.policy.reconfigure(with_count(5), Some(5));
    let effects = w.on(Event::Reread { clients: vec![ClientId(2)], refused: None });
    assert!(effects.contains(&Spawn { generation: 3, count: 5 }), "{effects:?}");
    // It fails: what was in force before it (B, 3 workers) comes back.
    let effects = w.failed(3, "crash");
    assert!(effects.contains(&Effect::Reconfigured { kept: false }), "{effects:?}");
    assert_eq!(w.policy.count(), 3);
}

#[test]
fn a_queued_reload_whose_file_does_not_read_fails_and_what_serves_goes_on() {
    let mut w = World::serving();
    w.reload(1);
    w.policy.reread_when_queued_starts();
    w.reload(2);
    w.ready(2);
    let effects = w.on(Event::Reread { clients: vec![ClientId(2)], refused: Some("app.toml:3: bad".into()) });
    assert_eq!(replies(&effects), vec![(2, false, "app.toml:3: bad".to_string())]);
    assert!(!effects.iter().any(|e| matches!(e, Spawn { .. })), "{effects:?}");
    assert_eq!(w.states(), [(1, State::Draining), (2, State::Ready)]);
}
