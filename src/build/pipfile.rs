//! Is `Pipfile.lock` up to date with `Pipfile`? pipenv stores a hash of the Pipfile's content in
//! the lock (`_meta.hash.sha256`) and `pipenv install --deploy` (what Heroku runs) refuses a lock
//! whose hash differs. This recomputes that hash as pipenv does:
//!
//! - the Pipfile's TOML becomes `{"_meta": {"sources": [[source]] (pipenv's default PyPI source
//!   when there is none), "requires": [requires] or {}}, "default": [packages] or {}, "develop":
//!   [dev-packages] or {}}` plus every other top-level table (custom package categories) except
//!   `source`, `packages`, `dev-packages`, `requires`, `scripts`, `pipfile` and `pipenv`;
//! - serialised as Python's `json.dumps(data, sort_keys=True, separators=(",", ":"))` (keys
//!   sorted by code point, non-ASCII escaped as `\uXXXX`);
//! - SHA-256, in hex.
//!
//! pipenv releases disagree on one detail: recent ones replace package names by their PEP 503
//! form (`Django` → `django`) before hashing, older ones (plette's `Pipfile.get_hash`) do not.
//! A lock matching either is accepted. Values pipenv cannot serialise either (TOML dates) make
//! the check fail with a clear message; floats are printed as Python's `repr` for the usual
//! cases (`3.0`, `1e-05`, `1e+16`), which is where parity could still differ (a float in a
//! Pipfile is unheard of).

use std::collections::BTreeMap;

/// A JSON value as Python's json module sees the TOML document.
#[derive(Debug, Clone)]
enum Json {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

/// Sections pipenv leaves out of the hash as categories of their own.
const SPECIAL: &[&str] = &["source", "packages", "dev-packages", "requires", "scripts", "pipfile", "pipenv"];

/// The two hashes pipenv releases compute for this Pipfile: (PEP 503 names, names as written).
pub fn hashes(pipfile: &str) -> Result<(String, String), String> {
    let doc: toml_edit::DocumentMut =
        pipfile.parse().map_err(|e| format!("Pipfile is not valid TOML: {e}"))?;
    let mut top: Vec<(String, Json)> = Vec::new();
    for (key, item) in doc.iter() {
        if let Some(v) = item_json(item)? {
            top.push((key.to_string(), v));
        }
    }
    let get = |k: &str| top.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let sources = get("source").unwrap_or_else(|| {
        Json::Arr(vec![Json::Obj(BTreeMap::from([
            ("name".to_string(), Json::Str("pypi".into())),
            ("url".to_string(), Json::Str("https://pypi.org/simple".into())),
            ("verify_ssl".to_string(), Json::Bool(true)),
        ]))])
    });
    let empty = || Json::Obj(BTreeMap::new());
    let build = |canonical: bool| -> String {
        let names = |v: Json| match v {
            Json::Obj(m) if canonical => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    out.insert(canonicalize_name(&k), v);
                }
                Json::Obj(out)
            }
            other => other,
        };
        let mut data = BTreeMap::new();
        data.insert(
            "_meta".to_string(),
            Json::Obj(BTreeMap::from([
                ("sources".to_string(), sources.clone()),
                ("requires".to_string(), get("requires").unwrap_or_else(empty)),
            ])),
        );
        data.insert("default".to_string(), names(get("packages").unwrap_or_else(empty)));
        data.insert("develop".to_string(), names(get("dev-packages").unwrap_or_else(empty)));
        for (k, v) in &top {
            if SPECIAL.contains(&k.as_str()) || k == "default" || k == "develop" {
                continue;
            }
            data.insert(k.clone(), names(v.clone()));
        }
        let mut text = String::new();
        write_json(&Json::Obj(data), &mut text);
        hex(&sha256(text.as_bytes()))
    };
    Ok((build(true), build(false)))
}

/// Checks `Pipfile.lock`'s `_meta.hash.sha256` against `Pipfile`; the error is pipenv's
/// `--deploy` message with the fix.
pub fn check_lock(pipfile: &str, lock: &str) -> Result<(), String> {
    let (canonical, as_written) = hashes(pipfile)?;
    let value: serde_json::Value =
        serde_json::from_str(lock).map_err(|e| format!("Pipfile.lock is not valid JSON: {e}"))?;
    let stored = value.pointer("/_meta/hash/sha256").and_then(|h| h.as_str()).unwrap_or("");
    if stored == canonical || stored == as_written {
        return Ok(());
    }
    Err(format!(
        "Your Pipfile.lock ({stored}) is out of date. Expected: ({canonical}). \
         The lock file no longer matches the Pipfile: run 'pipenv lock' locally and commit Pipfile.lock"
    ))
}

/// PEP 503: lower case, runs of `-`, `_`, `.` become one `-`.
fn canonicalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_run = false;
        }
    }
    out
}

fn item_json(item: &toml_edit::Item) -> Result<Option<Json>, String> {
    Ok(match item {
        toml_edit::Item::None => None,
        toml_edit::Item::Value(v) => Some(value_json(v)?),
        toml_edit::Item::Table(t) => {
            let mut m = BTreeMap::new();
            for (k, v) in t.iter() {
                if let Some(j) = item_json(v)? {
                    m.insert(k.to_string(), j);
                }
            }
            Some(Json::Obj(m))
        }
        toml_edit::Item::ArrayOfTables(a) => {
            let mut out = Vec::new();
            for t in a.iter() {
                let mut m = BTreeMap::new();
                for (k, v) in t.iter() {
                    if let Some(j) = item_json(v)? {
                        m.insert(k.to_string(), j);
                    }
                }
                out.push(Json::Obj(m));
            }
            Some(Json::Arr(out))
        }
    })
}

