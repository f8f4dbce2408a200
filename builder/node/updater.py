"""OS updates on the node: check the channel, stage a newer version in the other slot, reboot.

One run at a time (a lock on /var). Every run first settles what the last reboot did with a
staged version (updatestate.reconcile). Staging, in order: the payload is downloaded and
verified (TUF) into /var, with Secure Boot on the UKI checked against the firmware's db
(authenticode), then the UKIs of every version but the running one are removed, the
other slot is labelled `_empty`, written, verified against the signed root hash, given its
UUIDs and label, and only then is the new UKI installed, boot-counted.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import authenticode, bootentries, bootsecurity, failpoints, rebootlock, slots
from .channel import (
    CHANNEL_TARGET,
    ChannelError,
    Decision,
    Entry,
    Manifest,
    Running,
    choose,
    parse_manifest,
)
from .command import CommandFailed
from .model import (
    CHECK_INTERVAL,
    CHECK_JITTER,
    MAX_CHECK_INTERVAL,
    MIN_BANDWIDTH,
    MIN_CHECK_INTERVAL,
)
from .seed import SEED_FILE, node_seed, pinned_seed, seed_status
from .updatestate import (
    BootEntry,
    State,
    UpdateError,
    load_state,
    now,
    reconcile,
    record_failure,
    save_state,
)
from .windows import in_window, next_window

if TYPE_CHECKING:
    from .tufclient import Repository

logger = logging.getLogger(__name__)

UPDATES_JSON = Path("run/hostbuild/updates.json")  # rendered by the agent from the NodeConfig
STATE_DIR = Path("var/lib/hostbuild/update")
BAKED_ROOT = Path("usr/lib/hostbuild/update/root.json")  # the image's trusted TUF root
OS_RELEASE = (Path("etc/os-release"), Path("usr/lib/os-release"))
BOOT_ID = Path("proc/sys/kernel/random/boot_id")
DEFAULT_CHANNEL = "stable"
SPACE_MARGIN = 64 << 20  # what a download leaves free on /var at least


def _systemctl_reboot() -> None:
    from .command import run

    run(["systemctl", "reboot"])


@dataclass
class Node:
    """The node as the updater sees it; every path is below `root` (tests use a temporary one)."""

    root: Path = Path("/")
    system: slots.System = field(default_factory=slots.System)
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
    reboot: Callable[[], None] = _systemctl_reboot
    timeout: float = 30.0  # seconds without progress from the repository

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def downloads(self) -> Path:
        return self.state_dir / "downloads"


@dataclass(frozen=True)
class Config:
    repository: str
    channel: str
    windows: tuple[dict[str, Any], ...] = ()
    bandwidth: int | None = None  # bytes per second
    interval: int = CHECK_INTERVAL  # seconds between checks of the timer's tick
    jitter: int = CHECK_JITTER  # at most this much later, drawn per node and check
    fleet_lock: rebootlock.LockConfig | None = None  # reboot only holding its lock
    wave_seed: int | None = None  # pinned by the NodeConfig; None: the node's own, on /var


@dataclass
class Context:
    """One run: the state, and what this boot is (from os-release and the ESP)."""

    node: Node
    state: State
    image_id: str
    version: str
    boot_id: str
    esp: Path | None
    entries: dict[str, BootEntry]
    events: list[str]


def read_config(node: Node) -> Config:
    """updates.json (the NodeConfig's `updates`); UpdateError not-configured if it names no
    repository."""
    path = node.root / UPDATES_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UpdateError("not-configured", "no updates section in the NodeConfig") from None
    except (OSError, ValueError) as e:
        raise UpdateError("system", f"{path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("repository"), str):
        raise UpdateError("not-configured", "the NodeConfig names no updates.repository")
    windows = data.get("maintenanceWindows") or []
    bandwidth = data.get("bandwidthLimit")  # optional, bytes per second
    interval = _seconds(data.get("checkInterval"), CHECK_INTERVAL,
                        MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL)  # fmt: skip
    return Config(
        data["repository"], str(data.get("channel") or DEFAULT_CHANNEL),
        tuple(w for w in windows if isinstance(w, dict)),
        max(bandwidth, MIN_BANDWIDTH) if isinstance(bandwidth, int) and bandwidth > 0 else None,
        interval, _seconds(data.get("checkJitter"), min(CHECK_JITTER, interval), 0, interval),
        rebootlock.lock_config(data.get("fleetLock"), node.root), pinned_seed(data.get("waveSeed")),
    )  # fmt: skip


def _seconds(value: Any, default: int, low: int, high: int) -> int:
    """A number of seconds from updates.json (validated when rendered), kept within bounds."""
    if not isinstance(value, int) or isinstance(value, bool):
        return default
    return min(max(value, low), high)


def read_os_release(root: Path) -> dict[str, str]:
    for rel in OS_RELEASE:
        with contextlib.suppress(OSError):
            text = (root / rel).read_text()
            pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
            return {k.strip(): v.strip().strip("\"'") for k, v in pairs}
    return {}


def start(node: Node, save: bool = True) -> Context:
    """Read this boot and the state, and settle what the last reboot did with a staged version."""
    release = read_os_release(node.root)
    image_id, version = release.get("IMAGE_ID"), release.get("IMAGE_VERSION")
    if not image_id or not version:
        raise UpdateError("system", "os-release names no IMAGE_ID and IMAGE_VERSION")
    try:
        boot_id = (node.root / BOOT_ID).read_text().strip()
    except OSError as e:
        raise UpdateError("system", f"reading the boot id: {e}") from None
    esp: Path | None = None
    try:
        esp = bootentries.esp_path(node.system)
    except UpdateError as e:
        logger.warning("%s", e)
    entries = bootentries.boot_entries(esp, image_id) if esp else None
    state = load_state(node.state_file)
    events = reconcile(state, version, boot_id, entries)
    for event in events:
        logger.info("%s", event)
    if events and save:
        save_state(node.state_file, state)
    ctx = Context(node, state, image_id, version, boot_id, esp, entries or {}, events)
    if save:
        release_lock(ctx)
    return ctx


def release_lock(ctx: Context) -> None:
    """Free the fleet lock (steady-state) once reconcile and the health gate have a verdict."""
    try:
        config = read_config(ctx.node).fleet_lock
    except UpdateError:
        return
    entry = ctx.entries.get(ctx.version)
    blessed = entry is not None and entry.tries_left is None
    try:
        event = rebootlock.release(ctx.state, ctx.node.root, config, ctx.version, ctx.boot_id,
                                   blessed, ctx.node.clock())  # fmt: skip
    except UpdateError as e:
        logger.warning("%s", e)
        return
    if event is not None:
        logger.info("%s", event)
        ctx.events.append(event)
    if ctx.state.fleet_lock is not None:
        _save(ctx)


@contextlib.contextmanager
def locked(node: Node) -> Iterator[None]:
    """One update run at a time (the TUF metadata directory is single-user, so are the slots)."""
    node.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(node.state_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError("busy", "another update run is in progress") from None
        yield
    finally:
        os.close(fd)


def is_locked(node: Node) -> bool:
    try:
        with locked(node):
            return False
    except (UpdateError, OSError):
        return True


def check(node: Node) -> dict[str, Any]:
    """Refresh the repository's metadata, read the channel, decide; recorded as last_check."""
    with locked(node):
        ctx = start(node)
        try:
            _, manifest, decision, config = _check(ctx)
        finally:
            _save(ctx)
        return _check_report(ctx, manifest, decision, config)


def _check(ctx: Context) -> tuple[Repository, Manifest, Decision, Config]:
    from .tufclient import Fetcher, Repository  # here: only check and apply need python3-tuf

    state = ctx.state
    try:
        config = read_config(ctx.node)
        repo = Repository(
            config.repository, ctx.node.state_dir / "metadata", ctx.node.downloads,
            ctx.node.root / BAKED_ROOT, Fetcher(ctx.node.timeout, config.bandwidth),
        )  # fmt: skip
        repo.refresh()
        try:
            manifest = parse_manifest(
                repo.fetch_json(CHANNEL_TARGET.format(channel=config.channel)), config.channel
            )
        except ChannelError as e:
            raise UpdateError("rejected", f"channel {config.channel!r}: {e}") from None
        running = Running(ctx.image_id, ctx.version, kubelet_minor(ctx, manifest))
        seed = node_seed(ctx.node.root / SEED_FILE, config.wave_seed)
        decision = choose(manifest, running, set(state.failures()), seed=seed, now=ctx.node.clock())
    except UpdateError as e:
        state.last_check = {"time": now(), "result": "error", "kind": e.kind, "detail": str(e)}
        raise
    state.last_check = {
        "time": now(), "result": "ok", "repository": config.repository,
        "channel": config.channel, "running": ctx.version, **decision.describe(),
    }  # fmt: skip
    return repo, manifest, decision, config


def _check_report(ctx: Context, manifest: Manifest, decision: Decision,
                  config: Config) -> dict[str, Any]:  # fmt: skip
    return {
        "running": {"image_id": ctx.image_id, "version": ctx.version},
        "repository": config.repository, "channel": config.channel,
        "versions": [e.version for e in manifest.entries], **decision.describe(),
        "events": ctx.events,
    }  # fmt: skip


def kubelet_minor(ctx: Context, manifest: Manifest) -> str | None:
    """The running image's kubelet minor: its channel entry's, else `kubelet --version`'s."""
    own = manifest.entry(ctx.version)
    if own is not None:
        return own.kubelet_minor
    kubelet = ctx.node.root / "usr/bin/kubelet"
    if not kubelet.exists():
        return None
    try:
        out = ctx.node.system.run([os.fspath(kubelet), "--version"], 10.0)
    except CommandFailed:
        return None
    m = re.search(r"v?([0-9]+)\.([0-9]+)\.[0-9]+", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def apply(node: Node) -> dict[str, Any]:
    """Check, and stage the chosen version in the other slot; recorded as last_apply."""
    with locked(node):
        ctx = start(node)
        state = ctx.state
        try:
            recover(ctx)
            repo, _, decision, _ = _check(ctx)
            entry = decision.chosen
            staged = state.staged
            if entry is None:
                detail = f"nothing newer to install (running {ctx.version})"
                result = {"result": "nothing", "version": None, "detail": detail}
            elif staged and staged.get("version") == entry.version:
                detail = f"{entry.version} is staged already; reboot to boot it"
                result = {"result": "staged", "version": entry.version, "detail": detail}
            elif (waiting := unblessed(ctx)) is not None:
                result = {"result": "nothing", "version": None, "detail": waiting}
            else:
                files = download(ctx, repo, entry)
                stage(ctx, entry, files)
                for path in files.values():
                    path.unlink(missing_ok=True)
                detail = f"staged {entry.version}; reboot to boot it"
                result = {"result": "staged", "version": entry.version, "detail": detail}
            result["skipped"] = decision.describe()["skipped"]
        except UpdateError as e:
            state.last_apply = {"time": now(), "result": "error", "kind": e.kind, "detail": str(e)}
            _save(ctx)
            raise
        state.last_apply = {
            "time": now(),
            **{k: result[k] for k in ("result", "version", "detail")},
        }
        _save(ctx)
        return result | {"events": ctx.events}


def unblessed(ctx: Context) -> str | None:
    """Why the other slot must stay as it is now (None: it may be written).

    While this boot still counts tries, the other slot and its UKI are what boot counting
    falls back to if this version fails its health gate.
    """
    entry = ctx.entries.get(ctx.version)
    if entry is None:
        return f"not writing the other slot: {ctx.version} has no boot entry on the ESP"
    if entry.tries_left is not None:
        return (
            f"not writing the other slot yet: this boot of {ctx.version} is not blessed "
            f"({entry.name}), and the other slot is its fallback"
        )
    return None


def _save(ctx: Context) -> None:
    try:
        save_state(ctx.node.state_file, ctx.state)
    except OSError as e:  # a full /var: the previous record stays
        logger.error("writing %s: %s", ctx.node.state_file, e)


def download(ctx: Context, repo: Repository, entry: Entry) -> dict[str, Path]:
    """The version's three payload files, verified (TUF) below downloads/, space checked first."""
    infos = {role: repo.targetinfo(p.target) for role, p in entry.files.items()}
    for role, info in infos.items():
        if info.length != entry.files[role].compressed_size:
            signed = entry.files[role].compressed_size
            raise UpdateError(
                "rejected", f"{info.path}: the channel manifest says {signed} bytes, the targets "
                f"metadata {info.length}",
            )  # fmt: skip
    downloads = ctx.node.downloads
    names = tuple(urllib.parse.quote(info.path, safe="") for info in infos.values())

    def ours(name: str) -> bool:  # a file of this version, or its partial download
        return name in names or name.startswith(tuple(n + "." for n in names))

    for stale in downloads.iterdir():
        if not ours(stale.name) and not stale.name.startswith("channels%2F"):
            stale.unlink(missing_ok=True)  # another version's: its space is needed
    have = sum(p.stat().st_size for p in downloads.iterdir() if ours(p.name))
    need = sum(info.length for info in infos.values()) - have
    st = os.statvfs(downloads)
    free = st.f_bavail * st.f_frsize
    if need + SPACE_MARGIN > free:
        raise UpdateError(
            "no-space", f"{entry.version} needs {need >> 20} MiB more on /var for its download "
            f"(and {SPACE_MARGIN >> 20} MiB to spare), {free >> 20} MiB are free",
        )  # fmt: skip

    def progress(received: int, sync: Callable[[], None]) -> None:
        failpoints.reached("download", received >= infos["root"].length // 2, sync)

    return {
        role: repo.fetch(info, progress if role == "root" else None) for role, info in infos.items()
    }


def recover(ctx: Context) -> None:
    """After a write that never finished: the other slot back to `_empty`, its UKI gone."""
    writing = ctx.state.writing
    if writing is None:
        return
    disk = slots.discover(ctx.node.system)
    slots.clear_slot(ctx.node.system, disk, disk.inactive)
    if ctx.esp is not None:
        bootentries.remove_entries(ctx.esp, ctx.image_id, keep=ctx.version)
    ctx.state.writing = None
    detail = (
        f"writing {writing.get('version')} into slot {writing.get('slot')} was interrupted "
        f"(started {writing.get('time')}): the slot was cleared"
    )
    ctx.state.last_apply = {"time": now(), "result": "error", "kind": "write",
                            "version": writing.get("version"), "detail": detail}  # fmt: skip
    ctx.events.append(detail)
    logger.warning("%s", detail)
    _save(ctx)


def stage(ctx: Context, entry: Entry, files: dict[str, Path]) -> None:
    """Write `entry` into the slot not running, in the order that keeps the node bootable."""
    system, state = ctx.node.system, ctx.state
    if ctx.esp is None:
        raise UpdateError("system", "the ESP was not found (bootctl --print-esp-path)")
    disk = slots.discover(system)
    slot = disk.inactive
    label = f"{ctx.image_id}_{entry.version}"
    slots.check_target(system, slot.root, entry.files["root"], label)
    slots.check_target(system, slot.verity, entry.files["verity"], f"{label}_verity")
    bootentries.check_space(ctx.esp, ctx.image_id, ctx.version, entry.files["uki"])
    check_firmware_trust(ctx, entry, files["uki"])
    state.staged = None
    partitions = [os.fspath(slot.root.node), os.fspath(slot.verity.node)]
    state.writing = {"version": entry.version, "slot": slot.name, "time": now(),
                     "partitions": partitions}  # fmt: skip
    try:
        save_state(ctx.node.state_file, state)  # before anything is touched
    except OSError as e:
        state.writing = None
        kind = "no-space" if e.errno == errno.ENOSPC else "system"
        raise UpdateError(kind, f"recording the write in {ctx.node.state_file}: {e}") from None
    try:
        # nothing may boot the slot while it is written: its UKI goes first, then its label
        removed = bootentries.remove_entries(ctx.esp, ctx.image_id, keep=ctx.version)
        logger.info("removed %s; writing %s", ", ".join(removed) or "no UKI", slot.describe())
        slots.clear_slot(system, disk, slot)
        slots.write_partition(system, slot.root, files["root"], entry.files["root"], "root-write")
        slots.write_partition(system, slot.verity, files["verity"], entry.files["verity"])
        slots.verify_slot(system, slot, entry.roothash)
        root_uuid, verity_uuid = slots.roothash_uuids(entry.roothash)
        slots.set_identity(system, disk, slot.root, label, root_uuid)
        slots.set_identity(system, disk, slot.verity, f"{label}_verity", verity_uuid)
        os.sync()
        failpoints.reached("before-uki")
        name = bootentries.install_uki(
            system, ctx.esp, ctx.image_id, entry.version, files["uki"], entry.files["uki"]
        )
        os.sync()
    except BaseException as e:
        _undo(ctx)
        if isinstance(e, UpdateError) and e.kind == "verify":
            # the signed payload contradicts its own manifest: it would fail the same way again
            digest = f"sha256:{entry.files['root'].sha256}"
            record_failure(state, entry.version, str(e), digest, entry.roothash)
        raise
    state.writing = None
    state.staged = {
        "version": entry.version, "roothash": entry.roothash, "from": ctx.version,
        "digest": f"sha256:{entry.files['root'].sha256}", "boot_id": ctx.boot_id,
        "slot": slot.name, "entry": name, "time": now(),
    }  # fmt: skip
    save_state(ctx.node.state_file, state)
    logger.info("staged %s in slot %s (%s)", entry.version, slot.name, name)


def check_firmware_trust(ctx: Context, entry: Entry, uki: Path) -> None:
    """With Secure Boot on, refuse (`rejected`) a UKI the firmware would refuse to load: with
    3 boot tries it would use up both attempts of a power cycle (systemd-boot, then the
    firmware's own recovery) and stop the node in the firmware's menu instead of falling back.

    A pre-check of the signer against db/dbx (authenticode.refusal), before anything is
    written: not the firmware's cryptographic verification. Secure Boot off: no check.
    """
    root = ctx.node.root
    if bootsecurity.read_efi_flag(root, "SecureBoot") != 1:
        return
    data = bootentries.read_uki(ctx.node.system, uki, entry.files["uki"])
    lists: dict[str, list[authenticode.SignatureList]] = {}
    for name in ("db", "dbx"):
        raw = bootsecurity.read_efi_var(root, name, bootsecurity.IMAGE_SECURITY_DATABASE)
        try:
            lists[name] = authenticode.signature_lists(raw or b"")
        except authenticode.FormatError as e:
            var = f"/{bootsecurity.EFIVARS}/{name}-{bootsecurity.IMAGE_SECURITY_DATABASE}"
            raise UpdateError("system", f"{var} is not a list of signatures ({e})") from None
    refused = authenticode.refusal(data, lists["db"], lists["dbx"])
    if refused is not None:
        raise UpdateError("rejected", f"{entry.files['uki'].target}: {refused}, not staged")
    if not authenticode.x509_certificates(lists["db"]):
        logger.warning(
            "%s: the firmware's db holds no X.509 certificate (hashes only): cannot tell whether "
            "it trusts the UKI's signer; staging it", entry.files["uki"].target,
        )  # fmt: skip


def _undo(ctx: Context) -> None:
    """After a failed write: the slot `_empty` and no UKI but the running version's."""
    with contextlib.suppress(UpdateError, OSError):
        if ctx.esp is not None:
            bootentries.remove_entries(ctx.esp, ctx.image_id, keep=ctx.version)
    with contextlib.suppress(UpdateError, OSError):
        fresh = slots.discover(ctx.node.system)
        slots.clear_slot(ctx.node.system, fresh, fresh.inactive)
    ctx.state.writing = None
    _save(ctx)


def reboot(node: Node, ignore_window: bool = False, backoff: bool = False) -> dict[str, Any]:
    """Reboot into the staged version when there is one, a maintenance window is open and, with
    a fleet lock, this node holds it (`backoff`: after a refusal, wait before asking again)."""
    with locked(node):
        ctx = start(node)
        staged = ctx.state.staged
        if staged is None:
            return {"rebooting": False, "version": None, "reason": "nothing is staged"}
        version = staged.get("version")
        config: Config | None = None
        with contextlib.suppress(UpdateError):
            config = read_config(node)
        windows = config.windows if config else ()
        moment = node.clock()
        if not ignore_window and not in_window(windows, moment):
            opens = next_window(windows, moment)
            when = f"{opens:%a %Y-%m-%d %H:%M} UTC" if opens else "never"
            reason = f"{version} is staged; outside the maintenance windows (the next opens {when})"
            return {"rebooting": False, "version": version, "reason": reason}
        if config is not None and config.fleet_lock is not None:
            refused = rebootlock.acquire(
                ctx.state, node.root, config.fleet_lock, ctx.version, str(version),
                ctx.boot_id, moment, config.interval, backoff,
            )  # fmt: skip
            save_state(node.state_file, ctx.state)  # held before the reboot, or why not
            if refused is not None:
                logger.warning("%s", refused)
                return {"rebooting": False, "version": version, "reason": refused}
        logger.info("rebooting into %s", version)
        node.reboot()
        return {"rebooting": True, "version": version, "reason": f"rebooting into {version}"}


def _pinned(node: Node) -> int | None:
    try:
        return read_config(node).wave_seed
    except UpdateError:  # not configured, or unreadable: `check` says so
        return None


def status(node: Node) -> dict[str, Any]:
    """What runs, what the other slot holds, what is staged or failed; changes nothing."""
    ctx = start(node, save=False)
    state = ctx.state
    seed, source = seed_status(node.root / SEED_FILE, _pinned(node))
    report: dict[str, Any] = {
        "image_id": ctx.image_id, "running": ctx.version,
        "seed": seed, "seed_source": source,
        "entries": sorted(e.name for e in ctx.entries.values()),
        **{k: v for k, v in state.to_json().items() if k != "format"}, "events": ctx.events,
    }  # fmt: skip
    if state.writing is not None:
        report["writing"] = state.writing | {"interrupted": not is_locked(node)}
    try:
        disk = slots.discover(node.system)
    except UpdateError as e:
        report["slots"] = {"error": str(e)}
        return report
    report["slots"] = {}
    for slot in disk.slots:
        version = slot.version(ctx.image_id)
        report["slots"][slot.name] = {
            "root": os.fspath(slot.root.node),
            "verity": os.fspath(slot.verity.node),
            "label": slot.root.label,
            "version": version,
            "running": slot == disk.running,
            "entry": ctx.entries[version].name if version in ctx.entries else None,
        }
    return report
