//! End-to-end: `$SLIPWAY_HOME/slipway.toml` is read by every slipway process, including the
//! build hook and commands run over a real sshd (whose environment has no `SLIPWAY_*`
//! variable), and `settings`, `settings:set`, `settings:unset` show and edit it.

mod support;

use std::fs;
use std::io::Read;
use std::process::Output;

use serde_json::Value;
use support::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `slipway settings --json`'s entry for `key`: (value, source).
fn setting(json: &Value, key: &str) -> (String, String) {
    let entry = &json["settings"][key];
    let text = |field: &str| {
        entry[field].as_str().unwrap_or_else(|| panic!("no {key}.{field} in {json}")).to_string()
    };
    (text("value"), text("source"))
}

/// A failed command printed exactly one `slipway: …` line containing every piece of `want`.
fn assert_one_sentence(out: &Output, want: &[&str]) {
    assert!(!out.status.success(), "expected a failure:\n{}", describe(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line:\n{}", describe(out));
    for piece in want {
        assert!(err.contains(piece), "{piece:?} missing:\n{}", describe(out));
    }
}

#[test]
fn builds_and_commands_over_ssh_use_the_settings_file() {
    let env = PushEnv::start(|slip| {
        let text = "# set by the operator\nmax_slug_mb = 1\ndomain = \"apps.example.test\"\n";
        fs::write(slip.home.join("slipway.toml"), text).expect("write slipway.toml");
    });
    let (slip, sshd) = (&env.slip, &env.sshd);

    // An app whose slug cannot be under 1 MB: 2 MB of random bytes do not compress.
    let repo = env.app_repo("work", "big");
    let mut noise = vec![0u8; 2 * 1024 * 1024];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut noise)).expect("read /dev/urandom");
    fs::write(repo.dir.join("noise.bin"), &noise).expect("write noise.bin");
    repo.git_ok(&["add", "-A"]);
    repo.git_ok(&["commit", "-q", "-m", "two incompressible megabytes"]);

    // sshd gives the hook a clean environment: only the file can have lowered the limit.
    let (ok, output) = env.push(&repo, "big");
    assert!(!ok, "a 2 MB slug was accepted with max_slug_mb = 1:\n{output}\n{}", slip.diagnostics());
    assert!(output.contains("over the limit of 1.0MB"), "no slug-size message:\n{output}");
    assert!(slip.app_info("big")["release"].is_null(), "a release was made:\n{output}");

    // Commands over SSH see the file's domain, like the daemon that routes it.
    let out = sshd.ssh(&env.key.path, &["domains", "big"]);
    assert!(out.status.success(), "domains over ssh:\n{}", describe(&out));
    assert!(stdout(&out).contains("big.apps.example.test"), "not the file's domain:\n{}", describe(&out));
    let out = sshd.ssh(&env.key.path, &["apps:info", "big", "--json"]);
    assert!(out.status.success(), "apps:info over ssh:\n{}", describe(&out));
    let info: Value = serde_json::from_slice(&out.stdout).expect("apps:info --json over ssh");
    let url = info["web_url"].as_str().unwrap_or_default();
    assert!(url.starts_with("http://big.apps.example.test:"), "the daemon's URL is {url:?}");

    // `settings` works over SSH and says where each value comes from; editing does not.
    let out = sshd.ssh(&env.key.path, &["settings", "--json"]);
    assert!(out.status.success(), "settings over ssh:\n{}", describe(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("settings --json over ssh");
    assert_eq!(setting(&json, "max_slug_mb"), ("1".into(), "slipway.toml".into()));
    assert_eq!(setting(&json, "build_timeout"), ("900".into(), "default".into()));
    let before = fs::read_to_string(slip.home.join("slipway.toml")).expect("read slipway.toml");
    let out = sshd.ssh(&env.key.path, &["settings:set", "max_slug_mb=500"]);
    assert!(!out.status.success(), "settings:set over ssh was allowed:\n{}", describe(&out));
    assert!(stderr(&out).contains("only be run on the server"), "{}", describe(&out));
    let out = sshd.ssh(&env.key.path, &["settings:unset", "max_slug_mb"]);
    assert!(!out.status.success(), "settings:unset over ssh was allowed:\n{}", describe(&out));
    assert_eq!(fs::read_to_string(slip.home.join("slipway.toml")).expect("read slipway.toml"), before);
}

#[test]
fn the_environment_overrides_the_file_and_settings_shows_the_source() {
    let mut slip = Slipway::new();
    let file = slip.home.join("slipway.toml");
    fs::write(
        &file,
        "domain = \"file.example\"\nports = \"7000-7099\"\nboot_timeout = \"12\"\nlog_max_mb = 0.5\n",
    )
    .expect("write slipway.toml");
    slip.env.push(("SLIPWAY_DOMAIN".into(), "env.example".into()));

    let json = slip.json(&["settings", "--json"]);
    assert_eq!(json["file"].as_str(), Some(file.to_str().unwrap_or_default()));
    assert_eq!(setting(&json, "domain"), ("env.example".into(), "env SLIPWAY_DOMAIN".into()));
    // The harness gives every command SLIPWAY_PORTS and SLIPWAY_ROUTER_ADDR: they still win.
    let ports = format!("{}-{}", slip.ports.0, slip.ports.1);
    assert_eq!(setting(&json, "ports"), (ports, "env SLIPWAY_PORTS".into()));
    assert_eq!(setting(&json, "router_addr"), (slip.router_addr.clone(), "env SLIPWAY_ROUTER_ADDR".into()));
    assert_eq!(setting(&json, "boot_timeout"), ("12".into(), "slipway.toml".into()));
    assert_eq!(setting(&json, "log_max_mb"), ("0.5".into(), "slipway.toml".into()));
    assert_eq!(setting(&json, "max_slug_mb"), ("500".into(), "default".into()));
    assert_eq!(json["settings"].as_object().map(|o| o.len()), Some(29), "{json}");

    // The table has the same content.
    let table = slip.cmd_ok(&["settings"]);
    let row = table.lines().find(|l| l.starts_with("domain ")).unwrap_or_default();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["domain", "env.example", "env", "SLIPWAY_DOMAIN"]
    );
    let row = table.lines().find(|l| l.starts_with("boot_timeout ")).unwrap_or_default();
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["boot_timeout", "12", "slipway.toml"]);

    // Commands use the winner: the environment's domain.
    slip.cmd_ok(&["apps:create", "hello"]);
    let domains = slip.cmd_ok(&["domains", "hello"]);
    assert!(domains.contains("hello.env.example"), "{domains}");
}

