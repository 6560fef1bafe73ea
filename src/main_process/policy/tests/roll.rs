//! Staged reloads: `--reload-strategy rolling:K` and `--canary`.

use super::*;

#[test]
fn a_rolling_reload_replaces_k_workers_at_a_time_and_never_has_more_than_k_extra_alive() {
    let mut w =
        World::serving_with(Settings { count: 4, strategy: ReloadStrategy::Rolling(1), ..settings() });
    assert_eq!(spawns(&w.reload(1)), vec![2]);
    assert_eq!(w.policy.generations()[1].count, 1, "one new worker first");
    let mut old_alive: Vec<(u32, i32)> = (0..4).map(|o| (o, 100 + o as i32)).collect();
    for step in 0..4u32 {
        let effects = w.worker_ready(2, step, 200 + step as i32);
        assert!(w.alive() <= 5, "step {step}: {} alive", w.alive());
        if step == 3 {
            assert!(effects.contains(&drain(1, GRACE)), "the last old worker goes with the takeover");
            assert_eq!(replies(&effects), vec![(1, true, String::new())]);
            break;
        }
        assert_eq!(effects, vec![scale(1, 3 - step)], "step {step}: one old worker retires");
        // Nothing new starts until the retired one is gone.
        let (ordinal, pid) = old_alive.pop().unwrap();
        let effects = w.worker_exited(1, ordinal, pid);
        assert_eq!(effects, vec![scale(2, step + 2)], "step {step}: then one more new worker");
        assert!(w.alive() <= 5);
    }
    assert_eq!(w.states(), vec![(1, State::Draining), (2, State::Ready)]);
}

#[test]
fn a_rolling_reload_that_fails_gives_the_old_generation_its_full_count_back() {
    let mut w =
        World::serving_with(Settings { count: 4, strategy: ReloadStrategy::Rolling(2), ..settings() });
    w.reload(1);
    w.worker_ready(2, 0, 200);
    assert_eq!(w.worker_ready(2, 1, 201), vec![scale(1, 2)]);
    w.worker_exited(1, 3, 103);
    assert_eq!(w.worker_exited(1, 2, 102), vec![scale(2, 4)]);
    // Workers 2 and 3 of the new build never get ready.
    let effects = w.later(Duration::from_secs(60));
    assert!(effects.contains(&scale(1, 4)), "{effects:?}");
    assert!(effects.contains(&drain(2, FAILED_GRACE)), "{effects:?}");
    assert!(!replies(&effects)[0].1);
    assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
    assert_eq!(w.policy.generations()[0].count, 4);
}

#[test]
fn a_canary_that_exits_during_its_soak_rolls_the_reload_back() {
    let soak = Duration::from_secs(3);
    let mut w = World::serving_with(Settings { canary: Some(soak), ..settings() });
    w.reload(1);
    assert_eq!(w.policy.generations()[1].count, 1, "the canary alone");
    w.worker_ready(2, 0, 200);
    assert_eq!(w.policy.next_deadline(), Some(w.now + soak));
    w.now += Duration::from_secs(1);
    let effects = w.worker_exited(2, 0, 200);
    assert!(effects.contains(&drain(2, FAILED_GRACE)));
    let answer = &replies(&effects)[0];
    assert!(!answer.1 && answer.2.contains("the canary (worker 0, pid 200) exited"), "{answer:?}");
    assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
}

#[test]
fn a_canary_that_stays_ready_for_its_soak_lets_the_reload_go_on() {
    let soak = Duration::from_secs(3);
    let mut w = World::serving_with(Settings { canary: Some(soak), ..settings() });
    w.reload(1);
    w.worker_ready(2, 0, 200);
    assert_eq!(w.later(Duration::from_secs(1)), vec![]);
    assert_eq!(w.later(Duration::from_secs(2)), vec![scale(2, 2)]);
    let effects = w.worker_ready(2, 1, 201);
    assert_eq!(effects[0], drain(1, GRACE));
    assert_eq!(replies(&effects), vec![(1, true, String::new())]);
}

