"""`hostbuild fleet serve` refuses bad options before it touches etcd or a port."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Cli

ETCD = ["--etcd", "http://127.0.0.1:1"]


def test_listen_must_be_addr_port(run_cli: Cli) -> None:
    result = run_cli("fleet", "serve", *ETCD, "--listen", "8443")
    assert result.exit_code == 2
    assert "'8443' is not ADDR:PORT (e.g. 0.0.0.0:8443)" in result.output


def test_tls_options_go_together(run_cli: Cli, tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    result = run_cli("fleet", "serve", *ETCD, "--listen", "127.0.0.1:0", "--tls-cert", str(cert))
    assert result.exit_code == 2 and "--tls-cert and --tls-key go together" in result.output
    result = run_cli("fleet", "serve", *ETCD, "--listen", "127.0.0.1:0", "--client-ca", str(cert))
    assert result.exit_code == 2 and "--client-ca needs --tls-cert and --tls-key" in result.output


def test_a_bad_policy_lists_its_problems(run_cli: Cli, tmp_path: Path) -> None:
    policy = tmp_path / "fleet.yaml"
    policy.write_text("groups:\n  workers: {slots: many}\n")
    result = run_cli("fleet", "serve", *ETCD, "--listen", "127.0.0.1:0", "--config", str(policy))
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {policy}: groups.workers.slots: 'many' must be a whole number 1 to 10000\n"
        "(1 problem in the fleet policy; fix them and run again)\n"
    )


def test_an_empty_admin_token_file_is_refused(run_cli: Cli, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    argv = [*ETCD, "--listen", "127.0.0.1:0", "--admin-token-file", str(token)]
    result = run_cli("fleet", "serve", *argv)
    assert result.exit_code == 1
    assert f"Error: the admin token file {str(token)!r} is empty" in result.output


def kubeconfig(path: Path) -> Path:
    """A kubeconfig with one context, "standin" (nothing listens at its server)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: standin\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: standin, context: {cluster: c, user: u}}]\n"
    )
    return path


def test_kubeconfig_and_kube_context_need_drain(run_cli: Cli, tmp_path: Path) -> None:
    config = kubeconfig(tmp_path / "kubeconfig")
    for option in (["--kubeconfig", str(config)], ["--kube-context", "standin"]):
        result = run_cli("fleet", "serve", *ETCD, "--listen", "127.0.0.1:0", *option)
        assert result.exit_code == 2, result.output
        assert "Error: --kubeconfig and --kube-context need --drain" in result.output


def test_a_kubeconfig_that_is_not_yaml_says_what_to_pass(run_cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("clusters: [{name: c\n")
    argv = [*ETCD, "--listen", "127.0.0.1:0", "--drain", "--kubeconfig", str(config)]
    result = run_cli("fleet", "serve", *argv)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: cannot load kubeconfig {str(config)!r}: ")
    assert "(--kubeconfig must name a readable kubeconfig: YAML with clusters" in result.output


def test_an_unknown_kube_context_is_refused(run_cli: Cli, tmp_path: Path) -> None:
    config = kubeconfig(tmp_path / "kubeconfig")
    argv = [*ETCD, "--listen", "127.0.0.1:0", "--drain", "--kubeconfig", str(config)]
    result = run_cli("fleet", "serve", *argv, "--kube-context", "elsewhere")
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: cannot load kubeconfig {str(config)!r}: ")
    assert "Expected object with name elsewhere in" in result.output


def test_a_missing_kubeconfig_and_a_short_drain_timeout_are_usage_errors(
    run_cli: Cli, tmp_path: Path
) -> None:
    argv = [*ETCD, "--listen", "127.0.0.1:0", "--drain"]
    result = run_cli("fleet", "serve", *argv, "--kubeconfig", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "does not exist" in result.output
    config = kubeconfig(tmp_path / "kubeconfig")
    result = run_cli("fleet", "serve", *argv, "--kubeconfig", str(config), "--drain-timeout", "0")
    assert result.exit_code == 2 and "--drain-timeout" in result.output


def test_etcd_tls_options_are_checked_before_serving(run_cli: Cli, tmp_path: Path) -> None:
    token, pem = tmp_path / "token", tmp_path / "client.pem"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    serve = ["fleet", "serve", "--listen", "127.0.0.1:0", "--admin-token-file", str(token)]
    result = run_cli(*serve, "--etcd", "https://127.0.0.1:1", "--etcd-cert", str(pem))
    assert result.exit_code == 1
    assert result.output == (
        "Error: --etcd-cert was given without --etcd-key: a client certificate needs its key\n"
        "(pass both --etcd-cert and --etcd-key, or neither)\n"
    )
    result = run_cli(*serve, *ETCD, "--etcd-ca", str(pem))
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: etcd endpoint http://127.0.0.1:1 is plain http, so --etcd-ca/--etcd-cert/"
        "--etcd-key would not be used\n"
    )
    result = run_cli(*serve, "--etcd", "https://127.0.0.1:1", "--etcd-ca", str(tmp_path / "no"))
    assert result.exit_code == 1 and f"--etcd-ca {tmp_path}/no: no such readable file" in (
        result.output
    )
