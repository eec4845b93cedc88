"""The dashboard's routers, one per area; ``tidings.web.web_router`` puts them together."""
