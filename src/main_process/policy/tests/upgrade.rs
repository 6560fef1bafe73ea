//! An upgrade of panzer itself: the check, the coalesced requests, the
//! state handed to the next image and how that image carries on.

use super::*;

#[test]
fn an_upgrade_checks_the_new_binary_then_execs_answering_every_request_that_joined_it() {
    let mut w = World::serving();
    assert_eq!(upgrade(&mut w, 1), vec![Systemd(Note::Reloading), Effect::CheckUpgrade]);
    assert_eq!(upgrade(&mut w, 2), vec![], "joins the upgrade under way");
    assert_eq!(w.policy.next_deadline(), Some(w.now + UPGRADE_CHECK_TIMEOUT));
    let effects = w.on(Event::UpgradeChecked(Ok(())));
    assert_eq!(effects, vec![Effect::Exec { answer: vec![ClientId(1), ClientId(2)] }]);
    assert_eq!(w.policy.next_deadline(), None);
}

#[test]
fn an_upgrade_during_a_reload_waits_for_the_reload_s_outcome() {
    let mut w = World::serving();
    w.reload(1);
    assert_eq!(upgrade(&mut w, 2), vec![]);
    let effects = w.ready(2);
    assert_eq!(replies(&effects), vec![(1, true, String::new())]);
    assert!(effects.ends_with(&[Systemd(Note::Reloading), Effect::CheckUpgrade]), "{effects:?}");
    // A failed reload is an outcome too.
    let mut w = World::serving();
    w.reload(1);
    upgrade(&mut w, 2);
    let effects = w.failed(2, "crash");
    assert!(effects.ends_with(&[Effect::CheckUpgrade]), "{effects:?}");
}

#[test]
fn a_reload_asked_for_during_the_check_is_waited_for_before_the_exec() {
    // The next image would not know the starting generation's rollback nor
    // its hello deadline: main execs only once the reload has an outcome.
    let mut w = World::serving();
    assert_eq!(upgrade(&mut w, 1), vec![Systemd(Note::Reloading), Effect::CheckUpgrade]);
    w.reload(2);
    let effects = w.on(Event::UpgradeChecked(Ok(())));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Exec { .. })), "{effects:?}");
    let effects = w.ready(2);
    assert!(effects.ends_with(&[Systemd(Note::Reloading), Effect::CheckUpgrade]), "{effects:?}");
    let effects = w.on(Event::UpgradeChecked(Ok(())));
    assert_eq!(effects, vec![Effect::Exec { answer: vec![ClientId(1)] }]);
}

#[test]
fn a_failed_check_answers_every_requester_with_the_reason_and_tells_systemd_ready_again() {
    let mut w = World::serving();
    upgrade(&mut w, 1);
    upgrade(&mut w, 2);
    let effects = w.on(Event::UpgradeChecked(Err("it exited with status 1".into())));
    assert_eq!(
        replies(&effects),
        vec![(1, false, "it exited with status 1".into()), (2, false, "it exited with status 1".into())]
    );
    assert_eq!(effects[0], Systemd(Note::Ready("upgrade failed: it exited with status 1".into())));
    // The next request starts a new upgrade.
    assert_eq!(upgrade(&mut w, 3), vec![Systemd(Note::Reloading), Effect::CheckUpgrade]);
}

#[test]
fn a_check_that_does_not_finish_in_time_is_killed_and_fails_the_upgrade() {
    let mut w = World::serving();
    upgrade(&mut w, 1);
    let effects = w.later(UPGRADE_CHECK_TIMEOUT);
    assert_eq!(effects[0], Effect::AbortUpgradeCheck);
    let answer = &replies(&effects)[0];
    assert!(!answer.1 && answer.2.contains("did not finish its check within 5.0s"), "{answer:?}");
    assert_eq!(w.on(Event::UpgradeChecked(Ok(()))), vec![], "a late answer changes nothing");
}

#[test]
fn a_stop_cancels_an_upgrade_and_an_upgrade_while_stopping_is_refused() {
    let mut w = World::serving();
    upgrade(&mut w, 1);
    let effects = w.on(Event::Command { command: Command::Stop, from: None });
    assert!(effects.contains(&Effect::AbortUpgradeCheck));
    assert_eq!(replies(&effects), vec![(1, false, "upgrade cancelled: panzer is stopping".into())]);
    assert_eq!(replies(&upgrade(&mut w, 2)), vec![(2, false, "panzer is stopping".into())]);
    assert_eq!(w.on(Event::UpgradeChecked(Ok(()))), vec![]);
}

