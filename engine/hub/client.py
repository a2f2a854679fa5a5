"""Talking to the Hugging Face Hub: search, file listings, and every failure as one sentence.

KV Deck is offline first: the Hub is an optional source of models, so no call here may hang
(every request has a timeout and none is retried for half a minute the way the library's
paginated listing retries a dead connection), and every failure (offline mode, no network, a
gated or missing repository, a server answering HTML) becomes a `HubError` of one line.
Settings are read from the environment at call time, as ``huggingface_hub`` documents them:
``HF_ENDPOINT`` (a mirror, or the tests' loopback server), ``HF_TOKEN`` and
``HF_HUB_OFFLINE``; the library reads its own constants once at import, which is too early
for a long-running app whose user changes them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from engine.core.errors import KvDeckError
from engine.hub.names import (
    RemoteFile,
    RemoteModel,
    group_files,
    valid_file_name,
    valid_repo_id,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0


class HubError(KvDeckError):
    """A Hub request failed; the message is one sentence for the user."""


class HubUnreachable(HubError):
    """No answer at all: offline mode, no network, DNS, a timeout."""


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _sync_library() -> None:
    """The library reads HF_HUB_OFFLINE and HF_ENDPOINT once, at its import; its session's
    offline hook and URL helpers then keep that first answer. Give them today's values."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = offline()
    constants.ENDPOINT = endpoint()


def timeout() -> Any:
    import httpx2

    return httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)


def session() -> Any:
    """The library's shared HTTP client (proxies, certificates and offline hook included)."""
    from huggingface_hub import get_session

    return get_session()


def headers(extra: dict[str, str] | None = None, url: str | None = None) -> dict[str, str]:
    """Request headers with the user's token (``HF_TOKEN`` or ``hf auth login``), if any.

    Never for another host than the Hub's (`url`: the CDN's signed URL reused for the next
    range): the token is the Hub's secret, and a signed URL refuses a second credential."""
    from huggingface_hub.utils import build_hf_headers

    foreign = url is not None and urlsplit(url).hostname != urlsplit(endpoint()).hostname
    return build_hf_headers(token=False if foreign else None, library_name="kvdeck", headers=extra)


def check_repo(repo: str) -> None:
    if not valid_repo_id(repo):
        raise HubError(f"{repo!r} is not a Hub repository id (owner/name, letters, digits, '-', '_' and '.')")


def check_file(name: str) -> None:
    if not valid_file_name(name):
        raise HubError(f"{name!r} is not a file name inside a repository")


def resolve_url(repo: str, filename: str, revision: str = "main") -> str:
    return f"{endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(filename, safe='/')}"


