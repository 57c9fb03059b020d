"""Development helpers: a real Kubernetes control plane for tests, and the tools.

- `tlt.dev.cluster.DevCluster` starts etcd, kube-apiserver, kube-controller-manager,
  kube-scheduler and kwok (built by `scripts/build-controlplane.sh`) with fake GPU nodes.
- `kubectl_path()` / `helm_path()` find the tools `scripts/install-tools.sh` installs.
- `tlt dev cluster up|down|env` drives the same code from the command line.
"""

from tlt.dev.tools import ToolMissing, cache_dir, helm_path, kubectl_path, repo_root

__all__ = ["ToolMissing", "cache_dir", "helm_path", "kubectl_path", "repo_root"]
