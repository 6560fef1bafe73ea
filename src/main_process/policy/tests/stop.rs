//! Stops: graceful, now, escalation, and the `--stop-delay` lame duck.

use super::*;

#[test]
fn stop_drains_everything_answers_waiting_reloads_and_exits_zero_when_all_are_gone() {
    let mut w = World::serving();
    w.reload(1);
    w.reload(2);
    let effects = w.on(Event::Command { command: Command::Stop, from: None });
    assert!(effects.contains(&drain(1, GRACE)) && effects.contains(&drain(2, GRACE)));
    let answers = replies(&effects);
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|(_, ok, e)| !ok && e.contains("stopping")));
    assert_eq!(replies(&w.reload(3)), vec![(3, false, "panzer is stopping".into())]);
    w.exited(1, Ended::Exited(0));
    assert_eq!(w.exited(2, Ended::Exited(0)).last(), Some(&Exit(0)));
}

#[test]
fn a_stop_escalates_to_sigkill_after_the_graceful_timeout_and_a_backstop() {
    let mut w = World::serving();
    w.on(Event::Command { command: Command::Stop, from: None });
    w.acted(1);
    assert_eq!(w.later(GRACE), vec![]);
    let effects = w.later(DRAIN_BACKSTOP);
    assert!(effects.contains(&KillGroup(1)) && effects.contains(&KillOrphans));
}

#[test]
fn stop_now_kills_every_group_at_once() {
    let mut w = World::serving();
    w.reload(1);
    let effects = w.on(Event::Command { command: Command::StopNow, from: None });
    assert!(
        effects.contains(&KillGroup(1)) && effects.contains(&KillGroup(2)) && effects.contains(&KillOrphans)
    );
}

#[test]
fn stop_now_promises_the_monitors_no_grace() {
    // A monitor that runs before main's SIGKILL reaches it logs the drain
    // it was ordered: that is "now", not the graceful timeout.
    let mut w = World::serving();
    let effects = w.on(Event::Command { command: Command::StopNow, from: None });
    assert!(effects.contains(&drain(1, Duration::ZERO)), "{effects:?}");
    assert!(!effects.contains(&drain(1, GRACE)), "{effects:?}");
}

#[test]
fn a_stop_during_backoff_exits_without_starting_anything() {
    let mut w = World::serving();
    w.exited(1, killed());
    w.failed(2, "crash");
    w.exited(2, Ended::Exited(1));
    let effects = w.on(Event::Command { command: Command::Stop, from: Some(ClientId(1)) });
    assert_eq!(effects.last(), Some(&Exit(0)));
    assert!(spawns(&effects).is_empty());
    assert_eq!(w.later(BACKOFF_CAP), vec![]);
}

fn lame_duck() -> World {
    World::serving_with(Settings { stop_delay: Duration::from_secs(2), ..settings() })
}

fn stop(w: &mut World) -> Vec<Effect> {
    w.on(Event::Command { command: Command::Stop, from: None })
}

#[test]
fn a_stop_delay_says_stopping_at_once_serves_through_it_then_stops_listening_before_it_drains() {
    let mut w = lame_duck();
    assert_eq!(stop(&mut w), vec![Systemd(Note::Stopping)]);
    assert!(w.policy.stopping() && w.policy.in_stop_delay());
    let readiness = w.policy.readiness();
    assert_eq!((readiness.ready, readiness.line.as_str()), (false, "stopping"), "probes see it at once");
    assert_eq!(w.states(), vec![(1, State::Ready)], "it serves through the delay");
    assert_eq!(w.policy.next_deadline(), Some(w.now + Duration::from_secs(2)));
    assert_eq!(w.later(Duration::from_millis(1999)), vec![]);
    let effects = w.later(Duration::from_millis(1));
    assert_eq!(effects, vec![Effect::Unlisten, drain(1, GRACE)], "the backlog shut before the drain");
    assert!(!w.policy.in_stop_delay());
    assert_eq!(w.acted(1), vec![]);
    assert_eq!(w.policy.next_deadline(), Some(w.now + GRACE + DRAIN_BACKSTOP), "the grace counts from here");
    assert_eq!(w.exited(1, Ended::Exited(0)).last(), Some(&Exit(0)));
}

#[test]
fn a_second_stop_during_the_delay_skips_it_and_a_stop_now_kills_at_once() {
    let mut w = lame_duck();
    stop(&mut w);
    w.later(Duration::from_millis(500));
    assert_eq!(stop(&mut w), vec![Effect::Unlisten, drain(1, GRACE)]);
    assert_eq!(stop(&mut w), vec![], "draining already");
    let mut w = lame_duck();
    stop(&mut w);
    let effects = w.on(Event::Command { command: Command::StopNow, from: None });
    assert_eq!(effects[0], Effect::Unlisten);
    assert!(effects.contains(&KillGroup(1)) && effects.contains(&KillOrphans));
    assert!(!w.policy.in_stop_delay());
    let effects = w.on(Event::Command { command: Command::StopNow, from: None });
    assert!(!effects.contains(&Effect::Unlisten), "once is enough");
}

#[test]
fn a_reload_an_upgrade_or_a_scale_during_the_stop_delay_is_refused_as_stopping() {
    let mut w = lame_duck();
    stop(&mut w);
    assert_eq!(replies(&w.reload(3)), vec![(3, false, "panzer is stopping".into())]);
    assert_eq!(replies(&upgrade(&mut w, 4)), vec![(4, false, "panzer is stopping".into())]);
    let effects = w.on(Event::Command { command: Command::Scale(5), from: Some(ClientId(5)) });
    assert_eq!(effects.len(), 1, "nothing but the answer: {effects:?}");
    assert_eq!(w.policy.count(), 2);
    assert_eq!(w.states(), vec![(1, State::Ready)]);
}

#[test]
fn a_reload_under_way_when_the_delay_starts_is_cancelled_and_the_old_generation_serves_through_it() {
    let mut w = lame_duck();
    w.reload(1);
    w.reload(2);
    let effects = stop(&mut w);
    assert!(effects.contains(&drain(2, GRACE)) && !effects.contains(&drain(1, GRACE)));
    assert_eq!(w.acted(2), vec![]);
    let answers = replies(&effects);
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|(_, ok, e)| !ok && e == "reload cancelled: panzer is stopping"));
    assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Draining)]);
    assert_eq!(w.ready(2), vec![], "too late to take over");
    assert_eq!(w.later(Duration::from_secs(2)), vec![Effect::Unlisten, drain(1, GRACE)]);
}

#[test]
fn the_delay_ends_as_soon_as_nothing_serves_and_is_not_taken_when_nothing_did() {
    let mut w = lame_duck();
    stop(&mut w);
    let effects = w.exited(1, killed());
    assert!(effects.contains(&Effect::Unlisten), "{effects:?}");
    assert_eq!(effects.last(), Some(&Exit(0)));
    let mut w = World::with(Settings { stop_delay: Duration::from_secs(2), ..settings() });
    w.on(Event::Boot);
    let effects = stop(&mut w);
    assert_eq!(effects, vec![Systemd(Note::Stopping), Effect::Unlisten, drain(1, GRACE)]);
}

#[test]
fn without_a_stop_delay_a_stop_stops_listening_then_drains_at_once_and_a_reload_never_stops_listening() {
    let mut w = World::serving();
    let effects = w.reload(1);
    let effects: Vec<Effect> = effects.into_iter().chain(w.ready(2)).collect();
    assert!(!effects.contains(&Effect::Unlisten));
    assert_eq!(stop(&mut w), vec![Systemd(Note::Stopping), Effect::Unlisten, drain(2, GRACE)]);
}
