"""CSRF tokens for the dashboard's forms: an HMAC of the session cookie's value under
``SECRET_KEY``. A form carries it in a hidden field; a post whose field does not match the
cookie it came with is refused. A caller with a bearer token needs none: browsers never
attach an ``Authorization`` header on their own, so a forged request cannot carry one.
"""

from __future__ import annotations

import hashlib
import hmac

FIELD = "csrf_token"


def token_for(secret_key: str, session: str) -> str:
    return hmac.new(secret_key.encode(), b"csrf:" + session.encode(), hashlib.sha256).hexdigest()


def is_valid(secret_key: str, session: str, given: str) -> bool:
    """Does ``given`` belong to this session? Always false without a session."""
    if not session or not given:
        return False
    return hmac.compare_digest(token_for(secret_key, session), given)
