//! Named network namespaces, the way iproute2 keeps them: an empty file in
//! `/run/netns` with the namespace bind-mounted on it, so `ip netns` sees
//! them. `/run/netns` is created, and made a shared mount point, when missing.
//!
//! Nothing here changes the calling thread's namespace: creation and
//! [`run_in`] work on fresh threads (a network namespace is per thread).
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::TopoError;

/// Where named namespaces live.
pub const NETNS_RUN_DIR: &str = "/run/netns";

static RUN_DIR_SETUP: Mutex<bool> = Mutex::new(false);

fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

fn check_name(name: &str) -> Result<(), TopoError> {
    if name.is_empty() || name.len() > 255 || name.contains('/') || name == "." || name == ".." {
        return Err(TopoError::Netns {
            netns: name.to_string(),
            op: "check name",
            error: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    Ok(())
}

fn errno(netns: &str, op: &'static str, e: nix::errno::Errno) -> TopoError {
    TopoError::Netns {
        netns: netns.to_string(),
        op,
        error: std::io::Error::from(e),
    }
}

/// Creates `/run/netns` and makes it a shared mount point, as iproute2 does
/// (so mounts in it propagate to other mount namespaces).
fn setup_run_dir() -> Result<(), TopoError> {
    let mut done = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    let dir = NETNS_RUN_DIR;
    let io = |op: &'static str| {
        move |error: std::io::Error| TopoError::Netns {
            netns: dir.to_string(),
            op,
            error,
        }
    };
    fs::create_dir_all(dir).map_err(io("mkdir"))?;
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, Some("none"), flags, None::<&str>) {
        Ok(()) => {}
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| errno(dir, "bind-mount", e))?;
            mount(None::<&str>, dir, Some("none"), flags, None::<&str>)
                .map_err(|e| errno(dir, "make shared", e))?;
        }
        Err(e) => return Err(errno(dir, "make shared", e)),
    }
    *done = true;
    Ok(())
}

/// Creates the named namespace (like `ip netns add`); an error if it exists.
pub fn create(name: &str) -> Result<(), TopoError> {
    check_name(name)?;
    setup_run_dir()?;
    let path = path_of(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                TopoError::NetnsExists {
                    netns: name.to_string(),
                }
            } else {
                TopoError::Netns {
                    netns: name.to_string(),
                    op: "create",
                    error,
                }
            }
        })?;
    let bind = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), TopoError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| errno(name, "unshare", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| errno(name, "bind-mount", e))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if let Err(e) = bind {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(())
}

/// Deletes the named namespace (like `ip netns delete`). Deleting a namespace
/// that does not exist is not an error. The kernel frees it, and the
/// interfaces in it, once nothing else (a process, a socket) holds it.
pub fn delete(name: &str) -> Result<(), TopoError> {
    check_name(name)?;
    let path = path_of(name);
    if !path.exists() {
        return Ok(());
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(errno(name, "unmount", e)),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(TopoError::Netns {
            netns: name.to_string(),
            op: "remove",
            error,
        }),
    }
}

/// Whether the named namespace exists.
pub fn exists(name: &str) -> bool {
    check_name(name).is_ok() && path_of(name).exists()
}

/// The named namespaces whose names start with `prefix`, sorted.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Opens the namespace file (to `setns` into, or hand to netlink as a fd).
pub fn open(name: &str) -> Result<File, TopoError> {
    check_name(name)?;
    File::open(path_of(name)).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            TopoError::NetnsMissing {
                netns: name.to_string(),
            }
        } else {
            TopoError::Netns {
                netns: name.to_string(),
                op: "open",
                error,
            }
        }
    })
}

/// Runs `f` on a fresh thread that has `setns()`'d into the named namespace
/// and returns its result (a panic in `f` is resumed here). Sockets made by
/// `f` stay in that namespace wherever they are used later.
pub fn run_in<F: FnOnce() -> R + Send, R: Send>(name: &str, f: F) -> Result<R, TopoError> {
    let file = open(name)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| errno(name, "setns", e))?;
            drop(file);
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs `f` on a fresh thread inside the namespace bound at `path` (any
/// namespace file: `/run/netns/<name>`, `/proc/<pid>/ns/net`, a runtime's
/// own bind mount), like [`run_in`] for names.
pub fn run_in_path<F: FnOnce() -> R + Send, R: Send>(path: &Path, f: F) -> Result<R, TopoError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            TopoError::NetnsMissing {
                netns: name.clone(),
            }
        } else {
            TopoError::Netns {
                netns: name.clone(),
                op: "open",
                error,
            }
        }
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| errno(&name, "setns", e))?;
            drop(file);
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
