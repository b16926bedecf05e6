"""Server-side fetching of remote image URLs for hosts the operator allow-listed (``image_fetch_hosts``).

``cortex_jax.image.FetchPolicy`` decides which URLs may be fetched (the one decision point); this module only
fetches: an async httpx GET per image, all images of a request concurrently (at most ``CONCURRENCY`` at a time),
no redirects followed (they could leave the allow-list), the body streamed with a hard cap at the image byte
limit, the whole fetch bounded by ``image_fetch_timeout_s``. Every failure is the client's bad URL: a 400 whose
``param`` points at the image part, never a server error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from cortex_jax.image import FetchPolicy
from serving.errors import ApiError, bad_request

CONCURRENCY = 4  # simultaneous fetches per request
Ref = tuple[int, int, str]  # (message index, content index, url)


def policy_of(settings: Any) -> FetchPolicy:
    return FetchPolicy(frozenset(settings.image_fetch_hosts), settings.image_fetch_allow_http)


def url_param(i: int, j: int) -> str:
    return f"messages.{i}.content.{j}.image_url.url"


def refuse(url: str, param: str, policy: FetchPolicy) -> ApiError:
    """The 400 for a URL that is not a data: URI and may not be fetched."""
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        why = f"unsupported image URL scheme {scheme or '(none)'!r}; send a base64 data: URI"
    else:
        why = policy.refusal(url) or "remote image URL was not fetched"
    return bad_request(f"{param}: {why}", param, "image_url_not_allowed")


async def fetch_request_images(messages: list[Any], model: Any, settings: Any) -> dict[str, bytes]:
    """Fetched bytes by URL for the remote image URLs of a chat request. Nothing is fetched when the request
    will be refused anyway (model without vision, too many images): ``load_images`` says why."""
    from serving.chat_prompt import convert_messages

    refs: list[Ref] = []
    convert_messages(messages, refs, "")
    if not any(not url.startswith("data:") for _, _, url in refs):
        return {}
    if not model.capabilities.vision or model.image_config is None or len(refs) > settings.max_images:
        return {}
    return await fetch_remote_images(refs, settings)


async def fetch_remote_images(refs: list[Ref], settings: Any) -> dict[str, bytes]:
    """Bytes of every remote URL among ``refs`` (data: URIs are skipped); raises ApiError 400 on the first
    refused or failed one. Every URL is checked against the policy before anything is fetched."""
    policy = policy_of(settings)
    remote: dict[str, str] = {}  # url -> param of its first occurrence
    for i, j, url in refs:
        if url.startswith("data:") or url in remote:
            continue
        param = url_param(i, j)
        if not policy.allows(url):
            raise refuse(url, param, policy)
        remote[url] = param
    if not remote:
        return {}
    gate = asyncio.Semaphore(CONCURRENCY)
    timeout = settings.image_fetch_timeout_s

    async def one(client: httpx.AsyncClient, url: str, param: str) -> bytes:
        async with gate:
            try:
                async with asyncio.timeout(timeout):
                    return await _get(client, url, param, settings.max_image_bytes)
            except TimeoutError:
                raise bad_request(f"{param}: fetching {url} timed out after {timeout:g} s", param,
                                  "image_fetch_failed") from None

    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as client:
        tasks = [asyncio.ensure_future(one(client, url, param)) for url, param in remote.items()]
        try:
            bodies = await asyncio.gather(*tasks)
        finally:
            for t in tasks:  # the first failure wins; the others stop now
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return dict(zip(remote, bodies, strict=True))


async def _get(client: httpx.AsyncClient, url: str, param: str, max_bytes: int) -> bytes:
    def fail(why: str) -> ApiError:
        return bad_request(f"{param}: {why}", param, "image_fetch_failed")

    try:
        async with client.stream("GET", url, headers={"Accept": "image/*"}) as r:
            if r.is_redirect or 300 <= r.status_code < 400:
                where = r.headers.get("location", "?")
                raise fail(f"{url} redirects (HTTP {r.status_code} to {where}); redirects are not followed, "
                           "give the final image URL")
            if not r.is_success:
                raise fail(f"fetching {url} failed: the host answered HTTP {r.status_code}")
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise fail(f"{url} is {declared} bytes; the image limit is {max_bytes}")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise fail(f"{url} is larger than the image limit of {max_bytes} bytes")
            return bytes(body)
    except httpx.TimeoutException:
        raise TimeoutError from None
    except httpx.HTTPError as e:
        raise fail(f"fetching {url} failed: {type(e).__name__}: {e or 'connection error'}") from None

