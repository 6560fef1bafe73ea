//! The configuration file (`--config`), `--env` and `--chdir`: what the
//! workers see, what a reload re-reads, and the one-line refusals.

use std::path::Path;

use nix::sys::signal::Signal;

use crate::bad_input::fails;
use crate::harness::*;

/// Writes `text` as `name` in `dir`, replacing it at once (as an editor's save does).
fn write(dir: &TestDir, name: &str, text: &str) -> String {
    let path = dir.join(name);
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.to_str().unwrap().to_string()
}

/// `command = [the server fixture]`, answering with `ECHO_ENV`'s variables.
fn server_command(echo: &str) -> String {
    format!("command = [\"{}\"]\nenv = {{ ECHO_ENV = \"{echo}\" }}\n", example("server"))
}

/// `panzer --config FILE` on the loopback, port 0.
fn with_file(file: &str) -> Panzer {
    Panzer::with_args(&["--config", file, "--bind", "127.0.0.1:0"]).start()
}

/// A file for one worker of the server fixture, and panzer running it.
fn one_worker(dir: &TestDir) -> (String, Panzer) {
    let file = write(dir, "panzer.toml", &format!("count = 1\n{}", server_command("-")));
    let panzer = with_file(&file);
    (file, panzer)
}

/// The workers' count in the serving generation, once `generation` is ready.
fn workers(panzer: &Panzer, generation: u32) -> usize {
    panzer.wait_ready(generation);
    let status = panzer.status();
    let serving = status["generations"].as_array().unwrap().iter().find(|g| g["generation"] == generation);
    serving.map_or(0, |g| g["workers"].as_array().unwrap().len())
}

#[test]
fn the_command_line_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = TestDir::new("config-layers");
    let text = format!(
        "count = 3\ngraceful-timeout = \"5s\"\n{}",
        server_command("GREETING,OTHER")
            .replace("ECHO_ENV", "GREETING = \"file\", OTHER = \"file\", ECHO_ENV")
    );
    let file = write(&dir, "panzer.toml", &text);

    // The file over the default (one worker per CPU is not 3 here).
    let panzer = with_file(&file);
    assert_eq!(workers(&panzer, 1), 3);
    let answer = get(panzer.port(0), "/").unwrap();
    assert_eq!((answer.field("GREETING"), answer.field("OTHER")), ("file".into(), "file".into()));
    drop(panzer);

    // The environment over the file; `--env` over the file's `env`, key by key.
    let panzer = Panzer::with_args(&["--bind", "127.0.0.1:0", "--env", "GREETING=cli"])
        .envs(&[("PANZER_CONFIG", &file), ("PANZER_COUNT", "2")])
        .start();
    assert_eq!(workers(&panzer, 1), 2);
    let answer = get(panzer.port(0), "/").unwrap();
    assert_eq!((answer.field("GREETING"), answer.field("OTHER")), ("cli".into(), "file".into()));
    drop(panzer);

    // The command line over the environment.
    let panzer = Panzer::with_args(&["--config", &file, "--bind", "127.0.0.1:0", "--count", "1"])
        .env("PANZER_COUNT", "2")
        .start();
    assert_eq!(workers(&panzer, 1), 1);
}

