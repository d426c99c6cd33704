"""Request dependencies: settings, a DB session, the calling team, the artifact store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from pc2.service.core.config import Settings
from pc2.service.core.db import session_factory, session_scope
from pc2.service.core.security import team_for_key
from pc2.service.models import Team
from pc2.service.storage import Storage

async def app_settings(request: Request) -> Settings:
    """The settings the app was built with (``create_app(settings)``). Cheap dependencies are
    ``async`` so a request does not hop through the thread pool once per dependency."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    # Creating a Session opens no connection; the first query (in a worker thread) does.
    session = session_factory(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


# Sessions close when the handler returns, before the response is written, and at most
# MAX_SESSIONS are open at once per process (waiting costs no thread): together they keep the
# number of pooled connections in use below the pool's size (core.db) under any load.
MAX_SESSIONS = 20
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=MAX_SESSIONS)]

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer pc2_...`")


def get_team(settings: SettingsDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Team:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    # Its own short session: the connection goes back to the pool before the handler waits for a
    # thread, so waiting requests never hold connections.
    with session_scope(settings.database_url) as session:
        team = team_for_key(session, creds.credentials)
        if team is not None:
            session.expunge(team)
    if team is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key",
                            headers={"WWW-Authenticate": "Bearer"})
    return team


TeamDep = Annotated[Team, Depends(get_team)]

_stores: dict[str, Storage] = {}


async def get_storage(settings: SettingsDep) -> Storage:
    store = _stores.get(settings.artifact_url)
    if store is None:
        store = _stores[settings.artifact_url] = Storage(settings.artifact_url)
    return store


StorageDep = Annotated[Storage, Depends(get_storage)]
