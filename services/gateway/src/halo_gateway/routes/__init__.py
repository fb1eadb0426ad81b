"""One module per API area; each exposes ``router`` (an APIRouter) and is included automatically."""
