//! The policy's unit tests, by area, and what they share: a [`World`]
//! that feeds the policy events at a clock the test moves, and helpers
//! that pick effects out of what it returns. The lines the policy logs are
//! left out of the effects a test compares.

use super::generations::{progress, DRAIN_ACT_TIMEOUT, MAX_LOST_MONITORS};
use super::*;
use crate::protocol::{BACKOFF_CAP, BACKOFF_START, FAILED_GRACE, MAX_UNREADY_EXITS};
use Effect::{Exit, KillGroup, KillOrphans, Orphans, Spawn, Systemd};

mod drain;
mod generations;
mod roll;
mod rotation;
mod stop;
mod upgrade;

const GRACE: Duration = Duration::from_secs(30);

fn settings() -> Settings {
    Settings {
        count: 2,
        ceiling: crate::limits::CountCeiling { max: 64, bound: crate::limits::Bound::Ceiling },
        startup_timeout: Duration::from_secs(60),
        graceful_timeout: GRACE,
        strategy: ReloadStrategy::All,
        canary: None,
        stop_delay: Duration::ZERO,
    }
}

struct World {
    policy: Policy,
    now: Instant,
}

impl World {
    fn new() -> World {
        World::with(settings())
    }

    fn with(settings: Settings) -> World {
        World { policy: Policy::new(settings), now: Instant::now() }
    }

    /// Generation 1 serving with `count` workers, pids 100….
    fn serving_with(settings: Settings) -> World {
        let mut w = World::with(settings);
        w.on(Event::Boot);
        for ordinal in 0..settings.count {
            w.worker_ready(1, ordinal, 100 + ordinal as i32);
        }
        w.ready(1);
        w
    }

    fn worker_ready(&mut self, generation: u32, ordinal: u32, pid: i32) -> Vec<Effect> {
        self.on(Event::Report { generation, report: Report::WorkerStarted { ordinal, pid } });
        self.on(Event::Report { generation, report: Report::WorkerReady { ordinal, pid } })
    }

    fn worker_exited(&mut self, generation: u32, ordinal: u32, pid: i32) -> Vec<Effect> {
        let how = "exited with status 0".to_string();
        self.on(Event::Report { generation, report: Report::WorkerExited { ordinal, pid, how } })
    }

    fn alive(&self) -> u32 {
        self.policy.generations().iter().map(Generation::alive_workers).sum()
    }

    fn serving() -> World {
        let mut w = World::new();
        assert_eq!(w.on(Event::Boot), vec![Spawn { generation: 1, count: 2 }]);
        w.ready(1);
        w
    }

    /// What the policy does on `event`, but for the lines it logs.
    fn on(&mut self, event: Event) -> Vec<Effect> {
        let effects = self.policy.handle(self.now, event);
        effects.into_iter().filter(|e| !matches!(e, Effect::Log { .. })).collect()
    }

    fn later(&mut self, by: Duration) -> Vec<Effect> {
        self.now += by;
        self.on(Event::Tick)
    }

    fn ready(&mut self, generation: u32) -> Vec<Effect> {
        self.on(Event::Report {
            generation,
            report: Report::GenerationReady { workers: 2, elapsed_ms: 1, how: String::new() },
        })
    }

    fn failed(&mut self, generation: u32, reason: &str) -> Vec<Effect> {
        self.on(Event::Report { generation, report: Report::GenerationFailed { reason: reason.into() } })
    }

    fn exited(&mut self, generation: u32, ended: Ended) -> Vec<Effect> {
        self.on(Event::MonitorExited { generation, ended })
    }

    /// The monitor of `generation` says it has signalled its workers.
    fn acted(&mut self, generation: u32) -> Vec<Effect> {
        self.on(Event::Report { generation, report: Report::Draining })
    }

    fn reload(&mut self, client: u64) -> Vec<Effect> {
        self.on(Event::Command { command: Command::Reload, from: Some(ClientId(client)) })
    }

    fn states(&self) -> Vec<(u32, State)> {
        self.policy.generations().iter().map(|g| (g.number, g.state)).collect()
    }
}

fn drain(generation: u32, grace: Duration) -> Effect {
    Effect::Order { generation, order: crate::protocol::Order::drain(grace) }
}

fn ok(client: u64, generation: u32) -> Effect {
    Effect::Reply { to: ClientId(client), reply: Reply { generation: Some(generation), ..Reply::ok() } }
}

fn spawns(effects: &[Effect]) -> Vec<u32> {
    effects
        .iter()
        .filter_map(|e| match e {
            Spawn { generation, .. } => Some(*generation),
            _ => None,
        })
        .collect()
}

fn replies(effects: &[Effect]) -> Vec<(u64, bool, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply { to, reply } => Some((to.0, reply.ok, reply.error.clone().unwrap_or_default())),
            _ => None,
        })
        .collect()
}

fn killed() -> Ended {
    Ended::Killed("SIGKILL".into())
}

fn scale(generation: u32, count: u32) -> Effect {
    Effect::Order { generation, order: Order::Scale { count } }
}

fn upgrade(w: &mut World, client: u64) -> Vec<Effect> {
    w.on(Event::Command { command: Command::Upgrade, from: Some(ClientId(client)) })
}
