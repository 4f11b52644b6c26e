//! HAProxy as a stand-in for a Service and kube-proxy: active HTTP checks on each replica's
//! `/readyz`, a runtime API to add and remove backends, and no retries or redispatch, so a
//! request sent to a replica that no longer accepts reaches the client as an error.

use crate::net::{free_port, port_open, wait_until};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One backend slot: a replica's API and management ports.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub api_port: u16,
    pub management_port: u16,
}

/// A running HAProxy with `slots.len()` servers `s0..sN`, all in maintenance until enabled.
pub struct Balancer {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Balancer {
    pub fn start(slots: &[Slot]) -> Balancer {
        let dir = tempfile::Builder::new()
            .prefix("testkit-lb-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let socket = dir.path().join("admin.sock");
        let mut config = format!(
            "global\n  stats socket {} level admin\n  maxconn 8192\n\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  \
             retries 0\n  option http-server-close\n\n\
             frontend api\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\n\
             backend replicas\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n",
            socket.display()
        );
        for (i, slot) in slots.iter().enumerate() {
            config.push_str(&format!(
                "  server s{i} 127.0.0.1:{} check port {} inter 500ms fall 2 rise 1 disabled\n",
                slot.api_port, slot.management_port
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .args(["-f", path.to_str().unwrap(), "-db"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("haproxy.log")).unwrap())
            .spawn()
            .expect("haproxy (apt-get install haproxy)");
        wait_until("haproxy listening", Duration::from_secs(10), || {
            port_open(port) && socket.exists()
        });
        Balancer { child, dir, port }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Sends one runtime API command; returns the answer.
    pub fn command(&self, command: &str) -> String {
        let mut stream = UnixStream::connect(self.socket()).unwrap();
        stream.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    /// Puts slot `i` in rotation (the endpoints controller adding a ready pod).
    pub fn enable(&self, i: usize) {
        self.command(&format!("set server replicas/s{i} state ready"));
    }

    /// Takes slot `i` out of rotation (the endpoint removal reaching this node).
    pub fn disable(&self, i: usize) {
        self.command(&format!("set server replicas/s{i} state maint"));
    }

    /// HAProxy's own view of slot `i` (`UP`, `DOWN`, `MAINT`, ...).
    pub fn status(&self, i: usize) -> String {
        let stats = self.command("show stat");
        let name = format!("s{i}");
        stats
            .lines()
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.len() > 17 && fields[0] == "replicas" && fields[1] == name)
            .map(|fields| fields[17].to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
