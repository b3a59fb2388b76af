"""Where the guest module and the models come from, as pod volumes, mounts and init containers."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from kwasi_operator.spec import Model, Obj, Spec

MODULE_DIR = "/module"
MODELS_DIR = "/models"


@dataclass
class PodFiles:
    """What the runtime container needs mounted, and the init containers that fill it."""

    volumes: list[Obj] = field(default_factory=list)
    mounts: list[Obj] = field(default_factory=list)
    inits: list[Obj] = field(default_factory=list)

    def add(self, volume: Obj, mount: Obj, init: Obj | None = None) -> None:
        self.volumes.append(volume)
        self.mounts.append(mount)
        if init is not None:
            self.inits.append(init)


def container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _fetch(image: str, url: str, sha256: str, dest: str, volume: str, mount: str) -> Obj:
    """An init container that downloads `url` once into a volume and checks its sha256."""
    return {
        "name": f"fetch-{volume}",
        "image": image,
        "args": ["fetch", "--sha256", sha256, url, dest],
        "volumeMounts": [{"name": volume, "mountPath": mount}],
        "securityContext": container_security(),
    }


def module_files(spec: Spec, runtime_image: str, files: PodFiles) -> str:
    """Adds the module's volume to ``files``; returns the module's path in the pod."""
    m = spec.module
    path = m.get("path", "app.wasm")
    base = posixpath.basename(path)
    mount = {"name": "module", "mountPath": MODULE_DIR, "readOnly": True}
    if "image" in m and m.get("delivery", "ImageVolume") == "ImageVolume":
        files.add({"name": "module", "image": {"reference": m["image"], "pullPolicy": "IfNotPresent"}}, mount)
        return posixpath.join(MODULE_DIR, path)
    empty = {"name": "module", "emptyDir": {"sizeLimit": "256Mi"}}
    dest = posixpath.join(MODULE_DIR, base)
    if "image" in m:  # InitContainer delivery
        init = {
            "name": "copy-module",
            "image": m["image"],
            "command": ["cp", posixpath.join("/", path), dest],
            "volumeMounts": [{"name": "module", "mountPath": MODULE_DIR}],
            "securityContext": container_security(),
        }
        files.add(empty, mount, init)
    elif "url" in m:
        files.add(empty, mount, _fetch(runtime_image, m["url"], m["sha256"], dest, "module", MODULE_DIR))
    else:
        cm = m["configMap"]
        items = [{"key": cm["key"], "path": base}]
        files.add({"name": "module", "configMap": {"name": cm["name"], "items": items}}, mount)
    return dest


def model_files(i: int, m: Model, runtime_image: str, files: PodFiles) -> str:
    """Adds model ``i``'s volume to ``files``; returns the model's path in the pod."""
    vol = f"model-{i}"
    mount_path = posixpath.join(MODELS_DIR, m.name)
    mount = {"name": vol, "mountPath": mount_path, "readOnly": True}
    src = m.source
    if src.pvc_claim is not None:
        files.add({"name": vol, "persistentVolumeClaim": {"claimName": src.pvc_claim, "readOnly": True}}, mount)
        return posixpath.join(mount_path, src.sub_path)
    if src.image is not None:
        files.add({"name": vol, "image": {"reference": src.image, "pullPolicy": "IfNotPresent"}}, mount)
        return posixpath.join(mount_path, src.sub_path)
    assert src.url is not None and src.sha256 is not None
    dest = posixpath.join(mount_path, posixpath.basename(src.url.split("?")[0]) or "model")
    files.add({"name": vol, "emptyDir": {}}, mount, _fetch(runtime_image, src.url, src.sha256, dest, vol, mount_path))
    return dest
