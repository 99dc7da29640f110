//! The test SMTP server (`smtp_server.py`, aiosmtpd) as seen from a Rust test: started
//! on a loopback port, read back through the JSON lines it writes. Shared by the SMTP
//! and Kafka tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The Python with the test packages (`scripts/test` sets `CHURNWATCH_TEST_PYTHON`).
pub fn python() -> String {
    std::env::var("CHURNWATCH_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("CHURNWATCH_TEST_PYTHON is not set: run the suite with scripts/test, which installs aiosmtpd")
    })
}

/// A running test SMTP server; killed when dropped.
pub struct Server {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    out: tempfile::TempDir,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_on(0, args)
    }

    pub fn start_on(port: u16, args: &[&str]) -> Server {
        let out = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg("--out")
            .arg(out.path())
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::piped())
            // Its log (e.g. a client refusing the certificate) stays out of test output.
            .stderr(
                std::fs::File::create(out.path().join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("start the SMTP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("SMTP server said {line:?}"))
            .parse()
            .unwrap();
        Server { child, port, out }
    }

    /// The server's records so far: only whole lines, since the server may be writing
    /// the next one while a test polls.
    fn lines(&self, name: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.out.path().join(name)).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn received(&self) -> Vec<Value> {
        self.lines("received.jsonl")
    }

    pub fn attempts(&self) -> Vec<Value> {
        self.lines("attempts.jsonl")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
