"""`hostbuild image`: from a profile to a verified root tree, with its manifest.

Artifacts and mirrors are checked first, so an unreachable input stops the build before any
long step. The output directory appears only when the build is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from builder import __version__
from builder.build.apt import Mirrors, archive_state, resolve_mirrors
from builder.build.artifacts import Artifact, Cache, Fetched, fetch_all, sha256_file
from builder.build.dib import DibInvocation
from builder.build.elements import (
    ELEMENTS_DIR,
    ImageFile,
    binary_files,
    config_files,
    image_elements,
    prepare_elements,
)
from builder.build.lock import inputs_digest, load_lock, lock_path, tree_digest
from builder.build.manifest import write_manifest
from builder.build.sbom import build_sbom
from builder.build.toolstree import ensure_tools_tree
from builder.build.trust import ROOT_PATH, load_update_root, root_digest
from builder.disk.assemble import assemble_image, source_date_epoch, write_json
from builder.disk.sign import check_engine
from builder.errors import HostbuildError
from builder.keys.secureboot import (
    Signer,
    SigningKeys,
    describe_signing,
    export_certificates,
    fingerprints,
    prepare_signer,
)
from builder.log import step
from builder.profile.components import debian_pins, upstream_artifacts
from builder.profile.model import Profile, dump_profile
from builder.profile.skew import evaluate_skew, supported_api_servers
from builder.profile.versions import minor_of, parse_os_version

logger = logging.getLogger(__name__)

BOOTSTRAP_INCLUDE = "python3"


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    cache: Path
    artifact_mirror: str | None = None
    lock: Path | None = None  # default: next to the profile
    update_root: Path | None = None  # the update repository's root.json the image trusts
    signing: SigningKeys = SigningKeys()  # private keys of a secure_boot profile


@dataclass(frozen=True)
class Plan:
    """Everything a build resolved before it changes anything (what --dry-run prints)."""

    profile: Profile
    mirrors: Mirrors
    artifacts: list[Artifact]
    pins: dict[str, str]
    packages: tuple[str, ...]
    dib: DibInvocation

    def describe(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "profile_files": [os.fspath(p) for p in self.profile.chain],
            "version": self.profile.version,
            "arch": self.profile.arch.value,
            "debian": {
                "release": self.profile.debian.release,
                "mirror": self.mirrors.main,
                "security_mirror": self.mirrors.security,
                "pinned": self.pins,
                "packages": list(self.profile.debian.packages),
            },
            "artifacts": [
                {"name": a.name, "version": a.version, "url": a.url, "sha256": a.sha256}
                for a in self.artifacts
            ],
            "elements": list(self.dib.elements),
            "secure_boot": describe_signing(self.profile),
            "dib_command": self.dib.describe(),
        }


def image_name(profile: Profile, build: int | None = None) -> str:
    """`worker-1.2.3-4`: the profile and the OS version of this build (without N: all builds)."""
    version = profile.version if build is None else f"{profile.version}-{build}"
    return f"{profile.name}-{version}"


# What of hostbuild itself decides an image's content: the elements, and the whole package (its
# code picks the files it renders into the image, its templates and data are inside it).
HOSTBUILD_SOURCES = (ELEMENTS_DIR, Path(__file__).parents[1])


def build_inputs(
    plan: Plan, archive: str, update_root: bytes | None = None, signer: Signer | None = None
) -> dict[str, Any]:
    """Everything that decides the image's content: what the build number is derived from.

    A signed build adds the certificates' fingerprints (another key set signs other bits); an
    unsigned build has no such entry.
    """
    inputs = {
        "profile": yaml.safe_load(dump_profile(plan.profile)),
        "artifacts": {a.name: {"version": a.version, "sha256": a.sha256} for a in plan.artifacts},
        "debian_archive": archive,
        "hostbuild": tree_digest(*HOSTBUILD_SOURCES),
        "update_root": root_digest(update_root),
    }
    if signer is not None:
        inputs["secure_boot"] = fingerprints(signer.certificates)
    return inputs


def plan_build(profile: Profile, options: BuildOptions, workdir: Path) -> Plan:
    """Resolve mirrors, artifacts and the DIB command without touching anything."""
    mirrors = resolve_mirrors(profile.debian)
    pins = debian_pins(profile)
    packages = (*profile.debian.packages, *(f"{p}={v}" for p, v in pins.items()))
    dib = DibInvocation(
        elements=tuple(image_elements(profile)),
        elements_path=workdir / "elements",
        output=workdir / "dib" / image_name(profile),
        arch=profile.arch.value,
        image_cache=options.cache / "dib",
        packages=packages,
        environment={
            "DIB_RELEASE": profile.debian.release,
            "DIB_DISTRIBUTION_MIRROR": mirrors.main,
            "DIB_HOSTBUILD_APT_SOURCES": os.fspath(workdir / "debian.sources"),
            "DIB_HOSTBUILD_BOOTSTRAP_INCLUDE": BOOTSTRAP_INCLUDE,
            "DIB_HOSTBUILD_BOOTSTRAP_KEY": "(archive state, read at build time)",
            "DIB_HOSTBUILD_KERNEL_FLAVOUR": profile.kernel.flavour.value,
            "DIB_AVOID_PACKAGES_UPDATE": "1",
            "DIB_APT_LOCAL_CACHE": "1",
            "DIB_DEBOOTSTRAP_CACHE": "0",
            "DIB_NO_TIMESTAMP": "1",
            "TMPDIR": os.fspath(workdir / "tmp"),
        },
    )
    return Plan(profile, mirrors, upstream_artifacts(profile), pins, packages, dib)


@contextlib.contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """A staging directory that replaces `output` only if the block succeeds."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    if output.exists():
        output.rename(old)
    staging.rename(output)
    shutil.rmtree(old, ignore_errors=True)


