//! `trainer train --gpus N`: start one worker process per GPU of this node (the trainer itself,
//! with the same arguments and its rank in the environment, as torchrun does) and wait for
//! them. When one fails, the others are stopped and the error names its rank.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use thiserror::Error;

use super::world::{Launch, Master};

/// A worker process to start.
pub struct Worker {
    pub rank: usize,
    pub command: Command,
}

/// Why the workers of a launch did not all succeed.
#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("cannot start rank {rank}: {source}")]
    Spawn { rank: usize, source: std::io::Error },
    #[error("rank {rank} failed ({status}){}; the other ranks were stopped",
        last_line.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    Failed {
        rank: usize,
        status: ExitStatus,
        /// The last line the rank wrote on stderr.
        last_line: Option<String>,
    },
    #[error("cannot wait for rank {rank}: {source}")]
    Wait { rank: usize, source: std::io::Error },
}

struct Running {
    rank: usize,
    child: Child,
    last_line: Arc<Mutex<Option<String>>>,
    done: bool,
}

/// Starts the workers, forwards their stderr (each line prefixed with `[rank R]`) and waits for
/// all of them. When one exits unsuccessfully the others are killed, and the error names the
/// first failure seen: its rank, exit status and last stderr line.
pub fn run(workers: Vec<Worker>) -> Result<(), LaunchError> {
    let (eof_tx, eof_rx) = mpsc::channel::<usize>();
    let mut running: Vec<Running> = Vec::new();
    for Worker { rank, mut command } in workers {
        command.stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(source) => {
                stop(&mut running);
                return Err(LaunchError::Spawn { rank, source });
            }
        };
        let last_line = Arc::new(Mutex::new(None));
        if let Some(stderr) = child.stderr.take() {
            let (last, eof) = (last_line.clone(), eof_tx.clone());
            std::thread::spawn(move || {
                forward(rank, stderr, &last);
                let _ = eof.send(rank);
            });
        }
        running.push(Running {
            rank,
            child,
            last_line,
            done: false,
        });
    }
    loop {
        let mut alive = false;
        for i in 0..running.len() {
            let w = &mut running[i];
            if w.done {
                continue;
            }
            match w.child.try_wait() {
                Ok(None) => alive = true,
                Ok(Some(status)) => {
                    w.done = true;
                    if !status.success() {
                        let rank = w.rank;
                        stop(&mut running);
                        // Its last lines may still be in the pipe: wait for their end a moment.
                        wait_for_eof(&eof_rx, rank, Duration::from_secs(2));
                        let last_line = running[i].last_line.lock().unwrap().clone();
                        return Err(LaunchError::Failed {
                            rank,
                            status,
                            last_line,
                        });
                    }
                }
                Err(source) => {
                    let rank = w.rank;
                    stop(&mut running);
                    return Err(LaunchError::Wait { rank, source });
                }
            }
        }
        if !alive {
            drop(eof_tx);
            // Let the forwarders print what is left.
            let deadline = Instant::now() + Duration::from_secs(2);
            while eof_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok()
            {}
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills and reaps the workers still running.
fn stop(running: &mut [Running]) {
    for w in running.iter_mut().filter(|w| !w.done) {
        let _ = w.child.kill();
        let _ = w.child.wait();
        w.done = true;
    }
}

fn wait_for_eof(rx: &mpsc::Receiver<usize>, rank: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while let Ok(r) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if r == rank {
            return;
        }
    }
}

/// Copies a worker's stderr to ours, line by line with its rank, keeping the last line.
fn forward(rank: usize, stderr: impl std::io::Read, last: &Mutex<Option<String>>) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end();
                let _ = writeln!(std::io::stderr().lock(), "[rank {rank}] {line}");
                if !line.trim().is_empty() {
                    *last.lock().unwrap() = Some(line.to_string());
                }
            }
        }
    }
}

/// Makes the worker die when the launcher dies (Linux), so that none is left behind.
fn die_with_parent(command: &mut Command) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = command;
}

