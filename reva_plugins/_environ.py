"""What environment a child process gets: never the core's whole environment.

The core may hold secrets in its environment (database passwords, cloud tokens). Plugin
processes, and every build step (git, uv, pip, virtualenv and the build backends or ``setup.py``
they run, which is the plugin's own code), get only the variables listed here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = [
    "BUILD_ENV",
    "BUILD_ENV_EXCLUDED",
    "BUILD_ENV_PREFIXES",
    "SCRUBBED_ENV",
    "build_environment",
    "scrubbed",
]

# What any program needs to run as the same user on the same machine: where programs are, the
# home folder (caches, ~/.gitconfig, ~/.netrc), language and time zone, where temp files go.
SCRUBBED_ENV = ("PATH", "HOME", "LANG", "TZ", "TMPDIR")
# The locale categories (LC_ALL, LC_CTYPE …) belong with LANG.
SCRUBBED_PREFIXES = ("LC_",)

# What installing needs on top of that, and why:
BUILD_ENV = (
    # Proxies: an installer behind a proxy cannot reach the index or the git host without them
    # (curl and git read the lower-case names, requests and uv both cases).
    "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    # Certificates: a private CA for the index or the git host (OpenSSL, requests, curl, pip).
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
    # Where the installers keep their caches and read their configuration.
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS",
    # Index credentials kept in a netrc file instead of in URLs (pip, uv and git read it).
    "NETRC",
    # git+ssh: the agent holding the keys, and how the operator tells git to run ssh.
    "SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "GIT_SSH",
)  # fmt: skip
# uv's and pip's own configuration (index, find-links, cert, cache dir, timeouts): an operator
# configures the installers through these, and the machine's pip setup may live here.
BUILD_ENV_PREFIXES = ("UV_", "PIP_")
# ... but not their publishing settings: an upload token (UV_PUBLISH_TOKEN, UV_PUBLISH_PASSWORD,
# UV_TRUSTED_PUBLISHING …) is a secret installing never needs, and the plugin's build backend
# would read it. (TWINE_*, FLIT_*, HATCH_INDEX_* have no prefix above, so never pass.)
BUILD_ENV_EXCLUDED = ("PUBLISH", "UPLOAD")


def scrubbed(host_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``host_env`` (default: the core's) any child may see."""
    host_env = os.environ if host_env is None else host_env
    return {
        k: v for k, v in host_env.items() if k in SCRUBBED_ENV or k.startswith(SCRUBBED_PREFIXES)
    }


def build_environment(
    host_env: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a build step: :func:`scrubbed` plus what installing needs, plus
    ``extra`` (credentials and settings the core passes on purpose)."""
    host_env = os.environ if host_env is None else host_env
    env = scrubbed(host_env)
    env.update((k, v) for k, v in host_env.items() if _installing_needs(k))
    env.update(extra or {})
    return env


def _installing_needs(name: str) -> bool:
    if name in BUILD_ENV:
        return True
    return name.startswith(BUILD_ENV_PREFIXES) and not any(
        word in name.upper() for word in BUILD_ENV_EXCLUDED
    )
