"""Request and response bodies.  v2 adds an optional ``note``; v1 bodies stay exactly as documented."""

from pydantic import BaseModel, Field


class ItemIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class ItemInWithNote(ItemIn):
    note: str | None = Field(default=None, max_length=1000)


class ItemOut(BaseModel):
    id: int
    name: str
    created: str


class ItemOutWithNote(ItemOut):
    note: str | None = None
