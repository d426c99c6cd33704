"""API keys: random bearer tokens stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from pc2.service.models import ApiKey, Team

KEY_PREFIX = "pc2_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast unsalted hash is enough and keeps lookup one index probe.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, *, team_name: str, key_name: str = "") -> tuple[Team, str]:
    """Add a key for ``team_name`` (creating the team if new); returns the team and the plain key,
    which is shown once and never stored."""
    team = session.scalar(select(Team).where(Team.name == team_name))
    if team is None:
        team = Team(name=team_name)
        session.add(team)
        session.flush()
    key = generate_key()
    session.add(ApiKey(team_id=team.id, name=key_name, key_hash=hash_key(key), prefix=key[:12]))
    session.flush()
    return team, key


def team_for_key(session: Session, key: str) -> Team | None:
    # One indexed join per request: this runs before every authenticated call.
    return session.scalar(select(Team).join(ApiKey, ApiKey.team_id == Team.id)
                          .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked.is_(False)))
