//! A real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager) of a test's own, started and stopped by the
//! project's script (`scripts/k8s-control-plane.sh`), and kubectl against it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::unique_name;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A control plane of this test's own; `Drop` stops it and removes its data.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

impl ControlPlane {
    pub fn start(tag: &str) -> ControlPlane {
        let dir = std::env::temp_dir().join(format!("weir-k8s-{}", unique_name(tag)));
        std::fs::create_dir_all(&dir).expect("dir");
        let out = Command::new(repo().join("scripts/k8s-control-plane.sh"))
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run k8s-control-plane.sh");
        let bin = Command::new(repo().join("scripts/k8s-build.sh"))
            .output()
            .expect("k8s-build.sh");
        let bin = String::from_utf8_lossy(&bin.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        let cp = ControlPlane {
            kubeconfig: dir.join("admin.kubeconfig"),
            kubectl: PathBuf::from(bin).join("kubectl"),
            dir,
        };
        assert!(
            out.status.success(),
            "control plane did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cp
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("write stdin");
        c.wait_with_output().expect("kubectl output")
    }

    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/k8s-control-plane.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
