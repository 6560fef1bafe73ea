//! `balance`: how kept-alive connections spread over the workers with
//! `--balance shared` and `--balance round-robin`, and what it does to
//! throughput: for N = 2, 4 workers and C = N, 2N connections, over a few
//! short trials, each worker's share of the requests and the req/s; the
//! same for N clients on fresh connections; and the slowest request on fresh connections while one of 4 workers is
//! stopped (`SIGSTOP`) for [`STALL`]: the trade-off a queue per slot brings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::bench::{line, Bench, Outcome};
use crate::load::{connect, REQUEST_KEEP};
use crate::measured::PATIENCE;
use crate::stats::median;

/// Trials per (mode, N, C), and how long each one sends requests.
const TRIALS: usize = 8;
const TRIAL: Duration = Duration::from_millis(300);

/// How long one worker stays stopped, and the fresh-connection clients meanwhile.
const STALL: Duration = Duration::from_millis(1500);
const STALL_CLIENTS: usize = 8;

/// Fresh connections from [`STALL_CLIENTS`] clients while the worker that
/// answers first is stopped for [`STALL`]: the slowest request, how many
/// failed, and how many were answered.
fn stalled(port: u16) -> Result<(Duration, u64, u64), String> {
    let mut first = connect(port).map_err(|e| format!("connect: {e}"))?;
    let victim = nix::unistd::Pid::from_raw(ask(&mut first)?);
    let stop = AtomicBool::new(false);
    crate::harness::stop_process(victim);
    let results: Vec<(Duration, u64, u64)> = thread::scope(|s| {
        let clients: Vec<_> = (0..STALL_CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    let (mut slowest, mut failed, mut ok) = (Duration::ZERO, 0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        match connect(port).map_err(|e| e.to_string()).and_then(|mut c| {
                            use std::io::Write;
                            c.write_all(crate::load::REQUEST_CLOSE).map_err(|e| e.to_string())?;
                            crate::harness::read_response(&mut c).map_err(|e| e.to_string())
                        }) {
                            Ok(_) => ok += 1,
                            Err(_) => failed += 1,
                        }
                        slowest = slowest.max(started.elapsed());
                    }
                    (slowest, failed, ok)
                })
            })
            .collect();
        thread::sleep(STALL);
        let _ = nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGCONT);
        thread::sleep(STALL / 3);
        stop.store(true, Ordering::Relaxed);
        clients.into_iter().map(|c| c.join().expect("a client thread panicked")).collect()
    });
    Ok(results
        .iter()
        .fold((Duration::ZERO, 0, 0), |(slowest, failed, ok), r| (slowest.max(r.0), failed + r.1, ok + r.2)))
}

/// What one trial saw: the connections each worker pid got, the requests
/// each answered, and the req/s.
type Trial = (BTreeMap<i32, usize>, BTreeMap<i32, u64>, f64);

/// Runs each of `clients` on a thread of its own for [`TRIAL`], then tells
/// them to stop (the flag each is given) and waits for them: what each
/// returned, and the seconds it took.
fn for_a_trial<T: Send, F: FnOnce(&AtomicBool) -> T + Send>(clients: Vec<F>) -> (Vec<T>, f64) {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let results = thread::scope(|s| {
        let threads: Vec<_> = clients.into_iter().map(|client| s.spawn(|| client(&stop))).collect();
        thread::sleep(TRIAL);
        stop.store(true, Ordering::Relaxed);
        threads.into_iter().map(|t| t.join().expect("a client thread panicked")).collect()
    });
    (results, started.elapsed().as_secs_f64())
}

/// One trial: `connections` kept-alive connections opened one after the
/// other, each asking back to back for [`TRIAL`].
fn trial(port: u16, connections: usize) -> Result<Trial, String> {
    let mut streams = Vec::new();
    let mut held = BTreeMap::new();
    for _ in 0..connections {
        let mut stream = connect(port).map_err(|e| format!("connect: {e}"))?;
        let pid = ask(&mut stream)?;
        *held.entry(pid).or_insert(0) += 1;
        streams.push((stream, pid));
    }
    let clients = streams.into_iter().map(|(mut stream, pid)| {
        move |stop: &AtomicBool| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                ask(&mut stream)?;
                n += 1;
            }
            Ok::<_, String>((pid, n))
        }
    });
    let (counts, elapsed) = for_a_trial(clients.collect());
    let mut answered = BTreeMap::new();
    for count in counts {
        let (pid, n) = count?;
        *answered.entry(pid).or_insert(0) += n;
    }
    let total: u64 = answered.values().sum();
    Ok((held, answered, total as f64 / elapsed))
}

