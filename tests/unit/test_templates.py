"""Templates and ConfigManager: packaged defaults, directories, and load-time errors."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from campaign_worker.adapters.template_files import ConfigManager, parse_template
from campaign_worker.domain.errors import (
    InvalidInputError,
    InvalidTemplateError,
    TemplateNotFoundError,
)
from campaign_worker.domain.templates import OutboundMessage, Rule, Template

FIXTURES = Path(__file__).parent / "fixtures" / "templates"


def template_dict(**stage_extra: Any) -> dict[str, Any]:
    """A valid one-type template whose second stage ('second') gets ``stage_extra``."""
    return {
        "template_id": "t1",
        "campaign_types": {
            "sales": {
                "stages": [
                    {"name": "first", "messages": [{"text": "Hi {first_name}", "wait": "1d"}]},
                    {"name": "second", **stage_extra},
                ]
            }
        },
    }


def write(directory: Path, name: str, data: dict[str, Any]) -> Path:
    path = directory / name
    if name.endswith(".json"):
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data))
    return path


def load_error(tmp_path: Path, data: dict[str, Any], name: str = "bad.yaml") -> str:
    path = write(tmp_path, name, data)
    with pytest.raises(InvalidTemplateError) as excinfo:
        ConfigManager(tmp_path, include_packaged=False)
    message = str(excinfo.value)
    assert str(path) in message, "the error names the file"
    return message


# ---------------------------------------------------------------- packaged defaults


def test_packaged_default_has_sales_stages_in_order() -> None:
    config = ConfigManager()
    sales = config.get_campaign_type("default", "sales")
    assert sales.stage_names == ["awareness", "consideration", "decision"]


def test_packaged_default_has_onboarding() -> None:
    onboarding = ConfigManager().get_campaign_type("default", "onboarding")
    assert onboarding.stage_names == ["welcome", "setup", "activation"]


def test_packaged_default_opts_out_on_stop_and_unsubscribe() -> None:
    keywords = ConfigManager().get_template("default").opt_out_keywords
    assert "STOP" in keywords
    assert "UNSUBSCRIBE" in keywords


def test_packaged_default_stages_all_send_something() -> None:
    template = ConfigManager().get_template("default")
    for campaign_type in template.campaign_types.values():
        for stage in campaign_type.stages:
            assert stage.messages, stage.name


def test_without_packaged_and_directory_there_are_no_templates() -> None:
    config = ConfigManager(include_packaged=False)
    assert config.template_ids() == []


# ---------------------------------------------------------------- directories


def test_directory_of_yaml_and_json_loads_both() -> None:
    config = ConfigManager(FIXTURES)
    assert config.template_ids() == ["default", "retention", "survey"]
    assert config.get_campaign_type("retention", "winback").stage_names == ["reminder", "offer"]
    assert config.get_campaign_type("survey", "nps").stage_names == ["ask", "thanks"]


def test_directory_only_without_packaged() -> None:
    config = ConfigManager(FIXTURES, include_packaged=False)
    assert config.template_ids() == ["retention", "survey"]


def test_yaml_fixture_durations_parse() -> None:
    reminder = ConfigManager(FIXTURES).get_campaign_type("retention", "winback").stages[0]
    assert reminder.messages[0].wait == timedelta(days=1, hours=12)
    assert reminder.messages[1].wait == timedelta(hours=1)
    assert reminder.max_followups_without_reply is not None
    assert reminder.max_followups_without_reply.then == "complete"


def test_json_fixture_regex_rule_loads() -> None:
    ask = ConfigManager(FIXTURES).get_campaign_type("survey", "nps").stages[0]
    assert ask.advance_when is not None
    assert ask.advance_when.regex == r"^\s*(10|[0-9])\s*$"


def test_directory_template_replaces_packaged_one_with_same_id(tmp_path: Path) -> None:
    data = template_dict()
    data["template_id"] = "default"
    write(tmp_path, "mine.yaml", data)
    config = ConfigManager(tmp_path)
    assert config.get_template("default").for_type("sales") is not None
    assert config.get_template("default").for_type("onboarding") is None


def test_yml_suffix_is_loaded(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", template_dict())
    assert ConfigManager(tmp_path, include_packaged=False).template_ids() == ["t1"]


def test_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(InvalidTemplateError, match="not found"):
        ConfigManager(tmp_path / "nope")


def test_reload_picks_up_new_files(tmp_path: Path) -> None:
    config = ConfigManager(tmp_path, include_packaged=False)
    assert config.template_ids() == []
    write(tmp_path, "a.yaml", template_dict())
    config.reload()
    assert config.template_ids() == ["t1"]


def test_failed_reload_keeps_the_previous_templates(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", template_dict())
    config = ConfigManager(tmp_path, include_packaged=False)
    (tmp_path / "b.yaml").write_text("template_id: [unclosed")
    with pytest.raises(InvalidTemplateError):
        config.reload()
    assert config.template_ids() == ["t1"]


def test_unknown_template_id_is_an_input_error() -> None:
    with pytest.raises(TemplateNotFoundError, match="nope") as excinfo:
        ConfigManager().get_template("nope")
    assert isinstance(excinfo.value, InvalidInputError)


def test_unknown_campaign_type_is_an_input_error() -> None:
    with pytest.raises(TemplateNotFoundError, match="'nope'"):
        ConfigManager().get_campaign_type("default", "nope")


def test_add_template_registers_a_template_built_in_code() -> None:
    config = ConfigManager(include_packaged=False)
    config.add_template(Template.model_validate(template_dict()))
    assert config.template_ids() == ["t1"]


# ---------------------------------------------------------------- bad templates


def test_bad_regex_names_file_stage_and_field(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(advance_when={"regex": "(unclosed"}))
    assert "stage 'second'" in message
    assert "advance_when.regex" in message
    assert "invalid regex" in message


def test_unknown_stage_key_names_file_stage_and_field(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(bogus=1))
    assert "stage 'second'" in message
    assert "stages.1.bogus" in message


def test_unknown_rule_key_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(advance_when={"replied": True}))
    assert "stage 'second'" in message
    assert "advance_when.replied" in message


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    data = {**template_dict(), "campaign_typez": {}}
    assert "campaign_typez" in load_error(tmp_path, data)


def test_rule_with_two_conditions_is_refused(tmp_path: Path) -> None:
    rule = {"reply_received": True, "min_messages_sent": 2}
    message = load_error(tmp_path, template_dict(advance_when=rule))
    assert "stage 'second'" in message
    assert "advance_when" in message
    assert "exactly one" in message


def test_nested_rule_with_two_conditions_is_refused(tmp_path: Path) -> None:
    rule = {"any": [{"reply_received": True}, {"regex": "x", "keywords": ["y"]}]}
    message = load_error(tmp_path, template_dict(advance_when=rule))
    assert "advance_when.any.1" in message
    assert "exactly one" in message


def test_empty_rule_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(advance_when={}))
    assert "exactly one" in message


def test_empty_any_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(advance_when={"any": []}))
    assert "advance_when.any" in message


def test_duplicate_stage_names_are_refused(tmp_path: Path) -> None:
    data = template_dict()
    data["campaign_types"]["sales"]["stages"][1]["name"] = "first"
    message = load_error(tmp_path, data)
    assert "campaign_types.sales" in message
    assert "duplicate stage names: ['first']" in message


def test_bad_duration_names_stage_and_field(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(max_time_in_stage={"after": "forever"}))
    assert "stage 'second'" in message
    assert "max_time_in_stage.after" in message


def test_negative_wait_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(messages=[{"text": "x", "wait": -5}]))
    assert "stage 'second'" in message
    assert "messages.0.wait" in message
    assert "negative" in message


def test_bad_then_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(max_time_in_stage={"after": "1d", "then": "x"}))
    assert "max_time_in_stage.then" in message


def test_unbalanced_placeholder_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(messages=[{"text": "Hi {first_name"}]))
    assert "stage 'second'" in message
    assert "messages.0.text" in message
    assert "placeholder" in message


@pytest.mark.parametrize(
    "text", ["Hi {first name}", "Hi {0}", "Hi {}", "Hi {user.__class__}", "Hi {a[0]}"]
)
def test_non_attribute_placeholders_are_refused(tmp_path: Path, text: str) -> None:
    message = load_error(tmp_path, template_dict(messages=[{"text": text}]))
    assert "messages.0.text" in message
    assert "placeholder" in message


def test_bad_stage_name_is_refused(tmp_path: Path) -> None:
    data = template_dict()
    data["campaign_types"]["sales"]["stages"][1]["name"] = "has space"
    message = load_error(tmp_path, data)
    assert "stage 'has space'" in message
    assert "stages.1.name" in message


def test_type_without_stages_is_refused(tmp_path: Path) -> None:
    data = {"template_id": "t1", "campaign_types": {"sales": {"stages": []}}}
    assert "campaign_types.sales.stages" in load_error(tmp_path, data)


def test_template_without_campaign_types_is_refused(tmp_path: Path) -> None:
    assert "campaign_types" in load_error(tmp_path, {"template_id": "t1"})


def test_empty_opt_out_keyword_is_refused(tmp_path: Path) -> None:
    # An empty keyword would opt out anyone whose reply is only punctuation or emoji.
    data = {**template_dict(), "opt_out_keywords": ["STOP", ""]}
    assert "opt_out_keywords.1" in load_error(tmp_path, data)


def test_duplicate_template_id_across_files_names_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", template_dict())
    second = write(tmp_path, "b.json", template_dict())
    with pytest.raises(InvalidTemplateError) as excinfo:
        ConfigManager(tmp_path, include_packaged=False)
    message = str(excinfo.value)
    assert str(first) in message
    assert str(second) in message
    assert "'t1'" in message


def test_unparseable_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("template_id: [unclosed")
    with pytest.raises(InvalidTemplateError, match="not parseable") as excinfo:
        ConfigManager(tmp_path, include_packaged=False)
    assert str(path) in str(excinfo.value)


def test_unparseable_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(InvalidTemplateError, match="not parseable") as excinfo:
        ConfigManager(tmp_path, include_packaged=False)
    assert str(path) in str(excinfo.value)


def test_top_level_list_is_refused() -> None:
    with pytest.raises(InvalidTemplateError, match="top level must be a mapping"):
        parse_template("- a\n- b\n", "x.yaml")


def test_bad_file_among_good_ones_fails_the_load(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", template_dict())
    bad = template_dict(advance_when={"regex": "["})
    bad["template_id"] = "t2"
    write(tmp_path, "b.yaml", bad)
    with pytest.raises(InvalidTemplateError, match=r"b\.yaml"):
        ConfigManager(tmp_path, include_packaged=False)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("1d12h", timedelta(days=1, hours=12)),
        (3600, timedelta(hours=1)),
        ("PT2H", timedelta(hours=2)),
        ("30m", timedelta(minutes=30)),
        ("1w", timedelta(weeks=1)),
        ("90s", timedelta(seconds=90)),
        ("1.5h", timedelta(minutes=90)),
        ("2H", timedelta(hours=2)),
        (0, timedelta(0)),
    ],
)
def test_durations(given: Any, expected: timedelta) -> None:
    assert OutboundMessage(text="x", wait=given).wait == expected


@pytest.mark.parametrize("given", ["forever", "1x", "d1", "", "1d 12h"])
def test_bad_durations_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="wait"):
        OutboundMessage(text="x", wait=given)


def test_min_time_in_stage_rule_accepts_durations() -> None:
    assert Rule(min_time_in_stage="1d12h").min_time_in_stage == timedelta(hours=36)


def test_message_wait_defaults_to_one_day() -> None:
    assert OutboundMessage(text="x").wait == timedelta(days=1)


def test_unknown_conversion_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, template_dict(messages=[{"text": "Hi {first_name!x}"}]))
    assert "messages.0.text" in message
    assert "conversion" in message


def test_repr_conversion_is_allowed() -> None:
    assert OutboundMessage(text="Hi {first_name!s}").text == "Hi {first_name!s}"


def test_followup_limit_beyond_the_stage_messages_is_refused(tmp_path: Path) -> None:
    # Otherwise a silent conversation would stay active with nothing scheduled, forever.
    stage = {
        "messages": [{"text": "a"}, {"text": "b"}],
        "max_followups_without_reply": {"count": 2},
    }
    message = load_error(tmp_path, template_dict(**stage))
    assert "stage 'second'" in message
    assert "max_followups_without_reply.count" in message


def test_followup_limit_within_the_stage_messages_loads() -> None:
    stage = {
        "messages": [{"text": "a"}, {"text": "b"}],
        "max_followups_without_reply": {"count": 1},
    }
    template = Template.model_validate(template_dict(**stage))
    assert template.campaign_types["sales"].stages[1].max_followups_without_reply is not None
