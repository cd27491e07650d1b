//! Local user accounts (getpwnam_r / getpwuid_r).

use std::ffi::{CStr, CString};

/// A local account.
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Looks a user up by name or numeric uid.
pub fn lookup(spec: &str) -> Option<User> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid out-parameter.
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
        let name = CString::new(spec).ok()?;
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
        return None;
    }
    // SAFETY: the lookup succeeded, so these point into `buf`.
    let (name, home, shell) = unsafe {
        (
            CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
            CStr::from_ptr(pwd.pw_dir).to_string_lossy().into_owned(),
            CStr::from_ptr(pwd.pw_shell).to_string_lossy().into_owned(),
        )
    };
    Some(User {
        name,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home,
        shell,
    })
}

pub fn name_of(uid: u32) -> Option<String> {
    lookup(&uid.to_string()).map(|u| u.name)
}
