"""The request observer's labels: bounded whatever path a client sends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from depot_api.api.observing import Observer


@given(st.text(min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_labels_of_any_path_are_bounded(path: str) -> None:
    """The observer's labels, in-process, for any path a client may send."""
    observer = Observer(["/depot.core.v1.ProjectService"],
                        lambda p: p == "/depot.core.v1.ProjectService/ListProjects",
                        ["/healthz"])  # fmt: skip
    for candidate in (path, f"/depot.core.v1.ProjectService/{path}", f"/{path}/{path}"):
        service, method = observer.labels(candidate)
        assert service in ("depot.core.v1.ProjectService", "unknown", "http")
        assert method in ("ListProjects", "unknown", "/healthz")


def test_a_page_is_labelled_by_its_prefix_never_its_secret() -> None:
    """A shared build's link is a secret: its page is counted and logged as the prefix."""
    observer = Observer([], lambda p: False, ["/healthz"], ["/static/console.css", "/share/"])
    assert observer.labels("/share/s3cr3t-link-part") == ("http", "/share/")
    assert observer.labels("/static/console.css") == ("http", "/static/console.css")
    assert observer.labels("/shared") == ("unknown", "unknown")
