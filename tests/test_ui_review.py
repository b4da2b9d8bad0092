"""The Review page, driven by Streamlit's AppTest: the queue, accept / reject stored with who and when,
the app reading the newly published snapshot afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from sst_search.store import Store
from sst_search.store.review_tables import decisions
from tests.review_store import LOW_QUALITY, build_review_store, sid

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
TIMEOUT = 60


@pytest.fixture
def review_app(tmp_path, monkeypatch):
    db = build_review_store(tmp_path, publish=True)
    monkeypatch.setenv("SST_SEARCH_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run(timeout=TIMEOUT)
    at.sidebar.radio(key="page").set_value("Review").run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    return at, db


def _queue(at: AppTest) -> list[tuple[str, str]]:
    table = at.dataframe[0].value
    return list(zip(table["specimen"], table["trait"]))


def _name(i: int) -> str:
    """How the page names specimen ``i``: its file's stem and group, never its 19-digit id."""
    return f"s{i} (g)"


def _select(at: AppTest, i: int, trait: str) -> None:
    box = at.selectbox(key="review_item")
    index = next(k for k, label in enumerate(box.options) if label.startswith(f"{_name(i)} · {trait}: "))
    box.set_value(index).run(timeout=TIMEOUT)


def test_review_page_accepts_and_rejects_and_the_queue_follows(review_app):
    at, db = review_app
    assert set(_queue(at)) == {(_name(LOW_QUALITY), "band"), (_name(4), "band"), (_name(5), "spot")}
    assert len(at.image) == 1  # the specimen with its trait outlined

    _select(at, LOW_QUALITY, "band")
    at.text_input(key="review_by").set_value("ana")
    at.button(key="review_accept").click().run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert at.success and "accept: band of specimen" in at.success[0].value
    assert set(_queue(at)) == {(_name(4), "band"), (_name(5), "spot")}

    _select(at, 5, "spot")
    at.button(key="review_reject").click().run(timeout=TIMEOUT)
    assert set(_queue(at)) == {(_name(4), "band")}

    with Store.open(db, read_only=True) as store:
        made = {(d["specimen_id"], d["trait_name"]): (d["decision"], d["reviewer"]) for d in decisions(store)}
        assert all(d["decided_at"] is not None for d in decisions(store))
    assert made == {(sid(LOW_QUALITY), "band"): ("accept", "ana"), (sid(5), "spot"): ("reject", "ana")}

    at.checkbox(key="review_all").check().run(timeout=TIMEOUT)
    assert set(_queue(at)) == {(_name(LOW_QUALITY), "band"), (_name(4), "band"), (_name(5), "spot")}