def build_image(profile: Profile, options: BuildOptions, log: Path) -> dict[str, Any]:
    """Build the profile's disk image, payload, SBOM and manifest into options.output."""
    started = time.monotonic()
    workdir = options.cache / "work" / f"{image_name(profile)}-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    plan = plan_build(profile, options, workdir)
    update_root = load_update_root(options.update_root) if options.update_root else None
    signer = prepare_signer(profile, options.signing)  # a missing or wrong key stops it here
    try:
        with step("Check inputs"):
            fetched = fetch_all(plan.artifacts, Cache(options.cache), options.artifact_mirror)
            for item in fetched:
                origin = "cache" if item.cache_hit else f"fetched from {item.source}"
                logger.info("  %s %s: %s", item.artifact.name, item.artifact.version, origin)
            state = archive_state(plan.mirrors, profile.debian.release)
            lock = load_lock(options.lock or lock_path(profile.path))
            inputs = inputs_digest(build_inputs(plan, state, update_root, signer))
            build = lock.build_number(parse_os_version(profile.version), inputs)
            name = image_name(profile, build)
            tools = ensure_tools_tree(options.cache, plan.mirrors.main)
            if signer is not None:
                check_engine(tools, signer)
            logger.info("  version %s-%d (inputs %s, lock %s)", profile.version, build, inputs[:12],
                        lock.path)  # fmt: skip
        with staged_output(options.output) as staging:
            with step("Render elements"):
                files = config_files(profile, build) + binary_files(fetched)
                if update_root is not None:
                    files.append(ImageFile("hostbuild-base", ROOT_PATH, update_root))
                (workdir / "tmp").mkdir(parents=True)
                (workdir / "debian.sources").write_text(
                    plan.mirrors.sources(profile.debian.release)
                )
                prepare_elements(profile, files, workdir / "elements")
            environment = {**plan.dib.environment, "DIB_HOSTBUILD_BOOTSTRAP_KEY": state}
            dib = dataclasses.replace(plan.dib, environment=environment)
            with step(f"Build root tree with diskimage-builder ({', '.join(dib.elements)})"):
                dib.run()
            with step("Check root tree"):
                rootfs = dib.output.with_name(f"{dib.output.name}.tar")
                packages = _installed_packages(dib.output)
                _check_pins(plan.pins, packages, log)
                tree_bytes = _tree_size(rootfs)
            version = f"{profile.version}-{build}"
            epoch = source_date_epoch(state)
            work = workdir / "assemble"
            staged = signer.staged(workdir / "keys") if signer else None
            assembly = assemble_image(
                profile, name, version, rootfs, work, staging, tools, epoch, staged
            )
            lock.check_reproduced(version, inputs, assembly.record["roothash"])
            manifest = _manifest(plan, fetched, files, packages, tree_bytes, started)
            manifest.update(
                name=name, version=version, os_version=profile.version,
                build_number=build, inputs_digest=inputs, lock=os.fspath(lock.path),
                update_root=root_digest(update_root),
                **assembly.record,
            )  # fmt: skip
            exported = export_certificates(signer.certificates, staging) if signer else {}
            if exported:
                manifest["secure_boot"]["files"] = {
                    key: path.relative_to(staging).as_posix() for key, path in exported.items()
                }
            sbom = write_json(staging / f"{name}.spdx.json", build_sbom(manifest, epoch))
            with step("Checksums"):
                manifest["outputs"] = {
                    path.relative_to(staging).as_posix(): {
                        "sha256": sha256_file(path), "bytes": path.stat().st_size,
                    }
                    for path in [*assembly.outputs.values(), *exported.values(), sbom]
                }  # fmt: skip
            write_manifest(staging, manifest)
            shutil.copyfile(log, staging / "build.log")
        lock.record({
            "version": manifest["version"], "inputs": inputs, "built_at": manifest["built_at"],
            "roothash": manifest["roothash"],
            "kubelet": manifest["components"].get("kubelet", {}).get("version"),
            "artifacts": {n: c.get("sha256") for n, c in manifest["components"].items()},
            "packages": {p["package"]: p["version"] for p in packages},
        })  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return manifest


