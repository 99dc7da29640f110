//! A tansu broker for the benches: `CHURNWATCH_TEST_KAFKA` if set, else one started
//! from `TANSU_BIN` or `~/.cache/churnwatch/tansu-0.6.0/bin/tansu` (memory storage).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker to bench against; stopped on drop when this process started it.
pub struct Broker {
    /// `host:port`.
    pub addr: String,
    child: Option<Child>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The broker to use.
pub fn broker() -> Broker {
    if let Ok(addr) = std::env::var("CHURNWATCH_TEST_KAFKA") {
        return Broker { addr, child: None };
    }
    let bin = std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/churnwatch/tansu-0.6.0/bin/tansu")
        });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(&bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); run scripts/test once to build it",
                bin.display()
            )
        });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Broker {
        addr: format!("127.0.0.1:{port}"),
        child: Some(child),
    }
}
