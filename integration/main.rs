//! Process-level tests: each drives the real `panzer` binary as an operator
//! would and checks what an operator sees — responses, pids, exit codes and
//! log lines. Run with plain `cargo test`, which also builds the example
//! server (`examples/hello.rs`) and the fixtures under integration/fixtures/.

mod harness;

mod activation;
mod admin;
mod bad_input;
mod balance;
mod check;
mod config;
mod container;
mod control;
mod deploy;
mod descriptors;
mod docs;
mod draining;
mod example;
mod faults;
mod lifecycle;
mod log_pipe;
mod logs;
mod metrics;
mod orphans;
mod preload;
mod privileges;
mod ready;
mod real_servers;
mod reload;
mod resilience;
mod rolling;
mod rollout;
mod security;
mod stopping;
mod strays;
mod supervision;
mod systemd;
mod tag_output;
mod top;
mod upgrade;
mod worker_contract;
