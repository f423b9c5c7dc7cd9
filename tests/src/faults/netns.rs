//! The fault suites' network: the one `flotilla cluster up --isolated`
//! makes (a namespace per member on a private bridge), owned by the test
//! and taken away when it ends, also when it fails.

use flotilla_cli::chaos::network;
pub use flotilla_cli::chaos::network::{Member, namespaces_available};

#[derive(Debug)]
pub struct Network(network::Network);

impl Network {
    pub fn create() -> Network {
        Network(network::Network::create().expect("a private network of namespaces (root and iproute2)"))
    }

    /// Adds a member, named by its position from 1 (as server ids are).
    pub fn add_member(&mut self) -> Member {
        let name = (self.0.members.len() + 1).to_string();
        self.0.add_member(&name).expect("a namespace for the member")
    }

    pub fn members(&self) -> &[Member] {
        &self.0.members
    }

    /// Member `index` drops what comes from (and, unless `one_way`, goes to) member `peer`.
    pub fn cut(&self, index: usize, peer: usize, one_way: bool) {
        self.0.cut(index, peer, one_way).expect("a cut");
    }

    /// `percent` of what member `index` sends its peers is lost.
    pub fn lose(&self, index: usize, percent: u32) {
        self.0.lose(index, percent).expect("a lossy link");
    }

    /// What member `index` sends its peers is held back by `delay` ± `jitter`.
    pub fn delay(&mut self, index: usize, delay: std::time::Duration, jitter: std::time::Duration) {
        self.0.delay(index, delay, jitter, &crate::binary::flotilla_binary()).expect("a delayed link");
    }

    pub fn heal(&mut self) {
        self.0.heal().expect("the network healed");
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.0.remove();
    }
}