#[test]
fn bad_settings_are_one_sentence_and_change_nothing() {
    let slip = Slipway::new();
    let file = slip.home.join("slipway.toml");
    let path = file.display().to_string();
    let cases: &[(&str, &[&str])] = &[
        ("max_slug_mb = -1\n", &[&path, "max_slug_mb = -1 is not valid: expected a whole number in range"]),
        (
            "boot_timeout = \"soon\"\n",
            &[&path, "boot_timeout = \"soon\" is not valid: expected a number of seconds"],
        ),
        (
            "router_timeout = 0\n",
            &[&path, "router_timeout = 0 is not valid: expected a number of seconds above 0"],
        ),
        ("max_slug = 1\n", &[&path, "unknown key \"max_slug\"; did you mean \"max_slug_mb\"?"]),
        ("# ok\ndomain = \"a.example\"\nkeep_releases 3\n", &[&path, "line 3 is not valid TOML"]),
    ];
    for (text, want) in cases {
        fs::write(&file, text).expect("write slipway.toml");
        for args in [&["settings"][..], &["domains", "hello"], &["daemon", "--foreground"]] {
            let out = slip.cmd(args);
            assert_one_sentence(&out, want);
        }
    }

    // settings:set validates before writing: nothing changes on any error.
    let text = "# keep me\ndomain = \"a.example\"\n";
    fs::write(&file, text).expect("write slipway.toml");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["settings:set", "max_slug_mb=-1"],
            &["max_slug_mb = -1 is not valid: expected a whole number in range"],
        ),
        (
            &["settings:set", "domain=b.example", "log_files=0"],
            &["log_files = 0 is not valid: expected 1 to 100"],
        ),
        (
            &["settings:set", "boot_timout=3"],
            &["unknown key \"boot_timout\"; did you mean \"boot_timeout\"?"],
        ),
        (&["settings:set", "router_addr=localhost:80"], &["router_addr = \"localhost:80\" is not valid"]),
        (&["settings:set", "domain"], &["expected KEY=VALUE"]),
        (&["settings:set", "home=/tmp"], &["home cannot be set"]),
    ];
    for (args, want) in cases {
        let out = slip.cmd(args);
        assert_one_sentence(&out, want);
        assert_eq!(fs::read_to_string(&file).expect("read slipway.toml"), text, "{args:?} changed the file");
    }
    // Neither does an edit of a file that is not valid TOML.
    fs::write(&file, "domain = \n").expect("write slipway.toml");
    let out = slip.cmd(&["settings:set", "max_slug_mb=5"]);
    assert_one_sentence(&out, &[&path, "line 1 is not valid TOML"]);
    assert_eq!(fs::read_to_string(&file).expect("read slipway.toml"), "domain = \n");
}

