//! The unprivileged user process-driver replicas run as: a root agent
//! switches to it (`--process-user`, default `nobody`), so a spec's command
//! cannot act as root on the host.

use super::RuntimeError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl ProcessUser {
    /// The user `name` from `/etc/passwd`.
    pub fn lookup(name: &str) -> Result<Self, RuntimeError> {
        let passwd = std::fs::read_to_string("/etc/passwd")
            .map_err(|e| RuntimeError::Process(format!("cannot read /etc/passwd: {e}")))?;
        Self::find(&passwd, name)
            .ok_or_else(|| RuntimeError::Process(format!("--process-user: no user `{name}` in /etc/passwd")))
    }

    fn find(passwd: &str, name: &str) -> Option<Self> {
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != name {
                return None;
            }
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(ProcessUser { name: name.to_owned(), uid, gid })
        })
    }

    /// The user replicas run as on this agent: `name`, when the agent is
    /// root and can switch to it; else the agent's own user (`None`), which
    /// is as unprivileged as the agent.
    pub fn for_replicas(name: &str) -> Result<Option<Self>, RuntimeError> {
        if !rustix::process::geteuid().is_root() {
            tracing::warn!(
                user = name,
                "the agent is not root: process replicas run as the agent's own user"
            );
            return Ok(None);
        }
        let user = Self::lookup(name)?;
        if user.uid == 0 {
            return Err(RuntimeError::Process(format!("--process-user: `{name}` is root")));
        }
        Ok(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_name_in_passwd() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(
            ProcessUser::find(passwd, "nobody"),
            Some(ProcessUser { name: "nobody".into(), uid: 65534, gid: 65534 })
        );
        assert_eq!(ProcessUser::find(passwd, "nobod"), None);
        assert_eq!(ProcessUser::find("broken:x:zero:0::", "broken"), None);
    }
}
