//! Cluster membership as etcd derives it: member IDs from peer URLs and the
//! cluster token, the cluster ID from the member IDs, both exactly as etcd
//! 3.4 computes them (`etcdserver/api/membership`), so IDs printed by
//! `etcdctl member list` are stable and familiar.

use std::collections::BTreeMap;

use sha1::{Digest, Sha1};

/// One member named in `--initial-cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// etcd's `computeMemberId`: SHA-1 over the sorted peer URLs concatenated,
/// then the cluster token (and, for members added at runtime, the time).
pub fn member_id(peer_urls: &[String], token: &str, now_unix: Option<i64>) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    for u in urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    if let Some(t) = now_unix {
        h.update(t.to_string().as_bytes());
    }
    first_u64(&h.finalize())
}

/// etcd's cluster ID: SHA-1 over the sorted member IDs, 8 big-endian bytes each.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

/// Parses `--initial-cluster` (`name=url,name=url2,...`; a name may appear
/// several times for several URLs) into members with etcd's IDs.
pub fn parse_initial_cluster(spec: &str, token: &str) -> Result<Vec<InitialMember>, String> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part.split_once('=').ok_or_else(|| {
            format!("--initial-cluster entry {part:?} is not of the form name=peer-url")
        })?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("URL scheme must be http or https: {url:?}"));
        }
        by_name
            .entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    if by_name.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    let mut members: Vec<InitialMember> = by_name
        .into_iter()
        .map(|(name, peer_urls)| InitialMember {
            id: member_id(&peer_urls, token, None),
            name,
            peer_urls,
        })
        .collect();
    members.sort_by_key(|m| m.id);
    for w in members.windows(2) {
        if w[0].id == w[1].id {
            return Err(format!(
                "members {:?} and {:?} have the same peer URLs",
                w[0].name, w[1].name
            ));
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IDs printed by a real etcd 3.4.23 started with
    /// `--name default` and no other flags (`etcdctl member list`,
    /// `endpoint status`): member 8e9e05c52164694d, cluster cdf818194e3a8c32.
    #[test]
    fn ids_match_etcd_defaults() {
        let m = parse_initial_cluster("default=http://localhost:2380", "etcd-cluster").unwrap();
        assert_eq!(format!("{:x}", m[0].id), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m[0].id])), "cdf818194e3a8c32");
    }

    #[test]
    fn malformed_initial_cluster() {
        assert!(parse_initial_cluster("n1", "t")
            .unwrap_err()
            .contains("name=peer-url"));
        assert!(parse_initial_cluster("n1=ftp://x", "t")
            .unwrap_err()
            .contains("scheme"));
        assert!(parse_initial_cluster("", "t").is_err());
    }
}
