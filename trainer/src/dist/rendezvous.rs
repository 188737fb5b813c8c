//! The TCP rendezvous that hands rank 0's NCCL unique id to the other ranks.
//!
//! Rank 0 listens on `MASTER_PORT`; every other rank connects (retrying until the timeout) and
//! sends a hello: `CIRCRDV1`, its rank and the world size (u32 little-endian each). Once all
//! ranks have said hello, rank 0 answers each with status 0 and the blob (u32 length, bytes).
//! A bad hello (another world size, a rank seen twice, not a rendezvous at all) or a timeout
//! ends the rendezvous: rank 0 answers the connected ranks with status 1 and the reason.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::world::Master;

const MAGIC: &[u8; 8] = b"CIRCRDV1";
/// Longest answer a rank accepts (the NCCL id is 128 bytes).
const MAX_REPLY: usize = 1 << 16;

/// Why a rendezvous failed.
#[derive(Debug, Error)]
pub enum RendezvousError {
    #[error("rank 0 cannot listen on port {port} for the rendezvous (MASTER_PORT): {source}")]
    Bind { port: u16, source: io::Error },
    #[error(
        "rendezvous timed out after {secs:.1} s: rank 0 heard from {heard} of the other {} ranks; \
         missing ranks: {missing:?}",
        missing.len() + heard
    )]
    Timeout {
        secs: f64,
        heard: usize,
        missing: Vec<usize>,
    },
    #[error(
        "no rank 0 listening at {master} after {secs:.1} s ({last}); start rank 0, or check \
         --master / MASTER_ADDR and MASTER_PORT"
    )]
    Unreachable {
        master: Master,
        secs: f64,
        last: String,
    },
    #[error(
        "rank 0 at {master} sent no NCCL id within {secs:.1} s of this rank's start: other ranks \
         have not joined"
    )]
    NoAnswer { master: Master, secs: f64 },
    #[error("bad rendezvous peer {peer}: {why}")]
    BadPeer { peer: String, why: String },
    #[error("rank 0 ended the rendezvous: {0}")]
    Refused(String),
    #[error("rendezvous with {peer}: {source}")]
    Io { peer: String, source: io::Error },
}

/// Listens for the rendezvous on `master`'s port: on the loopback interface when `master` is a
/// loopback address, else on every interface.
pub fn bind(master: &Master) -> Result<TcpListener, RendezvousError> {
    let loopback = (master.host.as_str(), master.port)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.all(|a| a.ip().is_loopback()));
    let ip = if loopback {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    TcpListener::bind((ip, master.port)).map_err(|source| RendezvousError::Bind {
        port: master.port,
        source,
    })
}

/// Rank 0: waits up to `timeout` for the hellos of ranks `1..world`, then sends each `blob`.
pub fn serve(
    listener: TcpListener,
    world: usize,
    blob: &[u8],
    timeout: Duration,
) -> Result<(), RendezvousError> {
    let start = Instant::now();
    let io = |peer: &str| {
        let peer = peer.to_string();
        move |source| RendezvousError::Io { peer, source }
    };
    listener.set_nonblocking(true).map_err(io("the listener"))?;
    let mut peers: Vec<(usize, TcpStream)> = Vec::new();
    let fail = |peers: &mut Vec<(usize, TcpStream)>, e: RendezvousError| {
        for (_, s) in peers.iter_mut() {
            let _ = answer(s, 1, e.to_string().as_bytes());
        }
        Err(e)
    };
    while peers.len() + 1 < world {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            let missing = (1..world)
                .filter(|r| peers.iter().all(|(p, _)| p != r))
                .collect();
            let e = RendezvousError::Timeout {
                secs: timeout.as_secs_f64(),
                heard: peers.len(),
                missing,
            };
            return fail(&mut peers, e);
        }
        let (mut stream, addr) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return fail(&mut peers, io("the listener")(e)),
        };
        let peer = addr.to_string();
        let hello = read_hello(&mut stream, left.min(Duration::from_secs(10)));
        let why = match hello {
            Err(e) => Some(format!(
                "no rendezvous hello ({e}); is another program using MASTER_PORT?"
            )),
            Ok((rank, w)) if w != world => Some(format!(
                "rank {rank} runs with WORLD_SIZE={w}, rank 0 with {world}"
            )),
            Ok((rank, _)) if rank == 0 || rank >= world => {
                Some(format!("rank {rank} is not in 1..{world}"))
            }
            Ok((rank, _)) if peers.iter().any(|(p, _)| *p == rank) => {
                Some(format!("rank {rank} joined twice"))
            }
            Ok((rank, _)) => {
                peers.push((rank, stream));
                continue;
            }
        };
        let e = RendezvousError::BadPeer {
            peer,
            why: why.unwrap_or_default(),
        };
        let _ = answer(&mut stream, 1, e.to_string().as_bytes());
        return fail(&mut peers, e);
    }
    for (rank, s) in &mut peers {
        answer(s, 0, blob).map_err(io(&format!("rank {rank}")))?;
    }
    Ok(())
}

