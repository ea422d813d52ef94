//! etcd's errors as clients see them: gRPC status codes and the exact
//! message texts client libraries match on (etcd's `rpctypes`).

use ironcd_engine::mvcc::{GrpcCode, MvccError};
use tonic::{Code, Status};

pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const NO_LEADER: &str = "etcdserver: no leader";
pub const NOT_LEADER: &str = "etcdserver: not leader";
pub const TIMEOUT: &str = "etcdserver: request timed out";
pub const STOPPED: &str = "etcdserver: server stopped";
pub const LEADER_CHANGED: &str = "etcdserver: leader changed";

pub fn request_too_large() -> Status {
    Status::invalid_argument(REQUEST_TOO_LARGE)
}

pub fn no_leader() -> Status {
    Status::unavailable(NO_LEADER)
}

pub fn timeout() -> Status {
    Status::unavailable(TIMEOUT)
}

pub fn stopped() -> Status {
    Status::unavailable(STOPPED)
}

/// An MVCC error with etcd's code and text.
pub fn mvcc(e: MvccError) -> Status {
    let code = match e.grpc_code() {
        GrpcCode::InvalidArgument => Code::InvalidArgument,
        GrpcCode::OutOfRange => Code::OutOfRange,
        GrpcCode::NotFound => Code::NotFound,
        GrpcCode::FailedPrecondition => Code::FailedPrecondition,
        GrpcCode::DataLoss => Code::DataLoss,
        GrpcCode::Unknown => Code::Unknown,
    };
    if code == Code::Unknown || code == Code::DataLoss {
        tracing::error!(error = %e, "storage error while serving a request");
    }
    Status::new(code, e.etcd_message())
}
