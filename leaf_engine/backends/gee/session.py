"""Earth Engine initialisation: Application Default Credentials, or a loopback stand-in named by ``LEAF_EE_URL``.

``LEAF_EE_URL`` is how the backend is tested with no network: when it points to a loopback address, Earth Engine
is initialised against that URL without credentials. Any other value is refused, so a stray setting can never
send unauthenticated requests to a remote host.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any
from urllib.parse import urlsplit

from ...errors import EarthEngineError, TransientError

ENV_URL = "LEAF_EE_URL"
ENV_PROJECT = "LEAF_EE_PROJECT"
LOCAL_DEFAULT_PROJECT = "leaf-local"
EE_SCOPES = ("https://www.googleapis.com/auth/earthengine", "https://www.googleapis.com/auth/cloud-platform")

_initialised_for: tuple[str | None, str] | None = None


def loopback_url() -> str | None:
    """The ``LEAF_EE_URL`` value when set; raises if it does not point to a loopback address."""
    url = os.environ.get(ENV_URL, "").strip()
    if not url:
        return None
    host = urlsplit(url).hostname or ""
    if not _is_loopback(host):
        raise EarthEngineError(
            f"{ENV_URL}={url!r} does not point to a loopback address; it is only for local stand-ins "
            f"(e.g. http://127.0.0.1:8080). Unset it to use Earth Engine with Application Default Credentials."
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_project(project: str | None, adc_project: str | None = None) -> str | None:
    """The project to bill: the argument, then ``LEAF_EE_PROJECT``, ``GOOGLE_CLOUD_PROJECT``, the ADC project."""
    return (project or os.environ.get(ENV_PROJECT) or os.environ.get("GOOGLE_CLOUD_PROJECT")
            or adc_project or None)


def initialize(project: str | None = None) -> str:
    """Initialise Earth Engine once per (URL, project); returns the project used.

    Earth Engine's own request retries are switched off: :mod:`.exports` retries 429/5xx itself, with a rate
    limit and backoff it controls.
    """
    global _initialised_for
    import ee

    url = loopback_url()
    credentials: Any = None
    if url is None:
        credentials, adc_project = _application_default_credentials()
        project = resolve_project(project, adc_project)
    else:
        project = resolve_project(project) or LOCAL_DEFAULT_PROJECT
    if not project:
        raise EarthEngineError("no Google Cloud project for Earth Engine: pass --project, or set "
                               f"{ENV_PROJECT} or GOOGLE_CLOUD_PROJECT")
    key = (url, project)
    if _initialised_for == key:
        return project
    try:
        ee.Initialize(credentials=credentials, url=url, project=project)
    except ee.EEException as e:
        from .exports import RETRY_STATUSES, http_status

        if http_status(e) in RETRY_STATUSES:  # 429/5xx: the platform retries the message later
            raise TransientError(f"Earth Engine initialisation: {e}; retry later") from e
        raise EarthEngineError(f"Earth Engine initialisation failed for project {project!r}: {e}") from e
    except OSError as e:  # connection refused/reset, timeouts (requests' errors are OSErrors too)
        raise TransientError(f"cannot reach Earth Engine to initialise: {e}; retry later") from e
    ee.data.setMaxRetries(0)
    _initialised_for = key
    return project


def _application_default_credentials() -> tuple[Any, str | None]:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default(scopes=list(EE_SCOPES))
    except DefaultCredentialsError as e:
        raise EarthEngineError(
            "no Application Default Credentials for Earth Engine: run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file") from e