/// The worker commands of `launch`: this executable with `args`, and in the environment
/// WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Only rank 0
/// keeps its standard output; every rank's stderr is forwarded.
pub fn trainer_workers(launch: &Launch, master: &Master, args: &[OsString]) -> Result<Vec<Worker>> {
    let exe = std::env::current_exe().context("cannot find the trainer executable to start")?;
    Ok((0..launch.gpus)
        .map(|local| {
            let rank = launch.rank_of(local);
            let mut command = Command::new(&exe);
            command
                .args(args)
                .env("WORLD_SIZE", launch.world_size().to_string())
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", local.to_string())
                .env("LOCAL_WORLD_SIZE", launch.gpus.to_string())
                .env("MASTER_ADDR", &master.host)
                .env("MASTER_PORT", master.port.to_string());
            if rank != 0 {
                command.stdout(Stdio::null());
            }
            Worker { rank, command }
        })
        .collect())
}

/// Runs the workers of this node for `trainer train`, re-executing it with the same arguments.
pub fn launch_trainer(launch: &Launch) -> Result<()> {
    let master = match &launch.master {
        Some(m) => m.clone(),
        None => Master {
            host: "127.0.0.1".into(),
            port: free_port()?,
        },
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let first = launch.rank_of(0);
    eprintln!(
        "launching ranks {first}..{} of {} on this node (node {} of {}); rendezvous at {master}",
        first + launch.gpus - 1,
        launch.world_size(),
        launch.node_rank,
        launch.nnodes
    );
    run(trainer_workers(launch, &master, &args)?)?;
    Ok(())
}

/// A local TCP port free at the time of the call.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(rank: usize, script: &str) -> Worker {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Worker { rank, command }
    }

    #[test]
    fn all_workers_succeeding_is_success() {
        run(vec![sh(0, "echo zero >&2"), sh(1, "sleep 0.2; exit 0")]).unwrap();
        run(Vec::new()).unwrap();
    }

    #[test]
    fn a_worker_that_fails_early_stops_the_others() {
        let start = Instant::now();
        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let e = run(vec![
            Worker {
                rank: 0,
                command: sleeper,
            },
            sh(1, "echo starting; echo 'error: out of memory' >&2; exit 3"),
        ])
        .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the sleeper was waited for"
        );
        let msg = e.to_string();
        assert!(matches!(e, LaunchError::Failed { rank: 1, .. }), "{msg}");
        assert!(
            msg.contains("rank 1 failed (exit status: 3): error: out of memory"),
            "{msg}"
        );
        assert!(msg.contains("the other ranks were stopped"), "{msg}");
        // Killed by a signal, nothing written.
        let e = run(vec![sh(0, "kill -9 $$")]).unwrap_err().to_string();
        assert!(e.contains("rank 0 failed (signal: 9"), "{e}");
    }

    #[test]
    fn a_worker_that_cannot_start_is_named() {
        let mut missing = Command::new("/nonexistent/trainer");
        missing.arg("train");
        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let e = run(vec![
            Worker {
                rank: 0,
                command: sleeper,
            },
            Worker {
                rank: 1,
                command: missing,
            },
        ])
        .unwrap_err();
        assert!(e.to_string().starts_with("cannot start rank 1: "), "{e}");
    }

    #[test]
    fn workers_get_their_rank_in_the_environment() {
        let launch = Launch {
            gpus: 2,
            nnodes: 2,
            node_rank: 1,
            master: None,
        };
        let master = Master {
            host: "10.1.2.3".into(),
            port: 4567,
        };
        let workers = trainer_workers(&launch, &master, &["train".into()]).unwrap();
        let env = |w: &Worker, k: &str| {
            w.command
                .get_envs()
                .find(|(n, _)| *n == k)
                .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        };
        assert_eq!(
            workers.iter().map(|w| w.rank).collect::<Vec<_>>(),
            vec![2, 3]
        );
        for (local, w) in workers.iter().enumerate() {
            assert_eq!(env(w, "WORLD_SIZE").as_deref(), Some("4"));
            assert_eq!(env(w, "RANK"), Some((2 + local).to_string()));
            assert_eq!(env(w, "LOCAL_RANK"), Some(local.to_string()));
            assert_eq!(env(w, "MASTER_ADDR").as_deref(), Some("10.1.2.3"));
            assert_eq!(env(w, "MASTER_PORT").as_deref(), Some("4567"));
            assert_eq!(w.command.get_args().collect::<Vec<_>>(), vec!["train"]);
        }
    }
}
