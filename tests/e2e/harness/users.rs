//! Local accounts for a test (a CI runner's account, a developer's), made
//! with useradd and removed with userdel on drop, home included.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, process::Command};

use super::text;

/// A system account, removed on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Its private home (mode 0700), when made with [`TestUser::with_home`].
    pub home: Option<PathBuf>,
}

impl TestUser {
    /// A system account with no home and no login shell.
    pub fn create(name: &str) -> TestUser {
        TestUser::make(name, None)
    }

    /// A system account with a home of its own under /home, mode 0700 (as
    /// Debian makes them): root gets in only with CAP_DAC_READ_SEARCH.
    pub fn with_home(name: &str) -> TestUser {
        TestUser::make(name, Some(PathBuf::from("/home").join(name)))
    }

    fn make(name: &str, home: Option<PathBuf>) -> TestUser {
        // A leftover of a run killed before its guard ran.
        let _ = Command::new("userdel").args(["--remove", name]).output();
        let mut useradd = Command::new("useradd");
        useradd.args(["--system", "--shell", "/usr/sbin/nologin"]);
        match &home {
            Some(h) => useradd.arg("--create-home").arg("--home-dir").arg(h),
            None => useradd.arg("--no-create-home"),
        };
        let out = useradd.arg(name).output().expect("useradd");
        assert!(out.status.success(), "useradd {name}: {}", text(&out));
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, name]).output().expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("id {flag} {name}: {}", text(&out)))
        };
        let user = TestUser {
            name: name.to_string(),
            uid: id("-u"),
            gid: id("-g"),
            home,
        };
        if let Some(h) = &user.home {
            std::fs::set_permissions(h, std::fs::Permissions::from_mode(0o700))
                .unwrap_or_else(|e| panic!("chmod 0700 {}: {e}", h.display()));
        }
        user
    }

    /// Writes `contents` to `file` in its home, owned by it.
    pub fn write_home_file(&self, file: &str, contents: &str) -> PathBuf {
        let home = self.home.as_ref().expect("a user made with_home");
        let path = home.join(file);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::os::unix::fs::chown(&path, Some(self.uid), Some(self.gid)).expect("chown");
        path
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let mut userdel = Command::new("userdel");
        if self.home.is_some() {
            userdel.arg("--remove");
        }
        let _ = userdel.arg(&self.name).output();
    }
}
