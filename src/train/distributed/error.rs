//! Why a data-parallel job stops: [`DistributedError`].

/// A failure of the data-parallel machinery, or of another rank of the job.
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    /// The communication library refused or failed an operation.
    #[error("{backend}: {reason}")]
    Backend {
        /// `mpi`, `nccl` or `threads`.
        backend: &'static str,
        /// What failed.
        reason: String,
    },

    /// The launcher's environment is missing a variable or holds a value that cannot be used.
    #[error("launch environment: {var} {reason}")]
    Launch {
        /// The variable at fault (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`).
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Rank 0 could not hand out, or a rank could not receive, the communicator's id.
    #[error("rendezvous at {addr} (rank {rank}): {reason}")]
    Rendezvous {
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// The rank that failed.
        rank: usize,
        /// What failed (a refused or closed connection, a timeout).
        reason: String,
    },

    /// A collective waited longer than the job's timeout for the other ranks.
    #[error("{operation} waited {seconds:.0} s for the other ranks: a rank has stopped or hangs")]
    Timeout {
        /// The collective (`all-reduce`, `all-gather`, `broadcast`, `barrier`).
        operation: &'static str,
        /// The timeout.
        seconds: f64,
    },

    /// Another rank failed; its own error, as it reported it.
    #[error("rank {rank} failed: {reason}")]
    PeerFailed {
        /// The rank that failed (the lowest one when several did).
        rank: usize,
        /// Its error message.
        reason: String,
    },
}
