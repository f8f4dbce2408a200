"""boto3 clients with bounded timeouts and retries, and AWS errors turned into HostbuildErrors.

Credentials and the default region come from the standard boto3 chain. One endpoint URL can
replace every service's (a local mock or an AWS-compatible cloud).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import boto3
import botocore.exceptions
from botocore.config import Config

from builder import __version__
from builder.errors import HostbuildError

if TYPE_CHECKING:
    from builder.publish.dryrun import Recorder
    from builder.publish.request import Timeouts

logger = logging.getLogger(__name__)

EBS_OPERATIONS = {"StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot", "ListSnapshotBlocks",
                  "GetSnapshotBlock"}  # fmt: skip
SSM_OPERATIONS = {"PutParameter", "GetParameter"}
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError"}
BAD_CREDENTIALS = {"AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException",
                   "ExpiredToken", "ExpiredTokenException", "SignatureDoesNotMatch"}  # fmt: skip
IAM_HINT = "grant the IAM actions listed in README.md, section 'Publishing AMIs'"


def default_region() -> str | None:
    """The region of the standard chain (AWS_REGION, AWS_DEFAULT_REGION, the config profile)."""
    region: str | None = os.environ.get("AWS_REGION") or boto3.session.Session().region_name
    return region


class Clients:
    """One client per (service, region), shared by threads (boto3 clients are thread-safe)."""

    def __init__(
        self, timeouts: Timeouts, *, workers: int, endpoint_url: str | None,
        recorder: Recorder | None = None, session: boto3.session.Session | None = None,
    ) -> None:  # fmt: skip
        self.timeouts = timeouts
        self.workers = workers
        self.endpoint_url = endpoint_url
        self.recorder = recorder
        self.session = session or boto3.session.Session()
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def config(self, service: str) -> Config:
        # Adaptive retries slow the whole pool down when EBS throttles, instead of each of the
        # workers hammering on; the other services see a few calls and use standard retries.
        return Config(
            connect_timeout=self.timeouts.connect,
            read_timeout=self.timeouts.read,
            retries={
                "mode": "adaptive" if service == "ebs" else "standard",
                "max_attempts": self.timeouts.attempts,
            },
            max_pool_connections=max(10, self.workers) if service == "ebs" else 10,
            tcp_keepalive=True,
            user_agent_extra=f"hostbuild/{__version__}",
        )

    def client(self, service: str, region: str) -> Any:
        with self._lock:
            if (service, region) not in self._clients:
                kwargs: dict[str, Any] = {"region_name": region, "config": self.config(service)}
                if self.endpoint_url:
                    kwargs["endpoint_url"] = self.endpoint_url
                if self.recorder is not None:  # a dry run never needs credentials
                    kwargs.update(aws_access_key_id="dry-run", aws_secret_access_key="dry-run")
                # the stubs type client() per literal service name; ours is a variable
                client = cast(Any, self.session).client(service, **kwargs)
                if self.recorder is not None:
                    self.recorder.attach(client, service, region)
                self._clients[service, region] = client
            return self._clients[service, region]

    def ec2(self, region: str) -> Any:
        return self.client("ec2", region)

    def ebs(self, region: str) -> Any:
        return self.client("ebs", region)

    def ssm(self, region: str) -> Any:
        return self.client("ssm", region)


def error_code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def action(operation: str) -> str:
    """The IAM action of an API operation, e.g. ebs:PutSnapshotBlock."""
    service = "ec2"
    if operation in EBS_OPERATIONS:
        service = "ebs"
    elif operation in SSM_OPERATIONS:
        service = "ssm"
    return f"{service}:{operation}"


@contextlib.contextmanager
def aws_errors(region: str, resume_hint: str) -> Iterator[None]:
    """Turn botocore's exceptions raised in the block into HostbuildErrors that say what to do."""
    try:
        yield
    except botocore.exceptions.NoCredentialsError as e:
        raise HostbuildError(
            "no AWS credentials found",
            hint="the standard boto3 chain is searched: AWS_PROFILE, AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, SSO, an instance or task role "
            "(--dry-run needs none)",
        ) from e
    except botocore.exceptions.EndpointConnectionError as e:
        raise HostbuildError(
            f"cannot reach {e.kwargs.get('endpoint_url')} (region {region!r})",
            hint=f"check that {region!r} is a region this account can use "
            "(a misspelt region has no endpoint), or the --endpoint-url; " + resume_hint,
        ) from e
    except (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError) as e:
        raise HostbuildError(
            f"AWS did not answer in time in {region}: {e}",
            hint=f"each request is retried with backoff before this; {resume_hint}",
        ) from e
    except botocore.exceptions.ClientError as e:
        raise explain(e, region, resume_hint) from e
    except botocore.exceptions.BotoCoreError as e:  # connection resets and the like
        raise HostbuildError(f"AWS call failed in {region}: {e}", hint=resume_hint) from e


def explain(e: botocore.exceptions.ClientError, region: str, resume_hint: str) -> HostbuildError:
    code, operation = error_code(e), e.operation_name
    message = str(e.response.get("Error", {}).get("Message", "")).strip()
    if code in DENIED:
        return HostbuildError(
            f"AWS denied {action(operation)} in {region}: {message or code}",
            hint=f"{IAM_HINT}; {resume_hint}",
        )
    if code in BAD_CREDENTIALS:
        return HostbuildError(
            f"AWS rejected the credentials ({code} on {action(operation)} in {region})",
            hint="check AWS_PROFILE or the access keys in use (aws sts get-caller-identity)",
        )
    if code == "OptInRequired":
        return HostbuildError(
            f"region {region!r} is not enabled for this account",
            hint="enable it in the account settings, or publish to another region",
        )
    if code in {"ThrottlingException", "RequestThrottledException", "RequestLimitExceeded",
                "Throttling", "SlowDown"}:  # fmt: skip
        return HostbuildError(
            f"AWS kept throttling {action(operation)} in {region} after every retry",
            hint=f"lower --workers; {resume_hint}",
        )
    return HostbuildError(
        f"{action(operation)} failed in {region}: {code}: {message}", hint=resume_hint
    )


def known_regions() -> set[str]:
    session = boto3.session.Session()
    return {
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("ec2", partition_name=partition)
    }


def check_known_region(region: str, option: str) -> None:
    """Stop at once on a misspelt region instead of retrying an endpoint that does not exist."""
    known = known_regions()
    if region in known:
        return
    import difflib

    close = difflib.get_close_matches(region, sorted(known), n=3)
    raise HostbuildError(
        f"{option} {region!r} is not a region this boto3 knows"
        + (f"; did you mean {', '.join(close)}?" if close else ""),
        hint="a region newer than the installed boto3 needs a boto3 upgrade; an AWS-compatible "
        "cloud needs --endpoint-url",
    )