#[test]
fn a_canary_with_a_rolling_strategy_retires_one_old_worker_after_its_soak() {
    let mut w = World::serving_with(Settings {
        count: 3,
        canary: Some(Duration::from_secs(1)),
        strategy: ReloadStrategy::Rolling(2),
        ..settings()
    });
    w.reload(1);
    w.worker_ready(2, 0, 200);
    assert_eq!(w.later(Duration::from_secs(1)), vec![scale(1, 2)]);
    assert_eq!(w.worker_exited(1, 2, 102), vec![scale(2, 3)]);
    assert!(w.alive() <= 5);
}

#[test]
fn a_scale_during_a_roll_applies_when_the_new_generation_takes_over() {
    let mut w =
        World::serving_with(Settings { count: 2, strategy: ReloadStrategy::Rolling(1), ..settings() });
    w.reload(1);
    let effects = w.on(Event::Command { command: Command::Scale(3), from: None });
    assert_eq!(effects, vec![], "the roll's generations are left to it");
    // Three wanted now: the old two stay while a second new one starts.
    assert_eq!(w.worker_ready(2, 0, 200), vec![scale(2, 2)]);
    assert_eq!(w.worker_ready(2, 1, 201), vec![scale(1, 1)]);
    assert_eq!(w.worker_exited(1, 1, 101), vec![scale(2, 3)]);
    let effects = w.worker_ready(2, 2, 202);
    assert_eq!(effects[0], drain(1, GRACE));
}

#[test]
fn a_canary_replaced_as_unhealthy_during_its_soak_rolls_the_reload_back() {
    let mut w = World::serving_with(Settings { canary: Some(Duration::from_secs(3)), ..settings() });
    w.reload(1);
    w.worker_ready(2, 0, 200);
    let report = Report::WorkerReplaced {
        ordinal: 0,
        old_pid: 200,
        new_pid: 201,
        reason: "health".into(),
        replacements: 1,
    };
    let effects = w.on(Event::Report { generation: 2, report });
    let answer = &replies(&effects)[0];
    assert!(!answer.1 && answer.2.contains("went silent after WATCHDOG=1 during its soak"), "{answer:?}");
    assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
}

#[test]
fn a_rolling_reload_whose_new_monitor_dies_midway_gives_the_old_generation_its_count_back() {
    let mut w =
        World::serving_with(Settings { count: 4, strategy: ReloadStrategy::Rolling(1), ..settings() });
    w.reload(1);
    assert_eq!(w.worker_ready(2, 0, 200), vec![scale(1, 3)]);
    let effects = w.exited(2, killed());
    assert!(effects.contains(&scale(1, 4)), "{effects:?}");
    assert!(!replies(&effects)[0].1);
    assert_eq!(w.policy.generations()[0].count, 4);
}

#[test]
fn a_crash_loop_in_a_later_step_of_a_roll_fails_it_without_waiting_for_the_timeout() {
    let mut w =
        World::serving_with(Settings { count: 3, strategy: ReloadStrategy::Rolling(1), ..settings() });
    w.reload(1);
    w.worker_ready(2, 0, 200);
    w.worker_exited(1, 2, 102);
    // Step 2: slot 1 of the new build keeps crashing before it is ready.
    for attempt in 0..MAX_UNREADY_EXITS as i32 {
        let pid = 300 + attempt;
        w.on(Event::Report { generation: 2, report: Report::WorkerStarted { ordinal: 1, pid } });
        let effects = w.worker_exited(2, 1, pid);
        if attempt + 1 < MAX_UNREADY_EXITS as i32 {
            assert!(replies(&effects).is_empty(), "attempt {attempt}: {effects:?}");
        } else {
            assert!(effects.contains(&scale(1, 3)), "{effects:?}");
            let answer = &replies(&effects)[0];
            assert!(
                !answer.1 && answer.2.contains("worker 1 exited 5 times before it was ready"),
                "{answer:?}"
            );
        }
    }
}

#[test]
fn a_scale_up_during_a_roll_never_grows_the_old_generation() {
    let mut w =
        World::serving_with(Settings { count: 3, strategy: ReloadStrategy::Rolling(1), ..settings() });
    w.reload(1);
    w.on(Event::Command { command: Command::Scale(5), from: None });
    // After the first new worker, 5 - 1 = 4 would be more than the old 3.
    let effects = w.worker_ready(2, 0, 200);
    assert!(!effects.contains(&scale(1, 4)), "{effects:?}");
    assert_eq!(w.policy.generations()[0].count, 3);
}
