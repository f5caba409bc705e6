#!/usr/bin/env python3
"""Pushes every fixture of heroku/heroku-buildpack-python to a throw-away slipway and records
what happened, next to what the buildpack's own specs (spec/hatchet/*_spec.rb) expect.

    bench/buildpack_fixtures.py BUILDPACK_GIT_DIR [SLIPWAY_BIN] > results.json

BUILDPACK_GIT_DIR is a clone (bare or not) of heroku/heroku-buildpack-python; nothing of it is
copied into this repository: fixtures are exported into a temp dir, pushed, and removed. Every
fixture is pushed once to a fresh app of one temp SLIPWAY_HOME with its own daemon (stopped at
the end). A fixture without a Procfile gets `web: python -m http.server $PORT`, since a slipway
release needs process types where Heroku's build does not (the comparison is about the build).
Prints one JSON object: fixture -> {expected, ok, seconds, lines} where `expected` is
"failure" when the spec pushes the fixture with `allow_failure: true`, else "success", and
`lines` are the build's ` !     ` lines and its last lines.
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
            app = re.sub(r"[^a-z0-9-]", "-", name.lower())[:30].strip("-") or "app"
            app = f"f{i}-{app}"[:30].rstrip("-")
            src = os.path.join(work, "src", name)
            os.makedirs(src)
            tar = subprocess.run(["git", "--git-dir", gitdir, "archive", "HEAD", f"spec/fixtures/{name}"], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", src, "--strip-components", "3"], input=tar, check=True)
            if not os.path.exists(os.path.join(src, "Procfile")):
                with open(os.path.join(src, "Procfile"), "w") as f:
                    f.write("web: python -m http.server $PORT\n")
            for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["-c", "user.name=f", "-c", "user.email=f@f", "commit", "-qm", name]):
                subprocess.run(["git", *args], cwd=src, check=True, capture_output=True)
            sw("apps:create", app)
            start = time.monotonic()
            p = subprocess.run(["git", "push", os.path.join(home, "repos", f"{app}.git"), "HEAD:main"], cwd=src, env=env,
                               capture_output=True, text=True, timeout=900)
            seconds = round(time.monotonic() - start, 1)
            text = p.stderr + p.stdout
            lines = [l.replace("remote: ", "", 1) for l in text.splitlines()]
            bang = [l for l in lines if l.startswith(" !") and l.strip(" !")]
            steps = [l for l in lines if l.startswith("----->")]
            results[name] = {"expected": expected.get(name, "?"), "ok": p.returncode == 0, "seconds": seconds,
                             "bang": bang[:12], "steps": steps, "tail": lines[-8:]}
            print(f"{name}: expected {results[name]['expected']}, slipway {'success' if p.returncode == 0 else 'failure'} ({seconds}s)", file=sys.stderr)
            sw("ps:stop", "--all")
            shutil.rmtree(src, ignore_errors=True)
    finally:
        sw("ps:stop", "--all")
        sw("daemon", "--stop")
        shutil.rmtree(work, ignore_errors=True)
    json.dump(results, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
