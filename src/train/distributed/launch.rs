//! The launch contract of torchrun and Slurm: a process learns its place in the job from its environment
//! ([`LaunchEnv`]), and rank 0 hands the other ranks a communicator id over one TCP connection each
//! ([`rendezvous`]), as NCCL needs.
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::DistributedError;

/// Where this process sits in a job, read from its launcher's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchEnv {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// This process's rank on its machine (picks its GPU).
    pub local_rank: usize,
    /// The host rank 0 listens on.
    pub master_addr: String,
    /// The port rank 0 listens on.
    pub master_port: u16,
}

impl LaunchEnv {
    /// Reads torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`. Without the
    /// first three, Slurm's `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` (under `srun`) or Open MPI's
    /// `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK` (under `mpirun`) stand in;
    /// `MASTER_ADDR` and `MASTER_PORT` are always needed.
    pub fn from_env() -> Result<Self, DistributedError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`LaunchEnv::from_env`] over the variables `var` returns.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, DistributedError> {
        let number = |names: [&'static str; 3]| -> Result<usize, DistributedError> {
            let Some((name, value)) = names.iter().find_map(|n| var(n).map(|v| (*n, v))) else {
                return Err(DistributedError::Launch {
                    var: names[0],
                    reason: format!(
                        "is not set (nor {} or {}): start the job with torchrun, srun or mpirun",
                        names[1], names[2]
                    ),
                });
            };
            value.trim().parse().map_err(|_| DistributedError::Launch {
                var: name,
                reason: format!("is {value:?}, not a whole number"),
            })
        };
        let rank = number(["RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"])?;
        let world_size = number(["WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"])?;
        let local_rank = number(["LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"])?;
        if rank >= world_size {
            return Err(DistributedError::Launch {
                var: "RANK",
                reason: format!("is {rank}, outside a world of {world_size} processes"),
            });
        }
        let master_addr = var("MASTER_ADDR").ok_or_else(|| DistributedError::Launch {
            var: "MASTER_ADDR",
            reason: "is not set: name the host of rank 0".into(),
        })?;
        let port = var("MASTER_PORT").unwrap_or_default();
        let master_port = port.trim().parse().map_err(|_| DistributedError::Launch {
            var: "MASTER_PORT",
            reason: format!("is {port:?}, not a port number"),
        })?;
        Ok(Self { rank, world_size, local_rank, master_addr, master_port })
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

/// Hands rank 0's `id` to every rank: rank 0 passes `Some(id)`, listens on `MASTER_PORT` and sends it over
/// one TCP connection per other rank; the others pass `None`, connect (retrying until rank 0 listens) and
/// read `len` bytes. Everything must happen within `timeout`; returns the id on every rank.
pub fn rendezvous(
    env: &LaunchEnv,
    id: Option<&[u8]>,
    len: usize,
    timeout: Duration,
) -> Result<Vec<u8>, DistributedError> {
    let fail = |reason: String| DistributedError::Rendezvous { addr: env.address(), rank: env.rank, reason };
    let deadline = Instant::now() + timeout;
    match (env.rank, id) {
        (0, Some(id)) if id.len() == len => serve(env, id, deadline).map_err(fail).map(|_| id.to_vec()),
        (0, _) => Err(fail(format!("rank 0 must pass the {len}-byte id to hand out"))),
        _ => receive(env, len, deadline).map_err(fail),
    }
}

/// Rank 0's side: accept one connection from every other rank, read its rank, send it the id.
fn serve(env: &LaunchEnv, id: &[u8], deadline: Instant) -> Result<(), String> {
    let listener = TcpListener::bind(("0.0.0.0", env.master_port)).map_err(|e| format!("cannot listen: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut served = vec![false; env.world_size];
    served[0] = true;
    while served.iter().any(|s| !s) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                stream.set_read_timeout(Some(left(deadline)?)).map_err(|e| e.to_string())?;
                let mut rank = [0u8; 4];
                stream.read_exact(&mut rank).map_err(|e| format!("a rank connected but sent no rank: {e}"))?;
                let rank = u32::from_le_bytes(rank) as usize;
                if rank == 0 || rank >= env.world_size || served[rank] {
                    return Err(format!("a process connected as rank {rank}, which is not a rank waiting for the id"));
                }
                stream.write_all(id).map_err(|e| format!("sending the id to rank {rank}: {e}"))?;
                served[rank] = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (0..env.world_size).filter(|&r| !served[r]).collect();
                    return Err(format!("timed out waiting for ranks {missing:?} to connect"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accepting a connection: {e}")),
        }
    }
    Ok(())
}

/// Another rank's side: connect to rank 0, send this rank, read the id.
fn receive(env: &LaunchEnv, len: usize, deadline: Instant) -> Result<Vec<u8>, String> {
    let addr = env
        .address()
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("the address resolves to nothing")?;
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, left(deadline)?) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => return Err(format!("rank 0 never answered: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream.set_read_timeout(Some(left(deadline)?)).map_err(|e| e.to_string())?;
    stream.write_all(&(env.rank as u32).to_le_bytes()).map_err(|e| format!("sending this rank: {e}"))?;
    let mut id = vec![0u8; len];
    stream.read_exact(&mut id).map_err(|e| format!("reading the id from rank 0: {e}"))?;
    Ok(id)
}

/// The time left before `deadline` (an error once it has passed).
fn left(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".into());
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<LaunchEnv, DistributedError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        LaunchEnv::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn torchrun_slurm_and_mpirun_variables_are_read() {
        let master = [("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")];
        let torchrun = env(&[[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")].as_slice(), &master].concat());
        assert_eq!(
            torchrun.unwrap(),
            LaunchEnv { rank: 3, world_size: 8, local_rank: 1, master_addr: "node0".into(), master_port: 29500 }
        );
        let slurm =
            env(&[[("SLURM_PROCID", "2"), ("SLURM_NTASKS", "4"), ("SLURM_LOCALID", "0")].as_slice(), &master].concat());
        assert_eq!(slurm.unwrap().rank, 2);
        let mpi = [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")];
        assert_eq!(env(&[mpi.as_slice(), &master].concat()).unwrap().local_rank, 1);
    }

    #[test]
    fn bad_variables_are_named() {
        let err = env(&[("MASTER_ADDR", "x"), ("MASTER_PORT", "1")]).unwrap_err();
        assert!(matches!(err, DistributedError::Launch { var: "RANK", .. }), "{err}");
        let err =
            env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "x"), ("MASTER_PORT", "1")]);
        assert!(matches!(err, Err(DistributedError::Launch { var: "RANK", .. })));
        let err = env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "x"),
            ("MASTER_PORT", "http"),
        ]);
        assert!(matches!(err, Err(DistributedError::Launch { var: "MASTER_PORT", .. })));
    }

    fn local(rank: usize, world_size: usize, port: u16) -> LaunchEnv {
        LaunchEnv { rank, world_size, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port }
    }

    /// A port nobody listens on (the OS picks a free one, then it is released).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn rank_0_hands_the_id_to_every_rank() {
        let port = free_port();
        let id: Vec<u8> = (0..128).map(|i| i as u8).collect();
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|rank| {
                    let id = &id;
                    s.spawn(move || {
                        let mine = (rank == 0).then_some(id.as_slice());
                        rendezvous(&local(rank, 3, port), mine, 128, Duration::from_secs(30)).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(got.iter().all(|g| g == &id));
    }

    #[test]
    fn a_missing_rank_is_a_rendezvous_error() {
        let port = free_port();
        let err = rendezvous(&local(0, 2, port), Some(&[0; 8]), 8, Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("timed out waiting for ranks [1]"), "{err}");
        let err = rendezvous(&local(1, 2, free_port()), None, 8, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, DistributedError::Rendezvous { rank: 1, .. }), "{err}");
    }
}
