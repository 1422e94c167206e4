#!/usr/bin/env python3
"""deploy/render.py OUT_DIR - the Kubernetes manifests as a cluster gets them:
deploy/k8s/base, and each overlay (cpu, ppu) with its images and patches
applied, one YAML file each, for deploy/check.sh to validate and scan.

What kustomize does for these overlays and no more: the base's namespace,
`images` (newName/newTag), and strategic-merge patches of a Deployment whose
containers, env and resources merge by name.  A kustomization using anything
else is refused, so the check cannot pass on something it did not render.
"""
import copy
import sys
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parent / "k8s"
KNOWN = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}


def merge_named(base, patch, key="name"):
    out = [copy.deepcopy(x) for x in base]
    for p in patch:
        hit = next((x for x in out if x.get(key) == p.get(key)), None)
        if hit is None:
            out.append(copy.deepcopy(p))
        else:
            merge(hit, p)
    return out


def merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        elif isinstance(v, list) and isinstance(dst.get(k), list) and v and \
                all(isinstance(x, dict) and "name" in x for x in v):
            dst[k] = merge_named(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def build(d):
    kz = yaml.safe_load((d / "kustomization.yaml").read_text())
    extra = set(kz) - KNOWN
    if extra:
        raise SystemExit(f"render: {d}/kustomization.yaml uses {sorted(extra)}, which render.py does not do")
    docs = []
    for r in kz.get("resources", []):
        p = d / r
        if p.is_dir():
            docs += build(p)
        else:
            docs += [x for x in yaml.safe_load_all(p.read_text()) if x]
    for x in docs:
        if kz.get("namespace") and x["kind"] != "Namespace":
            x.setdefault("metadata", {})["namespace"] = kz["namespace"]
    for img in kz.get("images", []):
        for x in docs:
            for c in x.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name = c["image"].split(":")[0]
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', 'latest')}"
    for pt in kz.get("patches", []):
        patch = yaml.safe_load((d / pt["path"]).read_text())
        t = pt.get("target", {})
        hits = [x for x in docs if x["kind"] == t.get("kind", patch["kind"])
                and x["metadata"]["name"] == t.get("name", patch["metadata"]["name"])]
        if len(hits) != 1:
            raise SystemExit(f"render: patch {pt['path']} matches {len(hits)} resources")
        merge(hits[0], {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")})
    return docs


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, d in [("base", K8S / "base")] + [(p.name, p) for p in sorted((K8S / "overlays").iterdir())]:
        docs = build(d)
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        print(f"render: {name}: {len(docs)} resources")


if __name__ == "__main__":
    main()
