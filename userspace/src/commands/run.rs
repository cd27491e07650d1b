//! `blastgate run`: get labelled, drop privileges, exec.

use std::{ffi::CString, os::unix::process::CommandExt, path::Path};

use anyhow::{bail, Context};

use crate::control::{
    client::Client,
    proto::{Request, Response},
};

pub fn run(
    socket: &Path,
    agent: &str,
    user: Option<&str>,
    command: &[String],
) -> anyhow::Result<()> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command given");
    };
    let resolved = user.map(lookup_user).transpose()?;
    match Client::call(
        socket,
        &Request::Label {
            agent: agent.to_string(),
        },
    ) {
        Ok(Response::Labelled { pid, agent_id, .. }) => {
            tracing::debug!(pid, agent_id, "labelled");
        }
        Ok(other) => bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) => bail!("{e}; refusing to start the agent unguarded"),
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(u) = &resolved {
        drop_to(u)?;
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
    }
    let err = cmd.exec();
    Err(err).with_context(|| format!("exec {program}"))
}

struct User {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn lookup_user(spec: &str) -> anyhow::Result<User> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = if let Ok(uid) = spec.parse::<u32>() {
        // SAFETY: buffers are valid for the sizes passed; result is checked.
        unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        }
    } else {
        let name = CString::new(spec).context("user name contains NUL")?;
        // SAFETY: as above.
        unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        }
    };
    if rc != 0 || result.is_null() {
        bail!("no such user: {spec}");
    }
    // SAFETY: getpwnam_r succeeded, so the strings point into `buf`.
    let (name, home) = unsafe {
        (
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned(),
            std::ffi::CStr::from_ptr(pwd.pw_dir)
                .to_string_lossy()
                .into_owned(),
        )
    };
    Ok(User {
        name,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home,
    })
}

/// Supplementary groups, gid, then uid: the order that leaves no way back.
fn drop_to(u: &User) -> anyhow::Result<()> {
    let name = CString::new(u.name.as_str()).context("user name contains NUL")?;
    // SAFETY: plain syscalls on valid arguments; each result is checked.
    unsafe {
        if libc::initgroups(name.as_ptr(), u.gid as libc::gid_t) != 0 {
            bail!(
                "initgroups({}): {}",
                u.name,
                std::io::Error::last_os_error()
            );
        }
        if libc::setgid(u.gid) != 0 {
            bail!("setgid({}): {}", u.gid, std::io::Error::last_os_error());
        }
        if libc::setuid(u.uid) != 0 {
            bail!("setuid({}): {}", u.uid, std::io::Error::last_os_error());
        }
        if u.uid != 0 && libc::setuid(0) == 0 {
            bail!("could still regain root after dropping to {}", u.name);
        }
    }
    Ok(())
}
