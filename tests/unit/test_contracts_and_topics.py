from __future__ import annotations

import pytest

from periscope.contracts import CONTRACTS, get_contract
from periscope.settings import Settings
from periscope.topics import topic_specs


def test_every_contract_has_four_topics_named_by_role():
    assert set(CONTRACTS) >= {"weather", "air_quality"}
    assert get_contract("weather").topics == {
        "raw": "weather-raw",
        "dlq": "weather-dlq",
        "features": "weather-features",
        "predictions": "weather-predictions",
    }


def test_unknown_source_names_the_known_ones():
    with pytest.raises(KeyError, match="air_quality, taxi, weather"):
        get_contract("flights")


def test_topic_specs_take_partitions_and_retention_from_settings(monkeypatch):
    monkeypatch.setenv("PERISCOPE_TOPIC_PARTITIONS", "6")
    monkeypatch.setenv("PERISCOPE_TOPIC_RETENTION_HOURS", "2")
    monkeypatch.setenv("PERISCOPE_DLQ_RETENTION_HOURS", "5")
    specs = {s.name: s for s in topic_specs(Settings())}
    assert len(specs) == 4 * len(CONTRACTS)
    assert {s.partitions for s in specs.values()} == {6}
    assert specs["weather-raw"].configs["retention.ms"] == str(2 * 3_600_000)
    assert specs["air_quality-dlq"].configs["retention.ms"] == str(5 * 3_600_000)


# --- a contract that contradicts itself fails at import, naming the contract and the field ---
def _contract(**overrides):
    from periscope.contracts import (
        Aggregation,
        Category,
        Count,
        Measure,
        SourceContract,
        Text,
        WindowSpec,
    )

    fields = (
        Text("device", required=True),
        Text("event", required=True),
        Measure("reading", "V", 0, 10),
        Count("items", valid_max=5),
        Category("colour", levels=("red", "blue")),
    )
    spec = {
        "name": "toy",
        "description": "a toy",
        "fields": fields,
        "key_field": "device",
        "event_id_field": "event",
        "window": WindowSpec(
            aggregations=(
                Aggregation("reading", "stats"),
                Aggregation("items", "sum"),
                Aggregation("colour", "category_counts"),
            )
        ),
    }
    return SourceContract(**(spec | overrides))


def test_a_consistent_contract_of_another_shape_derives_its_window_columns():
    contract = _contract()
    assert contract.value_fields[0].name == "event"
    assert [name for name, _ in contract.feature_columns()][-3:] == [
        "items_sum",
        "colour_red_count",
        "colour_blue_count",
    ]
    assert dict(contract.feature_columns())["colour_red_count"] == "long"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"key_field": "station_id"}, "key field 'station_id' is not one of its fields"),
        ({"event_id_field": "missing"}, "event id field 'missing' is not one of its fields"),
        ({"event_id_field": "device"}, "event id field 'device' is also the key"),
    ],
)
def test_a_key_or_event_id_that_is_no_field_fails_naming_it(overrides, message):
    from periscope.contracts import ContractError

    with pytest.raises(ContractError, match=f"contract 'toy': {message}"):
        _contract(**overrides)


def test_aggregations_and_targets_that_do_not_fit_fail_naming_the_field():
    from periscope.contracts import Aggregation, ContractError, ForecastTarget, WindowSpec

    def window(*aggregations):
        return WindowSpec(aggregations=aggregations)

    with pytest.raises(ContractError, match="'sum' cannot apply to text field 'event'"):
        _contract(window=window(Aggregation("event", "sum")))
    with pytest.raises(ContractError, match="'stats' cannot apply to count field 'items'"):
        _contract(window=window(Aggregation("items", "stats")))
    with pytest.raises(ContractError, match="on 'nothing', which is not one of its fields"):
        _contract(window=window(Aggregation("nothing", "count")))
    with pytest.raises(ContractError, match="forecast target 'reading' needs the window"):
        _contract(
            window=window(Aggregation("reading", "count")),
            forecast_targets=(ForecastTarget("reading"),),
        )
    with pytest.raises(ContractError, match="forecast target 'colour_sum' needs"):
        _contract(
            forecast_targets=(ForecastTarget("items", "sum"), ForecastTarget("colour", "sum"))
        )
    # Counting events needs no aggregation: every window counts them.
    assert _contract(forecast_targets=(ForecastTarget(None, "count"),)).forecast_names == (
        "event_count",
    )


def test_a_category_whose_levels_collide_or_a_reserved_name_fails():
    from periscope.contracts import Category, ContractError, Text, WindowSpec

    with pytest.raises(ContractError, match="category 'colour' has levels that name the same"):
        _contract(
            fields=(Text("device"), Text("event"), Category("colour", levels=("a b", "a-b"))),
            window=WindowSpec(),
        )
    with pytest.raises(ContractError, match="field 'window_start' is a reserved column name"):
        _contract(
            fields=(Text("device"), Text("event"), Text("window_start")),
            window=WindowSpec(),
        )


def test_event_predictions_name_measures_of_a_contract_with_an_event_id():
    from periscope.contracts import ContractError

    assert _contract(event_predictions=("reading",)).event_predictions == ("reading",)
    with pytest.raises(ContractError, match="event prediction 'items' is not a measure"):
        _contract(event_predictions=("items",))
    with pytest.raises(ContractError, match="event predictions need an event_id_field"):
        _contract(event_id_field=None, event_predictions=("reading",))
    with pytest.raises(ContractError, match="event label 'Trip' is not a lowercase identifier"):
        _contract(event_label="Trip")
