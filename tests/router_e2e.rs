//! The router inside the daemon: requests keep succeeding while the app is redeployed and
//! restarted, hosts and custom domains route to their apps, and errors carry Heroku's codes.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

fn deploy(slip: &Slipway, repo: &GitRepo, app: &str, body: &str) -> String {
    let procfile = format!("web: python3 server {body}\n");
    repo.commit_files(
        &[("Procfile", procfile.as_str()), ("server", stdlib_server("sys.argv[1]").as_str())],
        body,
    );
    let (ok, out) = slip.push_local(repo, app);
    assert!(ok, "deploy of {app} failed:\n{out}\n{}", slip.diagnostics());
    out
}

/// What one request got: status and body, or None when it failed outright.
type Answer = Option<(u16, String)>;

/// One GET through the router with `Host: host`, on a fresh connection.
fn get(router: &str, host: &str, path: &str) -> Option<(u16, String)> {
    router_get(router, host, path)
}

fn wait_for_body(router: &str, host: &str, body: &str) -> bool {
    wait_until(Duration::from_secs(20), || get(router, host, "/").is_some_and(|(s, b)| s == 200 && b == body))
}

#[test]
fn requests_keep_succeeding_through_redeploys_and_a_restart() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let out = deploy(&slip, &repo, "hello", "v1");
    let router = slip.router_addr.clone();
    let port = router.rsplit(':').next().unwrap();
    assert!(out.contains(&format!("http://hello.localhost:{port}/")), "no app URL in the push:\n{out}");
    assert!(wait_for_body(&router, "hello.localhost", "v1"));

    // A client sending requests back to back (bounded in time and count) all along.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let client = {
        let (stop, results, router) = (stop.clone(), results.clone(), router.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(180) {
                let answer = get(&router, "hello.localhost", "/");
                let mut results = results.lock().unwrap();
                results.push(answer);
                if results.len() >= 100_000 {
                    break;
                }
            }
        })
    };
    for body in ["v2", "v3", "v4"] {
        deploy(&slip, &repo, "hello", body);
        assert!(wait_for_body(&router, "hello.localhost", body), "{body} is not served");
    }
    slip.cmd_ok(&["ps:scale", "hello", "web=2"]);
    slip.cmd_ok(&["ps:restart", "hello"]);
    std::thread::sleep(Duration::from_millis(300)); // let the client cross the restart's end
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();

    let results = results.lock().unwrap();
    let failures: Vec<&Answer> =
        results.iter().filter(|r| !matches!(r, Some((200, b)) if b.starts_with('v'))).collect();
    println!("{} requests through 3 deploys, a scale and a restart", results.len());
    assert!(results.len() > 50, "the client made only {} requests", results.len());
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        results.len(),
        &failures[..failures.len().min(5)]
    );
    let bodies: Vec<&str> = results.iter().filter_map(|r| r.as_ref().map(|(_, b)| b.as_str())).collect();
    assert_eq!(bodies.last(), Some(&"v4"));
    let logged = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(slip.app_log_path("hello"))
            .is_ok_and(|l| l.contains(" router[web.") && l.contains("status=200"))
    });
    assert!(logged, "no router lines in the app log");
}

#[test]
fn hosts_and_custom_domains_route_and_errors_carry_codes() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let router = slip.router_addr.clone();
    deploy(&slip, &GitRepo::init(&slip.root().join("a")), "hello", "from-hello");
    deploy(&slip, &GitRepo::init(&slip.root().join("b")), "other", "from-other");
    assert!(wait_for_body(&router, "hello.localhost", "from-hello"));
    assert!(
        wait_for_body(&router, "OTHER.localhost:8080", "from-other"),
        "hosts must match case-insensitively, port ignored"
    );

    slip.cmd_ok(&["domains:add", "other", "www.example.test"]);
    assert!(wait_for_body(&router, "www.example.test", "from-other"));
    let taken = slip.cmd(&["domains:add", "hello", "www.example.test"]);
    assert!(!taken.status.success(), "a host was given to two apps");

    assert_eq!(get(&router, "nobody.localhost", "/").map(|(s, _)| s), Some(404));
    slip.cmd_ok(&["ps:scale", "hello", "web=0"]);
    let mut answer = None;
    wait_until(Duration::from_secs(20), || {
        answer = get(&router, "hello.localhost", "/");
        answer.as_ref().is_some_and(|(s, _)| *s == 503)
    });
    assert_eq!(answer.as_ref().map(|(s, _)| *s), Some(503), "{answer:?}");
    let logged = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(slip.app_log_path("hello")).is_ok_and(|l| l.contains("at=error code=H14"))
    });
    assert!(logged, "no H14 router line in the app log");
    // The other app is untouched; a destroyed app's hosts are unknown at once.
    assert!(wait_for_body(&router, "other.localhost", "from-other"));
    slip.cmd_ok(&["apps:destroy", "other", "--confirm", "other"]);
    assert_eq!(get(&router, "www.example.test", "/").map(|(s, _)| s), Some(404));
    assert_eq!(get(&router, "other.localhost", "/").map(|(s, _)| s), Some(404));
}