/// One trial on fresh connections: `clients` clients, each opening a
/// connection per request for [`TRIAL`]; the requests each worker pid
/// answered, and the req/s.
fn fresh_trial(port: u16, clients: usize) -> Result<(BTreeMap<i32, u64>, f64), String> {
    let client = |stop: &AtomicBool| {
        let mut pids = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let mut stream = connect(port).map_err(|e| format!("connect: {e}"))?;
            pids.push(ask(&mut stream)?);
        }
        Ok::<_, String>(pids)
    };
    let (pids, elapsed) = for_a_trial(vec![client; clients]);
    let mut answered = BTreeMap::new();
    for pid in pids.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten() {
        *answered.entry(pid).or_insert(0) += 1;
    }
    let total: u64 = answered.values().sum();
    Ok((answered, total as f64 / elapsed))
}

/// Each worker's share of `answered`, the largest first, as `50%/50%`
/// (`workers` entries: a worker that answered nothing shows 0%).
fn shares(answered: &BTreeMap<i32, u64>, workers: usize) -> String {
    let total: u64 = answered.values().sum();
    let mut share: Vec<u64> = answered.values().map(|&n| n * 100 / total.max(1)).collect();
    share.resize(workers, 0);
    share.sort_unstable_by(|a, b| b.cmp(a));
    share.iter().map(|s| format!("{s}%")).collect::<Vec<_>>().join("/")
}

/// One kept-alive request; the pid that answered.
fn ask(stream: &mut std::net::TcpStream) -> Result<i32, String> {
    use std::io::Write;
    stream.write_all(REQUEST_KEEP).map_err(|e| format!("write: {e}"))?;
    let response = crate::harness::read_response(stream).map_err(|e| format!("read: {e}"))?;
    response.find("pid").and_then(|p| p.parse().ok()).ok_or_else(|| "no pid in the answer".to_owned())
}

pub(crate) fn balance(bench: &Bench) -> Outcome {
    let mut lines = Vec::new();
    for mode in ["shared", "round-robin"] {
        for workers in [2usize, 4] {
            let count = workers.to_string();
            let mut panzer =
                bench.panzer(&["--count", &count, "--ready", "notify", "--balance", mode], &[])?;
            let port = panzer.port()?;
            panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
            for connections in [workers, 2 * workers] {
                let mut uneven = 0;
                let mut idle = 0;
                let mut rates = Vec::new();
                let mut shares = Vec::new();
                for _ in 0..TRIALS {
                    let (held, answered, rate) = trial(port, connections)?;
                    let each = connections / workers;
                    if held.len() < workers || held.values().any(|&n| n != each) {
                        uneven += 1;
                    }
                    idle += usize::from(answered.len() < workers);
                    shares.push(self::shares(&answered, workers));
                    rates.push(rate);
                }
                let name = format!("balance {mode} N={workers} C={connections}");
                let figures = format!(
                    "uneven in {uneven}/{TRIALS} trials, a worker idle in {idle}/{TRIALS}; shares {}; median {:.0} req/s",
                    shares.join(" "),
                    median(&rates)
                );
                let (target, pass) = match mode {
                    "round-robin" => ("every worker C/N connections in every trial", uneven == 0),
                    _ => ("(the baseline)", true),
                };
                let repro = bench.repro(
                    "balance",
                    &format!("--count {workers} --ready notify --balance {mode}"),
                    &format!("{connections} kept-alive connections"),
                );
                lines.push(line(&name, &figures, target, pass, &repro));
            }
            // Fresh connections: a connection per request, N clients.
            let mut idle = 0;
            let mut rates = Vec::new();
            let mut all_shares = Vec::new();
            for _ in 0..TRIALS {
                let (answered, rate) = fresh_trial(port, workers)?;
                idle += usize::from(answered.len() < workers);
                all_shares.push(shares(&answered, workers));
                rates.push(rate);
            }
            let name = format!("balance {mode} N={workers} fresh");
            let figures = format!(
                "{workers} clients, a connection per request: a worker idle in {idle}/{TRIALS}; shares {}; median {:.0} req/s",
                all_shares.join(" "),
                median(&rates)
            );
            let repro = bench.repro(
                "balance",
                &format!("--count {workers} --ready notify --balance {mode}"),
                &format!("{workers} clients on fresh connections"),
            );
            lines.push(line(&name, &figures, "(measured)", idle == 0, &repro));
            if workers == 4 {
                let (slowest, failed, ok) = stalled(port)?;
                let name = format!("balance {mode} stalled");
                let figures = format!(
                    "one of 4 workers stopped for {} ms under {STALL_CLIENTS} fresh-connection clients: \
                     slowest request {:.0} ms, {failed} failed of {}",
                    STALL.as_millis(),
                    slowest.as_secs_f64() * 1000.0,
                    ok + failed
                );
                let repro = bench.repro(
                    "balance",
                    &format!("--count 4 --ready notify --balance {mode}"),
                    "kill -STOP <worker>",
                );
                lines.push(line(&name, &figures, "(measured: the trade-off)", failed == 0, &repro));
            }
        }
    }
    Ok(lines)
}
