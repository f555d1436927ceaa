//! The real client: `@supabase/supabase-js` (pinned in tests/js/package.json)
//! runs the email/password flow of `tests/js/password-flow.mjs` against
//! `/auth/v1` served by the real router. Needs Node 20 or newer on PATH; the
//! npm packages are installed from the lockfile on first run (`npm ci`).
//! A machine without Node fails this test: it is never skipped.
use crate::common::*;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

/// base64 of 32 bytes: a test-only key-encryption key for the signing keys.
const KEYS_SECRET: &str = "c3VwYWJhc2UtanMtdGVzdC1rZXlzLXNlY3JldC0zMmI=";
/// Longest a `npm ci` or the flow may take.
const NPM_TIMEOUT: Duration = Duration::from_secs(300);
const FLOW_TIMEOUT: Duration = Duration::from_secs(120);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// A Supabase-style `anon` key signed with the test secret.
fn anon_key() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sign_hs256(&json!({
        "iss": "supabase",
        "role": "anon",
        "iat": now,
        "exp": now + 3600,
    }))
}

/// Runs `cmd` to completion (killed after `timeout`), capturing its output.
/// Panics with `what` if it cannot be started.
fn run(mut cmd: Command, what: &str, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    // Drain both pipes while waiting, so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: still running after {} s, killed\n--- stdout\n{}\n--- stderr\n{}",
                timeout.as_secs(),
                String::from_utf8_lossy(&out.join().unwrap()),
                String::from_utf8_lossy(&err.join().unwrap()),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Node on PATH, at least version 20; fails the test otherwise.
fn require_node() {
    let out = match Command::new("node").arg("--version").output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`node` is not installed or not on PATH: this test needs Node.js >= 20 \
             (and npm) to run @supabase/supabase-js against /auth/v1"
        ),
        Err(e) => panic!("cannot run `node --version`: {e}"),
    };
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("unexpected `node --version` output: {version:?}"));
    assert!(
        major >= 20,
        "Node.js {version} is too old: tests/js needs Node.js >= 20"
    );
}

/// Installs tests/js's packages from the lockfile unless they are there.
fn ensure_node_modules() {
    let dir = js_dir();
    let installed = ["@supabase/supabase-js", "ws"].iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    });
    if installed {
        return;
    }
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir);
    let out = run(cmd, "npm ci in tests/js (is npm installed?)", NPM_TIMEOUT);
    assert!(
        out.status.success(),
        "npm ci in {} failed ({}):\n{}",
        dir.display(),
        out.status,
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_password_flow() {
    require_node();
    // npm and node block: keep them off the runtime that serves the app.
    tokio::task::spawn_blocking(ensure_node_modules)
        .await
        .unwrap();

    let app = TestApp::spawn_with(
        &[
            ("AUTH_AUTOCONFIRM", "true"),
            // Production profile: without it nothing signs access tokens.
            ("AUTH_KEYS_SECRET", KEYS_SECRET),
        ],
        5,
    )
    .await;
    let email = format!("sbjs-{}@example.com", Uuid::new_v4().simple());

    let mut cmd = Command::new("node");
    cmd.arg("password-flow.mjs")
        .current_dir(js_dir())
        .env("SUPABASE_URL", &app.base)
        .env("SUPABASE_ANON_KEY", anon_key())
        .env("EMAIL", &email)
        .env("NO_COLOR", "1");
    let out = tokio::task::spawn_blocking(move || run(cmd, "node password-flow.mjs", FLOW_TIMEOUT))
        .await
        .unwrap();

    assert!(
        out.status.success(),
        "supabase-js password flow failed ({}) against {} as {email}:\n{}",
        out.status,
        app.base,
        text(&out)
    );
    // The steps and exchanges, shown with --nocapture.
    println!("{}", text(&out));
}
