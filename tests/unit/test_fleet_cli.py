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
