//! A real HTTPS API server for the HTTP gateway tests: Python's
//! `http.server` running a test's handler script, behind a leaf for
//! `billing.internal` from a CA of its own (which blastgate is told to
//! trust as `upstream_ca_file`). Stopped, by pid, on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use super::free_port;

pub const PYTHON: &str = "/opt/blastgate-tools/venv/bin/python";

pub struct HttpsUpstream {
    child: Child,
    pub port: u16,
    /// The CA the leaf is signed by.
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpsUpstream {
    /// Starts `server` (a Python script taking address, port, certificate
    /// and key, printing `ready` once it listens) on 127.0.0.2.
    pub fn start(server: &str) -> HttpsUpstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        ca_and_leaf(dir.path(), &["billing.internal"]);
        std::fs::write(p("server.py"), server).expect("server.py");
        let port = free_port();
        let mut child = Command::new(PYTHON)
            .arg(p("server.py"))
            .args(["127.0.0.2", &port.to_string()])
            .arg(p("leaf.pem"))
            .arg(p("leaf.key"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python https server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).ok();
        assert_eq!(line.trim(), "ready", "the upstream did not start");
        HttpsUpstream {
            child,
            port,
            ca: p("ca.pem"),
            _dir: dir,
        }
    }
}

/// In `dir`: `ca.pem`/`ca.key`, a CA of the test's own, and
/// `leaf.pem`/`leaf.key`, a server certificate it signed for `names`.
pub fn ca_and_leaf(dir: &std::path::Path, names: &[&str]) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = "ec_paramgen_curve:P-256";
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        key,
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=upstream test CA",
    ]);
    let cn = format!("/CN={}", names[0]);
    openssl(&[
        "req", "-newkey", "ec", "-pkeyopt", key, "-nodes", "-keyout", "leaf.key", "-out",
        "leaf.csr", "-subj", &cn,
    ]);
    let sans: Vec<String> = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(_) => format!("IP:{n}"),
            Err(_) => format!("DNS:{n}"),
        })
        .collect();
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        ),
    )
    .expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
