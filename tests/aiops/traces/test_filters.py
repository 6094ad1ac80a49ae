from aiops.traces import ANY_SPAN, Span, SpanFilter


def _span(**kw) -> Span:
    fields = dict(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        parent_id=None,
        service="api",
        name="GET /",
        kind="server",
        start_ns=1,
        end_ns=2,
        status="unset",
    )
    return Span(**{**fields, **kw})


def test_empty_fields_match_anything_and_fields_are_and_ed() -> None:
    assert ANY_SPAN.matches(_span()) and ANY_SPAN.to_traceql() == "{}"
    only = SpanFilter(services=["api", "db"], statuses=["error"])
    assert only.matches(_span(service="db", status="error"))
    assert not only.matches(_span(service="db"))
    assert not only.matches(_span(service="web", status="error"))


def test_traceql_quotes_strings_and_or_s_alternatives() -> None:
    wanted = SpanFilter(
        services=["db", 'we"ird\\'], names=["GET /"], kinds=["server", "consumer"], statuses=["error"]
    )
    assert wanted.to_traceql() == (
        '{ (resource.service.name = "db" || resource.service.name = "we\\"ird\\\\") && name = "GET /" '
        "&& (kind = consumer || kind = server) && status = error }"
    )
