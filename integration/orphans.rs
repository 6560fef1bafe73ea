//! What a dead monitor leaves behind: its workers drain under main, and
//! `status` shows them as orphans until they are gone.

use nix::sys::signal::{kill, Signal};
use serde_json::Value;

use crate::harness::*;

#[test]
fn status_lists_the_workers_of_a_dead_monitor_as_orphans_until_they_are_killed() {
    // stubborn ignores SIGTERM, so it outlives its monitor until SIGKILL.
    let panzer =
        Panzer::new(example("stubborn")).count(1).notify().args(&["--graceful-timeout", "2s"]).start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = get(port, "/").unwrap().pid();
    let monitor = panzer.monitors()[0];
    kill(monitor, Signal::SIGKILL).unwrap();
    panzer.wait_ready(2);
    let listed = eventually(PATIENCE, "status to list the orphan", || {
        let status = panzer.status();
        let orphans: Vec<i64> = status["orphans"].as_array()?.iter().filter_map(Value::as_i64).collect();
        orphans.contains(&(old.as_raw() as i64)).then_some(status)
    });
    // Only the worker: not the generation's keeper, which main adopted too.
    assert_eq!(listed["orphans"], serde_json::json!([old.as_raw()]), "{listed}");
    // It is not counted as a worker of the new generation.
    let workers: Vec<i64> = listed["generations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["workers"].as_array().unwrap().iter().filter_map(|w| w["pid"].as_i64()))
        .collect();
    assert!(!workers.contains(&(old.as_raw() as i64)), "{listed}");
    // After the graceful timeout main kills it, and the list empties.
    eventually(PATIENCE, "the orphan to be killed", || (!alive(old)).then_some(()));
    eventually(PATIENCE, "status to list no orphan", || {
        panzer.status()["orphans"].as_array()?.is_empty().then_some(())
    });
    assert!(panzer.log().contains("still running after the graceful timeout: SIGKILL"), "{}", panzer.log());
}
