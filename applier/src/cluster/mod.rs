//! Rolling upgrades of a Raft cluster from one coordinating host: the
//! cluster profile ([`profile`]), how each node is reached ([`transport`]),
//! and the rollout itself ([`rolling`]).

pub mod profile;
pub mod rolling;
pub mod transport;

pub use profile::{ClusterSite, NodeProfile};
