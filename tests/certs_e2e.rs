//! End-to-end: the `certs` verbs through the real binary (and through a real sshd for the key
//! roles). No daemon is needed: certificates are files the router reads.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::*;

/// A CA, and a leaf it signed for `names` valid from `from` to `until` seconds from now:
/// (leaf key PEM, leaf PEM, CA PEM).
fn issued(names: &[&str], from: i64, until: i64) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Slipway Test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(until);
    let leaf = params.signed_by(&key, &issuer).expect("leaf");
    (key.serialize_pem(), leaf.pem(), ca_cert.pem())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write pem");
    path.to_string_lossy().into_owned()
}

/// Refused: exit 1, one line on stderr containing `what`, nothing written.
fn assert_refused(slip: &Slipway, out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {}", describe(out));
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.contains(what), "{what}: {err}");
    let files: Vec<String> = std::fs::read_dir(slip.home.join("certs/shop"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(files.iter().all(|f| !f.ends_with(".pem")), "{what}: something was written: {files:?}");
}

fn certs_json(slip: &Slipway, app: &str) -> Value {
    slip.json(&["certs", app, "--json"])
}

#[test]
fn certs_add_validates_bundles_and_certs_remove_removes_them() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_DOMAIN".into(), "apps.test".into()));
    slip.cmd_ok(&["apps:create", "shop"]);
    slip.cmd_ok(&["domains:add", "shop", "www.shop.test"]);
    let dir = slip.root().to_path_buf();

    // Empty to start with; the JSON shape.
    let json = certs_json(&slip, "shop");
    assert_eq!(json["app"], "shop");
    assert_eq!(json["auto"], false);
    assert_eq!(json["redirect"], false);
    assert_eq!(json["certificates"], serde_json::json!([]));
    let hosts: Vec<&str> =
        json["hosts"].as_array().unwrap().iter().filter_map(|h| h["host"].as_str()).collect();
    assert_eq!(hosts, ["shop.apps.test", "www.shop.test"], "{json}");

    let (key, leaf, ca) = issued(&["www.shop.test"], -3600, 90 * 86_400);
    let (other_key, _, _) = issued(&["x.test"], -3600, 86_400);
    let (old_key, old_leaf, old_ca) = issued(&["www.shop.test"], -7200, -3600);
    let (far_key, far_leaf, far_ca) = issued(&["www.elsewhere.test"], -3600, 86_400);

    // Refusals: one line, exit 1, nothing written.
    let chain = write(&dir, "chain.pem", &format!("{leaf}{ca}"));
    let wrong = write(&dir, "wrong.key", &other_key);
    assert_refused(&slip, &slip.cmd(&["certs:add", "shop", &chain, &wrong]), "does not match");
    let reversed = write(&dir, "reversed.pem", &format!("{ca}{leaf}"));
    let good_key = write(&dir, "good.key", &key);
    assert_refused(&slip, &slip.cmd(&["certs:add", "shop", &reversed, &good_key]), "out of order");
    let expired = write(&dir, "expired.pem", &format!("{old_leaf}{old_ca}"));
    let expired_key = write(&dir, "expired.key", &old_key);
    assert_refused(&slip, &slip.cmd(&["certs:add", "shop", &expired, &expired_key]), "expired at");
    let far = write(&dir, "far.pem", &format!("{far_leaf}{far_ca}"));
    let far_key = write(&dir, "far.key", &far_key);
    assert_refused(
        &slip,
        &slip.cmd(&["certs:add", "shop", &far, &far_key]),
        "covers none of shop's hosts (shop.apps.test, www.shop.test)",
    );
    assert_refused(&slip, &slip.cmd(&["certs:add", "shop", &chain, "/nonexistent.key"]), "cannot read");
    assert_refused(&slip, &slip.cmd(&["certs:add", "nope", &chain, &good_key]), "nope");

    // A good bundle, from stdin as one stream: added, with a note for the host it misses.
    let out = slip.cmd_stdin(&["certs:add", "shop", "-", "-"], &format!("{key}{leaf}{ca}"));
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Added a certificate for www.shop.test to shop"), "{text}");
    assert!(text.contains("Note: it does not cover shop.apps.test"), "{text}");
    let file = slip.home.join("certs/shop/manual-www.shop.test.pem");
    let mode = std::fs::metadata(&file).expect("written").permissions().mode() & 0o777;
    // Private to the router: of its own group (the last uid of app_uids) when it runs as one
    // (root, root-owned home), else to the home's owner alone.
    let root = nix::unistd::geteuid().is_root();
    assert_eq!(mode, if root { 0o640 } else { 0o600 });
    let dir = std::fs::metadata(slip.home.join("certs/shop")).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, if root { 0o750 } else { 0o700 });
    if root {
        use std::os::unix::fs::MetadataExt;
        let last: u32 =
            support::app_uids(slip.ports).split('-').nth(1).and_then(|n| n.parse().ok()).expect("app_uids");
        assert_eq!((dir.gid(), std::fs::metadata(&file).unwrap().gid()), (last, last));
    }

    let json = certs_json(&slip, "shop");
    let cert = &json["certificates"][0];
    assert_eq!(cert["hosts"], serde_json::json!(["www.shop.test"]), "{json}");
    assert_eq!(cert["type"], "manual");
    assert!(cert["issuer"].as_str().unwrap().contains("Slipway Test CA"), "{json}");
    let days = cert["days_left"].as_i64().unwrap();
    assert!((88..=90).contains(&days), "{json}");
    assert!(cert["expires_at"].as_str().unwrap().ends_with('Z'), "{json}");
    assert_eq!(json["hosts"][1]["certificate"], "manual-www.shop.test.pem", "{json}");
    assert_eq!(json["hosts"][0]["certificate"], Value::Null, "{json}");
    let table = slip.cmd_ok(&["certs", "shop"]);
    assert!(
        table.contains("www.shop.test") && table.contains("manual") && table.contains("DAYS LEFT"),
        "{table}"
    );
    assert!(table.contains("Automatic certificates (ACME): off"), "{table}");

    // Flags.
    slip.cmd_ok(&["certs:redirect:enable", "shop"]);
    let out = slip.cmd_ok(&["certs:auto:enable", "shop"]);
    assert!(out.contains("orders certificates for shop.apps.test, www.shop.test"), "{out}");
    let json = certs_json(&slip, "shop");
    assert_eq!((json["auto"].as_bool(), json["redirect"].as_bool()), (Some(true), Some(true)), "{json}");
    assert_eq!(json["hosts"][0]["acme"]["status"], "pending", "{json}");
    assert!(slip.home.join("certs/shop/auto").is_file() && slip.home.join("certs/shop/redirect").is_file());
    slip.cmd_ok(&["certs:auto:disable", "shop"]);
    slip.cmd_ok(&["certs:redirect:disable", "shop"]);
    assert!(!slip.home.join("certs/shop/auto").exists() && !slip.home.join("certs/shop/redirect").exists());

    // certs:remove: unknown host refused, then the manual certificate goes.
    let out = slip.cmd(&["certs:remove", "shop", "shop.apps.test"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("shop has no manual certificate covering shop.apps.test"));
    assert!(file.exists());
    slip.cmd_ok(&["certs:remove", "shop", "www.shop.test"]);
    assert!(!file.exists());
    assert_eq!(certs_json(&slip, "shop")["certificates"], serde_json::json!([]));
    let log = std::fs::read_to_string(slip.app_log_path("shop")).unwrap_or_default();
    assert!(log.contains("Added certificate for www.shop.test by"), "{log}");
    assert!(log.contains("Removed certificate for www.shop.test by"), "{log}");

    // Renaming moves the certificates; destroying removes them.
    let out = slip.cmd_stdin(&["certs:add", "shop", "-", "-"], &format!("{key}{leaf}{ca}"));
    assert!(out.status.success(), "{}", describe(&out));
    slip.cmd_ok(&["apps:rename", "shop", "store"]);
    assert!(slip.home.join("certs/store/manual-www.shop.test.pem").is_file());
    assert!(!slip.home.join("certs/shop").exists());
    assert_eq!(certs_json(&slip, "store")["certificates"][0]["type"], "manual");
    slip.cmd_ok(&["apps:destroy", "store", "--confirm", "store"]);
    assert!(!slip.home.join("certs/store").exists());
}

