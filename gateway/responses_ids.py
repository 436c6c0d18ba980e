"""Stored-response ids that say where the response lives, with no state in the gateway.

vLLM keeps a stored response (``store``, ``background``) in the memory of the one server that
made it, under the ``request_id`` it was sent; ``previous_response_id``, ``GET`` and
``cancel`` must reach that server. The gateway names every Responses request itself:

    resp_<tag: 16 hex><random: 32 hex>      tag = keyed BLAKE2b(public model, backend URL)

and sends that id upstream as ``request_id``, so the id the client sees is the id vLLM
stores (nothing to rewrite or remember). To place an id the gateway recomputes the tag of
every (profile, backend) pair of the current profiles: any replica or worker with the same
key and profiles finds the same backend, a reload that keeps the model and the backend keeps
the id working, and an id whose model or backend left the profiles is a 404. The tag names no
address; with the default (public) key it could confirm a guessed backend URL, which
``GATEWAY_RESPONSE_ID_KEY`` (shared by the replicas) prevents.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from .profiles import Backend, Profile, ProfileSet

PREFIX = "resp_"
_TAG_HEX = 16
_ID = re.compile(r"resp_([0-9a-f]{16})[0-9a-f]{32}")
_DEFAULT_KEY = b"gateway/response-ids/v1"


class ResponseIds:
    """Mints and places response ids (see module doc)."""

    __slots__ = ("_key", "_table")

    def __init__(self, key: str | None = None) -> None:
        raw = key.encode() if key else _DEFAULT_KEY
        # BLAKE2b keys are at most 64 bytes
        self._key = raw if len(raw) <= 64 else hashlib.sha256(raw).digest()
        self._table: tuple[ProfileSet, dict[str, tuple[Profile, Backend]]] | None = None

    def tag(self, profile: Profile, backend: Backend) -> str:
        text = f"{profile.name}\n{backend.url}".encode()
        return hashlib.blake2b(text, key=self._key, digest_size=_TAG_HEX // 2).hexdigest()

    def mint(self, profile: Profile, backend: Backend) -> str:
        """A new id for a response of ``profile`` made by ``backend``."""
        return PREFIX + self.tag(profile, backend) + secrets.token_hex(16)

    def locate(self, snapshot: ProfileSet, response_id: str) -> tuple[Profile, Backend] | None:
        """The profile and backend of an id this gateway minted, or None (unknown id, not
        minted with this key, model or backend no longer in the profiles)."""
        m = _ID.fullmatch(response_id)
        if m is None:
            return None
        return self._tags(snapshot).get(m.group(1))

    def _tags(self, snapshot: ProfileSet) -> dict[str, tuple[Profile, Backend]]:
        cached = self._table
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        table = {self.tag(p, b): (p, b) for p in snapshot.models.values() for b in p.backends}
        self._table = (snapshot, table)
        return table