/// Rank `rank` of `world`: connects to rank 0 at `master` (retrying until `timeout`), says
/// hello, and returns the blob of `blob_len` bytes it answers with.
pub fn join(
    master: &Master,
    rank: usize,
    world: usize,
    blob_len: usize,
    timeout: Duration,
) -> Result<Vec<u8>, RendezvousError> {
    let start = Instant::now();
    let secs = timeout.as_secs_f64();
    let mut stream = connect(master, start, timeout)?;
    let io = |source| RendezvousError::Io {
        peer: format!("rank 0 at {master}"),
        source,
    };
    let mut hello = MAGIC.to_vec();
    hello.extend((rank as u32).to_le_bytes());
    hello.extend((world as u32).to_le_bytes());
    stream.write_all(&hello).map_err(io)?;
    let left = timeout.saturating_sub(start.elapsed());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(io)?;
    let (status, body) = match read_answer(&mut stream) {
        Ok(a) => a,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(RendezvousError::NoAnswer {
                master: master.clone(),
                secs,
            })
        }
        Err(e) => return Err(io(e)),
    };
    if status != 0 {
        return Err(RendezvousError::Refused(
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    if body.len() != blob_len {
        return Err(RendezvousError::BadPeer {
            peer: format!("rank 0 at {master}"),
            why: format!("sent {} bytes instead of {blob_len}", body.len()),
        });
    }
    Ok(body)
}

fn connect(
    master: &Master,
    start: Instant,
    timeout: Duration,
) -> Result<TcpStream, RendezvousError> {
    loop {
        let last = match (master.host.as_str(), master.port).to_socket_addrs() {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let mut last = format!("{} resolves to no address", master.host);
                for a in &addrs {
                    match TcpStream::connect_timeout(a, Duration::from_secs(1)) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = e.to_string(),
                    }
                }
                last
            }
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(RendezvousError::Unreachable {
                master: master.clone(),
                secs: timeout.as_secs_f64(),
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_hello(stream: &mut TcpStream, timeout: Duration) -> io::Result<(usize, usize)> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut b = [0u8; 16];
    stream.read_exact(&mut b)?;
    if &b[..8] != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong magic"));
    }
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    Ok((word(8), word(12)))
}

fn answer(stream: &mut TcpStream, status: u8, body: &[u8]) -> io::Result<()> {
    let mut msg = vec![status];
    msg.extend((body.len() as u32).to_le_bytes());
    msg.extend(body);
    stream.write_all(&msg)?;
    stream.flush()
}

fn read_answer(stream: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_REPLY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an answer of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok((head[0], body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    const SHORT: Duration = Duration::from_millis(600);
    const LONG: Duration = Duration::from_secs(20);

    /// A listener on a free local port, and its address.
    fn local() -> (TcpListener, Master) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (
            l,
            Master {
                host: "127.0.0.1".into(),
                port,
            },
        )
    }

    fn spawn_join(
        m: &Master,
        rank: usize,
        world: usize,
        t: Duration,
    ) -> thread::JoinHandle<Result<Vec<u8>, RendezvousError>> {
        let m = m.clone();
        thread::spawn(move || join(&m, rank, world, 128, t))
    }

    #[test]
    fn every_rank_gets_the_blob() {
        let (l, m) = local();
        let blob: Vec<u8> = (0..128).map(|i| i as u8).collect();
        // Ranks may start before rank 0 listens: they retry.
        drop(l);
        let early = spawn_join(&m, 2, 4, LONG);
        thread::sleep(Duration::from_millis(300));
        let l = bind(&m).unwrap();
        let others: Vec<_> = [1, 3].iter().map(|&r| spawn_join(&m, r, 4, LONG)).collect();
        serve(l, 4, &blob, LONG).unwrap();
        for h in others.into_iter().chain([early]) {
            assert_eq!(h.join().unwrap().unwrap(), blob);
        }
    }

    #[test]
    fn a_missing_rank_times_out_on_both_sides() {
        let (l, m) = local();
        let one = spawn_join(&m, 1, 3, LONG);
        let e = serve(l, 3, &[0; 128], SHORT).unwrap_err();
        assert!(
            matches!(&e, RendezvousError::Timeout { heard: 1, missing, .. } if missing == &[2]),
            "{e}"
        );
        assert!(e.to_string().contains("missing ranks: [2]"), "{e}");
        // The rank that came is told why.
        let e = one.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }

    #[test]
    fn no_rank_zero_times_out() {
        let (l, m) = local();
        drop(l);
        let start = Instant::now();
        let e = join(&m, 1, 2, 128, SHORT).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            e.to_string().contains("no rank 0 listening at 127.0.0.1:"),
            "{e}"
        );
        // Rank 0 listens but never answers (other ranks missing).
        let (l, m) = local();
        let e = join(&m, 1, 2, 128, SHORT).unwrap_err();
        assert!(matches!(e, RendezvousError::NoAnswer { .. }), "{e}");
        drop(l);
    }

    #[test]
    fn bad_peers_end_the_rendezvous() {
        // Another world size.
        let (l, m) = local();
        let h = spawn_join(&m, 1, 3, LONG);
        let e = serve(l, 2, &[0; 128], LONG).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE=3, rank 0 with 2"), "{e}");
        assert!(matches!(
            h.join().unwrap(),
            Err(RendezvousError::Refused(_))
        ));
        // A rank twice.
        let (l, m) = local();
        let a = spawn_join(&m, 1, 3, LONG);
        thread::sleep(Duration::from_millis(200));
        let b = spawn_join(&m, 1, 3, LONG);
        let e = serve(l, 3, &[0; 128], LONG).unwrap_err();
        assert!(e.to_string().contains("rank 1 joined twice"), "{e}");
        for h in [a, b] {
            let e = h.join().unwrap().unwrap_err();
            assert!(e.to_string().contains("joined twice"), "{e}");
        }
        // Not a rendezvous at all.
        let (l, m) = local();
        let addr = format!("127.0.0.1:{}", m.port);
        let h = thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        });
        let e = serve(l, 2, &[0; 128], LONG).unwrap_err();
        assert!(e.to_string().contains("no rendezvous hello"), "{e}");
        h.join().unwrap();
        // Rank 0 answering with a blob of another size.
        let (l, m) = local();
        let h = spawn_join(&m, 1, 2, LONG);
        serve(l, 2, &[0; 5], LONG).unwrap();
        let e = h.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("sent 5 bytes instead of 128"), "{e}");
    }
}
