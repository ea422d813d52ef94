//! The one MVCC error type, with etcd's client-visible texts and gRPC codes.

use crate::kv::StoreError;

/// Errors of MVCC operations. `Display` is etcd's text without the
/// `etcdserver: ` prefix; [`MvccError::etcd_message`] is what a client sees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MvccError {
    #[error("key is not provided")]
    EmptyKey,
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// The store file failed; the server treats this as fatal for the apply.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// gRPC status codes used by MVCC errors (names as in `google.rpc.Code`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum GrpcCode {
    InvalidArgument,
    OutOfRange,
    NotFound,
    FailedPrecondition,
    /// etcd's fallback for errors it has no mapping for.
    Unknown,
    DataLoss,
}

impl MvccError {
    /// The full client-visible message, e.g.
    /// `etcdserver: mvcc: required revision has been compacted`.
    pub fn etcd_message(&self) -> String {
        match self {
            MvccError::Store(e) => e.to_string(),
            e => format!("etcdserver: {e}"),
        }
    }

    /// The gRPC code etcd 3.4 answers with.
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            MvccError::EmptyKey
            | MvccError::KeyNotFound
            | MvccError::ValueProvided
            | MvccError::LeaseProvided
            | MvccError::TooManyOps
            | MvccError::DuplicateKey => GrpcCode::InvalidArgument,
            MvccError::Compacted | MvccError::FutureRev | MvccError::LeaseTtlTooLarge => {
                GrpcCode::OutOfRange
            }
            MvccError::LeaseNotFound => GrpcCode::NotFound,
            MvccError::LeaseExists => GrpcCode::FailedPrecondition,
            MvccError::Store(StoreError::Corrupt(_)) => GrpcCode::DataLoss,
            MvccError::Store(_) => GrpcCode::Unknown,
        }
    }

    /// A decoding failure: the store holds bytes this code did not write.
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        MvccError::Store(StoreError::Corrupt(what.into()))
    }
}

pub type MvccResult<T> = Result<T, MvccError>;