fn value_json(v: &toml_edit::Value) -> Result<Json, String> {
    use toml_edit::Value;
    Ok(match v {
        Value::String(s) => Json::Str(s.value().clone()),
        Value::Integer(i) => Json::Int(*i.value()),
        Value::Float(f) => Json::Float(*f.value()),
        Value::Boolean(b) => Json::Bool(*b.value()),
        Value::Datetime(d) => {
            return Err(format!(
                "Pipfile has a date ({}), which pipenv cannot hash either; quote it",
                d.value()
            ))
        }
        Value::Array(a) => Json::Arr(a.iter().map(value_json).collect::<Result<_, _>>()?),
        Value::InlineTable(t) => {
            let mut m = BTreeMap::new();
            for (k, v) in t.iter() {
                m.insert(k.to_string(), value_json(v)?);
            }
            Json::Obj(m)
        }
    })
}

/// Python's `json.dumps(v, sort_keys=True, separators=(",", ":"))` (ensure_ascii on).
fn write_json(v: &Json, out: &mut String) {
    match v {
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Int(i) => out.push_str(&i.to_string()),
        Json::Float(f) => out.push_str(&python_float(*f)),
        Json::Str(s) => write_str(s, out),
        Json::Arr(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Json::Obj(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write_json(x, out);
            }
            out.push('}');
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)` for finite values, `Infinity`/`NaN` as json.dumps writes them.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    if f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (FIPS 180-4).
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vectors() {
        for (input, want) in [
            ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (
                "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
        ] {
            assert_eq!(hex(&sha256(input.as_bytes())), want, "{input:?}");
        }
    }

    /// Expected values computed by pipenv 2026.10.3 on the same files:
    /// `Project().pipfile.calculate_hash()` (PEP 503 names) and plette's
    /// `Pipfile.load(f).get_hash()` (names as written, older pipenv releases).
    #[test]
    fn pipfile_hashes_match_pipenv() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "no [[source]]: pipenv's default PyPI source",
                "[packages]\nrequests = \"*\"\n",
                "70e8bf6bc774f5ca177467cab4e67d4264d0536857993326abc13ff43063bec0",
                "70e8bf6bc774f5ca177467cab4e67d4264d0536857993326abc13ff43063bec0",
            ),
            (
                "inline tables, mixed-case names, [scripts] and [pipenv] left out",
                r#"[[source]]
url = "https://pypi.org/simple"
verify_ssl = true
name = "pypi"

[packages]
Django = "==5.0.*"
gunicorn = {version = ">=21", extras = ["gevent"], markers = "sys_platform == 'linux'"}
My_Pkg = "*"

[dev-packages]
pytest = "*"

[requires]
python_version = "3.11"

[scripts]
serve = "gunicorn app:app"

[pipenv]
allow_prereleases = true
"#,
                "640ac6802e604d2ef6f6937f082c53ddd49af124363dc037173ca4ce03e61fe0",
                "31d56a299f59637c62277a81678c6806d1991f672b938e9d4806a2d91c79132f",
            ),
            (
                "custom category, dotted name, escapes and non-ASCII (surrogate pair)",
                "[packages]\n\"zope.interface\" = {version = \"*\", index = \"pypi\"}\nflask = \"~=3.0\"\n\n[docs]\nSphinx = \"*\"\n\n[requires]\npython_version = \"3.12\"\nnote = \"caf\u{e9} \\\"quoted\\\" \\\\ tab\\t \u{1F600}\"\n",
                "ea2abedc287995926712c9db734318084ab098ba2ea93a40b0b00505bd1aa36b",
                "9cd5885b6e21af8731a9c2c74c2d31d42c4d6b614c43638839cbaf7f55013d47",
            ),
        ];
        for (what, pipfile, canonical, as_written) in cases {
            let got = hashes(pipfile).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got, (canonical.to_string(), as_written.to_string()), "{what}");
        }
    }

    #[test]
    fn lock_check() {
        let pipfile = "[packages]\nrequests = \"*\"\n";
        let lock = |h: &str| format!(r#"{{"_meta": {{"hash": {{"sha256": "{h}"}}}}, "default": {{}}}}"#);
        let good = "70e8bf6bc774f5ca177467cab4e67d4264d0536857993326abc13ff43063bec0";
        assert!(check_lock(pipfile, &lock(good)).is_ok());
        let stale = check_lock("[packages]\nrequests = \"*\"\nflask = \"*\"\n", &lock(good)).unwrap_err();
        assert!(
            stale.contains(&format!("Your Pipfile.lock ({good}) is out of date. Expected: (")),
            "{stale}"
        );
        assert!(stale.contains("pipenv lock"), "{stale}");
        assert!(check_lock(pipfile, "{").unwrap_err().contains("not valid JSON"));
        assert!(check_lock("[packages]\nx = 1979-05-27\n", &lock(good)).unwrap_err().contains("date"));
    }

    #[test]
    fn python_float_repr() {
        for (f, want) in [(3.0, "3.0"), (0.5, "0.5"), (1e-5, "1e-05"), (1e16, "1e+16"), (1.5e20, "1.5e+20")] {
            assert_eq!(python_float(f), want);
        }
    }

    #[test]
    fn pep503_names() {
        for (name, want) in [
            ("Django", "django"),
            ("My_Pkg", "my-pkg"),
            ("zope.interface", "zope-interface"),
            ("a-_.b", "a-b"),
        ] {
            assert_eq!(canonicalize_name(name), want);
        }
    }
}