#[test]
fn an_exec_that_fails_answers_its_requesters_and_the_old_image_goes_on() {
    let mut w = World::serving();
    upgrade(&mut w, 1);
    w.on(Event::UpgradeChecked(Ok(())));
    let reason = "cannot execute /x: permission denied".to_string();
    let effects = w.on(Event::UpgradeFailed { clients: vec![ClientId(1)], reason: reason.clone() });
    assert_eq!(replies(&effects), vec![(1, false, reason)]);
    assert_eq!(w.states(), vec![(1, State::Ready)]);
}

#[test]
fn a_resumed_image_answers_the_requesters_with_its_pid_and_version_and_reloads_stale_monitors() {
    let mut w = World::serving();
    let resumed =
        |stale| Event::Resumed { clients: vec![ClientId(4)], pid: 42, version: "0.2.0".into(), stale };
    let effects = w.on(resumed(vec![]));
    let reply = Reply { pid: Some(42), version: Some("0.2.0".into()), ..Reply::ok() };
    assert_eq!(
        effects,
        vec![
            Effect::Reply { to: ClientId(4), reply },
            Systemd(Note::Ready("upgraded to panzer 0.2.0".into()))
        ]
    );
    let effects = w.on(resumed(vec![1]));
    assert_eq!(spawns(&effects), vec![2], "generation 1 speaks another protocol: a hot restart");
}

#[test]
fn the_saved_policy_restores_generations_counts_tickets_and_deadlines_in_the_next_image() {
    let mut w = World::serving();
    w.on(Event::Command { command: Command::Scale(5), from: None });
    w.reload(7);
    w.reload(8);
    let saved = w.policy.save();
    let anchor = w.now;
    let text = clock::with_anchor(anchor, || serde_json::to_string(&saved)).unwrap();
    // The next image reads it a second later, by its own clock.
    let later = anchor + Duration::from_secs(1);
    let saved: Saved = clock::with_anchor(later, || serde_json::from_str(&text)).unwrap();
    let mut next = World { policy: Policy::restore(settings(), saved), now: later };
    assert_eq!(next.policy.count(), 5);
    assert_eq!(next.states(), vec![(1, State::Ready), (2, State::Starting)]);
    assert_eq!(next.policy.next_deadline(), Some(later + PROGRESS_EVERY));
    let effects = next.ready(2);
    assert_eq!(replies(&effects), vec![(7, true, String::new())], "the held ticket is answered");
    assert_eq!(spawns(&effects), vec![3], "the queued reload runs");
}

#[test]
fn the_monitors_of_an_older_image_are_not_expected_to_say_they_acted() {
    let mut w = World::serving();
    // The state an image of protocol 1 saved has none of the drain fields.
    let anchor = w.now;
    let text = clock::with_anchor(anchor, || serde_json::to_string(&w.policy.save())).unwrap();
    let mut saved: serde_json::Value = serde_json::from_str(&text).unwrap();
    for g in saved["generations"].as_array_mut().unwrap() {
        let g = g.as_object_mut().unwrap();
        for field in ["grace_ends", "act_deadline", "reports_draining", "drain_signalled"] {
            assert!(g.remove(field).is_some(), "no {field} saved");
        }
    }
    let saved: Saved = clock::with_anchor(anchor, || serde_json::from_value(saved)).unwrap();
    w.policy = Policy::restore(settings(), saved);
    w.reload(1);
    w.ready(2);
    let draining = &w.policy.generations()[0];
    assert_eq!(draining.grace_ends(), Some(w.now + GRACE), "kill_in_ms is shown all the same");
    assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![], "a monitor of protocol 1 never says it acted");
    assert_eq!(w.later(GRACE - DRAIN_ACT_TIMEOUT), vec![]);
    assert_eq!(w.later(DRAIN_BACKSTOP), vec![KillGroup(1)]);
    // The generation this image started is expected to.
    w.reload(2);
    w.ready(3);
    assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![Effect::DrainGroup(2)]);
}
