"""The official Kubernetes Python client against Kedge's API server.

Run by bins/tests/python_client.rs with the admin kubeconfig as the only
argument. Exits non-zero (with a message) on the first thing that does not
behave as it does against kube-apiserver.
"""

import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    namespace = "python-client"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))

    # Watch configmaps from the namespace's current state, in a thread.
    listed = core.list_namespaced_config_map(namespace)
    seen = []
    done = threading.Event()

    def follow():
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=30,
        ):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()
        done.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()

    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="cfg", labels={"app": "demo"}),
        data={"greeting": "hello"},
    )
    created = core.create_namespaced_config_map(namespace, body)
    assert created.metadata.uid, "no uid"
    assert created.metadata.resource_version, "no resourceVersion"

    items = core.list_namespaced_config_map(namespace, label_selector="app=demo").items
    assert [i.metadata.name for i in items] == ["cfg"], items

    patched = core.patch_namespaced_config_map("cfg", namespace, {"data": {"greeting": "hi"}})
    assert patched.data["greeting"] == "hi", patched.data

    try:
        core.create_namespaced_config_map(namespace, body)
        raise AssertionError("creating a duplicate succeeded")
    except ApiException as error:
        assert error.status == 409, error

    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="registry.local/web:1")]),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 2}})
    assert apps.read_namespaced_deployment("web", namespace).spec.replicas == 2

    core.delete_namespaced_config_map("cfg", namespace)
    try:
        core.read_namespaced_config_map("cfg", namespace)
        raise AssertionError("deleted configmap still readable")
    except ApiException as error:
        assert error.status == 404, error

    if not done.wait(30):
        raise AssertionError("watch did not see the deletion: %r" % seen)
    types = [t for t, name in seen if name == "cfg"]
    assert types == ["ADDED", "MODIFIED", "DELETED"], seen
    print("python client: ok")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as error:  # report and fail
        print("python client failed: %r" % (error,), file=sys.stderr)
        raise
