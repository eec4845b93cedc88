"""The dashboard's routers, one per area; ``tidings.web.web_routers`` lists them in order."""
