"""Driving the review page in the tests: the server lists the queue (GET /page), so a change of filter or sort, or a
refresh, is done once the list has come back and been drawn (body[data-busy=false])."""


def listed(page) -> None:
    page.wait_for_selector("body[data-busy=false]", timeout=15000)


def choose(page, selector: str, value: str) -> None:
    """Set a filter or the sort, as a reviewer would, and wait for the list it gives."""
    page.select_option(selector, value)
    listed(page)
