//! End-to-end: key roles through a real sshd. The first key is an admin; a deploy key reaches
//! only its apps, and only the commands a deploy needs.

mod support;

use std::process::Output;

use serde_json::Value;
use support::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Refused: exit 1, one line on stderr naming the key and what it may do.
fn assert_refused(out: &Output, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {}", describe(out));
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.contains("key 'ci' may not") && err.contains(what), "{what}: {err}");
    assert!(err.contains("only push to and operate alpha"), "{what}: {err}");
}

#[test]
fn deploy_keys_reach_only_their_apps() {
    let env = PushEnv::start(|_| {});
    let (slip, sshd) = (&env.slip, &env.sshd);
    let keys = slip.json(&["keys", "--json"]);
    assert_eq!(keys[0]["name"], "alice");
    assert_eq!(keys[0]["role"], "admin", "the first key is an admin: {keys}");

    let ci = slip.client_key("id_ci");
    let out = slip.cmd_stdin(&["keys:add", "ci", "--apps", "alpha"], &format!("{}\n", ci.public));
    assert!(out.status.success(), "{}", describe(&out));
    let keys = slip.json(&["keys", "--json"]);
    let row = keys.as_array().unwrap().iter().find(|k| k["name"] == "ci").cloned().unwrap_or(Value::Null);
    assert_eq!(
        (row["role"].as_str(), row["apps"].clone()),
        (Some("deploy"), serde_json::json!(["alpha"])),
        "{keys}"
    );
    let table = slip.cmd_ok(&["keys"]);
    assert!(
        table.contains("ROLE") && table.lines().any(|l| l.starts_with("ci") && l.contains("deploy")),
        "{table}"
    );

    // It pushes to its app...
    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(
        &[("Procfile", "web: python3 -m http.server $PORT --bind 0.0.0.0\n"), ("index.html", "hi")],
        "hi",
    );
    let (ok, output) = repo.push(&sshd.url("alpha"), &sshd.ssh_command(&ci.path));
    assert!(ok, "push to alpha:\n{output}\n{}", slip.diagnostics());
    // ...and nowhere else (the app is not created either).
    let (ok, output) = repo.push(&sshd.url("beta"), &sshd.ssh_command(&ci.path));
    assert!(!ok && output.contains("key 'ci' may not push to or fetch 'beta'"), "push to beta:\n{output}");
    assert!(!slip.home.join("repos/beta.git").exists());

    // Reads and deploy-time operations on its app work; `apps` lists only its apps.
    slip.cmd_ok(&["apps:create", "beta"]);
    let out = sshd.ssh(&ci.path, &["config:set", "alpha", "K=V", "--no-restart"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = sshd.ssh(&ci.path, &["apps", "--json"]);
    let apps: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let names: Vec<&str> = apps.as_array().into_iter().flatten().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["alpha"], "{}", describe(&out));

    // Admin-only commands, other apps and run are refused, one line each.
    let other = slip.client_key("id_other");
    let out = sshd.ssh_stdin(&ci.path, &["keys:add", "x"], Some(&format!("{}\n", other.public)));
    assert_refused(&out, "keys:add");
    assert_refused(&sshd.ssh(&ci.path, &["apps:destroy", "alpha", "--confirm", "alpha"]), "apps:destroy");
    assert_refused(&sshd.ssh(&ci.path, &["ps:stop", "--all"]), "ps:stop --all");
    assert_refused(&sshd.ssh(&ci.path, &["config", "beta"]), "config on 'beta'");
    assert_refused(&sshd.ssh(&ci.path, &["run", "alpha", "--", "true"]), "--allow-run");
    assert_eq!(slip.json(&["keys", "--json"]).as_array().map(Vec::len), Some(2));

    // The admin key still runs them.
    let out = sshd.ssh(&env.key.path, &["keys"]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn keys_add_refuses_known_keys_and_option_lines() {
    let slip = Slipway::new();
    let key = slip.client_key("k1");
    let out = slip.cmd_stdin(&["keys:add", "alice", "--role", "deploy", "--apps", "alpha"], &key.public);
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("as admin") && said.contains("first key"), "{said}");

    // The same key under another name, even with another comment.
    let renamed =
        format!("{} someone@else", key.public.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    let out = slip.cmd_stdin(&["keys:add", "bob"], &renamed);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already added as 'alice'"), "{}", describe(&out));

    // A line with options before the key type.
    let other = slip.client_key("k2");
    for options in ["command=\"/bin/sh\"", "from=\"10.0.0.1\",no-pty"] {
        let out = slip.cmd_stdin(&["keys:add", "carol"], &format!("{options} {}\n", other.public));
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("carries options") && err.trim_end().lines().count() == 1, "{err}");
    }
    assert_eq!(slip.json(&["keys", "--json"]).as_array().map(Vec::len), Some(1));
    let text = std::fs::read_to_string(slip.authorized_keys()).unwrap();
    assert!(!text.contains("/bin/sh") && !text.contains("10.0.0.1"), "{text}");
}

/// A line slipway did not write (an unrestricted key appended by hand or by an app) is reported
/// as foreign by `keys` (table and --json alike, on stderr), and kept, with the warning, by
/// keys:add.
#[test]
fn foreign_authorized_keys_lines_are_reported() {
    let slip = Slipway::new();
    let alice = slip.client_key("alice");
    slip.add_key("alice", &alice);
    let intruder = slip.client_key("intruder");
    let mut text = std::fs::read_to_string(slip.authorized_keys()).unwrap();
    text.push_str(&format!("{}\n", intruder.public));
    std::fs::write(slip.authorized_keys(), &text).unwrap();
    let blob = intruder.public.split_whitespace().nth(1).unwrap();
    let expected_start = format!(
        "warning: .ssh/authorized_keys line 2 was not written by slipway (ssh-ed25519 {}…",
        &blob[..12]
    );

    for args in [&["keys"][..], &["keys", "--json"][..]] {
        let out = slip.cmd(args);
        assert!(out.status.success(), "{}", describe(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with(&expected_start) && err.trim_end().ends_with("it bypasses slipway's roles"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(slip.json(&["keys", "--json"]).as_array().map(Vec::len), Some(1), "stdout stays the keys");

    // Rewritten, the file keeps foreign lines first, then slipway's own.
    let bob = slip.client_key("bob");
    let out = slip.cmd_stdin(&["keys:add", "bob", "--apps", "alpha"], &bob.public);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("line 1 was not written by slipway") && stderr(&out).contains("kept"),
        "{}",
        describe(&out)
    );
    let after = std::fs::read_to_string(slip.authorized_keys()).unwrap();
    assert!(after.contains(&intruder.public), "the foreign line is kept: {after}");
}

/// A symlink planted at `.ssh/authorized_keys` or at `.ssh` itself (towards a root-only file,
/// here a stand-in) makes keys:add fail with one line; the link's target is never written.
#[test]
fn keys_add_never_writes_through_a_planted_link() {
    let slip = Slipway::new();
    let alice = slip.client_key("alice");
    let victim = slip.root().join("shadow");
    std::fs::write(&victim, "root:*:19000:0:99999:7:::\n").unwrap();
    std::fs::create_dir_all(slip.home.join(".ssh")).unwrap();
    std::os::unix::fs::symlink(&victim, slip.authorized_keys()).unwrap();

    let out = slip.cmd_stdin(&["keys:add", "alice"], &alice.public);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:*:19000:0:99999:7:::\n");
    assert_eq!(slip.json(&["keys", "--json"]).as_array().map(Vec::len), Some(0), "nothing recorded");

    // The same with the whole .ssh dir a link.
    std::fs::remove_file(slip.authorized_keys()).unwrap();
    std::fs::remove_dir(slip.home.join(".ssh")).unwrap();
    let elsewhere = slip.root().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, slip.home.join(".ssh")).unwrap();
    let out = slip.cmd_stdin(&["keys:add", "alice"], &alice.public);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", describe(&out));
    assert!(!elsewhere.join("authorized_keys").exists());
}
