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
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // Its own CA, and a leaf for billing.internal signed by it.
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
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            key,
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=billing.internal",
        ]);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=DNS:billing.internal\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
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

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
