//! Containers started the way an agent starts them: Debian's podman, as
//! root, with its own storage and run directories in a temporary
//! directory, running a root filesystem the test assembles from the
//! host's own curl and its libraries (no image registry is reachable).
//!
//! Two settings this machine forces, neither about blastgate:
//! - `--runtime runc`: crun refuses the hybrid cgroup layout here
//!   ("cgroups in hybrid mode not supported");
//! - explicit `--ulimit`s: the sandbox lacks CAP_SYS_RESOURCE, so podman's
//!   default limits (raised above ours) cannot be set.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub const PODMAN: &str = "/usr/bin/podman";

pub struct Podman {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
}

/// Copies `binary` and every library `ldd` lists for it into `root`.
fn copy_with_libraries(root: &Path, binary: &str) {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let libs = text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(str::to_string);
    for file in std::iter::once(binary.to_string()).chain(libs) {
        let to = root.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&file, &to).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
}

impl Podman {
    /// None (after a skip, which CI=true turns into a failure) where podman
    /// or runc is not installed.
    pub fn new() -> Option<Podman> {
        for tool in [PODMAN, "/usr/sbin/runc"] {
            if !Path::new(tool).exists() {
                blastgate::testing::skip(&format!(
                    "{tool} is not installed (cargo xtask setup installs podman and runc)"
                ));
                return None;
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        for sub in ["etc", "tmp", "proc", "dev", "sys"] {
            std::fs::create_dir_all(rootfs.join(sub)).expect("mkdir");
        }
        for binary in ["/usr/bin/curl", "/bin/sh"] {
            copy_with_libraries(&rootfs, binary);
        }
        // glibc loads its resolver and files back ends by name at run time;
        // ldd does not list them.
        for nss in ["libnss_dns.so.2", "libnss_files.so.2"] {
            let from = Path::new("/lib/x86_64-linux-gnu").join(nss);
            let to = rootfs.join("lib/x86_64-linux-gnu").join(nss);
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
        std::fs::write(rootfs.join("etc/nsswitch.conf"), "hosts: files dns\n").expect("nss");
        Some(Podman { dir, rootfs })
    }

    /// A shell command line running `script` in a new container on
    /// `network` ("host", or "" for podman's default bridge), resolving
    /// through 127.0.0.53 (the container's own loopback on a bridge, so
    /// nothing leaves the machine even if a redirect failed), with `ca`
    /// at /ca.pem.
    pub fn run(&self, network: &str, ca: &str, script: &str) -> String {
        let d = self.dir.path().display();
        let network = if network.is_empty() {
            String::new()
        } else {
            format!("--network {network} ")
        };
        format!(
            "{PODMAN} --root {d}/storage --runroot {d}/run --storage-driver vfs \
             run --rm --runtime runc {network}--dns 127.0.0.53 \
             --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
             -v {ca}:/ca.pem:ro --rootfs {rootfs} /bin/sh -c '{script}'",
            rootfs = self.rootfs.display(),
        )
    }
}