#[test]
fn settings_set_and_unset_keep_comments_and_other_keys() {
    let mut slip = Slipway::new();
    // Make sure no variable of the test's own environment hides the file here.
    slip.env.push(("SLIPWAY_MAX_SLUG_MB".into(), String::new()));
    let file = slip.home.join("slipway.toml");

    // No file yet: set creates it.
    let out = slip.cmd_ok(&["settings:set", "max_slug_mb=200"]);
    assert!(out.contains("Set max_slug_mb = 200"), "{out}");
    assert!(fs::read_to_string(&file).expect("read slipway.toml").contains("\nmax_slug_mb = 200\n"));

    let text = "# The operator's notes.\n\
                domain = \"apps.example.com\"  # wildcard DNS points here\n\
                \n\
                # big apps\n\
                max_slug_mb = 900\n\
                build_timeout = 1200\n";
    fs::write(&file, text).expect("write slipway.toml");
    let out =
        slip.cmd_ok(&["settings:set", "max_slug_mb=250", "SLIPWAY_KEEP_RELEASES=4", "domain=b.example.com"]);
    assert!(out.contains("restart"), "no note that the daemon reads domain at start: {out}");
    let want = "# The operator's notes.\n\
                domain = \"b.example.com\"  # wildcard DNS points here\n\
                \n\
                # big apps\n\
                max_slug_mb = 250\n\
                build_timeout = 1200\n\
                keep_releases = 4\n";
    assert_eq!(fs::read_to_string(&file).expect("read slipway.toml"), want);
    let json = slip.json(&["settings", "--json"]);
    assert_eq!(setting(&json, "keep_releases"), ("4".into(), "slipway.toml".into()));
    assert_eq!(setting(&json, "max_slug_mb"), ("250".into(), "slipway.toml".into()));

    let out = slip.cmd_ok(&["settings:unset", "build_timeout", "python"]);
    assert!(out.contains("Removed build_timeout") && out.contains("python is not in"), "{out}");
    let want = want.replace("build_timeout = 1200\n", "");
    assert_eq!(fs::read_to_string(&file).expect("read slipway.toml"), want);
    let json = slip.json(&["settings", "--json"]);
    assert_eq!(setting(&json, "build_timeout"), ("900".into(), "default".into()));

    // A key that is not a setting can be removed (and only then is the file valid again).
    fs::write(&file, format!("{want}colour = \"red\"\n")).expect("write slipway.toml");
    assert!(!slip.cmd(&["settings"]).status.success());
    slip.cmd_ok(&["settings:unset", "colour"]);
    assert_eq!(fs::read_to_string(&file).expect("read slipway.toml"), want);

    // The file is replaced, never written through a symbolic link.
    let target = slip.root().join("elsewhere.toml");
    fs::rename(&file, &target).expect("move slipway.toml");
    std::os::unix::fs::symlink(&target, &file).expect("symlink slipway.toml");
    let out = slip.cmd(&["settings:set", "max_slug_mb=7"]);
    assert_one_sentence(&out, &["is a symbolic link"]);
    assert_eq!(fs::read_to_string(&target).expect("read target"), want);
    // Reading through the link is fine.
    assert_eq!(setting(&slip.json(&["settings", "--json"]), "max_slug_mb").0, "250");
}

#[test]
fn log_rotation_follows_the_settings_file() {
    let slip = Slipway::new();
    fs::write(slip.home.join("slipway.toml"), "log_max_mb = 0.004\nlog_files = 2\n")
        .expect("write slipway.toml");
    slip.cmd_ok(&["apps:create", "hello"]);
    // Each change is a `slipway[api]` line written by the CLI itself (no daemon running).
    for i in 0..30 {
        let host = format!("www{i}.example.com");
        slip.cmd_ok(&["domains:add", "hello", &host]);
        slip.cmd_ok(&["domains:remove", "hello", &host]);
    }
    let log = slip.app_log_path("hello");
    let rotated = log.with_file_name("app.log.1");
    assert!(rotated.exists(), "app.log never rotated at 4 KB: {:?}", list_tree(&slip.home.join("logs")));
    assert!(!log.with_file_name("app.log.2").exists(), "more files than log_files = 2");
    let size = fs::metadata(&rotated).map(|m| m.len()).unwrap_or_default();
    assert!((4096..4096 + 512).contains(&size), "app.log.1 is {size} bytes");
}

/// `settings:set` used to wait forever while the daemon ran: both locked the home directory.
#[test]
fn settings_set_works_while_the_daemon_runs() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let out = run_with_timeout(
        &mut slip.command(&["settings:set", "keep_releases=5"]),
        None,
        std::time::Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let json = slip.json(&["settings", "--json"]);
    assert_eq!(json["settings"]["keep_releases"]["value"], "5", "{json}");
}
