//! Secrets in the replicated state: sealed with the cluster key before
//! they were proposed, so the log and its snapshots hold only ciphertext.
//! A workload may name only secrets that exist, and a secret a workload
//! names cannot be deleted.

use flotilla_api::{SecretInfo, WorkloadSpec};
use serde::{Deserialize, Serialize};

use super::cluster_state::ClusterState;
use super::command::{CommandOutput, Rejection};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    pub info: SecretInfo,
    /// Nonce and ciphertext, hex, bound to the secret's name.
    pub sealed: String,
}

impl ClusterState {
    pub(super) fn put_secret(
        &mut self,
        name: String,
        sealed: String,
        size: u64,
        now_ms: u64,
    ) -> CommandOutput {
        let version = self.secrets.get(&name).map_or(0, |s| s.info.version) + 1;
        let info = SecretInfo { name: name.clone(), version, size, updated_ms: now_ms };
        self.secrets.insert(name, StoredSecret { info: info.clone(), sealed });
        CommandOutput::Secret(info)
    }

    pub(super) fn delete_secret(&mut self, name: &str) -> Result<CommandOutput, Rejection> {
        if let Some(workload) = self.workloads.values().find(|w| w.spec.secret_names().contains(name)) {
            return Err(Rejection::SecretInUse {
                name: name.to_owned(),
                workload: workload.spec.name.clone(),
            });
        }
        match self.secrets.remove(name) {
            Some(secret) => Ok(CommandOutput::Secret(secret.info)),
            None => Err(Rejection::SecretNotFound { field: "name".into(), name: name.to_owned() }),
        }
    }

    /// Every secret `spec` names must exist, or the deploy changes nothing.
    pub(super) fn check_secrets_exist(&self, spec: &WorkloadSpec) -> Result<(), Rejection> {
        let missing = |name: &str| !self.secrets.contains_key(name);
        for (key, value) in &spec.env {
            if let Some(name) = value.secret().filter(|n| missing(n)) {
                return Err(Rejection::SecretNotFound {
                    field: format!("env.{key}.secret"),
                    name: name.to_owned(),
                });
            }
        }
        for (i, mount) in spec.secrets.iter().enumerate() {
            if missing(&mount.name) {
                return Err(Rejection::SecretNotFound {
                    field: format!("secrets[{i}].name"),
                    name: mount.name.clone(),
                });
            }
        }
        if let Some(name) = spec.pull_secret.as_ref().filter(|n| missing(n)) {
            return Err(Rejection::SecretNotFound { field: "pull_secret".into(), name: name.clone() });
        }
        Ok(())
    }

    pub fn secret(&self, name: &str) -> Option<&StoredSecret> {
        self.secrets.get(name)
    }

    pub fn secrets(&self) -> impl Iterator<Item = &SecretInfo> {
        self.secrets.values().map(|s| &s.info)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::parse_yaml;

    use super::*;
    use crate::state::Command;

    fn deploy(spec: &str) -> Command {
        Command::PutWorkload {
            spec: Box::new(parse_yaml(spec).expect("spec")),
            expected_version: None,
            now_ms: 0,
            service_ports: None,
        }
    }

    #[test]
    fn a_pull_secret_must_exist_and_stays_while_named() {
        let mut state = ClusterState::default();
        let spec = "name: web\nimage: reg.example.com/web:1\npull_secret: registry-auth\n";
        let refused = state.apply(1, deploy(spec)).expect_err("no such secret");
        assert_eq!(
            refused,
            Rejection::SecretNotFound { field: "pull_secret".into(), name: "registry-auth".into() }
        );
        let put =
            Command::PutSecret { name: "registry-auth".into(), sealed: "00".into(), size: 9, now_ms: 1 };
        state.apply(2, put).expect("put");
        state.apply(3, deploy(spec)).expect("deploys");
        let in_use = state.apply(4, Command::DeleteSecret { name: "registry-auth".into() });
        assert!(matches!(in_use, Err(Rejection::SecretInUse { .. })), "{in_use:?}");
    }

    #[test]
    fn workloads_name_only_secrets_that_exist_and_a_named_secret_stays() {
        let mut state = ClusterState::default();
        let spec = "name: web\nimage: busybox\nenv: {PASSWORD: {secret: db}}\nsecrets: [{name: tls, path: /run/tls}]\n";
        let refused = state.apply(1, deploy(spec)).expect_err("no such secret");
        assert_eq!(
            refused,
            Rejection::SecretNotFound { field: "env.PASSWORD.secret".into(), name: "db".into() }
        );
        state
            .apply(2, Command::PutSecret { name: "db".into(), sealed: "00".into(), size: 7, now_ms: 1 })
            .expect("put");
        let refused = state.apply(3, deploy(spec)).expect_err("no tls secret");
        assert_eq!(
            refused,
            Rejection::SecretNotFound { field: "secrets[0].name".into(), name: "tls".into() }
        );
        state
            .apply(4, Command::PutSecret { name: "tls".into(), sealed: "00".into(), size: 3, now_ms: 1 })
            .expect("put");
        state.apply(5, deploy(spec)).expect("deploys");

        let before = state.clone();
        let in_use = state.apply(6, Command::DeleteSecret { name: "db".into() }).expect_err("in use");
        assert!(matches!(in_use, Rejection::SecretInUse { .. }), "{in_use:?}");
        assert_eq!(state, before, "a refused delete changes nothing");

        let again =
            state.apply(7, Command::PutSecret { name: "db".into(), sealed: "01".into(), size: 8, now_ms: 2 });
        assert!(
            matches!(again, Ok(CommandOutput::Secret(SecretInfo { version: 2, size: 8, .. }))),
            "{again:?}"
        );
        state
            .apply(
                8,
                Command::DeleteWorkload {
                    name: flotilla_api::WorkloadName::parse("web").expect("name"),
                    volumes: false,
                },
            )
            .expect("delete web");
        state.apply(9, Command::DeleteSecret { name: "db".into() }).expect("deletes once unused");
        assert!(state.secret("db").is_none());
        assert_eq!(state.secrets().count(), 1);
    }
}
