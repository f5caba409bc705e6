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
