"""Fail within seconds, with a hint, when the Hugging Face Hub cannot be reached.

Without a network, ``huggingface_hub`` retries each request with back-off (about 20 s per file)
before it falls back to its cache or fails. Every place here that talks to the Hub first opens one
TCP connection to the endpoint (``HF_ENDPOINT``, through the proxy when one is set), bounded by
:data:`CONNECT_TIMEOUT_S` including the name lookup; when that fails the caller uses the local
cache only or stops with :class:`HubUnreachableError`, whose message suggests ``HF_HUB_OFFLINE=1``.
Torch-free; ``huggingface_hub`` is imported when a check runs.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import urllib.parse
import urllib.request

from .errors import HubUnreachableError, WeightsNotFoundError

__all__ = [
    'CONNECT_TIMEOUT_S',
    'OFFLINE_HINT',
    'HubUnreachableError',
    'hub_offline',
    'hub_reachable',
    'check_hub_reachable',
    'check_model_reachable',
    'hub_errors',
]

CONNECT_TIMEOUT_S = 3.0
OFFLINE_HINT = 'set HF_HUB_OFFLINE=1 to use only what is already in the Hugging Face cache'


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _target(endpoint: str) -> tuple[str, int, str]:
    """(host, port, description) of the first hop towards ``endpoint``: the proxy when one applies."""
    parts = urllib.parse.urlsplit(endpoint)
    host, port = parts.hostname or '', parts.port or (443 if parts.scheme == 'https' else 80)
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
    if proxy:
        p = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
        return p.hostname or '', p.port or 80, f'{endpoint} through the proxy {p.hostname}:{p.port or 80}'
    return host, port, endpoint


def _connects(host: str, port: int, timeout: float) -> BaseException | None:
    """``None`` when a TCP connection opens within ``timeout`` s (name lookup included), else why not."""
    result: queue.Queue = queue.Queue()

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.put(None)
        except OSError as e:
            result.put(e)

    threading.Thread(target=attempt, daemon=True).start()  # a name lookup has no timeout of its own
    try:
        return result.get(timeout=timeout + 0.5)
    except queue.Empty:
        return TimeoutError(f'no answer within {timeout:g} s')


def _probe(endpoint: str | None) -> tuple[str, BaseException | None]:
    """(where, why not or ``None``) of one connection to ``endpoint`` (default: ``HF_ENDPOINT`` as
    huggingface_hub reads it), through the proxy when one applies."""
    from huggingface_hub import constants

    host, port, where = _target(endpoint or constants.ENDPOINT)
    return where, _connects(host, port, CONNECT_TIMEOUT_S)


def hub_reachable(endpoint: str | None = None) -> bool:
    """Whether the Hub's endpoint accepts a connection within :data:`CONNECT_TIMEOUT_S`; ``False`` at
    once under ``HF_HUB_OFFLINE``."""
    return not hub_offline() and _probe(endpoint)[1] is None


def check_hub_reachable(what: str, endpoint: str | None = None) -> None:
    """Raise :class:`HubUnreachableError` naming ``what`` unless the Hub's endpoint accepts a connection."""
    where, problem = _probe(endpoint)
    if problem is not None:
        raise HubUnreachableError(
            f'{what}: cannot reach the Hugging Face Hub at {where} ({type(problem).__name__}: {problem}); '
            f'{OFFLINE_HINT}'
        )


def check_model_reachable(spec: str) -> None:
    """Before timm loads the weights of a model spec from the Hub (``hf-hub:ORG/NAME``, or a timm name
    whose weights are on the Hub), raise :class:`HubUnreachableError` within seconds when the Hub cannot
    be reached. ``local-dir:``, ``random:`` and ``mtdp_*`` (checked by :mod:`mtdp_hub.weights`) pass."""
    if hub_offline() or spec.startswith(('local-dir:', 'random:')):
        return
    if spec.startswith('hf-hub:'):
        repo = spec[len('hf-hub:') :]
    else:
        from timm.models import get_pretrained_cfg

        try:
            cfg = get_pretrained_cfg(spec)
        except Exception:  # an unknown name is reported by whoever creates the model
            return
        if cfg is None or not cfg.hf_hub_id or str(cfg.architecture).startswith('mtdp_'):
            return
        repo = cfg.hf_hub_id
    check_hub_reachable(f'{spec} (weights on the Hugging Face Hub, {repo})')


@contextlib.contextmanager
def hub_errors(what: str):
    """Turn huggingface_hub's errors raised inside the block (a file missing from the cache while offline,
    an unknown repo or file, an HTTP error) into one-line :class:`~mtdp_hub.errors.WeightsNotFoundError`
    naming ``what``."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        yield
    except LocalEntryNotFoundError as e:
        why = 'HF_HUB_OFFLINE is set and they are not' if hub_offline() else 'they are neither online nor'
        raise WeightsNotFoundError(f'{what}: no weights: {why} in the local Hugging Face cache') from e
    except (RepositoryNotFoundError, EntryNotFoundError, HfHubHTTPError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise WeightsNotFoundError(
            f'{what}: the Hugging Face Hub refused: {type(e).__name__}: {first}'
        ) from e
