"""The sensors alerts filter as a Python plugin: `.status != "error" && .temperature > 95`.

Built into a WebAssembly component by componentize-py against flow's plugin world:

    componentize-py -d plugins/wit -w plugin componentize -p plugins/examples/python alerts -o alerts-py.wasm

The world's exported interface `guest` is the class `Guest` below; `wit_world` is the module
componentize-py generates from plugins/wit.
"""

import json

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Input, Output, PluginInfo

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "threshold": {
            "type": "number",
            "description": "Readings hotter than this are alerts (default 95).",
        },
    },
}

threshold = 95.0


class Guest(exports.Guest):
    def describe(self) -> PluginInfo:
        return PluginInfo(
            name="alerts-py",
            version="0.1.0",
            description="keeps hot readings (the sensors alerts filter), in Python",
            outputs=["matched", "unmatched"],
            config_schema=json.dumps(SCHEMA),
        )

    def init(self, config: str) -> None:
        global threshold
        try:
            threshold = float(json.loads(config).get("threshold", 95.0))
        except (ValueError, TypeError, AttributeError) as e:
            raise Err(f"invalid config: {e}")
        host.log(host.Level.DEBUG, f"alerts-py: threshold {threshold}")

    def process(self, batch: list[Input]) -> list:
        outcomes = []
        for record in batch:
            try:
                reading = json.loads(record.content)
                hot = reading.get("status") != "error" and reading["temperature"] > threshold
            except (ValueError, KeyError, TypeError) as e:
                outcomes.append(Err(f"not a reading: {e!r}"))
                continue
            port = "matched" if hot else "unmatched"
            outcomes.append(Ok([Output(port=port, content=None, attributes=[], event_time=None)]))
        return outcomes