@contextlib.contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn whatever the library or the network raise into one `HubError` line.

    `what` names the thing asked for ("unsloth/Qwen3-8B-GGUF", "… · model.gguf")."""
    import httpx2
    from huggingface_hub import errors as hfe

    if offline():
        raise HubUnreachable(
            "the Hugging Face Hub cannot be reached: offline mode is on "
            "(HF_HUB_OFFLINE); models already downloaded still work"
        )
    where = endpoint()
    _sync_library()
    try:
        yield
    except HubError:
        raise
    except hfe.OfflineModeIsEnabled:
        raise HubUnreachable(
            "the Hugging Face Hub cannot be reached: offline mode is on (HF_HUB_OFFLINE)"
        ) from None
    except hfe.GatedRepoError:
        raise HubError(
            f"{what} is gated: accept its terms on the Hub, then set HF_TOKEN (or run `hf auth login`)"
        ) from None
    except hfe.RepositoryNotFoundError:
        raise HubError(f"{what}: no such repository on the Hub (or it is private: set HF_TOKEN)") from None
    except hfe.RevisionNotFoundError:
        raise HubError(f"{what}: no such revision on the Hub") from None
    except hfe.RemoteEntryNotFoundError:
        raise HubError(f"{what}: no such file in the repository") from None
    except hfe.HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise HubError(f"{what}: the Hub answered HTTP {code}") from None
    except httpx2.TimeoutException:
        raise HubUnreachable(
            f"the Hugging Face Hub cannot be reached: {where} did not answer within {READ_TIMEOUT_S:.0f} s"
        ) from None
    except (httpx2.TransportError, ConnectionError) as exc:
        raise HubUnreachable(
            f"the Hugging Face Hub cannot be reached ({where}: {type(exc).__name__})"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HubError(
            f"{where} did not answer with JSON (an HTML page or a proxy's error page?): is HF_ENDPOINT right?"
        ) from None
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise HubError(
            f"{where} answered with data this version cannot read ({what}: {type(exc).__name__})"
        ) from None


def _json(response: Any) -> Any:
    from huggingface_hub.utils import hf_raise_for_status

    hf_raise_for_status(response)
    if "html" in response.headers.get("content-type", "").lower():
        raise json.JSONDecodeError("html", "", 0)
    return json.loads(response.content)


@dataclass(frozen=True)
class RepoHit:
    """One search result."""

    repo: str
    downloads: int
    likes: int
    updated: str  # ISO date of the last commit, "" if the Hub did not say
    gated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "downloads": self.downloads,
            "likes": self.likes,
            "updated": self.updated,
            "gated": self.gated,
        }


def search(query: str, limit: int = 20) -> list[RepoHit]:
    """GGUF repositories matching `query`, most downloaded first.

    One request through the library's client and `ModelInfo` parser, not
    `HfApi.list_models`: that paginates with `http_backoff`, which retries a dead
    connection for about 25 s before failing, and offline that reads as a hang."""
    from huggingface_hub.hf_api import ModelInfo

    if not 1 <= limit <= 1000:
        raise HubError(f"--limit must be between 1 and 1000, not {limit}")
    params = {
        "search": query,
        "filter": "gguf",
        "sort": "downloads",
        "direction": "-1",
        "limit": str(limit),
        "expand": ["downloads", "likes", "lastModified", "gated"],
    }
    with hub_errors(f"search {query!r}"):
        rows = _json(
            session().get(f"{endpoint()}/api/models", params=params, headers=headers(), timeout=timeout())
        )
        if not isinstance(rows, list):
            raise TypeError("not a list")
        hits = []
        for row in rows[:limit]:
            info = ModelInfo(**row)
            if not isinstance(info.id, str) or not valid_repo_id(info.id):
                continue  # never print or follow an id the Hub should not have sent
            hits.append(
                RepoHit(
                    info.id,
                    int(info.downloads or 0),
                    int(info.likes or 0),
                    info.last_modified.date().isoformat() if info.last_modified else "",
                    bool(info.gated),
                )
            )
    return hits


@dataclass(frozen=True)
class RepoListing:
    """A repository's GGUF models at one commit."""

    repo: str
    revision: str
    commit: str  # the commit sha the listing belongs to ("" if the Hub did not say)
    gated: bool
    models: tuple[RemoteModel, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "gated": self.gated,
            "models": [m.to_json() for m in self.models],
        }


def list_files(repo: str, revision: str = "main") -> RepoListing:
    """The GGUF models in `repo` with sizes and sha256s (`HfApi.model_info`, files metadata)."""
    from huggingface_hub import HfApi

    check_repo(repo)
    with hub_errors(repo):
        info = HfApi(endpoint=endpoint()).model_info(
            repo, revision=revision, files_metadata=True, timeout=READ_TIMEOUT_S
        )
        files = []
        for s in info.siblings or []:
            lfs = s.lfs
            sha = lfs.sha256 if lfs is not None else None
            size = s.size if s.size is not None else (lfs.size if lfs is not None else None)
            files.append(
                RemoteFile(
                    s.rfilename,
                    None if size is None else int(size),
                    sha if isinstance(sha, str) and _is_sha256(sha) else None,
                )
            )
    models = tuple(group_files(repo, files))
    return RepoListing(repo, revision, info.sha or "", bool(info.gated), models)


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())
