//! The official Kubernetes Python client (Debian's `python3-kubernetes`)
//! against a real cloudcore: create, list, watch, patch, delete.

mod support;

use support::{Backend, Cloud};

async fn run_client(etcd: bool) {
    let cloud = Cloud::start(Backend::start(etcd).await).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
    // Debian's interpreter, which has Debian's python3-kubernetes.
    let output = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(&cloud.kubeconfig)
        .output()
        .expect("python3 runs (run scripts/setup.sh)");
    assert!(
        output.status.success(),
        "python client failed:\nstdout: {}\nstderr: {}\ncloudcore log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        cloud.log()
    );
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_on_sqlite() {
    run_client(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_on_etcd() {
    run_client(true).await;
}
