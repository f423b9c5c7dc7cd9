//! A real image registry on loopback: Debian's `docker-registry` (the
//! distribution registry) on a free 127.0.0.1 port, which the engine treats
//! as an insecure registry. Two registries may share one storage directory,
//! so a test pushes to an open one and pulls from one that asks for a
//! password, with no `docker login` on the host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary::free_port;

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    /// `127.0.0.1:PORT`, the prefix of the images it serves.
    pub address: String,
    child: Child,
    pub log: PathBuf,
}

impl Registry {
    /// Serves the images under `storage`; with `user` (name, password), only
    /// to that user (htpasswd, bcrypt).
    pub fn start(dir: &Path, storage: &Path, user: Option<(&str, &str)>) -> Registry {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: the test command installs the docker-registry package"
        );
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let name = format!("registry-{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
            storage.display()
        );
        if let Some((user, password)) = user {
            let htpasswd = dir.join(format!("{name}.htpasswd"));
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd runs (the test command installs apache2-utils)");
            assert!(output.status.success(), "htpasswd: {}", String::from_utf8_lossy(&output.stderr));
            std::fs::write(&htpasswd, &output.stdout).expect("htpasswd file");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: flotilla-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.join(format!("{name}.yml"));
        std::fs::write(&config_path, config).expect("registry config");
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("registry log");
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("the registry starts");
        let registry = Registry { address, child, log };
        registry.wait_until_serving();
        registry
    }

    fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.address).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the registry on {} did not listen: {}",
            self.address,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Tags the local image `source` as `name` in this registry and pushes
    /// it, then removes that tag from the engine (the image itself stays
    /// under `source`): a deploy of `name` must pull. Answers the full name
    /// and the digest the registry gave it.
    pub fn push(&self, source: &str, name: &str) -> (String, String) {
        let image = format!("{}/{name}", self.address);
        docker(&["tag", source, &image]);
        let pushed = docker(&["push", &image]);
        docker(&["rmi", &image]);
        let digest = pushed
            .split_whitespace()
            .find(|word| word.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("no digest in docker push's output: {pushed}"))
            .to_owned();
        (image, digest)
    }
}

impl Drop for Registry {
    /// Stops the registry and untags every image the engine holds from it
    /// (pulled by agents, or left by a failed test).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let listed = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let prefix = format!("{}/", self.address);
        let ours: Vec<&str> = listed.lines().filter(|image| image.starts_with(&prefix)).collect();
        if !ours.is_empty() {
            let _ = Command::new("docker").arg("rmi").arg("-f").args(&ours).output();
        }
    }
}

/// Runs `docker ARGS`, which must succeed; its output.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker runs");
    assert!(
        output.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
