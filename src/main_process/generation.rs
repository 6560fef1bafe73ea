//! Which generations exist and what each is doing: a pure state machine.
//!
//! The main loop feeds it events (a reload was asked for, generation K is
//! ready, has failed, its monitor exited, a stop was asked for) and performs
//! the [`Action`]s it returns. No clock, no processes: every rule about
//! rollback, coalescing and stopping is tested here without spawning
//! anything.

/// What a generation is doing, as main sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Its workers are starting; the previous generation still serves.
    Starting,
    /// All its workers became ready; it serves.
    Ready,
    /// Told to drain; it exits when its workers are gone.
    Draining,
    /// Failed to become ready; being killed.
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            // A failed generation is being stopped: to an operator, it drains.
            State::Draining | State::Failed => "draining",
        }
    }
}

/// What main must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the monitor of this new generation.
    Start(u32),
    /// Tell this generation's monitor to drain.
    Drain(u32),
    /// `SIGKILL` this generation's process group.
    Kill(u32),
    /// A reload finished: the new generation, or why it failed. Whoever asked
    /// for it gets this answer.
    Reloaded(Result<u32, String>),
    /// Exit main with this status once every generation is gone.
    Exit(i32),
}

#[derive(Debug)]
struct Entry {
    number: u32,
    state: State,
    /// Started by a reload request (not generation 1, not a replacement for
    /// a monitor that died): its outcome is a [`Action::Reloaded`].
    reload: bool,
}

/// Every live generation, oldest first.
#[derive(Debug, Default)]
pub struct Generations {
    entries: Vec<Entry>,
    last: u32,
    /// A reload was asked for while one was under way.
    reload_pending: bool,
    stopping: bool,
    /// Exit status once everything is gone, when stopping.
    exit_code: i32,
}