#[test]
fn a_reload_rereads_the_file_and_starts_the_new_generation_with_its_count_env_and_command() {
    let dir = TestDir::new("config-reload");
    let server = example("server");
    let first = format!(
        "count = 1\ncommand = [\"{server}\"]\nenv = {{ ECHO_ENV = \"GREETING,MARK\", GREETING = \"one\" }}\n"
    );
    let file = write(&dir, "panzer.toml", &first);
    let panzer = with_file(&file);
    let port = panzer.port(0);
    assert_eq!(workers(&panzer, 1), 1);
    assert_eq!(get(port, "/").unwrap().field("GREETING"), "one");

    let second = format!(
        "count = 2\ncommand = [\"/bin/sh\", \"-c\", \"MARK=b exec {server}\"]\n\
         env = {{ ECHO_ENV = \"GREETING,MARK\", GREETING = \"two\" }}\n"
    );
    write(&dir, "panzer.toml", &second);
    let out = panzer.ctl(&["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(workers(&panzer, 2), 2);
    panzer.wait_for_line("generation 1 stopped");
    let answer = get(port, "/").unwrap();
    assert_eq!(answer.field("generation"), "2");
    assert_eq!((answer.field("GREETING"), answer.field("MARK")), ("two".into(), "b".into()));
    panzer.wait_for_line("command, count, env changed: the new generation starts with it");
}

#[test]
fn a_changed_setting_that_needs_a_restart_is_logged_as_ignored_and_not_applied() {
    let dir = TestDir::new("config-restart");
    let (a, b) = (dir.join("a.pid"), dir.join("b.pid"));
    let text = |pid: &Path, count: u32| {
        format!("count = {count}\npid-file = \"{}\"\n{}", pid.display(), server_command("PANZER_WORKER"))
    };
    let file = write(&dir, "panzer.toml", &text(&a, 1));
    let panzer = with_file(&file);
    assert_eq!(workers(&panzer, 1), 1);
    assert!(a.exists());

    write(&dir, "panzer.toml", &text(&b, 2));
    panzer.signal(nix::sys::signal::Signal::SIGHUP);
    // The count is applied; the pid file stays where it was.
    assert_eq!(workers(&panzer, 2), 2);
    panzer.wait_for_line("pid-file changed: ignored until restart");
    assert!(a.exists() && !b.exists(), "the pid file moved before a restart");
}

#[test]
fn a_file_that_no_longer_reads_fails_the_reload_with_the_reason_and_the_old_generation_serves_on() {
    let dir = TestDir::new("config-broken");
    let (file, panzer) = one_worker(&dir);
    let port = panzer.port(0);
    assert_eq!(workers(&panzer, 1), 1);

    write(&dir, "panzer.toml", &format!("{}count = 0\n", server_command("-")));
    let out = panzer.ctl(&["reload"]);
    assert_ne!(out.code, 0);
    let reason = format!("{file}:3: count: invalid value '0'");
    assert!(out.stderr.contains(&reason), "{}", out.stderr);
    panzer.wait_for_line(&format!("reload failed: {reason}"));

    write(&dir, "panzer.toml", "count = \n");
    let out = panzer.ctl(&["reload"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains(&format!("{file}:1: ")), "{}", out.stderr);

    // A command that cannot run is refused before a generation tries it.
    write(&dir, "panzer.toml", "command = [\"./no/such/server\"]\n");
    let out = panzer.ctl(&["reload"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("cannot run ./no/such/server: no such file or directory"), "{}", out.stderr);

    // A file that no longer names a command says which file and what is missing.
    write(&dir, "panzer.toml", "count = 1\n");
    let out = panzer.ctl(&["reload"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains(&format!("{file}: ")) && out.stderr.contains("<COMMAND>"), "{}", out.stderr);

    assert_eq!(get(port, "/").unwrap().field("generation"), "1");
    assert_eq!(panzer.status()["reloads"]["failed"], 4);
}

#[test]
fn a_reload_whose_generation_fails_leaves_the_last_good_settings_in_force() {
    for strategy in ["all", "rolling"] {
        let dir = TestDir::new("config-rollback");
        let good = format!("count = 1\nreload-strategy = \"{strategy}\"\nstartup-timeout = \"2s\"\n");
        let file = write(&dir, "panzer.toml", &format!("{good}{}", server_command("-")));
        let panzer = with_file(&file);
        let port = panzer.port(0);
        assert_eq!(workers(&panzer, 1), 1);

        // Two workers of a server that exits at once: the file reads, the
        // generation it starts fails.
        let bad = format!(
            "count = 2\nreload-strategy = \"{strategy}\"\nstartup-timeout = \"2s\"\ncommand = [\"false\"]\n"
        );
        write(&dir, "panzer.toml", &bad);
        let out = panzer.ctl(&["reload"]);
        assert_ne!(out.code, 0, "{strategy}: {}", out.stdout);
        panzer.wait_for_line("reload failed");
        let status = panzer.status();
        assert_eq!(status["count"], 1, "{strategy}: the failed file's count stays out:\n{}", panzer.log());
        assert_eq!(get(port, "/").unwrap().field("generation"), "1");

        // What generation 1's monitor is replaced with, if it dies, is the
        // last good configuration, not the failed one.
        let monitor = crate::reload::monitor_of(&panzer, 1);
        nix::sys::signal::kill(monitor, nix::sys::signal::Signal::SIGKILL).unwrap();
        assert_eq!(workers(&panzer, 3), 1, "{strategy}:\n{}", panzer.log());
        assert_eq!(get(port, "/").unwrap().field("generation"), "3");
    }
}

#[test]
fn an_unknown_key_a_wrong_type_or_a_bad_value_names_the_file_line_and_key_and_exits_2() {
    let dir = TestDir::new("config-refused");
    for (text, expected) in [
        (
            "count = 2\ngraceful_timeout = \"1s\"\n",
            "2: graceful_timeout: unknown key (keys are spelled as the options are: graceful-timeout)",
        ),
        ("\n\nfrobnicate = 1\n", "3: frobnicate: unknown key"),
        // A file that says `check` would only ever check, never serve.
        ("check = true\n", "1: check: unknown key"),
        ("count = \"3\"\n", "1: count: expected an integer"),
        ("count = 3.0\n", "1: count: expected an integer"),
        ("chdir = 5\n", "1: chdir: expected a string"),
        ("tag-output = \"yes\"\n", "1: tag-output: expected true or false"),
        ("bind = [\"nonsense\"]\n", "1: bind: invalid value 'nonsense'"),
        ("count = 0\n", "1: count: invalid value '0'"),
        ("command = []\n", "1: command: expected a non-empty array of strings"),
        ("env = { LISTEN_FDS = \"9\" }\n", "1: env: LISTEN_FDS: panzer sets LISTEN_* for its workers itself"),
    ] {
        let file = write(&dir, "panzer.toml", text);
        let (code, log) = fails(Panzer::with_args(&["--config", &file, "sleep", "1"]));
        assert_eq!(code, 2, "{text}: {log}");
        let line = format!("panzer: {file}:{expected}");
        assert!(log.lines().any(|l| l.starts_with(&line)), "{text}: wanted {line:?} in {log}");
        assert_eq!(log.trim().lines().count(), 1, "{log}");
    }
    let (code, log) =
        fails(Panzer::with_args(&["--config", &dir.join("missing.toml").display().to_string(), "sleep"]));
    assert_eq!(code, 2);
    assert!(log.contains("missing.toml: no such file or directory"), "{log}");
}

#[test]
fn env_and_chdir_on_the_command_line_reach_the_worker() {
    let dir = TestDir::new("config-env-chdir");
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let work = work.to_str().unwrap().to_string();
    // A relative COMMAND is found from DIR.
    std::os::unix::fs::symlink(example("server"), dir.join("work/srv")).unwrap();
    let panzer = Panzer::new("./srv")
        .args(&["--env", "ECHO_ENV=GREETING", "--env", "GREETING=hello=world", "--env", "ECHO_CWD=1"])
        .args(&["--chdir", &work])
        .start();
    panzer.wait_ready(1);
    let answer = get(panzer.port(0), "/").unwrap();
    assert_eq!(answer.field("GREETING"), "hello=world");
    assert_eq!(answer.field("cwd"), work);
    drop(panzer);

    let (code, log) = fails(Panzer::new("sleep").args(&["--chdir", "/no/such/dir"]));
    assert_eq!(code, 2);
    assert_eq!(log.trim(), "panzer: --chdir /no/such/dir: no such file or directory");
    for (word, why) in
        [("=1", "the variable's name is empty"), ("NOTIFY_SOCKET=x", "panzer sets NOTIFY_SOCKET")]
    {
        let (code, log) = fails(Panzer::new("sleep").args(&["--env", word]));
        assert_eq!(code, 2);
        assert!(log.contains(why), "{log}");
    }
}

#[test]
fn an_upgrade_keeps_the_file_as_last_applied_not_as_it_is_now() {
    let dir = TestDir::new("config-upgrade");
    let (a, b) = (dir.join("a.pid"), dir.join("b.pid"));
    let text = |pid: &Path, greeting: &str| {
        let env = format!("GREETING = \"{greeting}\", ECHO_ENV");
        format!(
            "count = 1\npid-file = \"{}\"\n{}",
            pid.display(),
            server_command("GREETING").replace("ECHO_ENV", &env)
        )
    };
    let file = write(&dir, "panzer.toml", &text(&a, "one"));
    let panzer = with_file(&file);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    write(&dir, "panzer.toml", &text(&b, "two"));
    assert_eq!(panzer.ctl(&["reload"]).code, 0);
    panzer.wait_for_line("generation 1 stopped");
    assert_eq!(get(port, "/").unwrap().field("GREETING"), "two");

    // Edited again, not reloaded: the upgraded main must not pick it up.
    write(&dir, "panzer.toml", &text(&b, "three"));
    let out = panzer.ctl(&["upgrade"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    panzer.wait_for_line("resumed as panzer");
    // A replacement generation starts from main's configuration.
    for monitor in panzer.monitors() {
        nix::sys::signal::kill(monitor, nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    panzer.wait_ready(3);
    let answer = eventually(PATIENCE, "generation 3 to answer", || {
        get(port, "/").ok().filter(|r| r.field("generation") == "3")
    });
    assert_eq!(answer.field("GREETING"), "two");
    assert!(a.exists() && !b.exists(), "the pid file moved without a restart");
}

#[test]
fn a_reread_follows_no_swapped_link_to_another_owners_file_nor_blocks_on_a_fifo() {
    let dir = TestDir::new("config-swap");
    let (file, panzer) = one_worker(&dir);
    panzer.wait_ready(1);
    let owner = nix::unistd::geteuid().as_raw();
    let refuse = |why: &str| {
        let out = panzer.ctl(&["reload"]);
        assert_ne!(out.code, 0);
        assert!(out.stderr.contains(&format!("--config {file}: {why}")), "{}", out.stderr);
    };

    // Someone else's file, linked in its place (only root can make one).
    if nix::unistd::geteuid().is_root() {
        let theirs = dir.join("theirs.toml");
        std::fs::write(&theirs, "count = 2\n").unwrap();
        std::os::unix::fs::lchown(&theirs, Some(owner + 1), None).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&theirs, &file).unwrap();
        refuse(&format!("now owned by uid {}, not uid {owner} as at start", owner + 1));
    }

    std::fs::remove_file(&file).unwrap();
    nix::unistd::mkfifo(Path::new(&file), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    refuse("not a regular file");

    std::fs::remove_file(&file).unwrap();
    write(&dir, "panzer.toml", &"#".repeat(2 << 20));
    refuse("larger than 1024 KiB");
    assert_eq!(get(panzer.port(0), "/").unwrap().field("generation"), "1");
}

#[test]
fn env_and_chdir_reach_the_forked_workers_of_library_mode() {
    let dir = TestDir::new("config-preload");
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let panzer = Panzer::new(example("preload"))
        .arg("--preload")
        .count(1)
        .env("PRELOAD_MB", "1")
        .args(&["--env", "GREETING=lib", "--chdir", work.to_str().unwrap()])
        .start();
    panzer.wait_ready(1);
    let worker = get(panzer.port(0), "/").unwrap().pid();
    assert_eq!(environ(worker).get("GREETING").map(String::as_str), Some("lib"));
    assert_eq!(std::fs::read_link(format!("/proc/{worker}/cwd")).unwrap(), work);
}

#[test]
fn as_root_a_file_other_users_may_write_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: only root's panzer refuses it (it runs the file's command as root)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("config-open");
    let file = write(&dir, "panzer.toml", &format!("count = 1\n{}", server_command("-")));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, log) = fails(Panzer::with_args(&["--config", &file, "--bind", "127.0.0.1:0"]));
    assert_eq!(code, 2, "{log}");
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(log.contains(&format!("--config {file}: writable by other users (mode 0666)")), "{log}");
}

#[test]
fn a_reload_asked_for_while_one_starts_reads_the_file_only_when_it_starts() {
    let dir = TestDir::new("config-queued");
    // Workers take 500 ms to be ready: the second reload comes while the
    // first one's generation starts.
    let file_with = |count: u32| {
        format!(
            "count = {count}\ncommand = [\"{}\"]\nenv = {{ READY_DELAY_MS = \"500\" }}\n",
            example("server")
        )
    };
    let file = write(&dir, "panzer.toml", &file_with(1));
    let panzer = with_file(&file);
    panzer.wait_ready(1);
    write(&dir, "panzer.toml", &file_with(2));
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_for_line("starting generation 2: 2 worker(s)");
    write(&dir, "panzer.toml", &file_with(3));
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_for_line("reload queued behind the one under way");
    assert_eq!(workers(&panzer, 3), 3, "{}", panzer.log());
    // The second file's count went to the reload that read it, never to
    // the generation the first one started.
    let log = panzer.log();
    assert!(!log.contains("gen 2]: now running 3 worker(s)"), "{log}");
    assert!(log.contains("starting generation 3: 3 worker(s)"), "{log}");
}
