//! Runs the real `edgelm serve` on a free loopback port and drives it with the official
//! `openai` Python client (`crates/edgelm-server/tests/openai_client.py`, in the virtualenv
//! made by `scripts/py-venv.sh`). Skipped, with a message, when the real model is absent or the
//! virtualenv cannot be created (no Python or no package index).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn real_model() -> Option<PathBuf> {
    // The cache path the CLI itself uses (no download).
    let p = edgelm_runtime::default_model_path()?;
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: the real model {} is absent", p.display());
        None
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python_venv() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/py-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("skipped: scripts/py-venv.sh could not create the Python virtualenv");
        return None;
    }
    let venv = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some(venv.join("bin/python"))
}

#[test]
fn openai_python_client_against_the_real_server() {
    let Some(model) = real_model() else { return };
    let Some(python) = python_venv() else { return };
    let key = "test-key-123";
    let mut server = Command::new(env!("CARGO_BIN_EXE_edgelm"))
        .args([
            "serve", "--port", "0", "--slots", "2", "-c", "1024", "-t", "2",
        ])
        .args([
            "--shutdown-grace",
            "3",
            "--api-key",
            key,
            "--alias",
            "smollm2",
            "-m",
        ])
        .arg(&model)
        .env("EDGELM_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edgelm serve");
    let mut stderr = BufReader::new(server.stderr.take().expect("stderr"));
    let mut line = String::new();
    let t0 = Instant::now();
    let base = loop {
        line.clear();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            panic!("edgelm serve exited before listening");
        }
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            break addr.to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no 'listening on' line"
        );
    };
    // Keep draining the server's stderr so it never blocks on a full pipe.
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let mut l = String::new();
        while stderr.read_line(&mut l).unwrap_or(0) > 0 {
            rest.push_str(&l);
            l.clear();
        }
        rest
    });
    let script = repo_root().join("crates/edgelm-server/tests/openai_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([&base, key, "smollm2", &server.id().to_string()])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let py_err = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    if !out.status.success() {
        let _ = server.kill();
        panic!("openai client checks failed:\n{stdout}\n{py_err}");
    }
    // The script sent SIGTERM during its last stream: the server drains and exits cleanly.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = server.kill();
            panic!("the server did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = log.join().expect("log thread");
    assert!(status.success(), "server exit {status}: {log}");
    assert!(log.contains("server stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn serve_usage_and_startup_errors() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_edgelm"))
            .args(args)
            .env("EDGELM_OFFLINE", "1")
            .env_remove("RUST_LOG")
            .output()
            .expect("spawn edgelm")
    };
    let o = run(&["serve", "--port", "99999"]);
    assert_eq!(o.status.code(), Some(2), "bad port is a usage error");
    let o = run(&["serve", "--slots", "0"]);
    assert_eq!(o.status.code(), Some(2), "zero slots is a usage error");
    let o = run(&["serve", "-m", "/nonexistent/model.gguf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
    let Some(model) = real_model() else { return };
    // A port already taken: a clear error, exit 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let o = run(&["serve", "-m", model.to_str().unwrap(), "--port", &port]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
