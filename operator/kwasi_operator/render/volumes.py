"""Where the guest module and the models come from, as pod volumes, mounts and init containers, and the
model cache a WasmInference's replicas share."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from kwasi_operator import kinds
from kwasi_operator.render.meta import child_name, manifest
from kwasi_operator.spec import Model, Obj, Spec

MODULE_DIR = "/module"
MODELS_DIR = "/models"
CACHE_DIR = "/model-cache"
CACHE_VOLUME = "model-cache"
# Volume names and mount paths of the operator's own; spec.volumes and spec.volumeMounts may not use them
# (the CRD refuses them, with the same lists).
RESERVED_VOLUMES = ("module", "tmp", CACHE_VOLUME)  # and model-<i>
RESERVED_PATHS = (MODULE_DIR, MODELS_DIR, CACHE_DIR, "/tmp")


@dataclass
class PodFiles:
    """What the runtime container needs mounted, and the init containers that fill it."""

    volumes: list[Obj] = field(default_factory=list)
    mounts: list[Obj] = field(default_factory=list)
    inits: list[Obj] = field(default_factory=list)

    def add(self, volume: Obj | None, mount: Obj | None, init: Obj | None = None) -> None:
        if volume is not None and volume not in self.volumes:
            self.volumes.append(volume)
        if mount is not None and mount not in self.mounts:
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


def _file_name(url: str) -> str:
    return posixpath.basename(url.split("?")[0]) or "model"


def _cached(i: int, url: str, sha256: str, runtime_image: str, claim: str, files: PodFiles) -> str:
    """A url model in the shared cache: ``<sha256>/<file>``, fetched by the first replica that needs it.

    Replicas starting together on one node take turns on a per-file lock (flock, util-linux, in the runtime
    image), so the second finds the file complete and verified and downloads nothing.
    """
    dest = posixpath.join(CACHE_DIR, sha256, _file_name(url))
    init = _fetch(runtime_image, url, sha256, dest, CACHE_VOLUME, CACHE_DIR)
    init["name"] = f"fetch-model-{i}"
    init["command"] = ["flock", posixpath.join(CACHE_DIR, f".{sha256}.lock"), "kwasi-runtime"]
    volume = {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
    files.add(volume, {"name": CACHE_VOLUME, "mountPath": CACHE_DIR, "readOnly": True}, init)
    return dest


def model_files(i: int, m: Model, runtime_image: str, files: PodFiles, cache_claim: str | None = None) -> str:
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
    if cache_claim is not None:
        return _cached(i, src.url, src.sha256, runtime_image, cache_claim, files)
    dest = posixpath.join(mount_path, _file_name(src.url))
    files.add({"name": vol, "emptyDir": {}}, mount, _fetch(runtime_image, src.url, src.sha256, dest, vol, mount_path))
    return dest


def cache_claim_name(name: str, spec: Spec) -> str | None:
    """The claim the replicas share their downloads on (None without spec.modelCache)."""
    cache = spec.model_cache
    if cache is None:
        return None
    return cache.claim_name or child_name("PersistentVolumeClaim", name)


def model_cache_claim(name: str, namespace: str, spec: Spec) -> Obj | None:
    """The cache's PersistentVolumeClaim, unless the spec names an existing one."""
    cache = spec.model_cache
    if cache is None or cache.claim_name:
        return None
    claim: Obj = {"accessModes": [cache.access_mode], "resources": {"requests": {"storage": cache.size}}}
    if cache.storage_class is not None:
        claim["storageClassName"] = cache.storage_class
    return manifest(kinds.PERSISTENT_VOLUME_CLAIM, name, namespace, claim)
