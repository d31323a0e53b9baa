"""``/metrics``: the readings accounting (app.metrics) and Faust's own sensor metrics."""

from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import REGISTRY

from app.main import app

setup_prometheus_sensors(app, pattern="/metrics", registry=REGISTRY, name_prefix="faust")
