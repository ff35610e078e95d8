"""The HTTP service: POST photos, get tags back; a web page at / for people, JSON under /v1 for programs.

`uploads` reads the multipart body as it streams in and checks each photo, `batching` puts the photos of
concurrent requests through one forward pass, `app` holds the routes and runs them under uvicorn with the HTTP
`protocol` of this package (a deadline for each request's headers).

Uploads live in memory only (never spooled to disk, however large, within the limits) and nothing a request names
is ever opened as a path: the web page's files are read once at start-up and served from memory by exact name
(Swagger UI's files under /static-offline-docs are fastapi-offline's, served by Starlette's StaticFiles from that
package's folder).
"""

from fashiontag.serve.app import SERVE_ENGINE, create_app, serve
from fashiontag.serve.batching import MicroBatcher

__all__ = ["SERVE_ENGINE", "MicroBatcher", "create_app", "serve"]
