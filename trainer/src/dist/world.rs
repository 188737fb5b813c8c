//! Who this process is in a data-parallel run: from `--gpus`, `--nnodes`, `--node-rank` and
//! `--master`, or from the variables a launcher sets (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`,
//! `MASTER_ADDR`, `MASTER_PORT`, as torchrun does).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// The address rank 0 listens on for the rendezvous: `ADDR:PORT` (`[v6 address]:PORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master {
    pub host: String,
    pub port: u16,
}

impl FromStr for Master {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = |why: &str| format!("'{s}' is not ADDR:PORT ({why})");
        let (host, port) = s.trim().rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no address"));
        }
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Master {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Master {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One process of a data-parallel run of `size` processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub size: usize,
    /// 0..size; rank 0 writes the run directory and hosts the rendezvous.
    pub rank: usize,
    /// Index of the process on its node: it picks the GPU.
    pub local_rank: usize,
    pub master: Master,
}

/// The options of `trainer train` that ask for several processes.
#[derive(Clone, Debug, Default)]
pub struct DistFlags {
    pub gpus: Option<usize>,
    pub nnodes: Option<usize>,
    pub node_rank: Option<usize>,
    pub master: Option<Master>,
}

/// Worker processes to start on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Processes (GPUs) on this node.
    pub gpus: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    /// `None`: one node; the launcher picks a free local port.
    pub master: Option<Master>,
}

impl Launch {
    pub fn world_size(&self) -> usize {
        self.gpus * self.nnodes
    }

    /// The global rank of local process `local`.
    pub fn rank_of(&self, local: usize) -> usize {
        self.node_rank * self.gpus + local
    }
}

/// What `trainer train` does, given its options and environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// One process, no communication.
    Single,
    /// Start the workers of this node and wait for them.
    Launch(Launch),
    /// Be one worker of a world of several processes.
    Worker(World),
}

/// Decides the [`Plan`] from the options and the environment (`env(name)`). `WORLD_SIZE` in the
/// environment makes this process a worker (the options, when given, must agree with it);
/// otherwise `--gpus N` with N > 1 (or `--nnodes` > 1) launches workers.
pub fn plan(flags: &DistFlags, env: impl Fn(&str) -> Option<String>) -> Result<Plan> {
    let var = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(ws) = var("WORLD_SIZE") {
        return from_env(flags, &ws, &var);
    }
    for k in ["RANK", "LOCAL_RANK"] {
        if var(k).is_some() {
            bail!(
                "{k} is set but WORLD_SIZE is not: a data-parallel worker needs WORLD_SIZE, RANK, \
                 LOCAL_RANK, MASTER_ADDR and MASTER_PORT (or none of them)"
            );
        }
    }
    let Some(gpus) = flags.gpus else {
        if flags.nnodes.is_some() || flags.node_rank.is_some() || flags.master.is_some() {
            bail!("--nnodes, --node-rank and --master go with --gpus N (processes per node)");
        }
        return Ok(Plan::Single);
    };
    if gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    let nnodes = flags.nnodes.unwrap_or(1);
    if nnodes == 0 {
        bail!("--nnodes must be at least 1");
    }
    let node_rank = flags.node_rank.unwrap_or(0);
    if node_rank >= nnodes {
        bail!("--node-rank {node_rank} must be below --nnodes {nnodes}");
    }
    if nnodes > 1 && flags.master.is_none() {
        bail!(
            "--nnodes {nnodes} needs --master ADDR:PORT, the address of node 0 (--node-rank 0) and \
             a free port there, the same on every node"
        );
    }
    if gpus * nnodes == 1 {
        return Ok(Plan::Single);
    }
    Ok(Plan::Launch(Launch {
        gpus,
        nnodes,
        node_rank,
        master: flags.master.clone(),
    }))
}

