"""Jinja2 templates shipped with mantik-spec (installed as ``mantik_spec.templates``)."""
