"""The `hostbuild` command: parses options, calls one library function per command, reports."""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import click

from builder.build.apt import resolve_mirrors
from builder.build.artifacts import Cache, fetch_all
from builder.build.doctor import check_host, install_hint
from builder.build.image import BuildOptions, build_image, image_name, plan_build
from builder.build.manifest import read_manifest
from builder.build.toolstree import ensure_tools_tree
from builder.cli.firmware import firmware
from builder.cli.fleet import fleet
from builder.cli.keys import keys
from builder.cli.repo import repo
from builder.errors import HostbuildError
from builder.keys.secureboot import SigningKeys
from builder.log import current_log_file, log_file, setup_logging
from builder.profile.components import upstream_artifacts
from builder.profile.load import display, list_profiles, load_profile
from builder.profile.model import Debian, dump_profile
from builder.profile.skew import supported_api_servers
from builder.publish.cli import publish
from builder.vm.machine import DEFAULT_MACHINE, load_machine
from builder.vm.qemu import Accelerator, VmConfig, boot_vm
from builder.vm.swtpm import SoftwareTpm
from builder.vm.vmtest import run_smoke, run_suite

logger = logging.getLogger(__name__)

MAX_KEYS = 64 << 10  # authorized_keys lines: a few hundred bytes each
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hostbuild"


class State:
    def __init__(self, cache: Path, debug: bool) -> None:
        self.cache = cache
        self.debug = debug


pass_state = click.make_pass_decorator(State)

profile_option = click.option(
    "--profile", "profile_ref", required=True, metavar="NAME|PATH",
    help="A profile name from profiles/ or a path to a profile file.",
)  # fmt: skip
mirror_option = click.option(
    "--artifact-mirror", metavar="URL|DIR", envvar="HOSTBUILD_ARTIFACT_MIRROR",
    help="Fetch upstream artifacts from this mirror (same paths as upstream) "
    "[env: HOSTBUILD_ARTIFACT_MIRROR].",
)  # fmt: skip


class HostbuildGroup(click.Group):
    """The top-level group: the only place that turns errors into messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HostbuildError as e:
            click.echo(f"Error: {e.message}", err=True)
            if e.hint:
                click.echo(f"({e.hint})", err=True)
            if e.log:
                click.echo(f"log: {e.log}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:
            logger.debug("unexpected error", exc_info=True)
            if isinstance(ctx.obj, State) and ctx.obj.debug:
                traceback.print_exc()
            click.echo(f"Error: unexpected {type(e).__name__}: {e}", err=True)
            log = current_log_file()
            click.echo(f"(run with --debug for the traceback{f'; log: {log}' if log else ''})",
                       err=True)  # fmt: skip
            ctx.exit(1)


@click.group(cls=HostbuildGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less output (repeatable).")
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), envvar="HOSTBUILD_CACHE",
    default=DEFAULT_CACHE, show_default=True,
    help="Downloads, diskimage-builder caches and logs [env: HOSTBUILD_CACHE].",
)  # fmt: skip
@click.version_option(package_name="hostbuild")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, debug: bool, cache_dir: Path) -> None:
    """Build immutable, single-purpose host OS images for Kubernetes nodes."""
    setup_logging(verbose - quiet)
    ctx.obj = State(cache_dir.absolute(), debug)


@cli.group(invoke_without_command=True)
@click.pass_context
def profiles(ctx: click.Context) -> None:
    """List the profiles in profiles/."""
    if ctx.invoked_subcommand is None:
        for path in list_profiles():
            try:
                profile = load_profile(os.fspath(path))
                description = " ".join(profile.description.split())  # one line of the table
                click.echo(f"{path.stem:<16} {profile.version:<10} {description}")
            except HostbuildError:
                click.echo(f"{path.stem:<16} {'-':<10} (invalid: run 'hostbuild profiles show')")


@profiles.command("show")
@click.argument("name")
def profiles_show(name: str) -> None:
    """Print the resolved profile NAME (a name or a path) as YAML."""
    profile = load_profile(name)
    chain = " -> ".join(display(p) for p in profile.chain)
    click.echo(f"# {profile.name}: {chain}")
    if kubelet := profile.components.kubelet:
        servers = supported_api_servers(kubelet.version)
        click.echo(
            f"# kubelet {kubelet.version} supports API servers {servers[0]} to {servers[-1]} "
            "(kubelet may be older than the API server, never newer)"
        )
    click.echo(dump_profile(profile), nl=False)


@cli.group()
def artifacts() -> None:
    """Upstream artifacts (downloads verified against pinned checksums)."""


@artifacts.command("fetch")
@profile_option
@mirror_option
@pass_state
def artifacts_fetch(state: State, profile_ref: str, artifact_mirror: str | None) -> None:
    """Download and verify the profile's upstream artifacts into the cache."""
    profile = load_profile(profile_ref)
    fetched = fetch_all(upstream_artifacts(profile), Cache(state.cache), artifact_mirror)
    click.echo(f"{'ARTIFACT':<12} {'VERSION':<10} {'SIZE':>12}  {'CACHE':<5}  SHA256")
    for item in fetched:
        a = item.artifact
        hit = "hit" if item.cache_hit else "miss"
        click.echo(f"{a.name:<12} {a.version:<10} {item.size:>12}  {hit:<5}  {a.sha256}")