#[test]
fn deploy_keys_manage_certificates_of_their_own_apps_only() {
    let slip = Slipway::new();
    let sshd = slip.start_sshd();
    let alice = slip.client_key("id_alice");
    slip.add_key("alice", &alice);
    let ci = slip.client_key("id_ci");
    let out = slip.cmd_stdin(&["keys:add", "ci", "--apps", "alpha"], &format!("{}\n", ci.public));
    assert!(out.status.success(), "{}", describe(&out));
    slip.cmd_ok(&["apps:create", "alpha"]);
    slip.cmd_ok(&["apps:create", "beta"]);
    slip.cmd_ok(&["domains:add", "alpha", "www.alpha.test"]);
    slip.cmd_ok(&["domains:add", "beta", "www.beta.test"]);
    let (key, leaf, ca) = issued(&["www.alpha.test"], -60, 30 * 86_400);
    let (bkey, bleaf, bca) = issued(&["www.beta.test"], -60, 30 * 86_400);

    // Another app: refused before anything is read or written.
    let out =
        sshd.ssh_stdin(&ci.path, &["certs:add", "beta", "-", "-"], Some(&format!("{bkey}{bleaf}{bca}")));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key 'ci' may not run certs:add on 'beta'"), "{err}");
    assert!(!slip.home.join("certs/beta").exists());
    let out = sshd.ssh(&ci.path, &["certs:auto:enable", "beta"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // Paths name files on the server: over SSH only stdin.
    let out = sshd.ssh(&ci.path, &["certs:add", "alpha", "/etc/hostname", "/etc/hostname"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("send the certificate and key on stdin"));

    // Its own app: key and chain in one stream.
    let out = sshd.ssh_stdin(&ci.path, &["certs:add", "alpha", "-", "-"], Some(&format!("{key}{leaf}{ca}")));
    assert!(out.status.success(), "{}", describe(&out));
    let out = sshd.ssh(&ci.path, &["certs", "alpha", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(json["certificates"][0]["hosts"], serde_json::json!(["www.alpha.test"]), "{}", describe(&out));
    let out = sshd.ssh(&ci.path, &["certs:auto:enable", "alpha"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = sshd.ssh(&ci.path, &["certs:remove", "alpha", "www.alpha.test"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!slip.home.join("certs/alpha/manual-www.alpha.test.pem").exists());
}
