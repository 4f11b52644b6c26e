//! A throwaway RabbitMQ node on free ports, with its own node name and directories.

use crate::net::{free_port, port_open, wait_until};
use crate::system::{command_as, give_to, kill, run};
use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NODES: AtomicU32 = AtomicU32::new(0);

/// One RabbitMQ node, run as the `rabbitmq` user, on loopback only.
pub struct RabbitMq {
    dir: tempfile::TempDir,
    node: String,
    port: u16,
    dist_port: u16,
    tls_port: Option<u16>,
}

impl RabbitMq {
    /// Starts a node and waits until its AMQP port accepts connections (5-8 s cold).
    pub fn start() -> RabbitMq {
        Self::init(None)
    }

    /// A node with a TLS listener too ([`RabbitMq::tls_url`]), its certificate for 127.0.0.1
    /// signed by `authority`.
    pub fn start_with_tls(authority: &crate::Authority) -> RabbitMq {
        Self::init(Some(authority))
    }

    fn init(authority: Option<&crate::Authority>) -> RabbitMq {
        let dir = tempfile::Builder::new()
            .prefix("testkit-rmq-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let mut conf = String::from("loopback_users = none\n");
        let tls_port = authority.map(|authority| {
            let (crt, key) = authority.issue_server_certificate(dir.path());
            let port = free_port();
            // The node's user cannot read the authority's private directory.
            let ca = dir.path().join("ca.pem");
            std::fs::copy(authority.certificate(), &ca).unwrap();
            conf.push_str(&format!(
                "listeners.ssl.default = {port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                ca.display(),
                crt.display(),
                key.display(),
            ));
            port
        });
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        give_to("rabbitmq", dir.path());
        let rabbit = RabbitMq {
            node: format!(
                "testkit{}x{}@localhost",
                std::process::id(),
                NODES.fetch_add(1, Ordering::SeqCst)
            ),
            port: free_port(),
            dist_port: free_port(),
            tls_port,
            dir,
        };
        rabbit.start_again();
        rabbit
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://guest:guest@127.0.0.1:PORT/%2f` of the TLS listener.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("a node started with start_with_tls");
        format!("amqps://guest:guest@127.0.0.1:{port}/%2f")
    }

    /// Starts the node (again, on the same directories) and waits for the AMQP port.
    pub fn start_again(&self) {
        let dir = self.dir.path();
        let d = |name: &str| dir.join(name).to_string_lossy().to_string();
        run(
            command_as("rabbitmq", "env").args([
                format!("HOME={}", dir.display()),
                format!("RABBITMQ_NODENAME={}", self.node),
                format!("RABBITMQ_NODE_PORT={}", self.port),
                "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1".to_owned(),
                format!("RABBITMQ_DIST_PORT={}", self.dist_port),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
                    .to_owned(),
                format!("RABBITMQ_MNESIA_BASE={}", d("mnesia")),
                format!("RABBITMQ_LOG_BASE={}", d("log")),
                format!("RABBITMQ_ENABLED_PLUGINS_FILE={}", d("enabled_plugins")),
                format!("RABBITMQ_CONFIG_FILE={}", d("rabbitmq")),
                format!("RABBITMQ_PID_FILE={}", d("pid")),
                "/usr/lib/rabbitmq/bin/rabbitmq-server".to_owned(),
                "-detached".to_owned(),
            ]),
            "rabbitmq-server -detached",
        );
        wait_until(
            "rabbitmq accepting AMQP connections",
            Duration::from_secs(60),
            || port_open(self.port) && self.tls_port.is_none_or(port_open),
        );
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `kill -9` of the node and its helpers; waits until the AMQP port is closed.
    pub fn kill9(&self) {
        for pid in self.processes() {
            kill(pid, Signal::SIGKILL);
        }
        wait_until("rabbitmq port closed", Duration::from_secs(30), || {
            !port_open(self.port)
        });
        wait_until("rabbitmq processes gone", Duration::from_secs(30), || {
            self.processes().is_empty()
        });
    }

    /// Runs `rabbitmqctl ARGS` against this node (as the node's user, with its cookie).
    pub fn ctl(&self, args: &[&str]) {
        let home = format!("HOME={}", self.dir.path().display());
        let mut all = vec![
            home.as_str(),
            "/usr/lib/rabbitmq/bin/rabbitmqctl",
            "-n",
            &self.node,
        ];
        all.extend_from_slice(args);
        run(command_as("rabbitmq", "env").args(all), "rabbitmqctl");
    }

    /// Freezes the node (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        for pid in self.processes() {
            kill(pid, Signal::SIGSTOP);
        }
    }

    /// Undoes [`RabbitMq::pause`].
    pub fn resume(&self) {
        for pid in self.processes() {
            kill(pid, Signal::SIGCONT);
        }
    }

    /// The beam process (from the pid file) and every process below it.
    fn processes(&self) -> Vec<i32> {
        let Some(root) = self.pid() else {
            return Vec::new();
        };
        let mut family = vec![root];
        let mut i = 0;
        while i < family.len() {
            family.extend(children_of(family[i]));
            i += 1;
        }
        family.retain(|pid| {
            std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(*pid)
        });
        family
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        for pid in self.processes() {
            kill(pid, Signal::SIGCONT);
            kill(pid, Signal::SIGKILL);
        }
    }
}
