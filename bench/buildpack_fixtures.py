#!/usr/bin/env python3
"""Pushes every fixture of heroku/heroku-buildpack-python to a throw-away slipway and records
what happened, next to what the buildpack's own specs (spec/hatchet/*_spec.rb) expect.

    bench/buildpack_fixtures.py BUILDPACK_GIT_DIR [SLIPWAY_BIN] > results.json

BUILDPACK_GIT_DIR is a clone (bare or not) of heroku/heroku-buildpack-python; nothing of it is
copied into this repository: fixtures are exported into a temp dir, pushed, and removed. Every
fixture is pushed once to a fresh app of one temp SLIPWAY_HOME with its own daemon (stopped at
the end). A fixture without a Procfile gets `web: python -m http.server $PORT`, since a slipway
release needs process types where Heroku's build does not (the comparison is about the build).
Fixtures the specs push with config vars (the Django ones) are pushed with them, once per
variant. Prints one JSON object: fixture -> {expected, ok, seconds, bang, steps, tail} where
`expected` is "failure" when the spec pushes the fixture with `allow_failure: true`, else
"success"; `bang` are the build's ` !     ` lines, `steps` its `----->` lines, `tail` its last.
FIXTURES="a b" limits the run to those fixtures.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time


def git(gitdir, *args):
    return subprocess.run(["git", "--git-dir", gitdir, *args], check=True, capture_output=True, text=True).stdout


# Config vars the specs give some fixtures (spec/hatchet/django_spec.rb): each list item is one
# push of the fixture to a fresh app, with its expected outcome.
BROKEN = {k: "/invalid-path" for k in ["BUILD_DIR", "C_INCLUDE_PATH", "CACHE_DIR", "CPLUS_INCLUDE_PATH", "ENV_DIR",
                                      "LD_LIBRARY_PATH", "LIBRARY_PATH", "PATH", "PKG_CONFIG_PATH", "PYTHONHOME",
                                      "PYTHONPATH"]}
VARIANTS = {
    "django_staticfiles_latest_django": [({"EXPECTED_ENV_VAR": "1"}, "success")],
    "django_staticfiles_legacy_django": [(dict(BROKEN, EXPECTED_ENV_VAR="1"), "success")],
    "django_invalid_settings_module": [({}, "failure"), ({"DISABLE_COLLECTSTATIC": "1"}, "success")],
    "django_staticfiles_misconfigured": [({"DEBUG_COLLECTSTATIC": "1"}, "failure")],
}


def expectations(gitdir):
    out = {}
    for path in git(gitdir, "ls-tree", "-r", "--name-only", "HEAD", "spec/hatchet/").split():
        text = git(gitdir, "show", f"HEAD:{path}")
        for m in re.finditer(r"Hatchet::Runner\.new\('spec/fixtures/([^']+)'([^)\n]*)", text):
            name, rest = m.group(1), m.group(2)
            want = "failure" if "allow_failure: true" in rest else "success"
            out.setdefault(name, set()).add(want)
    return {k: "/".join(sorted(v)) for k, v in out.items()}


def main():
    gitdir = sys.argv[1]
    if os.path.isdir(os.path.join(gitdir, ".git")):
        gitdir = os.path.join(gitdir, ".git")
    binary = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "../target/debug/slipway")
    binary = os.path.abspath(binary)
    work = tempfile.mkdtemp(prefix="slipway-fixtures.")
    home = os.path.join(work, "home")
    env = dict(os.environ, SLIPWAY_HOME=home, SLIPWAY_BOOT_SETTLE="0.2", SLIPWAY_BOOT_TIMEOUT="20",
               SLIPWAY_KEEP_RELEASES="1", SLIPWAY_PORTS="41000-41999", SLIPWAY_ROUTER_ADDR="127.0.0.1:0")
    sw = lambda *a, **kw: subprocess.run([binary, *a], env=env, capture_output=True, text=True, **kw)
    expected = expectations(gitdir)

    def push(name, app, config, want):
        src = os.path.join(work, "src", app)
        os.makedirs(src)
        tar = subprocess.run(["git", "--git-dir", gitdir, "archive", "HEAD", f"spec/fixtures/{name}"],
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", src, "--strip-components", "3"], input=tar, check=True)
        if not os.path.exists(os.path.join(src, "Procfile")):
            with open(os.path.join(src, "Procfile"), "w") as f:
                f.write("web: python -m http.server $PORT\n")
        for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                     ["-c", "user.name=f", "-c", "user.email=f@f", "commit", "-qm", name]):
            subprocess.run(["git", *args], cwd=src, check=True, capture_output=True)
        sw("apps:create", app)
        if config:
            sw("config:set", app, *[f"{k}={val}" for k, val in config.items()], "--no-restart")
        start = time.monotonic()
        p = subprocess.run(["git", "push", os.path.join(home, "repos", f"{app}.git"), "HEAD:main"], cwd=src,
                           env=env, capture_output=True, text=True, timeout=900)
        seconds = round(time.monotonic() - start, 1)
        lines = [l.replace("remote: ", "", 1).rstrip() for l in (p.stderr + p.stdout).splitlines()]
        sw("ps:stop", "--all")
        shutil.rmtree(src, ignore_errors=True)
        return {"expected": want, "ok": p.returncode == 0, "seconds": seconds,
                "bang": [l for l in lines if l.startswith(" !") and l.strip(" !")][:12],
                "steps": [l for l in lines if l.startswith("----->")], "tail": lines[-8:]}
    fixtures = [p.split("/")[-1] for p in git(gitdir, "ls-tree", "-d", "--name-only", "HEAD", "spec/fixtures/").split()]
    only = set(os.environ.get("FIXTURES", "").split()) - {""}
    results = {}
    try:
        d = sw("daemon")
        if d.returncode != 0:
            sys.exit(f"daemon did not start: {d.stderr}")
        for i, name in enumerate(fixtures):
            if only and name not in only:
                continue
            for v, (config, want) in enumerate(VARIANTS.get(name, [({}, expected.get(name, "?"))])):
                app = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
                app = f"f{i}{'abcd'[v]}-{app}"[:30].rstrip("-")
                key = name
                if "PYTHONHOME" in config:
                    key += " [broken env vars] EXPECTED_ENV_VAR=1"
                elif config:
                    key += " " + " ".join(f"{k}={val}" for k, val in sorted(config.items()))
                results[key] = push(name, app, config, want)
                print(f"{key}: expected {want}, slipway {'success' if results[key]['ok'] else 'failure'}"
                      f" ({results[key]['seconds']}s)", file=sys.stderr)
    finally:
        sw("ps:stop", "--all")
        sw("daemon", "--stop")
        shutil.rmtree(work, ignore_errors=True)
    json.dump(results, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
