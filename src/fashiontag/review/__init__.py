"""The review loop: tag new photos, let people check what the model is unsure of, put the result in the catalog.

`queue` fills a review queue (photos tagged now, or a `predict` output), `store` keeps it in a database (SQLite by
default, any SQLAlchemy URL), `routes` serves it to the review page (web/review.html) beside the tagging API, and
`csv_export` writes the reviewed tags in the catalog's schema, `service` is the `fashiontag review` command
(queue, then serve), `auth` its accounts and sessions, `stats` how the reviewed tags measure the model.
"""
