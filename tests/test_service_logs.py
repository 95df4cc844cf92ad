"""Structured logs: one JSON object per line, with the fields Cloud Logging and operators filter on."""

from __future__ import annotations

import io
import json
import logging

from leaf_engine import logs


def test_json_lines_carry_severity_and_context() -> None:
    stream = io.StringIO()
    logger = logs.setup_json_logging(stream=stream)
    try:
        logs.info("object catalogued", request_id="r1", region="tile42", period="Jul", unused=None)
        logs.error("file failed its check", request_id="r1", object="a/b.tif")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger(logs.LOGGER_NAME).exception("crashed", extra={"fields": {"request_id": "r2"}})
    finally:
        for h in list(logger.handlers):
            if getattr(h, "stream", None) is stream:
                logger.removeHandler(h)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["severity"] for entry in lines] == ["INFO", "ERROR", "ERROR"]
    first = lines[0]
    assert first["message"] == "object catalogued"
    assert (first["request_id"], first["region"], first["period"]) == ("r1", "tile42", "Jul")
    assert "unused" not in first and first["time"].endswith("Z")
    assert lines[1]["object"] == "a/b.tif"
    assert "ValueError: boom" in lines[2]["stack_trace"] and lines[2]["request_id"] == "r2"
