"""The editor's list of variables a template reads."""

from __future__ import annotations

from tidings.rendering.variables import template_variables


def test_variables_read_are_listed_with_attribute_keys_and_without_those_set_inside() -> None:
    subject = "Hello {{ first_name }}"
    html = (
        "{% set greeting = 'Hi' %}{{ greeting }} {{ attributes.city }} {{ attributes['plan'] }}"
        "{% for item in items %}{{ item.name }}{% endfor %}{{ unsubscribe_url }}"
    )
    assert template_variables(subject, html, None) == [
        "attributes",
        "attributes.city",
        "attributes.plan",
        "first_name",
        "items",
        "unsubscribe_url",
    ]
