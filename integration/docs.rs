//! Shell completions and man pages, as `panzerctl completions` and
//! `panzerctl man` print them for both programs.

use crate::harness::*;

#[test]
fn the_bash_completion_of_panzer_offers_its_options_and_is_valid_bash() {
    let out = panzerctl(&["completions", "bash", "panzer"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for option in ["--count", "--graceful-timeout", "--bind", "--ready"] {
        assert!(out.stdout.contains(option), "no {option} in\n{}", out.stdout);
    }
    assert!(out.stdout.contains("complete ") && out.stdout.contains("panzer"), "{}", out.stdout);
    let dir = TestDir::new("completion");
    let script = dir.join("panzer.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    // Sourced into a shell, it registers a completion for panzer.
    let sourced = std::process::Command::new("bash")
        .args(["-c", &format!("source {} && complete -p panzer", script.display())])
        .output()
        .unwrap();
    assert!(sourced.status.success(), "{}", String::from_utf8_lossy(&sourced.stderr));
}

#[test]
fn completions_cover_panzerctl_and_the_other_shells() {
    let bash = panzerctl(&["completions", "bash"]);
    assert_eq!(bash.code, 0, "{}", bash.stderr);
    for word in ["status", "reload", "metrics", "top", "--pid-file"] {
        assert!(bash.stdout.contains(word), "no {word} in panzerctl's completion");
    }
    for shell in ["zsh", "fish"] {
        let out = panzerctl(&["completions", shell, "panzer"]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("graceful-timeout"), "{shell}:\n{}", out.stdout);
    }
    let out = panzerctl(&["completions", "tcsh"]);
    assert_eq!(out.code, 2, "an unknown shell is a usage error");
}

#[test]
fn the_man_pages_are_roff_naming_every_option() {
    let out = panzerctl(&["man", "panzer"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let page = out.stdout;
    assert!(page.contains(".TH panzer 1"), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS"] {
        assert!(page.contains(section), "no {section} in\n{page}");
    }
    // roff escapes the dashes of options.
    for option in ["count", "bind", "graceful\\-timeout", "startup\\-timeout", "pid\\-file"] {
        assert!(page.contains(&format!("\\fB\\-\\-{option}\\fR")), "no --{option} in\n{page}");
    }
    assert!(page.contains("PANZER_GRACEFUL_TIMEOUT"), "the environment variables are named");
    let out = panzerctl(&["man"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains(".TH panzerctl 1") && out.stdout.contains("metrics"), "{}", out.stdout);
    // man itself can format it, when it is installed.
    if std::process::Command::new("man").arg("--version").output().is_ok() {
        let dir = TestDir::new("man");
        let file = dir.join("panzer.1");
        std::fs::write(&file, &page).unwrap();
        let shown =
            std::process::Command::new("man").arg("-l").arg(&file).env("MANPAGER", "cat").output().unwrap();
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(shown.status.success() && text.contains("--graceful-timeout"), "{text}");
    }
}
