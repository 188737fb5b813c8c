//! The run directory: one writer at a time (an OS file lock, released when the process dies),
//! and nothing left behind by a run that fails before it writes anything.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::checkpoint::STATE_FILE;

/// The lock file inside a run directory; it holds the writer's process id.
pub const LOCK_FILE: &str = ".trainer.lock";

/// A run directory locked by this process for the lifetime of the value (or, for the ranks of
/// a data-parallel run that write nothing, only its path: [`RunDir::detached`]).
pub struct RunDir {
    path: PathBuf,
    /// The outermost directory this process created for it (`path` or an ancestor).
    created: Option<PathBuf>,
    _lock: Option<File>,
}

/// Why a directory cannot be used.
enum Refusal {
    Busy(String),
    HoldsRun,
}

impl RunDir {
    /// Locks `path` (created if missing) for a fresh run: it must not hold a run already.
    pub fn fresh(path: &Path) -> Result<Self> {
        match Self::try_fresh(path)? {
            Ok(d) => Ok(d),
            Err(Refusal::Busy(msg)) => bail!(msg),
            Err(Refusal::HoldsRun) => bail!(
                "{} already holds a run ({STATE_FILE}); continue it with --resume {0}, or choose \
                 another --out",
                path.display()
            ),
        }
    }

    /// Locks the first of `base`, `base-2`, `base-3`, ... that holds no run and is not in use.
    pub fn fresh_numbered(base: &Path) -> Result<Self> {
        for k in 1.. {
            let path = if k == 1 {
                base.to_path_buf()
            } else {
                PathBuf::from(format!("{}-{k}", base.display()))
            };
            if let Ok(d) = Self::try_fresh(&path)? {
                return Ok(d);
            }
        }
        unreachable!("an unbounded range ends only by returning")
    }

    /// Locks an existing run directory to resume it.
    pub fn existing(path: &Path) -> Result<Self> {
        if !path.join(STATE_FILE).is_file() {
            bail!(
                "{} has no {STATE_FILE}: nothing to resume (it is written after each epoch and \
                 every --save-every steps)",
                path.display()
            );
        }
        match Self::lock(path, None)? {
            Ok(d) => Ok(d),
            Err(Refusal::Busy(msg)) => bail!(msg),
            Err(Refusal::HoldsRun) => unreachable!("lock() only refuses busy directories"),
        }
    }

    /// The path of a run directory that this process neither creates nor locks: it only reads
    /// it (to resume), and names it in messages.
    pub fn detached(path: &Path) -> Self {
        RunDir {
            path: path.to_path_buf(),
            created: None,
            _lock: None,
        }
    }

    fn try_fresh(path: &Path) -> Result<std::result::Result<Self, Refusal>> {
        let created = path
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .last()
            .map(Path::to_path_buf);
        std::fs::create_dir_all(path).with_context(|| {
            format!(
                "cannot create output directory {} (--out); choose a writable directory",
                path.display()
            )
        })?;
        // Lock first: a directory in use is refused as such, even before its first checkpoint.
        let dir = match Self::lock(path, created)? {
            Ok(d) => d,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if path.join(STATE_FILE).exists() {
            return Ok(Err(Refusal::HoldsRun));
        }
        Ok(Ok(dir))
    }

    fn lock(path: &Path, created: Option<PathBuf>) -> Result<std::result::Result<Self, Refusal>> {
        let lock_path = path.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| {
                format!(
                    "cannot write into output directory {} (--out); choose a writable directory",
                    path.display()
                )
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_string(),
                    p => p.to_string(),
                };
                return Ok(Err(Refusal::Busy(format!(
                    "another trainer (pid {pid}) is writing {}; wait for it to finish, or choose \
                     another --out",
                    path.display()
                ))));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(Ok(RunDir {
            path: path.to_path_buf(),
            created,
            _lock: Some(file),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// After a failure: removes the directories this process created for the run if it wrote
    /// nothing but its lock file.
    pub fn discard_if_unused(self) {
        let only_lock = std::fs::read_dir(&self.path).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name() == LOCK_FILE)
        });
        if let (Some(root), true) = (&self.created, only_lock) {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let first = RunDir::fresh(&run).unwrap();
        let e = RunDir::fresh(&run).err().unwrap().to_string();
        assert!(
            e.contains(&format!("another trainer (pid {})", std::process::id())),
            "{e}"
        );
        // The numbered choice skips the busy directory.
        let second = RunDir::fresh_numbered(&run).unwrap();
        assert_eq!(second.path(), tmp.path().join("run-2"));
        drop(first);
        RunDir::fresh(&run).unwrap();
        // Nothing but the lock was written into a directory it created: the directory goes.
        let new = tmp.path().join("new");
        RunDir::fresh(&new).unwrap().discard_if_unused();
        assert!(!new.exists());
        // With the parents it created.
        let deep = tmp.path().join("runs/a/b");
        RunDir::fresh(&deep).unwrap().discard_if_unused();
        assert!(!tmp.path().join("runs").exists());
        // A directory that existed before is kept.
        RunDir::fresh(&run).unwrap().discard_if_unused();
        assert!(run.exists());
    }

    #[test]
    fn a_detached_directory_is_neither_created_nor_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        RunDir::detached(&run).discard_if_unused();
        assert!(!run.exists());
        let _detached = RunDir::detached(tmp.path());
        RunDir::fresh(tmp.path()).unwrap();
    }

    #[test]
    fn resume_needs_a_state_file() {
        let tmp = tempfile::tempdir().unwrap();
        let e = RunDir::existing(tmp.path()).err().unwrap().to_string();
        assert!(e.contains("nothing to resume"), "{e}");
    }
}