impl Generations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts generation 1.
    pub fn boot(&mut self) -> Vec<Action> {
        vec![self.start(false)]
    }

    fn start(&mut self, reload: bool) -> Action {
        self.last += 1;
        self.entries.push(Entry { number: self.last, state: State::Starting, reload });
        Action::Start(self.last)
    }

    /// Whether `number` was started by a reload request.
    pub fn is_reload(&self, number: u32) -> bool {
        self.entries.iter().any(|e| e.number == number && e.reload)
    }

    pub fn state(&self, number: u32) -> Option<State> {
        self.entries.iter().find(|e| e.number == number).map(|e| e.state)
    }

    /// Generations with their states, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u32, State)> + '_ {
        self.entries.iter().map(|e| (e.number, e.state))
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    fn set(&mut self, number: u32, state: State) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.number == number) {
            e.state = state;
        }
    }

    fn any(&self, state: State) -> bool {
        self.entries.iter().any(|e| e.state == state)
    }

    /// `SIGUSR1`, `SIGHUP` or a control request. Requests during a reload
    /// coalesce into one more after it.
    pub fn reload(&mut self) -> Vec<Action> {
        if self.stopping {
            return vec![Action::Reloaded(Err("panzer is stopping".into()))];
        }
        if self.any(State::Starting) {
            self.reload_pending = true;
            return Vec::new();
        }
        vec![self.start(true)]
    }

    /// Every worker of `number` is ready: it takes over, older ones drain.
    pub fn ready(&mut self, number: u32) -> Vec<Action> {
        if self.state(number) != Some(State::Starting) {
            return Vec::new();
        }
        self.set(number, State::Ready);
        let mut actions = Vec::new();
        for e in self.entries.iter_mut() {
            if e.number < number && matches!(e.state, State::Ready | State::Starting) {
                e.state = State::Draining;
                actions.push(Action::Drain(e.number));
            }
        }
        if self.is_reload(number) {
            actions.push(Action::Reloaded(Ok(number)));
        }
        if self.stopping {
            self.set(number, State::Draining);
            actions.push(Action::Drain(number));
        } else if self.reload_pending {
            self.reload_pending = false;
            actions.push(self.start(true));
        }
        actions
    }

    /// `number` cannot become ready (startup timeout, workers crashing, or its
    /// monitor died while starting): kill it, keep whatever serves.
    pub fn failed(&mut self, number: u32, reason: &str) -> Vec<Action> {
        match self.state(number) {
            Some(State::Starting) => {}
            _ => return Vec::new(),
        }
        self.set(number, State::Failed);
        let mut actions = vec![Action::Kill(number)];
        if self.stopping {
            return actions;
        }
        if number == 1 {
            // Nothing ever served: give up.
            self.stopping = true;
            self.exit_code = crate::error::EXIT_NOT_READY;
            return actions;
        }
        if self.is_reload(number) {
            actions.push(Action::Reloaded(Err(reason.to_string())));
        }
        if self.reload_pending || !self.any(State::Ready) {
            // Someone asked again, or nothing serves (the serving monitor died
            // and its replacement failed): try once more.
            let reload = std::mem::take(&mut self.reload_pending);
            actions.push(self.start(reload));
        }
        actions
    }

    /// The monitor of `number` has exited; `asked` is false when that was
    /// not main's doing.
    pub fn exited(&mut self, number: u32) -> Vec<Action> {
        let Some(index) = self.entries.iter().position(|e| e.number == number) else {
            return Vec::new();
        };
        let state = self.entries[index].state;
        let mut actions = Vec::new();
        match state {
            State::Starting => {
                actions = self.failed(number, "its monitor exited before it was ready");
                actions.retain(|a| *a != Action::Kill(number));
            }
            State::Ready if !self.stopping && !self.successor_on_its_way(number) => {
                // Died unasked while serving, and nothing newer takes over.
                actions.push(self.start(false));
            }
            _ => {}
        }
        self.entries.retain(|e| e.number != number);
        if self.stopping && self.entries.is_empty() {
            actions.push(Action::Exit(self.exit_code));
        }
        actions
    }

    /// Whether a generation newer than `number` is starting or serving.
    fn successor_on_its_way(&self, number: u32) -> bool {
        self.entries.iter().any(|e| e.number > number && matches!(e.state, State::Starting | State::Ready))
    }

    /// `SIGTERM`, `SIGINT` or a control `stop`: drain everything, then exit 0.
    pub fn stop(&mut self) -> Vec<Action> {
        if self.stopping {
            return Vec::new();
        }
        self.stopping = true;
        self.reload_pending = false;
        let mut actions = Vec::new();
        for e in self.entries.iter_mut() {
            match e.state {
                State::Starting => {
                    if e.reload {
                        actions.push(Action::Reloaded(Err("panzer is stopping".into())));
                    }
                    e.state = State::Draining;
                    actions.push(Action::Drain(e.number));
                }
                State::Ready => {
                    e.state = State::Draining;
                    actions.push(Action::Drain(e.number));
                }
                State::Draining | State::Failed => {}
            }
        }
        if self.entries.is_empty() {
            actions.push(Action::Exit(self.exit_code));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn serving() -> Generations {
        let mut g = Generations::new();
        assert_eq!(g.boot(), vec![Start(1)]);
        assert_eq!(g.ready(1), vec![]);
        g
    }

    #[test]
    fn reload_starts_next_then_drains_previous_when_ready() {
        let mut g = serving();
        assert_eq!(g.reload(), vec![Start(2)]);
        assert_eq!(g.state(1), Some(State::Ready));
        assert_eq!(g.ready(2), vec![Drain(1), Reloaded(Ok(2))]);
        assert_eq!(g.exited(1), vec![]);
        assert_eq!(g.iter().collect::<Vec<_>>(), vec![(2, State::Ready)]);
    }

    #[test]
    fn reloads_during_a_reload_coalesce_into_one_more() {
        let mut g = serving();
        assert_eq!(g.reload(), vec![Start(2)]);
        for _ in 0..20 {
            assert_eq!(g.reload(), vec![]);
        }
        assert_eq!(g.ready(2), vec![Drain(1), Reloaded(Ok(2)), Start(3)]);
        assert_eq!(g.ready(3), vec![Drain(2), Reloaded(Ok(3))]);
    }

    #[test]
    fn failed_reload_keeps_the_old_generation_serving() {
        let mut g = serving();
        g.reload();
        assert_eq!(
            g.failed(2, "not ready after 1s"),
            vec![Kill(2), Reloaded(Err("not ready after 1s".into()))]
        );
        assert_eq!(g.state(1), Some(State::Ready));
        assert_eq!(g.exited(2), vec![]);
        assert_eq!(g.reload(), vec![Start(3)]);
    }

    #[test]
    fn generation_one_failing_ends_main_with_status_one() {
        let mut g = Generations::new();
        g.boot();
        assert_eq!(g.failed(1, "workers keep crashing"), vec![Kill(1)]);
        assert_eq!(g.exited(1), vec![Exit(1)]);
    }

    #[test]
    fn a_serving_monitor_that_dies_is_replaced() {
        let mut g = serving();
        assert_eq!(g.exited(1), vec![Start(2)]);
        assert_eq!(g.ready(2), vec![]);
    }

    #[test]
    fn a_starting_monitor_that_dies_rolls_back() {
        let mut g = serving();
        g.reload();
        assert_eq!(g.exited(2), vec![Reloaded(Err("its monitor exited before it was ready".into()))]);
        assert_eq!(g.state(1), Some(State::Ready));
    }

    #[test]
    fn stop_drains_everything_and_exits_zero_when_all_are_gone() {
        let mut g = serving();
        g.reload();
        assert_eq!(g.stop(), vec![Drain(1), Reloaded(Err("panzer is stopping".into())), Drain(2)]);
        assert_eq!(g.reload(), vec![Reloaded(Err("panzer is stopping".into()))]);
        assert_eq!(g.exited(1), vec![]);
        assert_eq!(g.exited(2), vec![Exit(0)]);
    }
}
