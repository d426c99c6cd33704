"""The ``/v1`` router."""

from fastapi import APIRouter

from pc2.service.api.routes import datasets, exports, jobs, search

api_router = APIRouter(prefix="/v1")
api_router.include_router(datasets.router)
api_router.include_router(jobs.router)
api_router.include_router(exports.router)
api_router.include_router(search.router)