@cli.command()
@profile_option
@click.option(
    "--output", type=click.Path(path_type=Path), metavar="DIR",
    help="Output directory [default: output/PROFILE].",
)  # fmt: skip
@mirror_option
@click.option(
    "--lock", type=click.Path(path_type=Path), metavar="FILE",
    help="The lock the build number is derived from and recorded in "
    "[default: PROFILE.lock.json next to the profile].",
)  # fmt: skip
@click.option(
    "--update-root", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
    envvar="HOSTBUILD_UPDATE_ROOT",
    help="The TUF root.json of the update repository the image trusts (env HOSTBUILD_UPDATE_ROOT) "
    "[default: none: the node takes no updates].",
)  # fmt: skip
@click.option(
    "--db-key", metavar="FILE|URI", envvar="HOSTBUILD_DB_KEY",
    help="The db private key that signs systemd-boot and the UKI of a profile with secure_boot "
    "enabled: a PEM file, or with --signing-engine a PKCS#11 URI [env: HOSTBUILD_DB_KEY].",
)  # fmt: skip
@click.option(
    "--pcr-key", metavar="FILE", envvar="HOSTBUILD_PCR_KEY",
    help="The private key that signs the UKI's PCR 11 predictions, when the profile names "
    "secure_boot.pcr_public_key (PEM) [env: HOSTBUILD_PCR_KEY].",
)  # fmt: skip
@click.option(
    "--signing-engine", metavar="ENGINE", envvar="HOSTBUILD_SIGNING_ENGINE",
    help="OpenSSL engine that holds the db key, e.g. pkcs11 [env: HOSTBUILD_SIGNING_ENGINE].",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the resolved inputs and the DIB command.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result on stdout.")
@pass_state
def image(
    state: State,
    profile_ref: str,
    output: Path | None,
    artifact_mirror: str | None,
    lock: Path | None,
    update_root: Path | None,
    db_key: str | None,
    pcr_key: str | None,
    signing_engine: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Build the disk image of a profile: raw, qcow2, update payload, manifest and SBOM."""
    profile = load_profile(profile_ref)
    output = (output or Path("output") / profile.name).absolute()
    signing = SigningKeys(db_key, pcr_key, signing_engine)
    options = BuildOptions(output, state.cache, artifact_mirror, lock, update_root, signing)
    if dry_run:
        plan = plan_build(profile, options, state.cache / "work" / f"{image_name(profile)}-PID")
        _emit(plan.describe() | {"output": os.fspath(output)}, as_json)
        return
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log = state.cache / "logs" / f"{image_name(profile)}-{stamp}.log"
    with log_file(log):
        logger.info("Building %s (log: %s)", image_name(profile), log)
        try:
            manifest = build_image(profile, options, log)
        except HostbuildError as e:
            e.log = log
            raise
    result = {
        "name": manifest["name"],
        "output": os.fspath(output),
        "outputs": {name: os.fspath(output / name) for name in manifest["outputs"]},
        "manifest": os.fspath(output / "manifest.json"),
        "log": os.fspath(output / "build.log"),
        "tree_bytes": manifest["tree_bytes"],
        "build_seconds": manifest["build_seconds"],
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        logger.info("Built %s in %.0fs: %s", result["name"], result["build_seconds"], output)


def _emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    dib_command = data.pop("dib_command")
    click.echo(json.dumps(data, indent=2))
    click.echo(f"\ndiskimage-builder command:\n{dib_command}")


@cli.command()
@click.option(
    "--image", "image_path", required=True, metavar="PATH",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A raw disk image (NAME.raw from hostbuild image); it is never modified.",
)  # fmt: skip
@click.option(
    "--ssh-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
    help="A public key for root, passed as the ssh.authorized_keys.root credential.",
)  # fmt: skip
@click.option(
    "--ssh-port", type=click.IntRange(0, 65535), default=0, show_default=True,
    help="Port on 127.0.0.1 forwarded to the guest's SSH (0: pick a free one).",
)  # fmt: skip
@click.option(
    "--machine", "machine_path", metavar="FILE", envvar="HOSTBUILD_QEMU_MACHINE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The test machine: QEMU machine type, CPU, firmware, devices, memory, networking "
    "[env: HOSTBUILD_QEMU_MACHINE; default: qemu/machine.yaml of hostbuild's checkout].",
)  # fmt: skip
@click.option("--memory", type=click.IntRange(512), help="MiB [default: the machine file's].")
@click.option("--cpus", type=click.IntRange(1, 64), help="[default: the machine file's].")
@click.option(
    "--accel", type=click.Choice([a.value for a in Accelerator]),
    help="tcg (software), kvm, or auto (kvm only if a short probe shows it works) "
    "[default: the machine file's].",
)  # fmt: skip
@click.option(
    "--secure-boot-vars", metavar="FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Boot with Secure Boot on this variable store (hostbuild firmware vars --output FILE).",
)  # fmt: skip
@click.option("--tpm", is_flag=True, help="Attach a software TPM 2.0 (swtpm), thrown away after.")
@pass_state
def boot(
    state: State, image_path: Path, ssh_key: Path | None, ssh_port: int,
    machine_path: Path | None, memory: int | None, cpus: int | None, accel: str | None,
    secure_boot_vars: Path | None, tpm: bool,
) -> None:  # fmt: skip
    """Boot an image under QEMU (UEFI, copy-on-write overlay) until Ctrl-C."""
    credentials = {"ssh.authorized_keys.root": _public_keys(ssh_key)} if ssh_key else {}
    machine = load_machine(machine_path or DEFAULT_MACHINE)
    mirrors = resolve_mirrors(Debian(release="trixie"))
    tools = ensure_tools_tree(state.cache, mirrors.main)
    work = state.cache / "vms" / f"{image_path.stem}-{os.getpid()}"
    config = VmConfig(
        image=image_path, machine=machine, memory_mib=memory, cpus=cpus, ssh_port=ssh_port,
        credentials=credentials, accelerator=Accelerator(accel) if accel else None,
        secure_boot_vars=secure_boot_vars, tpm=SoftwareTpm() if tpm else None,
    )  # fmt: skip
    with boot_vm(config, tools, work) as vm:
        click.echo(f"serial console: {vm.serial_log}", err=True)
        click.echo(f"ssh: ssh -p {vm.ssh_port} root@127.0.0.1 (with --ssh-key's key)", err=True)
        while vm.exit_code() is None:
            time.sleep(1)
        click.echo(f"QEMU exited with code {vm.exit_code()}", err=True)


def _public_keys(path: Path) -> bytes:
    """The authorized_keys lines of --ssh-key: never a private key, never a huge file."""
    with path.open("rb") as f:
        data = f.read(MAX_KEYS + 1)
    if len(data) > MAX_KEYS:
        raise click.BadParameter(f"{path} is over {MAX_KEYS >> 10} KiB", param_hint="--ssh-key")
    if b"PRIVATE KEY" in data:
        raise click.BadParameter(
            f"{path} is a private key; give the public one (like {path}.pub)",
            param_hint="--ssh-key",
        )
    return data


@cli.command("test")
@click.option(
    "--image", "output", required=True, metavar="DIR",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The output directory of hostbuild image (it holds manifest.json and NAME.raw).",
)  # fmt: skip
@click.option("--smoke", is_flag=True, help="Only the fast check: no SSH, a verdict, poweroff.")
@pass_state
def test_image(state: State, output: Path, smoke: bool) -> None:
    """Boot a built image under QEMU and check it (the testinfra suite, or --smoke)."""
    manifest = read_manifest(output)
    raw = output / f"{manifest['name']}.raw"
    if not smoke:
        run_suite(output, [])
        return
    tools = ensure_tools_tree(state.cache, resolve_mirrors(Debian(release="trixie")).main)
    result = run_smoke(raw, tools, state.cache / "vms" / f"smoke-{os.getpid()}")
    for verdict in result.verdicts:
        click.echo(f"{raw.name}: {verdict}")
    if not result.passed:
        raise HostbuildError(
            f"smoke check of {raw.name} failed" + ("" if result.verdicts else ": no verdict"),
            hint=f"serial console: {result.serial_log}",
        )
    click.echo(f"{raw.name}: smoke check passed in {result.seconds:.0f}s")


@cli.command()
@pass_state
def doctor(state: State) -> None:
    """Check that this machine can build images."""
    checks = check_host(state.cache)
    for check in checks:
        click.echo(f"{'ok' if check.ok else 'MISSING':<8} {check.name:<18} {check.detail}")
    if not all(c.ok for c in checks):
        hint = install_hint(checks)
        raise HostbuildError(
            "this machine cannot build images yet",
            hint=f"run: {hint}" if hint else "fix the checks marked MISSING",
        )


cli.add_command(publish)
cli.add_command(repo)
cli.add_command(fleet)
cli.add_command(keys)
cli.add_command(firmware)


@cli.group()
def nodeconfig() -> None:
    """Node configuration (user-data): the NodeConfig the node agent reads at boot."""


@nodeconfig.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--render", "render_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
    help="Also render the node's files below DIR (DIR/run/hostbuild/...).",
)  # fmt: skip
@click.option(
    "--profile", "profile_ref", metavar="NAME|PATH",
    help="Merge over this profile's kubelet configuration when rendering.",
)  # fmt: skip
def nodeconfig_validate(file: Path, render_dir: Path | None, profile_ref: str | None) -> None:
    """Check FILE (a NodeConfig, or user-data holding one) as the node agent would."""
    # imported here so that this command stays one self-contained block of cli.py
    from builder.cli.nodeconfig import load_nodeconfig, render_nodeconfig

    config = load_nodeconfig(file)
    click.echo(f"{file}: valid NodeConfig")
    if render_dir is not None:
        profile = load_profile(profile_ref) if profile_ref else None
        for path in render_nodeconfig(config, render_dir, profile):
            click.echo(f"{render_dir}{path}")


def main() -> None:
    """Entry point of the `hostbuild` console script."""
    cli()