fn from_env(
    flags: &DistFlags,
    world_size: &str,
    var: &impl Fn(&str) -> Option<String>,
) -> Result<Plan> {
    let number = |k: &str, v: &str| -> Result<usize> {
        v.parse()
            .with_context(|| format!("{k}={v} is not a non-negative whole number"))
    };
    let size = number("WORLD_SIZE", world_size)?;
    if size == 0 {
        bail!("WORLD_SIZE=0: a run needs at least one process");
    }
    if let Some(g) = flags.gpus {
        let nnodes = flags.nnodes.unwrap_or(1);
        if g * nnodes != size {
            bail!(
                "--gpus {g} on {nnodes} node(s) makes {} processes but WORLD_SIZE={size}; drop the \
                 options or make them agree",
                g * nnodes
            );
        }
    }
    let need = |k: &str| {
        var(k).with_context(|| {
            format!("WORLD_SIZE={size} is set but {k} is not; a worker needs WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
        })
    };
    let rank = match var("RANK") {
        Some(r) => number("RANK", &r)?,
        None if size == 1 => 0,
        None => number("RANK", &need("RANK")?)?,
    };
    if rank >= size {
        bail!("RANK={rank} must be below WORLD_SIZE={size}");
    }
    if size == 1 {
        return Ok(Plan::Single);
    }
    let local_rank = number("LOCAL_RANK", &need("LOCAL_RANK")?)?;
    if local_rank > rank {
        bail!("LOCAL_RANK={local_rank} cannot exceed RANK={rank}");
    }
    if let (Some(g), Some(node)) = (flags.gpus, flags.node_rank) {
        if rank / g != node {
            bail!("RANK={rank} is not on --node-rank {node} with --gpus {g}");
        }
    }
    let host = need("MASTER_ADDR")?;
    let port = need("MASTER_PORT")?;
    let master: Master = format!("{host}:{port}")
        .parse()
        .map_err(|e| anyhow::anyhow!("MASTER_ADDR/MASTER_PORT: {e}"))?;
    if let Some(m) = &flags.master {
        if *m != master {
            bail!("--master {m} differs from MASTER_ADDR:MASTER_PORT = {master}");
        }
    }
    Ok(Plan::Worker(World {
        size,
        rank,
        local_rank,
        master,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn flags(gpus: Option<usize>, nnodes: Option<usize>, master: Option<&str>) -> DistFlags {
        DistFlags {
            gpus,
            nnodes,
            node_rank: None,
            master: master.map(|m| m.parse().unwrap()),
        }
    }

    fn err(f: &DistFlags, vars: &[(&str, &str)]) -> String {
        format!("{:#}", plan(f, env(vars)).unwrap_err())
    }

    const WORKER: &[(&str, &str)] = &[
        ("WORLD_SIZE", "4"),
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn master_parses_and_prints() {
        let m: Master = "node0:29500".parse().unwrap();
        assert_eq!((m.host.as_str(), m.port), ("node0", 29500));
        assert_eq!(m.to_string(), "node0:29500");
        let v6: Master = "[::1]:7".parse().unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.to_string()),
            ("::1", "[::1]:7".into())
        );
        for bad in ["node0", ":29500", "node0:x", "node0:0", "node0:70000"] {
            assert!(bad.parse::<Master>().is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_plan_single_runs_and_launches() {
        let none = DistFlags::default();
        assert_eq!(plan(&none, env(&[])).unwrap(), Plan::Single);
        // MASTER_ADDR alone (common in cluster environments) changes nothing.
        assert_eq!(
            plan(&none, env(&[("MASTER_ADDR", "x")])).unwrap(),
            Plan::Single
        );
        assert_eq!(
            plan(&flags(Some(1), None, None), env(&[])).unwrap(),
            Plan::Single
        );
        let Plan::Launch(l) = plan(&flags(Some(4), None, None), env(&[])).unwrap() else {
            panic!("expected a launch");
        };
        assert_eq!((l.world_size(), l.rank_of(3), l.master), (4, 3, None));
        let mut f = flags(Some(2), Some(3), Some("node0:1234"));
        f.node_rank = Some(2);
        let Plan::Launch(l) = plan(&f, env(&[])).unwrap() else {
            panic!("expected a launch");
        };
        assert_eq!((l.world_size(), l.rank_of(0), l.rank_of(1)), (6, 4, 5));
    }

    #[test]
    fn inconsistent_flags_are_refused() {
        assert!(err(&flags(Some(0), None, None), &[]).contains("--gpus must be at least 1"));
        assert!(err(&flags(Some(2), Some(2), None), &[]).contains("needs --master"));
        assert!(err(&flags(None, Some(2), None), &[]).contains("go with --gpus"));
        let mut f = flags(Some(2), Some(2), Some("a:1"));
        f.node_rank = Some(2);
        assert!(err(&f, &[]).contains("--node-rank 2 must be below --nnodes 2"));
    }

    #[test]
    fn environment_makes_a_worker() {
        let w = World {
            size: 4,
            rank: 3,
            local_rank: 1,
            master: "10.0.0.1:29500".parse().unwrap(),
        };
        let none = DistFlags::default();
        assert_eq!(plan(&none, env(WORKER)).unwrap(), Plan::Worker(w.clone()));
        // The launcher's re-executed workers keep the options, which agree with the variables.
        let mut f = flags(Some(2), Some(2), Some("10.0.0.1:29500"));
        f.node_rank = Some(1);
        assert_eq!(plan(&f, env(WORKER)).unwrap(), Plan::Worker(w));
        // WORLD_SIZE=1 is one process.
        assert_eq!(
            plan(&none, env(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(),
            Plan::Single
        );
    }

    #[test]
    fn inconsistent_environments_are_refused() {
        let none = DistFlags::default();
        let with = |k: &str, v: &'static str| {
            let mut vars: Vec<(&str, &str)> =
                WORKER.iter().filter(|(n, _)| *n != k).copied().collect();
            if !v.is_empty() {
                vars.push((k, v));
            }
            vars.into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let e = |vars: Vec<(String, String)>| {
            let lookup = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            format!("{:#}", plan(&none, lookup).unwrap_err())
        };
        assert!(e(with("RANK", "4")).contains("RANK=4 must be below WORLD_SIZE=4"));
        assert!(e(with("RANK", "")).contains("RANK is not"));
        assert!(e(with("LOCAL_RANK", "")).contains("LOCAL_RANK is not"));
        assert!(e(with("LOCAL_RANK", "5")).contains("cannot exceed RANK=3"));
        assert!(e(with("MASTER_PORT", "")).contains("MASTER_PORT is not"));
        assert!(e(with("MASTER_PORT", "http")).contains("port is not a number"));
        assert!(e(with("WORLD_SIZE", "two")).contains("WORLD_SIZE=two is not"));
        assert!(e(with("WORLD_SIZE", "0")).contains("at least one process"));
        assert!(err(&none, &[("RANK", "1")]).contains("RANK is set but WORLD_SIZE is not"));
        assert!(err(&flags(Some(3), None, None), WORKER).contains("WORLD_SIZE=4"));
        assert!(err(&flags(Some(4), None, Some("other:1")), WORKER).contains("differs"));
        let mut f = flags(Some(2), None, None);
        f.nnodes = Some(2);
        f.node_rank = Some(0);
        assert!(err(&f, WORKER).contains("not on --node-rank 0"));
    }
}
