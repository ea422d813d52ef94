//! The etcd v3 API, generated from `proto/` (etcd 3.4's proto files with
//! their Go-only annotations removed). Module names are etcd's proto packages.

#![allow(clippy::all, missing_docs, dead_code)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub mod ironcdpb {
    tonic::include_proto!("ironcdpb");
}
