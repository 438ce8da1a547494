//! Starting a command whose pid is known before it runs: fork, let the
//! child wait on a pipe, put its pid into the probe's filter, then let it
//! exec. `std::process::Command::spawn` cannot do this: it returns only once
//! the child has exec'd.
//!
//! Between fork and exec the child of this (multi-threaded) process calls
//! only async-signal-safe functions: read, write, execve, _exit.

use std::{
    ffi::{CString, OsStr, OsString},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Errors starting a command.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// Not found on PATH (or not a file).
    #[error("command not found: {0}")]
    NotFound(String),
    /// An argument contains a NUL byte.
    #[error("argument contains a NUL byte: {0:?}")]
    Nul(OsString),
    /// fork, pipe or exec failed.
    #[error("cannot run `{program}`: {source}")]
    Os {
        /// What was run.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Find `program` as a shell would: as given if it has a slash, else on PATH.
pub fn resolve(program: &OsStr) -> Result<PathBuf, SpawnError> {
    let not_found = || SpawnError::NotFound(program.to_string_lossy().into_owned());
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return if p.is_file() { Ok(p) } else { Err(not_found()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(not_found)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn cstring(s: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul(s.to_owned()))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A forked child waiting to exec.
pub struct GatedChild {
    pid: u32,
    program: String,
    gate: OwnedFd,
    exec_error: OwnedFd,
}

/// A child that was released to exec (or failed to).
#[derive(Debug)]
pub struct Child {
    pid: u32,
}

/// How [`Child::wait_exec_stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecStop {
    /// Stopped at the end of its exec: detach it to let it run.
    Stopped,
    /// It ended first (killed by a signal): the exit code, as
    /// [`Child::wait`] returns it. It has been reaped.
    Exited(i32),
}

impl GatedChild {
    /// Fork a child that will exec `program` with `args` (argv[1..]) once
    /// released. Stdio is inherited.
    pub fn spawn(program: &OsStr, args: &[OsString]) -> Result<Self, SpawnError> {
        let path = resolve(program)?;
        let name = program.to_string_lossy().into_owned();
        let os_err = |source| SpawnError::Os {
            program: name.clone(),
            source,
        };
        // Everything the child needs is allocated before fork.
        let c_path = cstring(path.as_os_str())?;
        let mut argv: Vec<CString> = vec![cstring(program)?];
        for a in args {
            argv.push(cstring(a)?);
        }
        let envs: Vec<CString> = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                CString::new(kv).map_err(|e| SpawnError::Nul(OsString::from_vec(e.into_vec())))
            })
            .collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());

        let (gate_r, gate_w) = pipe().map_err(os_err)?;
        let (err_r, err_w) = pipe().map_err(os_err)?;
        // SAFETY: fork; the child only calls async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os_err(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // Child.
            // SAFETY: read/execve/write/_exit on descriptors and buffers
            // prepared before fork.
            unsafe {
                let mut b = [0u8; 1];
                if libc::read(gate_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) != 1 {
                    libc::_exit(127); // the parent went away
                }
                libc::execve(c_path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
                let errno = *libc::__errno_location();
                let bytes = errno.to_ne_bytes();
                libc::write(err_w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127);
            }
        }
        drop(gate_r);
        drop(err_w);
        Ok(Self {
            pid: pid as u32,
            program: name,
            gate: gate_w,
            exec_error: err_r,
        })
    }

    /// The child's pid.
    pub const fn pid(&self) -> u32 {
        self.pid
    }

    /// Attach to the waiting child with ptrace so that it stops right after
    /// its exec, before it runs a single instruction of the new program
    /// (see [`Child::wait_exec_stop`]). Call before [`Self::release`], from
    /// the thread that will call [`Child::detach`] (ptrace ties a tracee to
    /// one tracer thread). Fails where ptrace is not allowed (seccomp,
    /// Yama); the child is then unaffected.
    pub fn stop_at_exec(&self) -> std::io::Result<()> {
        // SAFETY: ptrace on our own child with integer arguments.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SEIZE,
                self.pid as libc::pid_t,
                0usize,
                libc::PTRACE_O_TRACEEXEC as usize,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Let the child exec. Fails if exec failed (the child is reaped).
    pub fn release(self) -> Result<Child, SpawnError> {
        let os_err = |source| SpawnError::Os {
            program: self.program.clone(),
            source,
        };
        // SAFETY: one byte from a valid buffer to our pipe.
        let n = unsafe { libc::write(self.gate.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        if n != 1 {
            return Err(os_err(std::io::Error::last_os_error()));
        }
        let mut errno = [0u8; 4];
        // SAFETY: reading into a valid buffer; EOF (0) means exec succeeded
        // and the CLOEXEC write end closed.
        let n = unsafe {
            libc::read(
                self.exec_error.as_raw_fd(),
                errno.as_mut_ptr().cast(),
                errno.len(),
            )
        };
        let child = Child { pid: self.pid };
        if n == 4 {
            let _ = child.wait();
            return Err(os_err(std::io::Error::from_raw_os_error(
                i32::from_ne_bytes(errno),
            )));
        }
        Ok(child)
    }
}

impl Child {
    /// The child's pid.
    pub const fn pid(&self) -> u32 {
        self.pid
    }

    /// Block until the child ends; returns its exit code as a shell reports
    /// it (128 + signal number when killed by a signal).
    pub fn wait(&self) -> std::io::Result<i32> {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
            if r == self.pid as i32 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            1
        })
    }

    /// After [`GatedChild::stop_at_exec`] and [`GatedChild::release`]: wait
    /// until the child stops at the end of its exec (its new address space
    /// complete, no instruction of it run yet). Signals that arrive first
    /// are passed on to it.
    pub fn wait_exec_stop(&self) -> std::io::Result<ExecStop> {
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own (traced) child.
            let r = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::__WALL) };
            if r != self.pid as i32 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if libc::WIFEXITED(status) {
                return Ok(ExecStop::Exited(libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(ExecStop::Exited(128 + libc::WTERMSIG(status)));
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            if status >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_EXEC << 8) {
                return Ok(ExecStop::Stopped);
            }
            // A signal-delivery stop passes the signal on; an event stop
            // (group stop under PTRACE_SEIZE) resumes without one.
            let sig = if status >> 16 == 0 {
                libc::WSTOPSIG(status)
            } else {
                0
            };
            // SAFETY: ptrace on our own stopped tracee.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_CONT,
                    self.pid as libc::pid_t,
                    0usize,
                    sig as usize,
                )
            };
        }
    }

    /// Stop tracing the child (stopped by [`Self::wait_exec_stop`]) and let
    /// it run.
    pub fn detach(&self) -> std::io::Result<()> {
        // SAFETY: ptrace on our own stopped tracee.
        let r =
            unsafe { libc::ptrace(libc::PTRACE_DETACH, self.pid as libc::pid_t, 0usize, 0usize) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Send a signal (ignored if the child is gone).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid as i32, sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_reports_exit_codes() {
        let c = GatedChild::spawn(OsStr::new("sh"), &["-c".into(), "exit 7".into()]).unwrap();
        assert!(c.pid() > 0);
        let c = c.release().unwrap();
        assert_eq!(c.wait().unwrap(), 7);
        let c = GatedChild::spawn(OsStr::new("sh"), &["-c".into(), "kill -TERM $$".into()])
            .unwrap()
            .release()
            .unwrap();
        assert_eq!(c.wait().unwrap(), 128 + libc::SIGTERM);
    }

    #[test]
    fn a_traced_child_stops_after_its_exec_with_its_new_image_mapped() {
        let c = GatedChild::spawn(OsStr::new("sh"), &["-c".into(), "exit 3".into()]).unwrap();
        let before = std::fs::read_link(format!("/proc/{}/exe", c.pid())).unwrap();
        if let Err(e) = c.stop_at_exec() {
            eprintln!("SKIPPED: ptrace is not allowed here: {e}");
            return;
        }
        let c = c.release().unwrap();
        assert_eq!(c.wait_exec_stop().unwrap(), ExecStop::Stopped);
        let exe = std::fs::read_link(format!("/proc/{}/exe", c.pid())).unwrap();
        assert_ne!(exe, before, "still the pre-exec image");
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", c.pid())).unwrap();
        assert!(maps.contains("[stack]"), "{maps}");
        c.detach().unwrap();
        assert_eq!(c.wait().unwrap(), 3);
    }

    #[test]
    fn missing_commands_are_reported() {
        let e = GatedChild::spawn(OsStr::new("no-such-command-mm-probe"), &[])
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "command not found: no-such-command-mm-probe");
        let e = GatedChild::spawn(OsStr::new("/nonexistent/x"), &[])
            .err()
            .unwrap();
        assert!(matches!(e, SpawnError::NotFound(_)));
    }

    #[test]
    fn exec_failure_is_an_error() {
        // A file that exists but cannot be executed by execve.
        let dir = std::env::temp_dir().join(format!("mm-probe-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("not-exec");
        std::fs::write(&f, b"\x00\x01garbage").unwrap();
        let c = GatedChild::spawn(f.as_os_str(), &[]).unwrap();
        let e = c.release().unwrap_err();
        assert!(e.to_string().contains("cannot run"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
