"""The segment builder's engagement rows: "opened campaign is / is not N" become the filter's
``opened_campaign``/``clicked_campaign`` leaves; anything else names the row."""

from __future__ import annotations

import pytest

from tidings.errors import InvalidInput
from tidings.web.segment_builder import FIELD_CHOICES, Row, build_filter


def test_engagement_rows_build_engagement_leaves() -> None:
    built = build_filter(
        [
            Row(field="opened_campaign", op="eq", value="12"),
            Row(field="clicked_campaign", op="ne", value="7"),
        ],
        "all",
    )
    assert built.filter == {"all": [{"opened_campaign": 12}, {"not": {"clicked_campaign": 7}}]}
    assert {"opened_campaign", "clicked_campaign"} <= {value for value, _ in FIELD_CHOICES}


@pytest.mark.parametrize(
    ("op", "value", "said"),
    [("gt", "12", "choose is or is not"), ("eq", "spring", "campaign's number"), ("eq", "0", "")],
)
def test_a_wrong_engagement_row_is_named(op: str, value: str, said: str) -> None:
    with pytest.raises(InvalidInput, match=f"Row 2: .*{said}"):
        build_filter(
            [Row(field="email", op="contains", value="@"), Row("opened_campaign", "", op, value)],
            "any",
        )