def _installed_packages(dib_output: Path) -> list[dict[str, str]]:
    manifests = dib_output.parent / f"{dib_output.name}.d" / "dib-manifests"
    found = sorted(manifests.glob("dib-manifest-dpkg-*"))
    if not found:
        raise HostbuildError(f"diskimage-builder wrote no package manifest in {manifests}")
    data = json.loads(found[0].read_text())
    return [
        # binary:Package carries ":arch" for Multi-Arch: same packages
        {"package": p["package"].split(":")[0], "version": p["version"], "arch": p["arch"]}
        for p in data["packages"]
    ]


def _check_pins(pins: dict[str, str], packages: list[dict[str, str]], log: Path) -> None:
    installed = {p["package"]: p["version"] for p in packages}
    wrong = [
        f"{name}: pinned {version!r}, installed {installed.get(name)!r}"
        for name, version in pins.items()
        if installed.get(name) != version
    ]
    if wrong:
        raise HostbuildError(
            "the root tree does not carry the pinned Debian packages: " + "; ".join(wrong),
            hint=f"see {log}",
        )


def _tree_size(rootfs: Path) -> int:
    with tarfile.open(rootfs) as tar:
        return sum(m.size for m in tar.getmembers() if m.isfile())


def _manifest(
    plan: Plan,
    fetched: list[Fetched],
    files: list[ImageFile],
    packages: list[dict[str, str]],
    tree_bytes: int,
    started: float,
) -> dict[str, Any]:
    profile = plan.profile
    components = {}
    for name, component in profile.components.pinned().items():
        entry: dict[str, Any] = {"source": component.source.value, "version": component.version}
        for item in fetched:
            if item.artifact.name == name:
                entry.update(url=item.artifact.url, sha256=item.artifact.sha256)
        components[name] = entry
    kubelet = profile.components.kubelet
    _, overrides = evaluate_skew(profile, None)
    return {
        "profile": profile.name,
        "profile_files": {
            os.fspath(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in profile.chain
        },
        "resolved_profile": yaml.safe_load(dump_profile(profile)),
        "arch": profile.arch.value,
        "skew": {
            "kubernetes": minor_of(kubelet.version) if kubelet else None,
            "api_servers_supported": supported_api_servers(kubelet.version) if kubelet else [],
            "overrides": overrides,
        },
        "upgrade_from": profile.upgrade_from,
        "debian": plan.describe()["debian"],
        "components": components,
        "files": {f.path: {"sha256": f.sha256, "mode": f"{f.mode:04o}"} for f in files},
        "packages": packages,
        "tree_bytes": tree_bytes,
        "builder": {"hostbuild": __version__, "elements": list(plan.dib.elements)},
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 1),
    }
