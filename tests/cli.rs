//! The CLI without pushes: bad input is one sentence on stderr, a non-zero exit, and no change;
//! keys keep foreign authorized_keys lines; apps:create and the daemon's lifecycle.

mod support;

use std::fs;
use std::time::Duration;

use support::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Fails with exactly one non-empty line on stderr.
fn assert_one_sentence_failure(out: &std::process::Output, needle: &str) {
    let err = stderr_of(out);
    assert!(
        !out.status.success(),
        "expected failure, got success; stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
}

#[test]
fn bad_input_is_one_sentence_and_changes_nothing() {
    let slip = Slipway::new();
    for bad in ["Bad_Name", "a", "../etc", "x;rm"] {
        assert_one_sentence_failure(&slip.cmd(&["apps:create", bad]), "is not a valid app name");
    }
    assert_one_sentence_failure(&slip.cmd(&["ps", "nope"]), "app 'nope' does not exist");
    assert_one_sentence_failure(&slip.cmd(&["logs", "nope"]), "app 'nope' does not exist");
    assert_one_sentence_failure(&slip.cmd_stdin(&["keys:add", "bob"], "not a key\n"), "OpenSSH public key");
    assert_one_sentence_failure(&slip.cmd_stdin(&["keys:add", "bad name"], "x"), "not a valid key name");
    assert_one_sentence_failure(
        &slip.cmd(&["status"]),
        "daemon is not running; start it with: slipway --home",
    );
    assert!(slip.apps_json().is_empty());
    assert!(!slip.authorized_keys().exists(), "a failed keys:add wrote authorized_keys");
    assert!(!slip.home.join("repos").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false));

    let unknown = slip.cmd(&["frobnicate"]);
    assert!(!unknown.status.success());
    assert!(stderr_of(&unknown).contains("unrecognized subcommand 'frobnicate'"));
}

#[test]
fn apps_create_and_destroy_without_a_daemon() {
    let slip = Slipway::new();
    slip.cmd_ok(&["apps:create", "hello"]);
    assert!(slip.home.join("repos/hello.git/hooks/pre-receive").is_file());
    assert_one_sentence_failure(&slip.cmd(&["apps:create", "hello"]), "app 'hello' already exists");
    let info = slip.app_info("hello");
    assert_eq!(info.get("release"), Some(&serde_json::Value::Null));
    slip.cmd_ok(&["apps:destroy", "hello", "--confirm", "hello"]);
    assert!(slip.apps_json().is_empty());
    assert!(!slip.home.join("repos/hello.git").exists());
}

#[test]
fn keys_keep_lines_slipway_did_not_write() {
    let slip = Slipway::new();
    let key = slip.client_key("k1");
    let other = slip.client_key("k2");
    fs::create_dir_all(slip.home.join(".ssh")).unwrap();
    let foreign = format!("{} operator@console", other.public.trim());
    fs::write(slip.authorized_keys(), format!("# operator's own key\n{foreign}\n")).unwrap();

    slip.add_key("alice", &key);
    let text = fs::read_to_string(slip.authorized_keys()).unwrap();
    assert!(text.contains("# operator's own key\n") && text.contains(&foreign), "{text}");
    assert!(text.contains("ssh-serve --key alice\",restrict"), "{text}");
    // The same key twice, or the same name twice, is refused.
    assert_one_sentence_failure(
        &slip.cmd_stdin(&["keys:add", "bob"], &key.public),
        "already added as 'alice'",
    );
    assert_one_sentence_failure(&slip.cmd_stdin(&["keys:add", "alice"], &other.public), "already exists");
    let listed = slip.json(&["keys", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));

    slip.cmd_ok(&["keys:remove", "alice"]);
    let text = fs::read_to_string(slip.authorized_keys()).unwrap();
    assert!(!text.contains("ssh-serve"), "{text}");
    assert!(text.contains(&foreign), "{text}");
    assert_one_sentence_failure(&slip.cmd(&["keys:remove", "alice"]), "no key named 'alice'");
}

#[test]
fn one_daemon_per_home_and_stop_leaves_a_clean_socket() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let second = slip.cmd(&["daemon", "--foreground"]);
    assert_one_sentence_failure(&second, "already running");
    slip.cmd_ok(&["daemon", "--stop"]);
    assert!(wait_until(Duration::from_secs(10), || !slip.cmd(&["status"]).status.success()));
    assert!(!slip.home.join("run/slipway.sock").exists());
    // Detached start: returns once the socket answers.
    slip.cmd_ok(&["daemon"]);
    assert!(slip.cmd(&["status"]).status.success());
    slip.cmd_ok(&["daemon", "--stop"]);
}
