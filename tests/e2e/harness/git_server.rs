//! A bare repository served over smart HTTP by `git http-backend`, behind
//! Debian's nginx and fcgiwrap, on loopback: the far side of the HTTP
//! git tests. Both servers run in the foreground from configs in a
//! scratch directory and are stopped (by pid) when dropped.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{free_port_on, kernel_ready, shipped_policies, wait_until, Daemon, Env};

pub const NGINX: &str = "/usr/sbin/nginx";
pub const FCGIWRAP: &str = "/usr/sbin/fcgiwrap";
const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

pub struct GitHttp {
    pub ip: String,
    pub port: u16,
    dir: tempfile::TempDir,
    nginx: Child,
    fcgi: Child,
}

impl GitHttp {
    pub fn available() -> bool {
        [NGINX, FCGIWRAP, HTTP_BACKEND]
            .iter()
            .all(|p| Path::new(p).exists())
    }

    /// Serves `<root>/repo.git` (bare, branch main, pushes enabled) at
    /// `http://ip:port/repo.git`.
    pub fn start(ip: &str) -> GitHttp {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        let repo = root.join("repo.git");
        let ok = Command::new("git")
            .args(["init", "-q", "--bare", "--initial-branch=main"])
            .arg(&repo)
            .status()
            .expect("git init");
        assert!(ok.success());
        let ok = Command::new("git")
            .arg("--git-dir")
            .arg(&repo)
            .args(["config", "http.receivepack", "true"])
            .status()
            .expect("git config");
        assert!(ok.success());
        let sock = dir.path().join("fcgi.sock");
        let fcgi = Command::new(FCGIWRAP)
            .arg("-s")
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("fcgiwrap");
        wait_until(Duration::from_secs(10), || sock.exists().then_some(()))
            .expect("fcgiwrap's socket");
        let port = free_port_on(&[ip]);
        let d = dir.path().display();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  proxy_temp_path {d}/proxy;\n\
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 server {{\n    listen {ip}:{port};\n    client_max_body_size 0;\n\
                 location / {{\n      include /etc/nginx/fastcgi_params;\n\
                 fastcgi_pass unix:{sock};\n\
                 fastcgi_param SCRIPT_FILENAME {HTTP_BACKEND};\n\
                 fastcgi_param GIT_PROJECT_ROOT {root};\n\
                 fastcgi_param GIT_HTTP_EXPORT_ALL \"\";\n\
                 fastcgi_param PATH_INFO $uri;\n    }}\n  }}\n}}\n",
                sock = sock.display(),
                root = root.display(),
            ),
        )
        .expect("nginx.conf");
        let nginx = Command::new(NGINX)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx");
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect((ip, port)).ok().map(|_| ())
        })
        .expect("nginx listening");
        GitHttp {
            ip: ip.to_string(),
            port,
            dir,
            nginx,
            fcgi,
        }
    }

    /// The served repository, on disk.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("root/repo.git")
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}/repo.git", self.ip, self.port)
    }

    /// The server's value of `name` ("" if none).
    pub fn rev(&self, name: &str) -> String {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(self.repo())
            .args(["rev-parse", "--verify", "-q", name])
            .output()
            .expect("git rev-parse");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        for child in [&mut self.nginx, &mut self.fcgi] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A daemon whose HTTP gateway (shipped policies, approvals waiting a
/// minute, `extra` config) fronts git http-backend on 127.0.0.2; None
/// (after saying why) where the kernel hooks or the servers are missing.
pub fn http_gateway(extra: &str) -> Option<(GitHttp, Env, Daemon)> {
    if !kernel_ready() {
        return None;
    }
    if !GitHttp::available() {
        blastgate::testing::skip(
            "nginx, fcgiwrap or git-http-backend is missing (cargo xtask setup)",
        );
        return None;
    }
    let server = GitHttp::start("127.0.0.2");
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n{extra}\n\
         [[targets]]\nname = \"git-http\"\nprotocol = \"http\"\naddress = \"127.0.0.2:{}\"\n\
         hostnames = [\"127.0.0.2\"]\n\n[targets.http]\n",
        shipped_policies().display(),
        server.port,
    ));
    let daemon = Daemon::start(&env);
    Some((server, env, daemon))
}
